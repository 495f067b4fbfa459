//! Logging (JSON lines or pretty) and the Prometheus recorder.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use orch_api::MetricsRender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A gauge not set for this long drops out of the exposition.
const GAUGE_IDLE: Duration = Duration::from_secs(15);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets for every latency histogram, in milliseconds.
const BUCKETS_MS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
    5000.0, 10000.0, 30000.0,
];

/// Install the process-wide Prometheus recorder (once) and return its renderer.
/// Must be called inside a tokio runtime (it starts the upkeep task).
pub fn metrics() -> Option<MetricsRender> {
    let handle = HANDLE
        .get_or_init(|| {
            let h = PrometheusBuilder::new()
                .set_buckets(BUCKETS_MS)
                .ok()?
                // gauges are republished every sweep interval; one nobody refreshes
                // (a removed pool, a replaced engine version) leaves /metrics
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .install_recorder()
                .ok()?;
            orch_services::metrics::describe();
            // handles taken before this recorder existed record nowhere
            orch_services::metrics::forget_cached_handles();
            let up = h.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    up.run_upkeep();
                }
            });
            Some(h)
        })
        .clone()?;
    Some(Arc::new(move || handle.render()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The message of the startup self-test's log line (see `selftest::log_probe`).
pub const PROBE_MESSAGE: &str = "orchestratord log probe";

/// The last log line written that carries [`PROBE_MESSAGE`], as written.
static PROBE_LINE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The last probe line the log wrote, if any.
pub fn last_probe_line() -> Option<String> {
    PROBE_LINE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Standard error, keeping a copy of the probe line (each event is one write).
struct Tee;

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(s) = std::str::from_utf8(buf) {
            if s.contains(PROBE_MESSAGE) {
                *PROBE_LINE.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.to_string());
            }
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Tee);
    let _ = match format {
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => b.try_init(),
    };
}
