//! Starting `llama-server` replicas as child processes on free loopback ports.

use crate::client::{ClientOptions, LlamaCppAdapter};
use adapter_api::{
    BoxFuture, LaunchError, LaunchOverrides, ReplicaLauncher, ReplicaProcess, WorkerAdapter,
};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

/// How to run `llama-server` for one pool.
#[derive(Debug, Clone)]
pub struct LlamaServerConfig {
    pub binary: PathBuf,
    pub model_path: PathBuf,
    /// Display name of the model.
    pub model: String,
    /// Total context of the server (split across slots by llama-server).
    pub ctx: u32,
    /// `--parallel`: concurrent decodes.
    pub slots: u32,
    pub threads: u32,
    pub extra_args: Vec<String>,
    pub client: ClientOptions,
    /// Where each running replica's pid file goes (`<replica>.pid`), so a later
    /// instance can stop engines an earlier one left behind; `None` = no pid files.
    pub pid_dir: Option<PathBuf>,
}

pub struct LlamaServerLauncher {
    cfg: LlamaServerConfig,
}

impl LlamaServerLauncher {
    /// Checks that the binary and model exist, and computes the model digest.
    pub fn new(cfg: LlamaServerConfig) -> Result<Self, LaunchError> {
        check_binary(&cfg.binary)?;
        crate::model::check_gguf(&cfg.model_path)
            .map_err(|e| LaunchError::MissingModel(e.to_string()))?;
        Ok(Self { cfg })
    }

    pub fn config(&self) -> &LlamaServerConfig {
        &self.cfg
    }
}

/// The engine dies with orchestratord however orchestratord dies: the kernel sends it
/// SIGKILL when its parent exits (Linux `PR_SET_PDEATHSIG`, checked against a parent
/// that died before the call), and it leads its own process group, so stopping the
/// group stops anything it started too.
fn tie_to_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: only async-signal-safe calls (getpid before fork; prctl, getppid,
        // setpgid, _exit after) run between fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                libc::setpgid(0, 0);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

fn check_binary(p: &Path) -> Result<(), LaunchError> {
    if !p.is_file() {
        return Err(LaunchError::MissingBinary(format!(
            "{} (run scripts/provision.sh, or set the pool's llamacpp.binary)",
            p.display()
        )));
    }
    Ok(())
}

fn free_port() -> Result<u16, LaunchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LaunchError::Spawn(e.to_string()))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LaunchError::Spawn(e.to_string()))
}

/// A running llama-server child.
pub struct LlamaServerProcess {
    adapter: Arc<LlamaCppAdapter>,
    endpoint: String,
    exit_rx: watch::Receiver<Option<String>>,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
    pub pid: Option<u32>,
}

impl ReplicaProcess for LlamaServerProcess {
    fn adapter(&self) -> Arc<dyn WorkerAdapter> {
        self.adapter.clone()
    }

    fn exited(&self) -> BoxFuture<'_, String> {
        let mut rx = self.exit_rx.clone();
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "supervisor gone".to_string(),
            }
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        if let Some(tx) = self.stop_tx.lock().ok().and_then(|mut g| g.take()) {
            let _ = tx.send(());
        }
        Box::pin(async move {
            let _ = self.exited().await;
        })
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }
}

impl ReplicaLauncher for LlamaServerLauncher {
    /// llama-server loads GGUF files: a `.gguf` name or an absolute path is a model.
    fn model_overrides(&self, model_ref: &str) -> Option<LaunchOverrides> {
        (model_ref.ends_with(".gguf") || model_ref.starts_with('/')).then(|| LaunchOverrides {
            model_path: Some(model_ref.to_string()),
        })
    }

