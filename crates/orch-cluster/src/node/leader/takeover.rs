//! Taking a task from the pool's queue: what a failed leader left of it decides what
//! happens ([`decide`], pure): a task whose last stored frame is terminal only has its
//! status recorded and leaves the queue; one with a cancel request ends canceled; one
//! that streamed tokens with their ids is continued here from them (the runner checks
//! the pool's migration guardrails, and ends it with a retriable `WORKER_RESET` when
//! they refuse); one whose tokens came without ids ends with that `WORKER_RESET` at
//! once; any other is run (again) here. Its frames continue the ids the old leader
//! stored.

use super::store::{store, Taken};
use super::{REREAD, STORE_RETRY};
use crate::node::Node;
use crate::wire::{ClusterStatus, ReplicatedTask};
use crate::{metrics, Frame, QueuedTask};
use orch_domain::{ErrorCode, EventKind, OrchError, StreamEvent, TaskId, TaskState};
use orch_services::{CancelReason, Ending, Resumed};
use std::sync::Arc;

/// What a taken task needs next.
pub(super) enum Next {
    /// Run it: its writer stores its frames.
    Run(Box<Taken>),
    /// Nothing to run: record its status (if given) and let it leave the queue.
    Settle(Box<(QueuedTask, Option<(TaskId, ClusterStatus)>)>),
}

/// What the frames a failed leader stored (and a cancel request) make of a task.
#[derive(Debug, PartialEq)]
pub(super) enum Decision {
    /// Its end was stored: record it (it may not have been) and let it leave.
    Ended { end: StreamEvent, tokens: u32 },
    /// End it here with this ending, stored after the frames that are there.
    End {
        ending: Ending,
        outcome: &'static str,
    },
    /// Run it here: for the first time, or again (it streamed no token).
    Run { again: bool },
    /// Continue its generation here from the tokens it streamed.
    Continue(Resumed),
}

/// What the stored frames say of a generation that streamed `tokens` tokens: its
/// tokens' ids and text, how often it moved, where it last ran and on what model and
/// engine version; `None` when a token came without ids or it never said where it ran.
fn streamed(prior: &[Frame], tokens: u32) -> Option<Resumed> {
    let (mut ids, mut text, mut moves, mut replica) =
        (Some(Vec::new()), String::new(), 0, String::new());
    let mut engine = None;
    for f in prior {
        match f.kind {
            EventKind::Started => {
                if let Ok(s) = serde_json::from_str::<orch_domain::StartedFrame>(&f.data) {
                    replica = s.replica_id;
                    engine = Some((s.model, s.engine_version));
                }
            }
            EventKind::Token => match serde_json::from_str::<orch_domain::TokenFrame>(&f.data) {
                Ok(t) => {
                    text.push_str(&t.t);
                    match (t.ids, ids.as_mut()) {
                        (Some(i), Some(all)) if !i.is_empty() => all.extend(i),
                        _ => ids = None,
                    }
                }
                Err(_) => ids = None,
            },
            EventKind::Metrics => {
                if let Ok(m) = serde_json::from_str::<orch_domain::MetricsFrame>(&f.data) {
                    if let Some(moved) = m.migrated {
                        moves = moves.max(moved.count);
                        replica = moved.to_replica;
                    }
                }
            }
            EventKind::End | EventKind::Error => {}
        }
    }
    let (model, engine_version) = engine?;
    Some(Resumed {
        ids: ids?,
        text,
        tokens,
        moves,
        from_replica: replica,
        model,
        engine_version,
    })
}

/// Decide from the stored frames `prior` and whether a cancel was requested.
pub(super) fn decide(prior: &[Frame], canceled: bool, pool_id: &str) -> Decision {
    let tokens = prior.iter().filter(|f| f.kind == EventKind::Token).count() as u32;
    if let Some(end) = prior.last().and_then(parse_terminal) {
        return Decision::Ended { end, tokens };
    }
    if canceled {
        return Decision::End {
            ending: Ending::Canceled {
                reason: CancelReason::Client,
                tokens_out: tokens,
                pool_id: pool_id.to_string(),
            },
            outcome: "canceled",
        };
    }
    if tokens > 0 {
        if let Some(r) = streamed(prior, tokens) {
            return Decision::Continue(r);
        }
        return Decision::End {
            ending: Ending::Failed(
                OrchError::new(
                    ErrorCode::WorkerReset,
                    "the pool's leader failed over after the task had streamed; retry",
                )
                .with_pool(pool_id)
                .with_retry_after_ms(0),
            ),
            outcome: "worker_reset",
        };
    }
    Decision::Run {
        again: !prior.is_empty(),
    }
}

