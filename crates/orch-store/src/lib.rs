//! The durable account store of a standalone orchestratord: keys made through the
//! API and the usage ledger, in one embedded SQLite database (`accounts.db` under the
//! state directory), built from source by `rusqlite`'s `bundled` feature.
//!
//! Owns: the database file, its schema and the schema's versioned migrations
//! ([`migrate`]: `PRAGMA user_version` counts the migrations applied; a database of a
//! newer build is refused, never altered). The database is opened in WAL mode with
//! `synchronous = NORMAL` (a committed write survives the process being killed; a
//! power loss can lose the last moments) and in exclusive locking mode, so a second
//! orchestratord on the same state directory is refused at start instead of sharing
//! it unseen.
//! Never: stores a key (only its SHA-256 digest); runs on an async thread (the
//! services call it on tokio's blocking pool).

mod migrate;

use orch_domain::accounts::{UsageCounts, UsageGroupBy};
use orch_domain::Priority;
use orch_services::accounts::{AccountStore, StoreError, StoredKey, UsageKey, UsageQuery};
use orch_services::Role;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The database's file name under the state directory.
pub const DB_FILE: &str = "accounts.db";

/// What went wrong opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the state directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error(
        "the state directory {0} is in use by another orchestratord (its accounts.db is locked)"
    )]
    InUse(PathBuf),
    #[error("accounts.db in {0} has schema version {1}; this build knows up to {2} (a newer orchestratord wrote it)")]
    Newer(PathBuf, i64, usize),
    #[error("accounts.db in {0}: {1}")]
    Sqlite(PathBuf, rusqlite::Error),
}

/// SQLite behind a mutex (one writer; the services batch their writes).
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

impl SqliteStore {
    /// Open (or create) `dir/accounts.db`, take its lock and bring its schema up to
    /// date.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Dir(dir.to_path_buf(), e))?;
        let path = dir.join(DB_FILE);
        let sql = |e| OpenError::Sqlite(path.clone(), e);
        let mut conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_millis(500))
            .map_err(sql)?;
        let setup = conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        );
        if let Err(e) = setup {
            return Err(if is_busy(&e) {
                OpenError::InUse(dir.to_path_buf())
            } else {
                sql(e)
            });
        }
        match migrate::up(&mut conn) {
            Ok(()) => {}
            Err(migrate::Error::Newer(v)) => {
                return Err(OpenError::Newer(
                    dir.to_path_buf(),
                    v,
                    migrate::MIGRATIONS.len(),
                ))
            }
            Err(migrate::Error::Sqlite(e)) if is_busy(&e) => {
                return Err(OpenError::InUse(dir.to_path_buf()))
            }
            Err(migrate::Error::Sqlite(e)) => return Err(sql(e)),
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn list_json<T: serde::Serialize>(v: &Option<Vec<T>>) -> Option<String> {
    v.as_ref().and_then(|v| serde_json::to_string(v).ok())
}

fn unreadable(col: usize, e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
}

fn read_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let role: String = r.get(3)?;
    let pools: Option<String> = r.get(9)?;
    let priorities: Option<String> = r.get(10)?;
    Ok(StoredKey {
        fingerprint: r.get(0)?,
        digest: r.get(1)?,
        tenant: r.get(2)?,
        // an unknown role reads as the lesser one
        role: Role::parse(&role).unwrap_or(Role::Client),
        label: r.get(4)?,
        created_ms: r.get::<_, i64>(5)? as u64,
        expires_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        revoked_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        last_used_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        pools: match pools {
            None => None,
            Some(p) => Some(serde_json::from_str(&p).map_err(|e| unreadable(9, e))?),
        },
        priorities: match priorities {
            None => None,
            Some(p) => {
                Some(serde_json::from_str::<Vec<Priority>>(&p).map_err(|e| unreadable(10, e))?)
            }
        },
    })
}

