//! `orchestratord --config PATH [--addr HOST:PORT] [--log-format json|pretty]`
//! `orchestratord keys new --tenant NAME --role client|admin`
//! `orchestratord check-config PATH`

use clap::{Parser, Subcommand};
use orchestratord::telemetry::{self, LogFormat};
use orchestratord::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc, purging on its own background thread. glibc malloc and its arena lock took
/// about a third of admission's CPU; with jemalloc admission is 1.5x, with the latency
/// tail and the memory of 10,000 idle streams unchanged. Purging inline (jemalloc's
/// default) put up to +1.4 ms on the latency benchmark's p99, so it runs on jemalloc's
/// thread instead (BENCHMARKS.md, issue 28 item 3).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "orchestratord",
    version,
    about = "LLM inference orchestrator (OrchQueue v1)"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file with [server], [auth], [tenants] and [[pools]].
    #[arg(long, env = "ORCH_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides server.addr).
    #[arg(long, env = "ORCH_ADDR")]
    addr: Option<String>,
    #[arg(long, value_enum, default_value = "json", env = "ORCH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Skip the startup self-tests (development only; /readyz still needs a ready pool).
    #[arg(long)]
    skip_self_test: bool,
    /// Cluster mode: comma-separated nats:// URLs (sets or overrides `[cluster] urls`;
    /// needs a build with the `cluster` feature).
    #[arg(long, env = "ORCH_CLUSTER")]
    cluster: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file and name every problem by its place in the file (exit 0/1).
    CheckConfig { path: PathBuf },
    /// API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Print a fresh random key (once) and the entry that accepts it.
    New {
        /// Tenant the key acts for ([A-Za-z0-9._-], 1..=64 chars).
        #[arg(long)]
        tenant: String,
        /// `client` (data plane) or `admin` (everything, including the control plane).
        #[arg(long)]
        role: String,
    },
}

fn keys_new(tenant: &str, role: &str) -> ExitCode {
    use orch_services::auth;
    if !auth::valid_tenant(tenant) {
        eprintln!("orchestratord: tenant {tenant:?} must be 1..=64 chars of [A-Za-z0-9._-]");
        return ExitCode::from(2);
    }
    if orch_services::Role::parse(role).is_none() {
        eprintln!("orchestratord: role {role:?} must be \"client\" or \"admin\"");
        return ExitCode::from(2);
    }
    let key = match auth::new_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("orchestratord: no randomness from the OS: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("# API key for tenant {tenant} ({role}); shown once, only its digest is stored:");
    println!("{key}");
    println!("# add this to the config (or as [[keys]] to the keys file):");
    println!("[[auth.keys]]");
    println!("sha256 = \"{}\"", auth::digest_hex(&key));
    println!("tenant = \"{tenant}\"");
    println!("role = \"{role}\"");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::CheckConfig { path }) = &args.command {
        let checked = Config::check_file(path).and_then(|cfg| {
            // the address rules the server applies before it binds
            match (cfg.server.addr.parse(), cfg.key_ring()) {
                (Ok(sock), Ok(ring)) => orchestratord::settings::check_open_address(&ring, sock)
                    .map(|()| cfg)
                    .map_err(|e| vec![format!("server.addr: {e}")]),
                _ => Ok(cfg),
            }
        });
        return match checked {
            Ok(cfg) => {
                let keys = cfg.key_ring().map(|r| r.len()).unwrap_or(0);
                println!(
                    "{}: ok ({} pools, {} keys, {} tenants)",
                    path.display(),
                    cfg.pools.len(),
                    keys,
                    cfg.tenants.len()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    println!("{}: {p}", path.display());
                }
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Keys {
        action: KeysAction::New { tenant, role },
    }) = &args.command
    {
        return keys_new(tenant, role);
    }
    let Some(config) = &args.config else {
        eprintln!("orchestratord: --config PATH (or ORCH_CONFIG) is required");
        return ExitCode::from(2);
    };
    telemetry::init_logging(args.log_format);
    let cfg = match Config::load(config).and_then(|c| c.with_cluster_flag(args.cluster.as_deref()))
    {
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
    // refuse an open server off loopback before binding anything
    if let (Ok(sock), Ok(ring)) = (addr.parse::<std::net::SocketAddr>(), cfg.key_ring()) {
        if let Err(e) = orchestratord::settings::check_open_address(&ring, sock) {
            eprintln!("orchestratord: {e}");
            return ExitCode::from(2);
        }
    }
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("orchestratord: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // install the signal handlers before anyone can learn we are up (an unhandled
    // SIGHUP would terminate the process)
    let stop = shutdown_signal();
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let opts = orchestratord::StartOptions { skip_self_test };
    let server = match orchestratord::start_with(cfg, listener, telemetry::metrics(), opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orchestratord: startup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    // GPU gauges where NVML sees a device; otherwise one line says why not
    orchestratord::gpu::start();
    #[cfg(unix)]
    if let Ok(mut hup) = hup {
        let r = server.reconfig.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                orchestratord::notify::notify("RELOADING=1");
                match r.reload().await {
                    Ok(report) => tracing::info!(%report, "SIGHUP: configuration applied"),
                    Err(problems) => tracing::error!(
                        ?problems,
                        "SIGHUP: config refused; the running configuration stays"
                    ),
                }
                orchestratord::notify::notify("READY=1");
            }
        });
    }
    eprintln!("orchestratord: listening on http://{}", server.addr);
    orchestratord::notify::notify(&format!(
        "READY=1\nSTATUS=serving on {}\nMAINPID={}",
        server.addr,
        std::process::id()
    ));
    stop.await;
    orchestratord::notify::notify("STOPPING=1");
    tracing::info!("signal received: draining");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called (the
/// future is created), so a signal sent right after startup is announced is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                (Ok(mut t), Err(_)) => {
                    t.recv().await;
                }
                (Err(_), Ok(mut i)) => {
                    i.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