/// Take one queued task: settle what a failed leader left of it, or hand it to the
/// pool (in the order tasks come, so the pool queues them in admission order). A store
/// refused as fenced means the frames moved since they were read: read them again
/// (if another leader really took over, this term ends and stops this).
pub(super) async fn take(node: &Arc<Node>, mut qt: QueuedTask) -> Next {
    loop {
        match take_once(node, qt).await {
            Ok(next) => return next,
            Err(again) => {
                tracing::debug!(task_id = %again.task_id, "task's frames moved while taking it; reading again");
                qt = again;
                tokio::time::sleep(REREAD).await;
            }
        }
    }
}

/// One try of [`take`]: `Err` gives the task back when the ending's store was fenced.
async fn take_once(node: &Arc<Node>, qt: QueuedTask) -> Result<Next, QueuedTask> {
    let t: ReplicatedTask = match serde_json::from_slice(&qt.payload) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(task_id = %qt.task_id, error = %e, "unreadable queued task dropped");
            return Ok(Next::Settle(Box::new((qt, None))));
        }
    };
    let id = t.task_id;
    let key = id.to_string();
    let status = ClusterStatus::queued(&t);
    // what a failed leader left of it, and whether it was canceled meanwhile (one
    // round trip each, together)
    // and the id is claimed for its tenant before any frame of it is stored (an id
    // the admitting instance drew at random was not claimed at admission)
    let (mut writer, prior, canceled) = loop {
        let (frames, canceled, claimed) = tokio::join!(
            node.frames.resume_writer(&key),
            node.states.cancel_requested(&key),
            node.states.renew_claim(&key, &t.tenant)
        );
        match (frames, claimed) {
            (Ok((w, prior)), Ok(())) => break (w, prior, canceled.unwrap_or(false)),
            (Err(e), _) => {
                tracing::debug!(task_id = %id, error = %e, "cannot read the task's frames; retrying");
                tokio::time::sleep(STORE_RETRY).await;
            }
            (_, Err(e)) => {
                tracing::debug!(task_id = %id, error = %e, "cannot claim the task's id; retrying");
                tokio::time::sleep(STORE_RETRY).await;
            }
        }
    };
    let base = prior.last().map_or(0, |f| f.id);
    match decide(&prior, canceled, &t.pool_id) {
        Decision::Ended { end, tokens } => {
            // a failed leader stored the end but may not have recorded it
            let s = ended(status, &end, tokens);
            metrics::taken(&t.pool_id, "settled");
            Ok(Next::Settle(Box::new((qt, Some((id, s))))))
        }
        Decision::End { ending, outcome } => {
            let tokens = match &ending {
                Ending::Canceled { tokens_out, .. } => *tokens_out,
                _ => prior.iter().filter(|f| f.kind == EventKind::Token).count() as u32,
            };
            let (kind, data) = orch_services::home::ending_frame(&ending);
            let frame = Frame {
                id: base + 1,
                kind,
                data,
            };
            if !store(&mut writer, &[frame], &t.pool_id, id).await {
                return Err(qt);
            }
            metrics::taken(&t.pool_id, outcome);
            let s = ended(status, &ending.frame(), tokens);
            Ok(Next::Settle(Box::new((qt, Some((id, s))))))
        }
        decision @ (Decision::Run { .. } | Decision::Continue(_)) => {
            let (again, resumed) = match decision {
                Decision::Continue(r) => (true, Some(r)),
                Decision::Run { again } => (again, None),
                _ => (false, None),
            };
            let outcome = match (&resumed, again) {
                (Some(_), _) => "continue",
                (None, true) => "rerun",
                (None, false) => "run",
            };
            metrics::taken(&t.pool_id, outcome);
            let mut task = t.into_new_task();
            if again {
                // it left the queue once already: its queue-wait limit starts again
                task.waited = std::time::Duration::ZERO;
            }
            task.resumed = resumed;
            let rec = node.pools.run(task).await;
            Ok(Next::Run(Box::new(Taken {
                qt,
                rec,
                writer,
                base,
                status,
            })))
        }
    }
}

/// A stored frame's terminal event (one another instance stored).
fn parse_terminal(f: &Frame) -> Option<StreamEvent> {
    match f.kind {
        EventKind::End => serde_json::from_str(&f.data).ok().map(StreamEvent::End),
        EventKind::Error => serde_json::from_str(&f.data).ok().map(StreamEvent::Error),
        EventKind::Started | EventKind::Token | EventKind::Metrics => None,
    }
}

