//! The SQLite store against a real database file: keys, the ledger's sums and
//! groups, the schema version, the lock that keeps a second server out, and what
//! survives a reopen.

use orch_domain::accounts::{UsageCounts, UsageGroupBy};
use orch_domain::Priority;
use orch_services::accounts::{AccountStore, StoredKey, UsageKey, UsageQuery};
use orch_services::Role;
use orch_store::{OpenError, SqliteStore};
use std::path::PathBuf;

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("orch-store-{}", uuid::Uuid::new_v4()))
}

fn key(fp: &str, tenant: &str) -> StoredKey {
    StoredKey {
        fingerprint: fp.into(),
        digest: format!("{fp:0>64}"),
        tenant: tenant.into(),
        role: Role::Client,
        label: Some("ci".into()),
        created_ms: 1_000,
        expires_ms: Some(9_000_000),
        revoked_ms: None,
        last_used_ms: None,
        pools: Some(vec!["p".into()]),
        priorities: Some(vec![Priority::Batch]),
    }
}

fn counts(tasks: u64, i: u64, o: u64, err: Option<&str>) -> UsageCounts {
    let mut c = UsageCounts {
        tasks,
        tokens_in: i,
        tokens_out: o,
        tokens_cached: i / 2,
        canceled: 0,
        ..UsageCounts::default()
    };
    if let Some(e) = err {
        c.errors.insert(e.into(), 1);
    }
    c
}

fn uk(hour: u64, tenant: &str, key: &str) -> UsageKey {
    UsageKey {
        hour_ms: hour * 3_600_000,
        tenant: tenant.into(),
        key: key.into(),
        pool: "p".into(),
        model: "m".into(),
    }
}

#[test]
fn keys_round_trip_revoke_and_refuse_a_duplicate() {
    let d = dir();
    let s = SqliteStore::open(&d).unwrap();
    s.insert_key(&key("key:00000001", "acme")).unwrap();
    assert!(s.insert_key(&key("key:00000001", "acme")).is_err());
    assert!(s.revoke_key("key:00000001", 5_000).unwrap());
    assert!(!s.revoke_key("key:ffffffff", 5_000).unwrap());
    s.touch_keys(&[("key:00000001".into(), 7_000)]).unwrap();
    s.touch_keys(&[("key:00000001".into(), 6_000)]).unwrap();
    let keys = s.keys().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k.revoked_ms, Some(5_000));
    assert_eq!(k.last_used_ms, Some(7_000), "last use only moves forward");
    assert_eq!(k.pools.as_deref(), Some(&["p".to_string()][..]));
    assert_eq!(k.priorities.as_deref(), Some(&[Priority::Batch][..]));
    drop(s);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn usage_adds_up_and_groups_by_every_dimension() {
    let d = dir();
    let s = SqliteStore::open(&d).unwrap();
    s.add_usage(&[
        (uk(10, "acme", "key:a"), counts(2, 100, 20, None)),
        (
            uk(10, "globex", "key:g"),
            counts(1, 7, 3, Some("WORKER_RESET")),
        ),
    ])
    .unwrap();
    // the same grain again adds to it
    s.add_usage(&[(
        uk(10, "acme", "key:a"),
        counts(1, 10, 2, Some("DECODE_TIMEOUT")),
    )])
    .unwrap();
    s.add_usage(&[(uk(11, "acme", "-"), counts(1, 1, 1, None))])
        .unwrap();
    let q = |g, tenant: Option<&str>, from: u64, to: u64| UsageQuery {
        from_ms: from * 3_600_000,
        to_ms: to * 3_600_000,
        tenant: tenant.map(str::to_string),
        group_by: g,
    };
    let by_tenant = s.usage(&q(UsageGroupBy::Tenant, None, 0, 100)).unwrap();
    assert_eq!(by_tenant.len(), 2);
    assert_eq!(by_tenant[0].0, "acme");
    assert_eq!(
        (
            by_tenant[0].1.tasks,
            by_tenant[0].1.tokens_in,
            by_tenant[0].1.tokens_out
        ),
        (4, 111, 23)
    );
    assert_eq!(by_tenant[0].1.errors.get("DECODE_TIMEOUT"), Some(&1));
    assert_eq!(by_tenant[1].1.errors.get("WORKER_RESET"), Some(&1));
    let by_key = s
        .usage(&q(UsageGroupBy::Key, Some("acme"), 0, 100))
        .unwrap();
    assert_eq!(
        by_key.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["-", "key:a"]
    );
    let by_hour = s.usage(&q(UsageGroupBy::Hour, None, 11, 12)).unwrap();
    assert_eq!(by_hour.len(), 1);
    assert_eq!(by_hour[0].0, "1970-01-01T11:00:00Z");
    assert_eq!(by_hour[0].1.tasks, 1);
    let spent = s.tokens_by_tenant(11 * 3_600_000).unwrap();
    assert_eq!(spent, vec![("acme".to_string(), 2)]);
    // it is all still there after a reopen
    drop(s);
    let s = SqliteStore::open(&d).unwrap();
    let again = s.usage(&q(UsageGroupBy::Tenant, None, 0, 100)).unwrap();
    assert_eq!(again, by_tenant);
    drop(s);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_second_server_on_the_same_state_dir_is_refused() {
    let d = dir();
    let s = SqliteStore::open(&d).unwrap();
    // another process's connection is what the lock keeps out; a second
    // connection of this process meets the same file lock
    match SqliteStore::open(&d) {
        Err(OpenError::InUse(p)) => assert_eq!(p, d),
        other => panic!("expected InUse, got {other:?}"),
    }
    drop(s);
    assert!(SqliteStore::open(&d).is_ok(), "free again once closed");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_database_of_a_newer_build_is_refused_untouched() {
    let d = dir();
    drop(SqliteStore::open(&d).unwrap());
    let db = d.join(orch_store::DB_FILE);
    let c = rusqlite_free_bump(&db);
    assert!(c);
    match SqliteStore::open(&d) {
        Err(OpenError::Newer(_, have, know)) => assert!(have as usize > know),
        other => panic!("expected Newer, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Set the schema version past this build's with the sqlite3 format's header: the
/// user version is the big-endian u32 at byte 60 of the file.
fn rusqlite_free_bump(db: &std::path::Path) -> bool {
    let mut bytes = std::fs::read(db).unwrap();
    if bytes.len() < 64 {
        return false;
    }
    bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(db, bytes).unwrap();
    true
}

#[test]
fn a_shared_batch_is_added_once_whatever_is_delivered_again() {
    let d = dir();
    let s = SqliteStore::open(&d).unwrap();
    assert_eq!(s.shared_usage_seq().unwrap(), 0);
    let batch = [(uk(10, "acme", "-"), counts(1, 5, 5, None))];
    assert!(s.add_shared_usage(1, &batch).unwrap());
    assert!(s.add_shared_usage(2, &batch).unwrap());
    // a redelivery (a follower that restarted before it recorded its place) is skipped
    assert!(!s.add_shared_usage(2, &batch).unwrap());
    assert!(!s.add_shared_usage(1, &batch).unwrap());
    drop(s);
    let s = SqliteStore::open(&d).unwrap();
    assert_eq!(
        s.shared_usage_seq().unwrap(),
        2,
        "the place survives a reopen"
    );
    let q = UsageQuery {
        from_ms: 0,
        to_ms: 100 * 3_600_000,
        tenant: None,
        group_by: UsageGroupBy::Tenant,
    };
    assert_eq!(s.usage(&q).unwrap()[0].1.tasks, 2);
    drop(s);
    let _ = std::fs::remove_dir_all(d);
}
