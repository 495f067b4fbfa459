//! The task table's bounds, in process: known ids are never reused, finished records
//! keep their frames only within count, byte and time bounds (oldest first), then a
//! summary, then nothing; sessions are bounded too.

mod common;

use common::*;
use orch_domain::{ErrorCode, SessionId, TaskId, TaskState};
use orch_services::{Caller, Retention, ServiceConfig};
use std::time::Duration;

async fn with_retention(r: Retention) -> orch_services::Orchestrator {
    let cfg = ServiceConfig {
        retention: r,
        ..ServiceConfig::default()
    };
    orch_with(cfg, spec(), &[mock(1)]).await
}

async fn run_one(o: &orch_services::Orchestrator, max_tokens: u32) -> TaskId {
    let id = submit(o, req(max_tokens)).await;
    terminal(&frames(o, id).await);
    id
}

#[tokio::test]
async fn a_finished_task_id_cannot_be_reused() {
    let o = orch(&[mock(1)]).await;
    let id = run_one(&o, 2).await;
    let mut again = req(2);
    again.task_id = Some(id);
    let err = o.admit(&Caller::open(), again, "t").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    // the original record and its frames are untouched
    let (ev, _) = terminal(&frames(&o, id).await);
    assert_eq!(ev, "end");
}

#[tokio::test]
async fn oldest_finished_records_lose_their_frames_first_past_the_count_bound() {
    let o = with_retention(Retention {
        max_frames_records: 3,
        ..Retention::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(run_one(&o, 2).await);
    }
    let st = o.stats().table;
    assert_eq!((st.finished_with_frames, st.summaries), (3, 2), "{st:?}");
    for old in &ids[..2] {
        let err = o
            .open_stream(&Caller::open(), *old, 0)
            .await
            .err()
            .expect("frames of the oldest are gone");
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(err.message.contains("expired"), "{}", err.message);
        let s = o
            .status(&Caller::open(), *old)
            .await
            .expect("the summary answers status");
        assert_eq!((s.state, s.tokens_out), (TaskState::Completed, 2));
        let mut again = req(1);
        again.task_id = Some(*old);
        assert_eq!(
            o.admit(&Caller::open(), again, "t").await.unwrap_err().code,
            ErrorCode::Conflict
        );
    }
    for recent in &ids[2..] {
        assert_eq!(terminal(&frames(&o, *recent).await).0, "end");
    }
}

#[tokio::test]
async fn retained_frames_stay_within_the_byte_bound() {
    let bound = 4_000;
    let o = with_retention(Retention {
        max_frames_bytes: bound,
        ..Retention::default()
    })
    .await;
    for _ in 0..10 {
        run_one(&o, 20).await;
        let st = o.stats().table;
        assert!(st.frames_bytes <= bound, "{st:?}");
    }
    let st = o.stats().table;
    assert!(st.summaries > 0 && st.finished_with_frames > 0, "{st:?}");
}

#[tokio::test]
async fn summaries_are_bounded_and_then_forgotten() {
    let o = with_retention(Retention {
        max_frames_records: 1,
        max_summaries: 2,
        ..Retention::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(run_one(&o, 1).await);
    }
    assert_eq!(o.stats().table.summaries, 2);
    for gone in &ids[..2] {
        let err = o.status(&Caller::open(), *gone).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(!err.message.contains("expired"), "forgotten, not expired");
    }
    for kept in &ids[2..4] {
        assert!(o.status(&Caller::open(), *kept).await.is_ok());
    }
}

#[tokio::test]
async fn the_record_ttl_drops_frames_and_keeps_the_summary() {
    let cfg = ServiceConfig {
        record_ttl: Duration::from_millis(50),
        sweep_interval: Duration::from_millis(20),
        ..ServiceConfig::default()
    };
    let o = orch_with(cfg, spec(), &[mock(1)]).await;
    let id = run_one(&o, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = o
        .open_stream(&Caller::open(), id, 0)
        .await
        .err()
        .expect("expired");
    assert!(err.message.contains("expired"), "{}", err.message);
    assert_eq!(
        o.status(&Caller::open(), id).await.unwrap().state,
        TaskState::Completed
    );
}

#[tokio::test]
async fn sessions_are_bounded_least_recently_used_first() {
    let cfg = ServiceConfig {
        max_sessions: 2,
        ..ServiceConfig::default()
    };
    let o = orch_with(cfg, spec(), &[mock(1)]).await;
    let sids: Vec<SessionId> = (0..3).map(|_| SessionId(uuid::Uuid::new_v4())).collect();
    for s in &sids {
        let mut r = req(1);
        r.session_id = Some(*s);
        let id = submit(&o, r).await;
        terminal(&frames(&o, id).await);
    }
    assert_eq!(o.stats().sessions, 2);
    assert!(
        o.session(&Caller::open(), sids[0]).is_err(),
        "the least recently used session went"
    );
    assert!(o.session(&Caller::open(), sids[2]).is_ok());
}