    fn launch(
        &self,
        replica_id: &str,
        overrides: &LaunchOverrides,
    ) -> BoxFuture<'_, Result<Box<dyn ReplicaProcess>, LaunchError>> {
        let replica_id = replica_id.to_string();
        let overrides = overrides.clone();
        Box::pin(async move {
            let model_path = overrides
                .model_path
                .clone()
                .map(PathBuf::from)
                .unwrap_or_else(|| self.cfg.model_path.clone());
            check_binary(&self.cfg.binary)?;
            let digest = {
                let p = model_path.clone();
                tokio::task::spawn_blocking(move || crate::model::digest(&p))
                    .await
                    .map_err(|e| LaunchError::Spawn(e.to_string()))?
                    .map_err(|e| LaunchError::MissingModel(e.to_string()))?
            };
            let port = free_port()?;
            let mut cmd = Command::new(&self.cfg.binary);
            cmd.arg("--model")
                .arg(&model_path)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--ctx-size", &self.cfg.ctx.to_string()])
                .args(["--parallel", &self.cfg.slots.to_string()])
                .args(["--threads", &self.cfg.threads.to_string()])
                .args(["--metrics", "--slots", "--no-webui"])
                // its OpenAI routes (/v1/models) name the model as clients do
                .args(["--alias", &self.cfg.model])
                .args(&self.cfg.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            tie_to_parent(&mut cmd);
            let mut child = cmd
                .spawn()
                .map_err(|e| LaunchError::Spawn(format!("{}: {e}", self.cfg.binary.display())))?;
            let pid = child.id();
            let pid_file = match (&self.cfg.pid_dir, pid) {
                (Some(dir), Some(pid)) => {
                    crate::orphans::write_pid_file(dir, &replica_id, pid, &self.cfg.binary)
                }
                _ => None,
            };
            let tail = Arc::new(Mutex::new(VecDeque::<String>::with_capacity(16)));
            if let Some(err) = child.stderr.take() {
                let tail = tail.clone();
                let rid = replica_id.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(err).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::trace!(replica_id = %rid, "llama-server: {line}");
                        if let Ok(mut t) = tail.lock() {
                            if t.len() == 16 {
                                t.pop_front();
                            }
                            t.push_back(line);
                        }
                    }
                });
            }
            let (exit_tx, exit_rx) = watch::channel(None);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            tokio::spawn(async move {
                let why = tokio::select! {
                    st = child.wait() => match st {
                        Ok(s) => format!("llama-server exited: {s}"),
                        Err(e) => format!("llama-server wait failed: {e}"),
                    },
                    _ = stop_rx => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        "stopped by orchestratord".to_string()
                    }
                };
                if let Some(f) = &pid_file {
                    let _ = std::fs::remove_file(f);
                }
                let last = tail
                    .lock()
                    .map(|t| {
                        t.iter()
                            .rev()
                            .take(3)
                            .rev()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" | ")
                    })
                    .unwrap_or_default();
                let _ = exit_tx.send(Some(if last.is_empty() {
                    why
                } else {
                    format!("{why}; last log: {last}")
                }));
            });
            let endpoint = format!("http://127.0.0.1:{port}");
            let model = model_path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .filter(|_| overrides.model_path.is_some())
                .unwrap_or_else(|| self.cfg.model.clone());
            let adapter = LlamaCppAdapter::new(&endpoint, &model, &digest, self.cfg.client.clone())
                .map_err(|e| LaunchError::Spawn(e.to_string()))?;
            tracing::info!(%replica_id, %endpoint, pid, model = %model_path.display(), "started llama-server");
            Ok(Box::new(LlamaServerProcess {
                adapter: Arc::new(adapter),
                endpoint,
                exit_rx,
                stop_tx: Mutex::new(Some(stop_tx)),
                pid,
            }) as Box<dyn ReplicaProcess>)
        })
    }
}

/// A replica orchestratord does not start: an existing llama-server at `url`.
pub struct RemoteLauncher {
    pub url: String,
    pub model: String,
    pub model_digest: String,
    pub client: ClientOptions,
}

struct RemoteProcess {
    adapter: Arc<LlamaCppAdapter>,
    stop: watch::Sender<Option<String>>,
}

impl ReplicaProcess for RemoteProcess {
    fn adapter(&self) -> Arc<dyn WorkerAdapter> {
        self.adapter.clone()
    }
    /// A remote replica never "exits"; health checks mark it unready instead.
    fn exited(&self) -> BoxFuture<'_, String> {
        let mut rx = self.stop.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(Option::is_some).await;
            "detached".to_string()
        })
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        let _ = self.stop.send(Some("detached".into()));
        Box::pin(async {})
    }
    fn endpoint(&self) -> String {
        self.adapter.base_url().to_string()
    }
}

impl ReplicaLauncher for RemoteLauncher {
    fn launch(
        &self,
        _replica_id: &str,
        _overrides: &LaunchOverrides,
    ) -> BoxFuture<'_, Result<Box<dyn ReplicaProcess>, LaunchError>> {
        Box::pin(async move {
            let adapter = LlamaCppAdapter::new(
                &self.url,
                &self.model,
                &self.model_digest,
                self.client.clone(),
            )
            .map_err(|e| LaunchError::Spawn(e.to_string()))?;
            let (stop, _) = watch::channel(None);
            Ok(Box::new(RemoteProcess {
                adapter: Arc::new(adapter),
                stop,
            }) as Box<dyn ReplicaProcess>)
        })
    }
}
