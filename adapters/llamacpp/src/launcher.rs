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
    /// Determinism over throughput: `--no-cont-batching` (with one slot, which the
    /// config requires: two prompts arriving together still share a batch otherwise),
    /// so batch shapes, and the low bits of the logits, do not depend on what else runs.
    pub deterministic: bool,
    pub extra_args: Vec<String>,
    pub client: ClientOptions,
    /// Where each running replica's pid file goes (`<replica>.pid`), so a later
    /// instance can stop engines an earlier one left behind; `None` = no pid files.
    pub pid_dir: Option<PathBuf>,
    /// GGUF files a reload may switch to must be under this directory (after
    /// resolving links and `..`). `None`: the directory of `model_path`.
    pub models_dir: Option<PathBuf>,
    /// Start each engine with a fresh random API key (its environment, never its
    /// command line) that only this launcher's adapter sends.
    pub engine_api_key: bool,
}

/// Arguments `extra_args` may not carry: the engine listens on loopback, on the port
/// orchestratord chose, with the key orchestratord gave it.
pub const RESERVED_ARGS: &[&str] = &["--host", "--port", "--api-key", "--api-key-file"];

/// Environment the engine must not inherit (it would override nothing on the command
/// line, but a key or an address from orchestratord's environment stays out).
const CLEARED_ENV: &[&str] = &[
    "LLAMA_ARG_HOST",
    "LLAMA_ARG_PORT",
    "LLAMA_API_KEY",
    "LLAMA_ARG_API_KEY_FILE",
];

/// The first argument of `extra_args` that is reserved, if any.
pub fn reserved_arg(extra_args: &[String]) -> Option<&str> {
    extra_args.iter().map(String::as_str).find(|a| {
        RESERVED_ARGS
            .iter()
            .any(|r| a == r || a.strip_prefix(r).is_some_and(|rest| rest.starts_with('=')))
    })
}