/// The status of a task that ended with `end` after `tokens` tokens.
fn ended(queued: ClusterStatus, end: &StreamEvent, tokens: u32) -> ClusterStatus {
    let mut s = queued;
    s.tokens_out = tokens;
    match end {
        StreamEvent::End(e) => {
            s.state = e.state();
            s.finish_reason = Some(e.finish_reason);
        }
        StreamEvent::Error(e) => {
            s.state = TaskState::Failed;
            s.error_code = Some(e.code.as_str().to_string());
        }
        StreamEvent::Started(_) | StreamEvent::Token(_) | StreamEvent::Metrics(_) => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, kind: EventKind, data: &str) -> Frame {
        Frame {
            id,
            kind,
            data: data.into(),
        }
    }

    fn started() -> Frame {
        frame(1, EventKind::Started, "{}")
    }

    fn token(id: u64) -> Frame {
        frame(id, EventKind::Token, r#"{"t":"x","i":0}"#)
    }

    #[test]
    fn tokens_streamed_with_their_ids_are_continued_from_where_they_stopped() {
        let started = frame(
            1,
            EventKind::Started,
            r#"{"queue_position":0,"predicted_start_ms":0,"engine":"mock","engine_version":"1","model":"m","pool_id":"p","replica_id":"a:p-r0","sampler_profile_version":"v1","seed":1}"#,
        );
        let moved = frame(
            3,
            EventKind::Metrics,
            r#"{"queue_depth":0,"migrated":{"from_replica":"a:p-r0","to_replica":"b:p-r1","reason":"WORKER_RESET","at_token":1,"count":1}}"#,
        );
        let prior = [
            started.clone(),
            frame(2, EventKind::Token, r#"{"t":" a","i":0,"ids":[5]}"#),
            moved,
            frame(4, EventKind::Token, r#"{"t":"bc","i":1,"ids":[6,7]}"#),
        ];
        assert_eq!(
            decide(&prior, false, "p"),
            Decision::Continue(Resumed {
                ids: vec![5, 6, 7],
                text: " abc".into(),
                tokens: 2,
                moves: 1,
                from_replica: "b:p-r1".into(),
                model: "m".into(),
                engine_version: "1".into(),
            })
        );
        // one token without ids: nothing to continue from
        let prior = [
            started,
            frame(2, EventKind::Token, r#"{"t":" a","i":0,"ids":[5]}"#),
            token(3),
        ];
        assert!(matches!(
            decide(&prior, false, "p"),
            Decision::End {
                outcome: "worker_reset",
                ..
            }
        ));
    }

    #[test]
    fn a_stored_end_is_only_recorded() {
        let end = r#"{"tokens_in":1,"tokens_out":1,"decode_time_ms":1,"ttft_ms":1,"finish_reason":"stop"}"#;
        let prior = [started(), token(2), frame(3, EventKind::End, end)];
        match decide(&prior, true, "p") {
            Decision::Ended { tokens, end } => {
                assert_eq!(tokens, 1);
                assert_eq!(ended(status(), &end, tokens).state, TaskState::Completed);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cancel_ends_it_canceled_before_anything_else() {
        let prior = [started(), token(2), token(3)];
        match decide(&prior, true, "p") {
            Decision::End {
                ending: Ending::Canceled { tokens_out, .. },
                outcome,
            } => assert_eq!((tokens_out, outcome), (2, "canceled")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_task_that_streamed_ends_with_worker_reset_and_one_that_did_not_runs_again() {
        let prior = [started(), token(2)];
        match decide(&prior, false, "p") {
            Decision::End {
                ending: Ending::Failed(e),
                outcome,
            } => {
                assert_eq!(e.code, ErrorCode::WorkerReset);
                assert!(e.retriable);
                assert_eq!(outcome, "worker_reset");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&[started()], false, "p"),
            Decision::Run { again: true }
        );
        assert_eq!(decide(&[], false, "p"), Decision::Run { again: false });
    }

    fn status() -> ClusterStatus {
        ClusterStatus {
            tenant: "t".into(),
            pool_id: "p".into(),
            priority: orch_domain::Priority::Batch,
            state: TaskState::Queued,
            replica_id: None,
            tokens_out: 0,
            finish_reason: None,
            error_code: None,
        }
    }
}
