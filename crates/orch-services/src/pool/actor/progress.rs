//! Progress of waiting tasks. On each tick (the pool's `metrics_frame_interval`) every
//! queued task gets a `metrics` frame with its queue position, predicted start and,
//! with a deadline, the probability of completing within it, from the pool's observed
//! service-time model. A queued task whose deadline can no longer be met (even if it
//! started now, its expected decode would outlast what is left) ends at once with
//! `DEADLINE_UNMET` instead of waiting for the deadline to pass.

use super::Actor;
use crate::lifecycle::Ending;
use orch_domain::{ErrorCode, MetricsFrame, OrchError, StreamEvent, TaskId};
use orchestrator_core::eta::{on_time_probability, predicted_start_ms, queue_position};
use tokio::time::Instant;

impl Actor {
    pub(super) fn progress(&mut self) {
        let Some(at) = self.next_progress else {
            return;
        };
        let now = Instant::now();
        if now < at {
            return;
        }
        if self.queued.is_empty() {
            self.next_progress = None;
            return;
        }
        self.next_progress = Some(now + self.st.spec.metrics_frame_interval);
        let free = self.st.free_slots();
        let slots = self.st.slots_total();
        let depth = self.st.queue.len() as u32;
        let (svc_mean, svc_sd) = (self.st.service.mean_ms(), self.st.service.sd_ms());
        let (tok_mean, tok_sd) = (self.st.per_token.mean_ms(), self.st.per_token.sd_ms());
        let mut doomed: Vec<(TaskId, String)> = Vec::new();
        for (id, q) in &self.queued {
            let ahead = self.st.queue.ahead_of(id).unwrap_or(0);
            let position = queue_position(ahead, free).max(1);
            let eta = predicted_start_ms(position, slots, svc_mean);
            let on_time = q.request.deadline_ms.map(|deadline| {
                let left = deadline as f64 - q.rec.admitted_at.elapsed().as_secs_f64() * 1e3;
                let tokens = f64::from(q.request.expected_tokens.unwrap_or(q.request.max_tokens));
                let decode = tok_mean * tokens;
                if left < decode {
                    doomed.push((
                        *id,
                        format!(
                            "deadline can no longer be met: {} ms left, decoding ~{tokens} tokens takes ~{} ms",
                            left.max(0.0).round(),
                            decode.round()
                        ),
                    ));
                }
                let waves = (f64::from(position) / f64::from(slots.max(1))).ceil();
                let sd = ((waves * svc_sd).powi(2) + (tok_sd * tokens).powi(2)).sqrt();
                on_time_probability(eta as f64 + decode, sd, left)
            });
            q.rec.set_estimate(position, eta);
            q.rec.emit(&StreamEvent::Metrics(MetricsFrame {
                queue_depth: depth,
                queue_position: Some(position),
                predicted_start_ms: Some(eta),
                on_time_probability: on_time,
                tokens_out: None,
                tokens_budget_remaining: None,
                kv_warmth: None,
                migrated: None,
            }));
        }
        for (id, why) in doomed {
            let Some(q) = self.queued.remove(&id) else {
                continue;
            };
            self.unqueue(&id);
            q.rec.end(Ending::Failed(
                OrchError::new(ErrorCode::DeadlineUnmet, why).with_pool(&*self.id),
            ));
            tracing::info!(task_id = %id, tenant = %q.rec.tenant, pool_id = %self.id,
                "queued task ended: deadline can no longer be met");
        }
        self.publish_depth();
    }
}
