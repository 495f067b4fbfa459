//! `orch`: OrchQueue v1 from the command line, on `orch-client`.
//!
//! ```text
//! orch submit --model gemma-3-270m --stream "Write a haiku"   # live queue position, then tokens
//! orch status ID | cancel ID | pools | drain POOL | reload POOL --model-ref M | capabilities
//! orch keys create --tenant acme --ttl-s 86400 | keys list | keys revoke FINGERPRINT
//! orch usage --from 2026-11-01 --to 2026-12-01 --group-by key [--csv]
//! ```
//! `ORCH_URL` (default `http://127.0.0.1:8080`) and `ORCH_API_KEY` configure the server
//! and key; `--json` prints the server's JSON. Exit codes by error class: 0 ok, 1
//! unexpected, 2 invalid request, 3 not authenticated or not allowed, 4 not found or
//! conflict, 5 backpressure or unavailable (retry later), 6 the task failed, 7 the
//! server cannot be reached.

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use orch_client::{Client, ClientError};
use orch_domain::control::ReloadRequest;
use orch_domain::{ErrorCode, Priority, SessionId, StreamEvent, TaskId, TaskRequest};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "orch",
    version,
    about = "Command line for orchestratord (OrchQueue v1)"
)]
struct Cli {
    /// Server base URL.
    #[arg(
        long,
        env = "ORCH_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key (sent as `Authorization: Bearer`).
    #[arg(long, env = "ORCH_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Submit a task; with --stream, follow it to its end.
    Submit {
        /// The prompt, or `-` to read it from stdin.
        prompt: String,
        #[arg(long, default_value = "gemma-3-270m")]
        model: String,
        #[arg(long, default_value = "interactive", value_parser = ["interactive", "batch"])]
        priority: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        #[arg(long)]
        temperature: Option<f64>,
        #[arg(long)]
        seed: Option<i64>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Show the queue position while waiting, then stream tokens to stdout.
        #[arg(long)]
        stream: bool,
    },
    /// A task's state.
    Status { id: String },
    /// Cancel a task (queued or running).
    Cancel { id: String },
    /// Pools and their replicas (admin).
    Pools,
    /// Stop dispatch on a pool; running tasks get until the deadline (admin).
    Drain {
        pool: String,
        #[arg(long, default_value_t = 30_000)]
        deadline_ms: u64,
    },
    /// Reload a pool onto a model (admin).
    Reload {
        pool: String,
        #[arg(long)]
        model_ref: String,
        #[arg(long)]
        sampler_profile_version: Option<String>,
    },
    /// What the server serves, and the caller's quotas.
    Capabilities,
    /// API keys made at runtime (admin).
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Tokens and tasks used, from the server's ledger (a client key: its own tenant).
    Usage {
        /// Start: RFC 3339 or a UTC date (default: this month's start).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = "tenant", value_parser = ["tenant", "key", "pool", "model", "hour"])]
        group_by: String,
        /// Only this tenant (admins).
        #[arg(long)]
        tenant: Option<String>,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Make a key for a tenant; the key is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "client", value_parser = ["client", "admin"])]
        role: String,
        #[arg(long)]
        label: Option<String>,
        /// When it stops working (RFC 3339).
        #[arg(long, conflicts_with = "ttl_s")]
        expires_at: Option<String>,
        /// Seconds until it stops working.
        #[arg(long)]
        ttl_s: Option<u64>,
        /// Only these pools (repeatable).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Only these priorities (repeatable).
        #[arg(long = "priority", value_parser = ["interactive", "batch"])]
        priorities: Vec<String>,
    },
    /// Every key (never the keys themselves).
    List,
    /// Revoke a key made through the API, at once.
    Revoke { fingerprint: String },
}

/// A failure with its exit code.
struct Fail(u8, String);

fn code_of(status: u16) -> u8 {
    match status {
        400 | 413 | 415 | 422 => 2,
        401 | 403 => 3,
        404 | 409 => 4,
        429 | 503 => 5,
        _ => 6,
    }
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Api { status, envelope } => {
                let mut m = format!(
                    "{} ({}): {}",
                    status,
                    envelope.code.as_str(),
                    envelope.message
                );
                if let Some(ms) = envelope.retry_after_ms {
                    m.push_str(&format!(" — retry in {:.1} s", ms as f64 / 1000.0));
                }
                Fail(code_of(*status), m)
            }
            ClientError::Transport(t) => Fail(7, format!("cannot reach the server: {t}")),
            ClientError::Decode(d) => Fail(1, format!("unexpected response: {d}")),
        }
    }
}

