//! Admission: validate a task against the spec, choose its pool (from published pool
//! snapshots, no lock), reserve its tenant's quotas and its session's budget (atomic,
//! so concurrent admissions cannot overrun either), register it in the task table
//! (409 on a known id), and hand it to the pool's actor, which decides its place in
//! the fair queue, position, ETA, deadline feasibility and the queue's full-policy.
//! Whatever was reserved is given back by the task's settlement when it ends.
//! The last step hands the task to its home (`crate::home`): this instance's pool,
//! or a backend that stores it where the pool's leader runs it.

use crate::accounts::{calendar, BudgetLimits, UsageKey};
use crate::auth::Caller;
use crate::core::Core;
use crate::home::Admitted;
use crate::local::{flow_of, new_record};
use crate::pool::{unready, Pinned, PoolHandle, Snapshot};
use crate::sessions::Refusal;
use crate::table::Lookup;
use crate::task::Settled;
use orch_domain::accounts::UsageCounts;
use orch_domain::{
    AdmissionResponse, ErrorCode, OrchError, PolicyLabel, TaskId, TaskRequest, TaskState,
};
use std::sync::Arc;

/// Admit a task for `caller`'s tenant: 202 data on success, a typed error otherwise.
/// Every refusal is counted once here in `tasks_rejected_total`, by reason.
pub(crate) async fn admit(
    core: &Core,
    caller: &Caller,
    req: TaskRequest,
    correlation_id: &str,
) -> Result<AdmissionResponse, OrchError> {
    let mut pinned = None;
    let r = admit_in(core, caller, req, correlation_id, &mut pinned).await;
    if let Err(e) = &r {
        let engine = pinned
            .as_deref()
            .map_or("none", |p: &Pinned| p.engine.as_str());
        crate::metrics::rejected_code(engine, e.code);
    }
    r
}

