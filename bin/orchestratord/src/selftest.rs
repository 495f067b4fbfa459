//! Startup self-tests (plan stage 14): that the log works (a probe line is written
//! and read back: JSON that parses, with the probe's value), then per pool, through
//! the services' public facade (the real admission and dispatch path, as an embedder
//! calls it): health, a one-token decode, a cancel that frees the slot, and a check
//! that the token metrics moved. Any failure names the pool and the step; a step that
//! cannot run says so in the log.

use adapter_api::sum_samples;
use orch_domain::{EventKind, Placement, Priority, TaskRequest};
use orch_services::{Caller, Orchestrator, PoolHandle, ReadItem};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Renders the metrics exposition (to check that counters moved).
pub type MetricsProbe = Arc<dyn Fn() -> String + Send + Sync>;

/// Tokens the pool's engines report having generated (sum over serving replicas),
/// from their own metrics; `None` when no replica exports them.
async fn engine_tokens(pool: &PoolHandle) -> Option<f64> {
    let adapters: Vec<_> = pool
        .snapshot()
        .replicas
        .iter()
        .filter(|r| r.serving)
        .map(|r| r.adapter.clone())
        .collect();
    let mut total = None;
    for a in adapters {
        if let Ok(Some(n)) = a.tokens_generated_total().await {
            *total.get_or_insert(0.0) += n;
        }
    }
    total
}

/// Sum of `tokens_out_total` samples of one pool in a Prometheus text exposition.
pub fn tokens_out_of(text: &str, pool_id: &str) -> f64 {
    let needle = format!("pool_id=\"{pool_id}\"");
    sum_samples(text, |series| {
        series.starts_with("tokens_out_total{") && series.contains(&needle)
    })
}

fn request(model: &str, pool_id: &str, prompt: &str, max_tokens: u32) -> TaskRequest {
    let mut r = TaskRequest::completion(model, prompt, max_tokens, Priority::Interactive);
    r.placement = Some(Placement {
        pin_pool_id: Some(pool_id.to_string()),
        ..Placement::default()
    });
    r.temperature = Some(0.0);
    r
}

/// Write a probe line to the log and read it back as the log wrote it: JSON that
/// parses with the probe's value (or, in the pretty format, a line with it). Skipped,
/// with a warning, where info lines are filtered out or no logger is installed.
pub fn log_probe() -> Result<(), String> {
    let fail = |why: String| format!("self-test failed at step 'logs': {why}");
    if !tracing::enabled!(tracing::Level::INFO) {
        tracing::warn!(
            step = "logs",
            "self-test step skipped: info lines are filtered out"
        );
        return Ok(());
    }
    let nonce = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    tracing::info!(probe = %nonce, "orchestratord log probe");
    let Some(line) = crate::telemetry::last_probe_line() else {
        return Err(fail("the probe line was not written".into()));
    };
    let line = line.trim();
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| fail(format!("the log line is not JSON ({e}): {line}")))?;
        if v["probe"].as_str() != Some(nonce.as_str()) {
            return Err(fail(format!(
                "the log line lacks the probe's value: {line}"
            )));
        }
    } else if !line.contains(&nonce) {
        return Err(fail(format!(
            "the log line lacks the probe's value: {line}"
        )));
    }
    Ok(())
}

/// Read frames until the terminal one; returns (frame kinds, terminal data).
async fn run_to_end(
    orch: &Orchestrator,
    id: orch_domain::TaskId,
    limit: Duration,
) -> Result<(Vec<EventKind>, String), String> {
    let mut reader = orch
        .open_stream(&Caller::open(), id, 0)
        .await
        .map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.next(Duration::from_secs(1))).await {
            Err(_) => return Err(format!("no terminal frame within {limit:?}")),
            Ok(None) => return Err("stream ended without a terminal frame".into()),
            Ok(Some(ReadItem::KeepAlive)) => {}
            Ok(Some(ReadItem::Frames(fs))) => {
                for f in fs {
                    names.push(f.kind);
                    if f.is_terminal() {
                        return Ok((names, f.data.clone()));
                    }
                }
            }
        }
    }
}