fn task_id(s: &str) -> Result<TaskId, Fail> {
    s.parse()
        .map_err(|_| Fail(2, format!("{s:?} is not a task id (a UUID)")))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Fail> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Fail(1, e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Exit code of a task's terminal frame.
fn code_of_task_error(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::QueueFullDropLru | ErrorCode::PoolUnavailable | ErrorCode::PoolUnready => 5,
        ErrorCode::DeadlineUnmet | ErrorCode::InvalidParams => 2,
        _ => 6,
    }
}

async fn follow(c: &Client, id: TaskId, json: bool) -> Result<(), Fail> {
    let mut s = c.stream_from(id, 0).await?;
    let mut last_wait = String::new();
    let mut out = std::io::stdout();
    while let Some(ev) = s.next().await {
        let ev = ev?;
        if json {
            // the frame serializes as {"event": kind, "data": ...}; its data is taken
            let data = serde_json::to_value(&ev.event).map(|mut v| v["data"].take());
            let line = serde_json::json!({"event": ev.event.name(), "id": ev.id, "data": data.unwrap_or_default()});
            println!("{line}");
        }
        match &ev.event {
            StreamEvent::Metrics(m) if !json => {
                if let (Some(p), Some(eta)) = (m.queue_position, m.predicted_start_ms) {
                    let line = format!("queued: position {p}, start in ~{eta} ms");
                    if line != last_wait {
                        eprintln!("{line}");
                        last_wait = line;
                    }
                }
            }
            StreamEvent::Started(st) if !json => {
                eprintln!(
                    "started on {} ({} {})",
                    st.replica_id, st.engine, st.engine_version
                );
            }
            StreamEvent::Token(t) if !json => {
                let _ = write!(out, "{}", t.t);
                let _ = out.flush();
            }
            StreamEvent::End(e) => {
                if !json {
                    println!();
                    eprintln!(
                        "end: {} tokens in, {} out, finish {}, first token {} ms",
                        e.tokens_in,
                        e.tokens_out,
                        e.finish_reason.as_str(),
                        e.ttft_ms
                    );
                }
                return Ok(());
            }
            StreamEvent::Error(e) => {
                if !json {
                    println!();
                }
                return Err(Fail(
                    code_of_task_error(e.code),
                    format!("task failed: {} {}", e.code.as_str(), e.message),
                ));
            }
            _ => {}
        }
    }
    Err(Fail(7, "the stream closed before the task ended".into()))
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let mut c = Client::new(&cli.url);
    if let Some(k) = &cli.api_key {
        c = c.with_api_key(k);
    }
    match cli.cmd {
        Cmd::Submit {
            prompt,
            model,
            priority,
            max_tokens,
            temperature,
            seed,
            session,
            deadline_ms,
            stream,
        } => {
            let prompt = if prompt == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| Fail(2, format!("stdin: {e}")))?
            } else {
                prompt
            };
            let prio = if priority == "batch" {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            let mut req = TaskRequest::completion(&model, &prompt, max_tokens, prio);
            req.temperature = temperature;
            req.seed = seed;
            req.deadline_ms = deadline_ms;
            if let Some(sid) = session {
                req.session_id = Some(
                    sid.parse::<SessionId>()
                        .map_err(|_| Fail(2, format!("{sid:?} is not a session id (a UUID)")))?,
                );
            }
            let adm = c.submit(&req).await?;
            if cli.json && !stream {
                return print_json(&adm);
            }
            if !cli.json {
                eprintln!(
                    "task {} admitted: queue position {}, start in ~{} ms",
                    adm.task_id, adm.queue_position, adm.predicted_start_ms
                );
            }
            if stream {
                return follow(&c, adm.task_id, cli.json).await;
            }
            println!("{}", adm.task_id);
            Ok(())
        }
        Cmd::Status { id } => {
            let st = c.status(task_id(&id)?).await?;
            if cli.json {
                return print_json(&st);
            }
            println!(
                "{} {:?} priority {} tenant {} pool {} tokens {}{}",
                st.task_id,
                st.state,
                st.priority.as_str(),
                st.tenant,
                st.pool_id,
                st.tokens_out,
                st.queue_position
                    .map(|p| format!(" position {p}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Cancel { id } => {
            c.cancel(task_id(&id)?).await?;
            if !cli.json {
                eprintln!("canceled {id}");
            }
            Ok(())
        }
        Cmd::Pools => {
            let p = c.pools().await?;
            if cli.json {
                return print_json(&p);
            }
            for pool in p.pools {
                println!(
                    "{} {} {} ready={} slots {}/{} free, queue {}/{}",
                    pool.id,
                    pool.engine,
                    pool.model,
                    pool.ready,
                    pool.slots_free,
                    pool.slots_total,
                    pool.queue_depth,
                    pool.queue_capacity
                );
            }
            Ok(())
        }
        Cmd::Drain { pool, deadline_ms } => {
            let r = c.drain(&pool, deadline_ms).await?;
            if cli.json {
                return print_json(&r);
            }
            println!(
                "{} draining: {} running, {} queued ended",
                r.pool_id, r.in_flight, r.queued_ended
            );
            Ok(())
        }
        Cmd::Reload {
            pool,
            model_ref,
            sampler_profile_version,
        } => {
            let r = c
                .reload(
                    &pool,
                    &ReloadRequest {
                        model_ref,
                        sampler_profile_version,
                    },
                )
                .await?;
            if cli.json {
                return print_json(&r);
            }
            println!(
                "{} now serves {} on {:?}",
                r.pool_id, r.model_digest, r.replicas
            );
            Ok(())
        }
        Cmd::Keys { cmd } => keys(&c, cmd, cli.json).await,
        Cmd::Usage {
            from,
            to,
            group_by,
            tenant,
            csv,
        } => {
            let mut q: Vec<(&str, &str)> = vec![("group_by", group_by.as_str())];
            for (k, v) in [("from", &from), ("to", &to), ("tenant", &tenant)] {
                if let Some(v) = v {
                    q.push((k, v.as_str()));
                }
            }
            if csv {
                print!("{}", c.usage_csv(&q).await?);
                return Ok(());
            }
            let r = c.usage(&q).await?;
            if cli.json {
                return print_json(&r);
            }
            println!("usage {} .. {} by {}", r.from, r.to, r.group_by.as_str());
            for row in r
                .rows
                .iter()
                .chain(std::iter::once(&orch_domain::accounts::UsageRow {
                    group: "total".into(),
                    counts: r.total.clone(),
                }))
            {
                let c = &row.counts;
                let failed: u64 = c.errors.values().sum();
                println!(
                    "{:<24} tasks {:>8}  in {:>10}  out {:>10}  cached {:>10}  canceled {:>6}  failed {:>6}",
                    row.group, c.tasks, c.tokens_in, c.tokens_out, c.tokens_cached, c.canceled, failed
                );
            }
            Ok(())
        }
        Cmd::Capabilities => {
            let caps = c.capabilities().await?;
            if cli.json {
                return print_json(&caps);
            }
            println!("api {}", caps.api_version);
            for e in &caps.engines {
                println!(
                    "pool {}: {} {} model {} ctx {} max_tokens {} ready={}",
                    e.pool_id,
                    e.engine,
                    e.engine_version,
                    e.model,
                    e.ctx_max,
                    e.max_tokens_out,
                    e.ready
                );
            }
            if let Some(t) = &caps.tenant {
                println!(
                    "tenant {} ({}), weight {}, in flight {}, queued {}",
                    t.tenant, t.role, t.weight, t.in_flight, t.queued
                );
            }
            Ok(())
        }
    }
}

async fn keys(c: &Client, cmd: KeysCmd, json: bool) -> Result<(), Fail> {
    match cmd {
        KeysCmd::Create {
            tenant,
            role,
            label,
            expires_at,
            ttl_s,
            pools,
            priorities,
        } => {
            let priorities = priorities
                .iter()
                .map(|p| match p.as_str() {
                    "batch" => Priority::Batch,
                    _ => Priority::Interactive,
                })
                .collect::<Vec<_>>();
            let req = orch_domain::accounts::NewKey {
                tenant,
                role: Some(role),
                label,
                expires_at,
                ttl_s,
                pools: (!pools.is_empty()).then_some(pools),
                priorities: (!priorities.is_empty()).then_some(priorities),
            };
            let made = c.create_key(&req).await?;
            if json {
                return print_json(&made);
            }
            println!("{}", made.key);
            eprintln!(
                "{} for tenant {} ({}){}; the key is shown this once",
                made.view.fingerprint,
                made.view.tenant,
                made.view.role,
                made.view
                    .expires_at
                    .as_deref()
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        KeysCmd::List => {
            let l = c.keys().await?;
            if json {
                return print_json(&l);
            }
            for k in l.keys {
                let state = match (&k.revoked_at, &k.expires_at) {
                    (Some(r), _) => format!("revoked {r}"),
                    (None, Some(e)) => format!("expires {e}"),
                    (None, None) => "no expiry".into(),
                };
                println!(
                    "{} {:<7} {:<16} {:<6} {} last used {}{}",
                    k.fingerprint,
                    k.source,
                    k.tenant,
                    k.role,
                    state,
                    k.last_used_at.as_deref().unwrap_or("never"),
                    k.label.map(|l| format!(" ({l})")).unwrap_or_default()
                );
            }
            Ok(())
        }
        KeysCmd::Revoke { fingerprint } => {
            let v = c.revoke_key(&fingerprint).await?;
            if json {
                return print_json(&v);
            }
            println!("{} revoked", v.fingerprint);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orch: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("orch: {msg}");
            ExitCode::from(code)
        }
    }
}
