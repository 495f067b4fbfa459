//! The schema's versioned migrations. `PRAGMA user_version` is the number applied;
//! each runs once, in its own transaction with the version bump, in order. A
//! migration is never edited once released: a change is a new entry.

use rusqlite::Connection;

/// Every migration, oldest first.
pub const MIGRATIONS: &[&str] = &[
    // 1: keys made through the API, and the usage ledger by hour, tenant, key, pool
    // and model (errors by code in their own table)
    "CREATE TABLE keys (
        fingerprint  TEXT PRIMARY KEY,
        digest       TEXT NOT NULL UNIQUE,
        tenant       TEXT NOT NULL,
        role         TEXT NOT NULL,
        label        TEXT,
        created_ms   INTEGER NOT NULL,
        expires_ms   INTEGER,
        revoked_ms   INTEGER,
        last_used_ms INTEGER,
        pools        TEXT,
        priorities   TEXT
    );
    CREATE TABLE usage (
        hour_ms       INTEGER NOT NULL,
        tenant        TEXT NOT NULL,
        key           TEXT NOT NULL,
        pool          TEXT NOT NULL,
        model         TEXT NOT NULL,
        tasks         INTEGER NOT NULL,
        tokens_in     INTEGER NOT NULL,
        tokens_out    INTEGER NOT NULL,
        tokens_cached INTEGER NOT NULL,
        canceled      INTEGER NOT NULL,
        PRIMARY KEY (hour_ms, tenant, key, pool, model)
    ) WITHOUT ROWID;
    CREATE INDEX usage_by_tenant ON usage (tenant, hour_ms);
    CREATE TABLE usage_errors (
        hour_ms INTEGER NOT NULL,
        tenant  TEXT NOT NULL,
        key     TEXT NOT NULL,
        pool    TEXT NOT NULL,
        model   TEXT NOT NULL,
        code    TEXT NOT NULL,
        count   INTEGER NOT NULL,
        PRIMARY KEY (hour_ms, tenant, key, pool, model, code)
    ) WITHOUT ROWID;",
    // 2: the place in the cluster's shared usage log of the last batch added, kept
    // with the batches (so each is added once)
    "CREATE TABLE shared_usage (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL
    );
    INSERT INTO shared_usage (id, seq) VALUES (1, 0);",
];

pub enum Error {
    /// The database has more migrations than this build knows.
    Newer(i64),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}

/// Apply the migrations the database lacks.
pub fn up(conn: &mut Connection) -> Result<(), Error> {
    let have: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if have > MIGRATIONS.len() as i64 {
        return Err(Error::Newer(have));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    // take the exclusive lock now, even when nothing was migrated
    conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
    Ok(())
}