async fn admit_in(
    core: &Core,
    caller: &Caller,
    mut req: TaskRequest,
    correlation_id: &str,
    pinned: &mut Option<Arc<Pinned>>,
) -> Result<AdmissionResponse, OrchError> {
    req.validate()?;
    if !caller.may_use_priority(req.priority) {
        return Err(OrchError::new(
            ErrorCode::Forbidden,
            format!("this key may not submit priority {}", req.priority.as_str()),
        ));
    }
    if !core.is_accepting() {
        return Err(
            OrchError::new(ErrorCode::PoolUnready, "server is shutting down")
                .with_retry_after_ms(1000),
        );
    }
    if let Some(key) = &req.idempotency_key {
        let id = idempotent_id(&caller.tenant, key);
        if let Some(known) = already_admitted(core, id, &caller.tenant).await? {
            tracing::debug!(task_id = %id, tenant = %caller.tenant, correlation_id,
                "repeated submission (same Idempotency-Key): the task admitted before");
            return Ok(known);
        }
        req.task_id = Some(id);
    }
    let pool = select_pool(core, &req, caller)?;
    let snap = pool.snapshot();
    pinned.clone_from(&snap.pinned);
    // over the context by the estimate: the engine's own count decides
    match crate::pool::count_prompt(&snap, &req, &core.counting).await {
        crate::pool::Count::Counted(c) => {
            req.prompt_tokens = Some(c.n);
            req.prompt_ids = c.ids;
        }
        crate::pool::Count::AtLeast(n) => req.prompt_tokens = Some(n),
        crate::pool::Count::Estimate => {}
    }
    // refuse what the pool would refuse before anything is reserved (the pool checks
    // again when it queues the task; a home that stores it elsewhere relies on this)
    crate::pool::check_fits_snapshot(&snap, &req)?;
    let engine = snap.pinned.as_ref().map_or("none", |p| p.engine.as_str());
    let tenant = core.tenants.get(&caller.tenant);
    let prompt_estimate = u64::from(crate::pool::prompt_tokens(&req));
    let kv_need = prompt_estimate + u64::from(req.max_tokens);
    tenant
        .kv_fits_at_all(kv_need, req.max_tokens)
        .inspect_err(|e| refused(engine, e))?;
    let (mut reservation, lease) = tenant
        .reserve(req.max_tokens, snap.retry_after_ms)
        .inspect_err(|e| refused(engine, e))?;
    let kv = tenant
        .hold_kv(kv_need, snap.retry_after_ms)
        .inspect_err(|e| refused(engine, e))?;
    let accounts = core.accounts().cloned();
    let budget = match &accounts {
        Some(a) => {
            let q = tenant.quotas();
            let limits = BudgetLimits {
                tokens_per_day: q.tokens_per_day,
                tokens_per_month: q.tokens_per_month,
            };
            Some(
                a.budgets()
                    .hold(&tenant.name, limits, kv_need)
                    .map_err(|e| e.with_pool(&*pool.id))
                    .inspect_err(|e| refused(engine, e))?,
            )
        }
        None => None,
    };
    let session = match req.session_id {
        Some(sid) => {
            let want = u64::from(req.max_tokens);
            match core.sessions.reserve(&tenant.name, sid, want) {
                Ok(()) => Some((sid, want)),
                Err(Refusal { left }) => {
                    let e = OrchError::new(
                        ErrorCode::QuotaExceeded,
                        format!("session {sid} has {left} tokens left of its budget; this turn reserves {want}"),
                    )
                    .with_policy(PolicyLabel::QuotaSessionBudget)
                    .with_retry_after_ms(snap.retry_after_ms)
                    .with_pool(&*pool.id);
                    refused(engine, &e);
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let id = req.task_id.unwrap_or_else(TaskId::new_random);
    let priority = req.priority;
    let model_ref = req.model_ref.clone();
    let deadline_ms = req.deadline_ms;
    let flow = flow_of(&tenant, &req);
    let rec = new_record(
        (id, std::time::Duration::ZERO),
        &tenant,
        (&pool.id, Some(&snap)),
        correlation_id,
        priority,
        Some(req),
        Some(core.table.end_hook()),
    );
    let sessions = core.sessions.clone();
    let owner = tenant.name.clone();
    let ledger = accounts.map(|a| {
        let key = UsageKey {
            hour_ms: 0,
            tenant: tenant.name.clone(),
            key: caller
                .key_fingerprint
                .clone()
                .unwrap_or_else(|| Arc::from("-")),
            pool: pool.id.clone(),
            model: Arc::from(model_ref.as_str()),
        };
        (a, key)
    });
    rec.set_settlement(Box::new(move |s: Settled| {
        // the task's KV is given back as it ends
        drop(kv);
        reservation.used(u64::from(s.tokens_out));
        if let Some((sid, reserved)) = session {
            sessions.settle(
                &owner,
                sid,
                reserved,
                u64::from(s.tokens_in) + u64::from(s.tokens_out),
            );
        }
        if let (true, Some((accounts, mut key))) = (s.admitted, ledger) {
            // a task that reached an engine and ended without its count (canceled,
            // failed) still had its prompt read: counted by the estimate
            let tokens_in = if s.tokens_in == 0 && s.started {
                prompt_estimate
            } else {
                u64::from(s.tokens_in)
            };
            if let Some(b) = budget {
                b.settle(tokens_in + u64::from(s.tokens_out));
            }
            key.hour_ms = calendar::hour_start(calendar::now_ms());
            accounts.record(key, usage_of(&s, tokens_in));
        }
        if s.admitted {
            let name = reservation.tenant().name.clone();
            crate::metrics::served(&name, priority.as_str(), u64::from(s.tokens_out));
            if let Some(d) = deadline_ms {
                let met = s.state == TaskState::Completed && s.elapsed_ms <= d;
                crate::metrics::deadline_outcome(priority.as_str(), met);
            }
        }
        drop(reservation);
    }));
    if let Err(e) = core.table.insert(rec.clone()) {
        rec.refuse(e.clone());
        return Err(e);
    }
    let Some(request) = rec.request() else {
        core.table.remove_unadmitted(&rec);
        return Err(OrchError::internal("admitted task lost its request"));
    };
    let placed = core
        .home()
        .place(Admitted {
            rec: rec.clone(),
            request,
            pool: pool.clone(),
            flow,
            lease,
        })
        .await;
    let placed = match placed {
        Ok(p) => p,
        Err(e) => {
            // a reader that attached meanwhile sees the refusal and ends
            rec.refuse(e.clone());
            core.table.remove_unadmitted(&rec);
            return Err(e);
        }
    };
    tracing::info!(task_id = %id, tenant = %tenant.name, session_id = session.map(|s| tracing::field::display(s.0)),
        engine, pool_id = %pool.id, priority = priority.as_str(), queue_position = placed.queue_position,
        predicted_start_ms = placed.predicted_start_ms, correlation_id, "task admitted");
    Ok(AdmissionResponse::accepted(
        id,
        placed.queue_position,
        placed.predicted_start_ms,
    ))
}

/// A task's counts in the usage ledger.
fn usage_of(s: &Settled, tokens_in: u64) -> UsageCounts {
    let mut c = UsageCounts {
        tasks: 1,
        tokens_in,
        tokens_out: u64::from(s.tokens_out),
        tokens_cached: u64::from(s.tokens_cached),
        canceled: u64::from(s.state == TaskState::Canceled),
        ..UsageCounts::default()
    };
    if let Some(code) = s.error {
        c.errors.insert(code.as_str().to_string(), 1);
    }
    c
}

/// The task id of a submission with an `Idempotency-Key`: the same for the same tenant
/// and key, different across tenants (a version-8 UUID from SHA-256).
fn idempotent_id(tenant: &str, key: &str) -> TaskId {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"orchestratord idempotency v1\0");
    h.update(tenant.as_bytes());
    h.update(b"\0");
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    TaskId(uuid::Uuid::from_bytes(b))
}

/// The 202 of a task `tenant` admitted before under the same id (live, finished or
/// summarized here, or known to the task home), if any. Nothing is reserved again.
/// The id is derived from the tenant and no one may name a derived id, so a task of
/// another tenant under it is a broken invariant: it is never handed out.
async fn already_admitted(
    core: &Core,
    id: TaskId,
    tenant: &str,
) -> Result<Option<AdmissionResponse>, OrchError> {
    let (owner, queue_position, predicted_start_ms): (Arc<str>, u32, u64) = match core.table.get(id)
    {
        Some(Lookup::Record(r)) if r.state() == TaskState::Queued => {
            let (p, e) = r.estimate();
            (r.tenant.clone(), p, e)
        }
        Some(Lookup::Record(r)) => (r.tenant.clone(), 0, 0),
        Some(Lookup::Expired(s)) => (s.tenant.clone(), 0, 0),
        None => match core.home().find(id).await? {
            Some(st) => (st.tenant.as_str().into(), 0, 0),
            None => return Ok(None),
        },
    };
    if *owner != *tenant {
        tracing::error!(task_id = %id, tenant, owner = %owner,
            "an Idempotency-Key id names another tenant's task; refused");
        return Err(OrchError::internal("task id derivation conflict"));
    }
    Ok(Some(AdmissionResponse::accepted(
        id,
        queue_position,
        predicted_start_ms,
    )))
}

/// See [`crate::orchestrator::Orchestrator::output_limit`].
pub(crate) fn output_limit(core: &Core, model: &str, prompt: &str) -> Option<u32> {
    let prompt_tokens = crate::pool::estimate_prompt_tokens(prompt);
    let mut best: Option<(bool, u32)> = None;
    for p in core.pools.all() {
        let s = p.snapshot();
        let serves =
            s.spec.model == model || s.pinned.as_ref().is_some_and(|x| x.model_digest == model);
        let Some(pin) = s.pinned.as_ref().filter(|_| serves) else {
            continue;
        };
        let fits = pin
            .ctx_max
            .saturating_sub(prompt_tokens)
            .min(s.spec.max_tokens_out)
            .max(1);
        if best.is_none_or(|(ready, _)| s.ready && !ready) {
            best = Some((s.ready, fits));
        }
    }
    best.map(|(_, n)| n)
}

/// Count a refusal by quota as a backpressure event (the rejection is counted by
/// [`admit`]).
fn refused(engine: &str, e: &OrchError) {
    if e.code == ErrorCode::QuotaExceeded {
        if let Some(p) = e.policy_label {
            crate::metrics::backpressure(engine, p.as_str());
        }
    }
}

/// Does this pool serve the request's model (catalog name or digest)?
fn serves_model(s: &Snapshot, req: &TaskRequest) -> bool {
    s.spec.model == req.model_ref
        || s.pinned
            .as_ref()
            .is_some_and(|p| p.model_digest == req.model_ref)
}

/// Does this pool serve the request's model and engine? (Not probed yet: the
/// configured name decides.)
fn serves(s: &Snapshot, req: &TaskRequest) -> bool {
    let engine_ok = match &s.pinned {
        Some(p) => req.engine.is_none_or(|e| e.as_str() == p.engine),
        None => true,
    };
    serves_model(s, req) && engine_ok
}

/// Choose the pool for a request: placement pins and filters, model and engine match,
/// readiness, then the least loaded.
fn select_pool(core: &Core, req: &TaskRequest, caller: &Caller) -> Result<PoolHandle, OrchError> {
    let all = core.pools.all();
    // a key limited to some pools sees only those; it is refused (403) when only pools
    // it may not use serve the request
    let pools: Vec<PoolHandle> = all
        .iter()
        .filter(|p| caller.may_use_pool(&p.id))
        .cloned()
        .collect();
    let not_allowed =
        |what: String| OrchError::new(ErrorCode::Forbidden, format!("this key may not use {what}"));
    let placement = req.placement.clone().unwrap_or_default();
    if let Some(pin) = &placement.pin_pool_id {
        if !caller.may_use_pool(pin) && all.iter().any(|p| &*p.id == pin) {
            return Err(not_allowed(format!("pool {pin}")));
        }
        let pool = pools.iter().find(|p| &*p.id == pin).ok_or_else(|| {
            OrchError::invalid("placement.pin_pool_id", format!("unknown pool {pin}"))
        })?;
        let s = pool.snapshot();
        if !serves(&s, req) {
            return Err(OrchError::invalid(
                "placement.pin_pool_id",
                format!(
                    "pool {pin} does not serve model {} / this engine",
                    req.model_ref
                ),
            ));
        }
        if !s.ready {
            return Err(unready(pin));
        }
        return Ok(pool.clone());
    }
    let mut matching: Vec<(&PoolHandle, bool, f64, usize)> = Vec::new();
    for p in pools
        .iter()
        .filter(|p| !placement.avoid_pools.iter().any(|a| **a == *p.id))
    {
        let s = p.snapshot();
        if serves(&s, req) {
            let load = (f64::from(s.queue_depth) + f64::from(s.busy_total))
                / f64::from(s.slots_total.max(1));
            let pref = placement
                .prefer_pools
                .iter()
                .position(|x| **x == *p.id)
                .unwrap_or(usize::MAX);
            matching.push((p, s.ready, load, pref));
        }
    }
    if matching.is_empty() {
        // a model no pool is configured for is the client's mistake (400); a served
        // model without a pool of the requested engine may change (503)
        let model_known = pools.iter().any(|p| serves_model(&p.snapshot(), req));
        if !model_known && all.iter().any(|p| serves_model(&p.snapshot(), req)) {
            return Err(not_allowed(format!("the pools of model {}", req.model_ref)));
        }
        if !model_known {
            return Err(OrchError::invalid(
                "model_ref",
                format!("no pool serves model {}", req.model_ref),
            ));
        }
        if !placement.avoid_pools.is_empty() {
            let avoided_only = pools
                .iter()
                .filter(|p| placement.avoid_pools.iter().any(|a| **a == *p.id))
                .any(|p| serves(&p.snapshot(), req));
            if avoided_only {
                return Err(OrchError::invalid(
                    "placement.avoid_pools",
                    format!("avoids every pool that serves model {}", req.model_ref),
                ));
            }
        }
        let what = match req.engine {
            Some(e) => format!("model {} on engine {}", req.model_ref, e.as_str()),
            None => format!("model {}", req.model_ref),
        };
        return Err(
            OrchError::new(ErrorCode::PoolUnavailable, format!("no pool serves {what}"))
                .with_retry_after_ms(1000),
        );
    }
    let ready = matching
        .iter()
        .filter(|m| m.1)
        .min_by(|a, b| a.3.cmp(&b.3).then(a.2.total_cmp(&b.2)));
    match ready {
        Some(m) => Ok(m.0.clone()),
        None => Err(unready(&matching[0].0.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::idempotent_id;

    #[test]
    fn an_idempotency_key_gives_one_id_per_tenant() {
        let a = idempotent_id("acme", "order-42");
        assert_eq!(a, idempotent_id("acme", "order-42"));
        assert_ne!(a, idempotent_id("globex", "order-42"));
        assert_ne!(a, idempotent_id("acme", "order-43"));
        // the separator keeps ("ab","c") and ("a","bc") apart
        assert_ne!(idempotent_id("ab", "c"), idempotent_id("a", "bc"));
        assert_eq!(a.0.get_version_num(), 8);
    }
}
