//! Engine wiring: one [`ReplicaLauncher`] per pool from its config, with the defaults
//! that make the bundled model work out of the box (paths from `scripts/provision.sh`).

use crate::config::{EngineConfig, LlamaCppConfig, OpenAiPoolConfig, PoolConfig};
use adapter_api::ReplicaLauncher;
use adapter_llamacpp::{ClientOptions, LlamaServerConfig, LlamaServerLauncher, RemoteLauncher};
use adapter_mock::MockLauncher;
use adapter_openai::{OpenAiConfig, OpenAiLauncher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const LLAMA_BUILD: &str = "11434";
pub const BUNDLED_MODEL_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// `$ORCH_CACHE_DIR`, else `~/.cache/orchestratord`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ORCH_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("orchestratord")
}

/// Where replica pid files live (`<cache>/run`): engines an earlier instance left are
/// found there at start.
pub fn pid_dir() -> PathBuf {
    cache_dir().join("run")
}

pub fn default_llama_server() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCH_LLAMA_SERVER") {
        return PathBuf::from(p);
    }
    // provision.sh links the build for this machine's CPU flavor here
    cache_dir().join(format!(
        "engines/llamacpp-b{LLAMA_BUILD}-current/bin/llama-server"
    ))
}

/// Check a llama-server binary against the digest `scripts/provision.sh` recorded
/// when it built it (`<bin>.sha256`, in `sha256sum` format). Returns the digest; a
/// binary that changed since, or one with no recorded digest, is an error saying so.
pub fn verify_engine_binary(bin: &std::path::Path) -> Result<String, String> {
    use sha2::Digest;
    let mut record = bin.as_os_str().to_owned();
    record.push(".sha256");
    let record = PathBuf::from(record);
    let want = std::fs::read_to_string(&record).map_err(|e| {
        format!(
            "no recorded digest at {} ({e}); run scripts/provision.sh",
            record.display()
        )
    })?;
    let want = want
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let bytes = std::fs::read(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let got: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got == want {
        Ok(got)
    } else {
        Err(format!(
            "{} has sha256 {got}, but {want} was recorded when it was built; rebuild it with scripts/provision.sh",
            bin.display()
        ))
    }
}

pub fn default_model() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCH_MODEL") {
        return PathBuf::from(p);
    }
    cache_dir().join(format!(
        "models/gemma-3-270m-q4_k_m-{BUNDLED_MODEL_SHA256}.gguf"
    ))
}

fn client(l: &LlamaCppConfig, p: &PoolConfig) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(l.connect_timeout_ms),
        read_timeout: Duration::from_millis(p.idle_timeout_ms.max(p.first_token_timeout_ms)),
        ..ClientOptions::default()
    }
}

/// The launcher for a pool, or a readable reason why it cannot be built.
pub fn launcher_for(p: &PoolConfig) -> Result<Arc<dyn ReplicaLauncher>, String> {
    match &p.engine {
        EngineConfig::Mock(m) => Ok(Arc::new(MockLauncher::new(m.clone()))),
        EngineConfig::Openai(o) => openai_launcher(p, o, o.urls.clone()),
        EngineConfig::Llamacpp(l) => {
            if let Some(url) = &l.url {
                return Ok(Arc::new(RemoteLauncher {
                    url: url.clone(),
                    model: p.model.clone(),
                    model_digest: l.model_digest.clone().unwrap_or_default(),
                    client: client(l, p),
                }));
            }
            let cfg = LlamaServerConfig {
                binary: l
                    .binary
                    .clone()
                    .map_or_else(default_llama_server, PathBuf::from),
                model_path: l
                    .model_path
                    .clone()
                    .map_or_else(default_model, PathBuf::from),
                model: p.model.clone(),
                ctx: l.ctx,
                slots: l.slots,
                threads: l.threads,
                deterministic: l.deterministic,
                extra_args: l.extra_args.clone(),
                client: client(l, p),
                pid_dir: Some(pid_dir()),
                models_dir: l.models_dir.clone().map(PathBuf::from),
                engine_api_key: l.engine_api_key,
            };
            LlamaServerLauncher::new(cfg)
                .map(|x| Arc::new(x) as Arc<dyn ReplicaLauncher>)
                .map_err(|e| format!("pool {}: {e}", p.id))
        }
    }
}

