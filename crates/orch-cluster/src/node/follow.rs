//! A record's follower: copies a task's stored frames into this instance's record of
//! it, in order, each once, until the terminal frame.
//!
//! It subscribes to the task's tail subject first, then reads what is stored after
//! the mirror's last frame, then takes the announced batches as they come. A batch
//! that does not continue the mirror (a missed announcement) sends it back to the
//! stored frames, and so does a quiet spell, so nothing is skipped and nothing is
//! shown before it is stored. While the cluster cannot answer, the stream pauses
//! (its readers get keep-alives) and the follower retries.
//!
//! Reads go to the nearest replica, which may lag (one that was down catches up for a
//! while). When an announcement shows frames that read did not have, or after a few
//! quiet spells without a new frame, the read goes to the stream's leader instead.

use crate::{Frame, FrameLog, ReadFrom};
use futures_util::StreamExt;
use orch_services::home::QueuedLease;
use orch_services::{Phase, TaskRecord};
use std::sync::Arc;
use std::time::Duration;

/// Read the stored frames again after this long without an announcement.
const QUIET: Duration = Duration::from_secs(2);
/// Wait this long before trying again when the cluster did not answer.
const RETRY: Duration = Duration::from_millis(250);
/// Quiet spells without a new frame after which the read goes to the leader.
const QUIET_TO_LEADER: u32 = 3;

pub(super) async fn follow(
    frames: FrameLog,
    mirror: Arc<TaskRecord>,
    mut lease: Option<QueuedLease>,
) {
    let task = mirror.id.to_string();
    let mut tail = loop {
        match frames.tail(&task).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(task_id = %task, error = %e, "tail subscription failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let mut catch_up = true;
    // the replica read lacked frames an announcement showed, or quiet spells in a row
    let (mut behind, mut quiet) = (false, 0);
    while !mirror.is_ended() {
        if catch_up {
            let from = if behind || quiet >= QUIET_TO_LEADER {
                ReadFrom::Leader
            } else {
                ReadFrom::Replica
            };
            let had = mirror.log.len();
            match frames.read_after_from(&task, had, from).await {
                Ok(stored) => {
                    apply(&mirror, &stored);
                    if mirror.log.len() > had {
                        quiet = 0;
                    }
                    if from == ReadFrom::Leader {
                        if behind && mirror.log.len() > had {
                            tracing::debug!(task_id = %task, frames = mirror.log.len() - had, "the nearest replica lagged; read from the stream's leader");
                        }
                        behind = false;
                        quiet = 0;
                    }
                }
                Err(e) => {
                    tracing::debug!(task_id = %task, error = %e, "stored frames unreadable; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if mirror.phase() != Phase::Queued {
            lease.take();
        }
        if mirror.is_ended() {
            break;
        }
        match tokio::time::timeout(QUIET, tail.next()).await {
            Ok(Some(batch)) => {
                // a batch past the mirror's next frame: what was read lacked frames
                behind = !apply(&mirror, &batch);
                catch_up = behind;
                quiet = 0;
            }
            Ok(None) => return,
            Err(_) => {
                catch_up = true;
                quiet += 1;
            }
        }
    }
    drop(lease);
}

/// Append the frames that continue the mirror (skipping ones it has). False when the
/// batch starts past the mirror's next frame (something was missed).
fn apply(mirror: &Arc<TaskRecord>, batch: &[Frame]) -> bool {
    for f in batch {
        let next = mirror.log.len() + 1;
        if f.id < next {
            continue;
        }
        if f.id > next {
            return false;
        }
        if !mirror.apply_stored(f.kind, &f.data) {
            return true;
        }
    }
    true
}