fn random_key() -> Result<String, LaunchError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| LaunchError::Spawn(format!("no randomness for the engine key: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub struct LlamaServerLauncher {
    cfg: LlamaServerConfig,
}

impl LlamaServerLauncher {
    /// Checks that the binary and model exist, and computes the model digest.
    pub fn new(cfg: LlamaServerConfig) -> Result<Self, LaunchError> {
        if let Some(a) = reserved_arg(&cfg.extra_args) {
            return Err(LaunchError::Spawn(format!(
                "extra_args may not set {a}: orchestratord binds the engine to loopback on a port it picks, with its own key"
            )));
        }
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
    /// llama-server loads GGUF files: a `.gguf` file under the pool's models directory
    /// (links and `..` resolved first) is a model; any other path is not.
    fn model_overrides(&self, model_ref: &str) -> Option<LaunchOverrides> {
        if !(model_ref.ends_with(".gguf") || model_ref.starts_with('/')) {
            return None;
        }
        let dir = self
            .cfg
            .models_dir
            .clone()
            .or_else(|| self.cfg.model_path.parent().map(Path::to_path_buf))?;
        let dir = dir.canonicalize().ok()?;
        // a bare or relative name is a file of the models directory
        let named = Path::new(model_ref);
        let named = if named.is_absolute() {
            named.to_path_buf()
        } else {
            dir.join(named)
        };
        let path = named.canonicalize().ok()?;
        let gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if !path.starts_with(&dir) || !path.is_file() || !gguf {
            tracing::warn!(model_ref, models_dir = %dir.display(), "reload refused: not a model file under the models directory");
            return None;
        }
        Some(LaunchOverrides {
            model_path: Some(path.display().to_string()),
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
            let key = if self.cfg.engine_api_key {
                Some(random_key()?)
            } else {
                None
            };
            let mut cmd = Command::new(&self.cfg.binary);
            for v in CLEARED_ENV {
                cmd.env_remove(v);
            }
            if let Some(k) = &key {
                // the environment, not argv: /proc/<pid>/cmdline is world-readable,
                // /proc/<pid>/environ only to this user
                cmd.env("LLAMA_API_KEY", k);
            }
            cmd.arg("--model")
                .arg(&model_path)
                .args(["--ctx-size", &self.cfg.ctx.to_string()])
                .args(["--parallel", &self.cfg.slots.to_string()])
                .args(["--threads", &self.cfg.threads.to_string()])
                .args(["--metrics", "--slots", "--no-webui"])
                .args(self.cfg.deterministic.then_some("--no-cont-batching"))
                // its OpenAI routes (/v1/models) name the model as clients do
                .args(["--alias", &self.cfg.model])
                .args(&self.cfg.extra_args)
                // last, so they win over anything before them
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
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
            let client = ClientOptions {
                api_key: key,
                ..self.cfg.client.clone()
            };
            let adapter = LlamaCppAdapter::new(&endpoint, &model, &digest, client)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher(model_path: PathBuf, models_dir: Option<PathBuf>) -> LlamaServerLauncher {
        LlamaServerLauncher {
            cfg: LlamaServerConfig {
                binary: PathBuf::from("/nonexistent/llama-server"),
                model_path,
                model: "m".into(),
                ctx: 1024,
                slots: 1,
                threads: 1,
                deterministic: false,
                extra_args: Vec::new(),
                client: ClientOptions::default(),
                pid_dir: None,
                models_dir,
                engine_api_key: true,
            },
        }
    }

    /// A reload loads only `.gguf` files under the models directory: not a path
    /// outside it, not one that escapes by `..` or a link, not a missing file.
    #[test]
    fn reload_paths_stay_under_the_models_directory() {
        let root = std::env::temp_dir().join(format!("orch-models-{}", std::process::id()));
        let (models, other) = (root.join("models"), root.join("other"));
        std::fs::create_dir_all(&models).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        for p in [
            models.join("a.gguf"),
            models.join("b.gguf"),
            other.join("c.gguf"),
        ] {
            std::fs::write(p, b"GGUF").unwrap();
        }
        std::os::unix::fs::symlink(other.join("c.gguf"), models.join("link.gguf")).unwrap();
        let l = launcher(models.join("a.gguf"), None);
        let ok = |r: &str| l.model_overrides(r).is_some();
        assert!(ok(models.join("b.gguf").to_str().unwrap()));
        assert!(!ok(other.join("c.gguf").to_str().unwrap()), "outside");
        assert!(
            !ok(models.join("../other/c.gguf").to_str().unwrap()),
            "escapes by .."
        );
        assert!(
            !ok(models.join("link.gguf").to_str().unwrap()),
            "escapes by a link"
        );
        assert!(
            !ok(models.join("missing.gguf").to_str().unwrap()),
            "missing"
        );
        assert!(!ok("/etc/passwd"), "not under the directory");
        assert!(!ok("some-model-name"), "not a path");
        // a bare file name is one of the models directory; a non-GGUF file is not a model
        assert!(ok("b.gguf"));
        std::fs::write(models.join("notes.txt"), b"x").unwrap();
        assert!(
            !ok(models.join("notes.txt").to_str().unwrap()),
            "not a .gguf"
        );
        // an explicit directory replaces the default
        let l = launcher(models.join("a.gguf"), Some(other.clone()));
        assert!(l
            .model_overrides(other.join("c.gguf").to_str().unwrap())
            .is_some());
        assert!(l
            .model_overrides(models.join("b.gguf").to_str().unwrap())
            .is_none());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn extra_args_may_not_rebind_or_rekey_the_engine() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(reserved_arg(&args(&["--flash-attn", "on"])), None);
        assert_eq!(reserved_arg(&args(&["--host", "0.0.0.0"])), Some("--host"));
        assert_eq!(
            reserved_arg(&args(&["--host=0.0.0.0"])),
            Some("--host=0.0.0.0")
        );
        assert_eq!(reserved_arg(&args(&["--port", "80"])), Some("--port"));
        assert_eq!(
            reserved_arg(&args(&["--api-key-file", "/k"])),
            Some("--api-key-file")
        );
        assert_eq!(reserved_arg(&args(&["--hostname-ish"])), None);
        let mut l = launcher(PathBuf::from("/nonexistent/a.gguf"), None);
        l.cfg.extra_args = args(&["--host", "0.0.0.0"]);
        assert!(LlamaServerLauncher::new(l.cfg.clone()).is_err());
    }
}