/// Run the self-tests of one pool.
pub async fn self_test_pool(
    orch: &Orchestrator,
    pool_id: &str,
    probe: Option<&MetricsProbe>,
) -> Result<(), String> {
    let fail = |step: &str, why: String| {
        format!("self-test of pool {pool_id} failed at step '{step}': {why}")
    };
    let pool = orch
        .registry()
        .get(pool_id)
        .ok_or_else(|| fail("health", "unknown pool".into()))?;
    let (model, long) = {
        let s = pool.snapshot();
        if !s.ready {
            return Err(fail("health", "no ready replica".into()));
        }
        (s.spec.model.clone(), s.spec.max_tokens_out.min(64))
    };
    let before = probe.map(|p| tokens_out_of(&p(), pool_id));
    let engine_before = engine_tokens(&pool).await;

    // one-token decode
    let adm = orch
        .admit(
            &Caller::open(),
            request(&model, pool_id, "Hello", 1),
            "self-test",
        )
        .await
        .map_err(|e| fail("decode", e.to_string()))?;
    let (names, data) = run_to_end(orch, adm.task_id, Duration::from_secs(60))
        .await
        .map_err(|e| fail("decode", e))?;
    if names.last() != Some(&EventKind::End) || !names.contains(&EventKind::Token) {
        return Err(fail(
            "decode",
            format!("expected started, token, end; got {names:?} {data}"),
        ));
    }

    // cancel frees the slot
    let adm = orch
        .admit(
            &Caller::open(),
            request(
                &model,
                pool_id,
                "Count slowly from one to one hundred:",
                long,
            ),
            "self-test",
        )
        .await
        .map_err(|e| fail("cancel", e.to_string()))?;
    let mut reader = orch
        .open_stream(&Caller::open(), adm.task_id, 0)
        .await
        .map_err(|e| fail("cancel", e.to_string()))?;
    let t0 = Instant::now();
    let mut ended_first = None;
    while ended_first.is_none() {
        match tokio::time::timeout(Duration::from_secs(60), reader.next(Duration::from_secs(1)))
            .await
        {
            Ok(Some(ReadItem::Frames(fs))) => {
                if let Some(t) = fs.iter().find(|f| f.is_terminal()) {
                    ended_first = Some(t.data.clone());
                } else if fs.iter().any(|f| f.kind == EventKind::Token) {
                    break;
                }
            }
            Ok(Some(_)) if t0.elapsed() < Duration::from_secs(60) => {}
            _ => return Err(fail("cancel", "no first token".into())),
        }
    }
    drop(reader);
    orch.cancel(&Caller::open(), adm.task_id)
        .await
        .map_err(|e| fail("cancel", e.to_string()))?;
    let (names, data) = run_to_end(orch, adm.task_id, Duration::from_secs(10))
        .await
        .map_err(|e| fail("cancel", e))?;
    match ended_first {
        // an engine faster than the cancel: nothing to stop, the slot check still runs
        Some(d) if names.last() == Some(&EventKind::End) => {
            tracing::warn!(
                pool_id,
                "self-test task finished before its cancel landed: {d}"
            )
        }
        _ if names.last() != Some(&EventKind::End) || !data.contains("\"canceled\"") => {
            return Err(fail("cancel", format!("expected end canceled, got {data}")));
        }
        _ => {}
    }
    if !pool
        .wait_for(Duration::from_secs(5), |s| s.busy_total == 0)
        .await
    {
        return Err(fail("cancel", "slot still busy 5 s after cancel".into()));
    }

    // metrics moved (a step that cannot run says so: it never passes silently)
    match (probe, before) {
        (Some(p), Some(before)) => {
            let after = tokens_out_of(&p(), pool_id);
            if after <= before {
                return Err(fail(
                    "metrics",
                    format!("tokens_out_total did not rise ({before} -> {after})"),
                ));
            }
        }
        _ => tracing::warn!(
            pool_id,
            step = "metrics",
            "self-test step skipped: this server records no metrics, so none can be checked"
        ),
    }
    // and the engine's own counter, where it exports metrics
    match (engine_before, engine_tokens(&pool).await) {
        (Some(before), Some(after)) if after <= before => {
            return Err(fail(
                "metrics",
                format!(
                    "the engine's own generated-token counter did not rise ({before} -> {after})"
                ),
            ));
        }
        (Some(_), Some(_)) => {}
        _ => tracing::info!(
            pool_id,
            step = "metrics",
            "the pool's engines export no generated-token counter: only orchestratord's own was checked"
        ),
    }
    tracing::info!(pool_id, "self-test passed");
    Ok(())
}