/// The column a report groups by (a fixed name, never caller input).
fn group_column(g: UsageGroupBy) -> &'static str {
    match g {
        UsageGroupBy::Tenant => "tenant",
        UsageGroupBy::Key => "key",
        UsageGroupBy::Pool => "pool",
        UsageGroupBy::Model => "model",
        UsageGroupBy::Hour => "hour_ms",
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Add `rows` to the ledger inside `tx`.
fn add_rows(
    tx: &rusqlite::Transaction<'_>,
    rows: &[(UsageKey, UsageCounts)],
) -> rusqlite::Result<()> {
    let mut up = tx.prepare_cached(
        "INSERT INTO usage (hour_ms, tenant, key, pool, model, tasks, tokens_in, tokens_out, tokens_cached, canceled)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (hour_ms, tenant, key, pool, model) DO UPDATE SET
           tasks = tasks + excluded.tasks,
           tokens_in = tokens_in + excluded.tokens_in,
           tokens_out = tokens_out + excluded.tokens_out,
           tokens_cached = tokens_cached + excluded.tokens_cached,
           canceled = canceled + excluded.canceled",
    )?;
    let mut err = tx.prepare_cached(
        "INSERT INTO usage_errors (hour_ms, tenant, key, pool, model, code, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (hour_ms, tenant, key, pool, model, code) DO UPDATE SET
           count = count + excluded.count",
    )?;
    for (k, n) in rows {
        up.execute(params![
            ms(k.hour_ms),
            &*k.tenant,
            &*k.key,
            &*k.pool,
            &*k.model,
            ms(n.tasks),
            ms(n.tokens_in),
            ms(n.tokens_out),
            ms(n.tokens_cached),
            ms(n.canceled),
        ])?;
        for (code, count) in &n.errors {
            err.execute(params![
                ms(k.hour_ms),
                &*k.tenant,
                &*k.key,
                &*k.pool,
                &*k.model,
                code,
                ms(*count)
            ])?;
        }
    }
    Ok(())
}

impl AccountStore for SqliteStore {
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare(
                "SELECT fingerprint, digest, tenant, role, label, created_ms, expires_ms, revoked_ms, last_used_ms, pools, priorities FROM keys ORDER BY created_ms",
            )
            .map_err(failed)?;
        let rows = st.query_map([], read_key).map_err(failed)?;
        let mut keys = Vec::new();
        for r in rows {
            match r {
                Ok(k) => keys.push(k),
                // a key whose limits cannot be read would be a key without limits:
                // it is left out (it authenticates nothing) and said loudly
                Err(e @ rusqlite::Error::FromSqlConversionFailure(..)) => {
                    tracing::error!(error = %e, "a stored API key has unreadable limits; it is not loaded")
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(keys)
    }

    fn insert_key(&self, k: &StoredKey) -> Result<(), StoreError> {
        let c = self.conn();
        let r = c.execute(
            "INSERT INTO keys (fingerprint, digest, tenant, role, label, created_ms, expires_ms, revoked_ms, last_used_ms, pools, priorities) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                k.fingerprint,
                k.digest,
                k.tenant,
                k.role.as_str(),
                k.label,
                ms(k.created_ms),
                k.expires_ms.map(ms),
                k.revoked_ms.map(ms),
                k.last_used_ms.map(ms),
                list_json(&k.pools),
                list_json(&k.priorities),
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Duplicate(format!("key {}", k.fingerprint)))
            }
            Err(e) => Err(failed(e)),
        }
    }

    fn revoke_key(&self, fingerprint: &str, at_ms: u64) -> Result<bool, StoreError> {
        let c = self.conn();
        let known: Option<i64> = c
            .query_row(
                "SELECT 1 FROM keys WHERE fingerprint = ?1",
                [fingerprint],
                |r| r.get(0),
            )
            .optional()
            .map_err(failed)?;
        if known.is_none() {
            return Ok(false);
        }
        c.execute(
            "UPDATE keys SET revoked_ms = ?2 WHERE fingerprint = ?1 AND revoked_ms IS NULL",
            params![fingerprint, ms(at_ms)],
        )
        .map_err(failed)?;
        Ok(true)
    }

    fn touch_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(failed)?;
        {
            let mut st = tx
                .prepare_cached(
                    "UPDATE keys SET last_used_ms = MAX(COALESCE(last_used_ms, 0), ?2) WHERE fingerprint = ?1",
                )
                .map_err(failed)?;
            for (fp, at) in used {
                st.execute(params![fp, ms(*at)]).map_err(failed)?;
            }
        }
        tx.commit().map_err(failed)
    }

    fn add_usage(&self, rows: &[(UsageKey, UsageCounts)]) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(failed)?;
        add_rows(&tx, rows).map_err(failed)?;
        tx.commit().map_err(failed)
    }

    fn add_shared_usage(
        &self,
        seq: u64,
        rows: &[(UsageKey, UsageCounts)],
    ) -> Result<bool, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(failed)?;
        let have: i64 = tx
            .query_row("SELECT seq FROM shared_usage WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(failed)?;
        if ms(seq) <= have {
            return Ok(false);
        }
        add_rows(&tx, rows).map_err(failed)?;
        tx.execute("UPDATE shared_usage SET seq = ?1 WHERE id = 1", [ms(seq)])
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        Ok(true)
    }

    fn shared_usage_seq(&self) -> Result<u64, StoreError> {
        let c = self.conn();
        c.query_row("SELECT seq FROM shared_usage WHERE id = 1", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|v| v as u64)
        .map_err(failed)
    }

    fn usage(&self, q: &UsageQuery) -> Result<Vec<(String, UsageCounts)>, StoreError> {
        let col = group_column(q.group_by);
        let c = self.conn();
        let filter = "hour_ms >= ?1 AND hour_ms < ?2 AND (?3 IS NULL OR tenant = ?3)";
        let mut st = c
            .prepare(&format!(
                "SELECT {col}, SUM(tasks), SUM(tokens_in), SUM(tokens_out), SUM(tokens_cached), SUM(canceled)
                 FROM usage WHERE {filter} GROUP BY {col} ORDER BY {col}"
            ))
            .map_err(failed)?;
        let group = |r: &rusqlite::Row<'_>| -> rusqlite::Result<String> {
            Ok(match q.group_by {
                UsageGroupBy::Hour => {
                    orch_services::accounts::calendar::rfc3339(r.get::<_, i64>(0)? as u64)
                }
                _ => r.get(0)?,
            })
        };
        let args = params![ms(q.from_ms), ms(q.to_ms), q.tenant];
        let mut out: Vec<(String, UsageCounts)> = st
            .query_map(args, |r| {
                Ok((
                    group(r)?,
                    UsageCounts {
                        tasks: r.get::<_, i64>(1)? as u64,
                        tokens_in: r.get::<_, i64>(2)? as u64,
                        tokens_out: r.get::<_, i64>(3)? as u64,
                        tokens_cached: r.get::<_, i64>(4)? as u64,
                        canceled: r.get::<_, i64>(5)? as u64,
                        errors: Default::default(),
                    },
                ))
            })
            .map_err(failed)?
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        let mut st = c
            .prepare(&format!(
                "SELECT {col}, code, SUM(count) FROM usage_errors WHERE {filter} GROUP BY {col}, code"
            ))
            .map_err(failed)?;
        let errors = st
            .query_map(args, |r| {
                Ok((
                    group(r)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(failed)?;
        for e in errors {
            let (g, code, n) = e.map_err(failed)?;
            if let Some((_, counts)) = out.iter_mut().find(|(x, _)| *x == g) {
                counts.errors.insert(code, n);
            }
        }
        Ok(out)
    }

    fn tokens_by_tenant(&self, since_ms: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT tenant, SUM(tokens_in + tokens_out) FROM usage WHERE hour_ms >= ?1 GROUP BY tenant")
            .map_err(failed)?;
        let rows = st
            .query_map([ms(since_ms)], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(failed)?;
        rows.collect::<Result<_, _>>().map_err(failed)
    }
}