/// An openai pool's launcher for `urls` (one replica each).
fn openai_launcher(
    p: &PoolConfig,
    o: &OpenAiPoolConfig,
    urls: Vec<String>,
) -> Result<Arc<dyn ReplicaLauncher>, String> {
    let api_key = match &o.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            format!(
                "pool {}: openai.api_key_env names {var}, which is not set",
                p.id
            )
        })?),
        None => None,
    };
    let mut t = OpenAiConfig::new("", o.model.as_deref().unwrap_or(&p.model));
    t.api_key = api_key;
    t.slots = o.slots;
    t.ctx = o.ctx;
    t.model_digest = o.model_digest.clone();
    t.engine_version = o.engine_version.clone();
    t.connect_timeout = Duration::from_millis(o.connect_timeout_ms);
    t.read_timeout = Duration::from_millis(p.idle_timeout_ms.max(p.first_token_timeout_ms));
    Ok(Arc::new(OpenAiLauncher { template: t, urls }))
}

/// Do two URLs have the same scheme, host and port (default ports filled in)?
fn same_origin(a: &str, b: &str) -> bool {
    fn origin(u: &str) -> Option<(String, String, u16)> {
        let uri: axum::http::Uri = u.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = uri.port_u16().or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        })?;
        Some((scheme, uri.host()?.to_ascii_lowercase(), port))
    }
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// The launcher of one replica reached by `url`, added to pool `p` at runtime: its
/// identity is read from the engine (llama.cpp: the model file it reports).
pub fn remote_launcher(p: &PoolConfig, url: &str) -> Result<Arc<dyn ReplicaLauncher>, String> {
    match &p.engine {
        EngineConfig::Mock(_) => Err(format!(
            "pool {} is a mock pool: it has no replicas by URL",
            p.id
        )),
        EngineConfig::Openai(o) => {
            // the provider key goes only where the config sends it: an admin cannot
            // point the pool at a host of their choosing and collect it
            if o.api_key_env.is_some() && !o.urls.iter().any(|u| same_origin(u, url)) {
                return Err(format!(
                    "pool {} sends its provider key only to the origins in its config ({}); {url} is not one of them",
                    p.id,
                    o.urls.join(", ")
                ));
            }
            openai_launcher(p, o, vec![url.to_string()])
        }
        EngineConfig::Llamacpp(l) => Ok(Arc::new(RemoteLauncher {
            url: url.trim_end_matches('/').to_string(),
            model: p.model.clone(),
            model_digest: String::new(),
            client: client(l, p),
        })),
    }
}

/// Load timeout of a pool's replicas.
pub fn load_timeout(p: &PoolConfig) -> Duration {
    match &p.engine {
        EngineConfig::Mock(_) => Duration::from_secs(10),
        EngineConfig::Openai(o) => Duration::from_millis(o.load_timeout_ms),
        EngineConfig::Llamacpp(l) => Duration::from_millis(l.load_timeout_ms),
    }
}

#[cfg(test)]
mod digest_tests {
    use super::verify_engine_binary;

    #[test]
    fn a_binary_is_accepted_only_with_its_recorded_digest() {
        let dir = std::env::temp_dir().join(format!("orch-engine-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("llama-server");
        std::fs::write(&bin, b"a binary").unwrap();
        let record = dir.join("llama-server.sha256");
        assert!(verify_engine_binary(&bin)
            .unwrap_err()
            .contains("no recorded digest"));
        // a digest of something else
        let wrong = "9a7e0d5a3a3cbd2c09a1bdb1c8a2e0e8d2a9d5c8a0e4f4dd0c4b5e6d7f8a9b0c";
        std::fs::write(&record, format!("{wrong}  {}\n", bin.display())).unwrap();
        let err = verify_engine_binary(&bin).unwrap_err();
        assert!(err.contains("was recorded when it was built"), "{err}");
        let got = err
            .split("sha256 ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();
        std::fs::write(&record, format!("{got}  {}\n", bin.display())).unwrap();
        assert_eq!(verify_engine_binary(&bin).unwrap(), got);
        // one byte changed after it was recorded
        std::fs::write(&bin, b"a binarY").unwrap();
        assert!(verify_engine_binary(&bin).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert!(same_origin(
            "https://api.example.com/v1",
            "https://API.example.com:443"
        ));
        assert!(same_origin(
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/"
        ));
        assert!(!same_origin(
            "https://api.example.com",
            "http://api.example.com"
        ));
        assert!(!same_origin(
            "https://api.example.com",
            "https://api.example.com.evil.net"
        ));
        assert!(!same_origin(
            "https://api.example.com",
            "https://api.example.com:8443"
        ));
        assert!(!same_origin("https://api.example.com", "not a url"));
    }
}
