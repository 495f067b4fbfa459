//! `orchestratord --config PATH [--addr HOST:PORT] [--log-format json|pretty]`

use clap::Parser;
use orchestratord::telemetry::{self, LogFormat};
use orchestratord::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "orchestratord",
    version,
    about = "LLM inference orchestrator (OrchQueue v1)"
)]
struct Args {
    /// TOML config file with [server] and [[pools]].
    #[arg(long, env = "ORCH_CONFIG")]
    config: PathBuf,
    /// Listen address (overrides server.addr).
    #[arg(long, env = "ORCH_ADDR")]
    addr: Option<String>,
    #[arg(long, value_enum, default_value = "json", env = "ORCH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Skip the startup self-tests (development only; /readyz still needs a ready pool).
    #[arg(long)]
    skip_self_test: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init_logging(args.log_format);
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orchestratord: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orchestratord: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cfg, args.addr, args.skip_self_test))
}

async fn run(cfg: Config, addr: Option<String>, skip_self_test: bool) -> ExitCode {
    let addr = addr.unwrap_or_else(|| cfg.server.addr.clone());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("orchestratord: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = orchestratord::StartOptions { skip_self_test };
    let server = match orchestratord::start_with(cfg, listener, telemetry::metrics(), opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orchestratord: startup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("orchestratord: listening on http://{}", server.addr);
    wait_for_signal().await;
    tracing::info!("signal received: draining");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
