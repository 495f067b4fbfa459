//! A real Prometheus (Debian's package, unpacked by `scripts/provision.sh`) for the
//! observability tests: started on a loopback port scraping one orchestratord every
//! second, queried over its HTTP API, killed when dropped. `promtool` from the same
//! package.

use super::Reap;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian package version `scripts/provision.sh` unpacks.
const PACKAGE: &str = "prometheus-2.42.0+ds-5+b6";

/// `prometheus` or `promtool`: from `ORCH_PROMETHEUS` / `ORCH_PROMTOOL`, else from the
/// provision cache. Missing is a failure that says how to get it, never a skip.
pub fn tool(name: &str) -> PathBuf {
    let var = match name {
        "prometheus" => "ORCH_PROMETHEUS",
        _ => "ORCH_PROMTOOL",
    };
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("ORCH_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/orchestratord")
            });
        cache.join("tools").join(PACKAGE).join("usr/bin").join(name)
    });
    assert!(
        path.is_file(),
        "{name} not found at {} — run scripts/provision.sh (it unpacks Debian's prometheus package) or set {var}",
        path.display()
    );
    path
}

/// The repository root (for `ci/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Prometheus {
    pub base: String,
    _child: Reap,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Start Prometheus scraping `target` (`host:port`) every second as job
/// `orchestratord` with the admin key `key` (as the README's scrape config does), with
/// `rules` loaded; returns once it is ready.
pub async fn start(name: &str, target: &str, key: &str, rules: &[PathBuf]) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("orch-prom-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rule_files: Vec<String> = rules
        .iter()
        .map(|p| format!("  - {:?}", p.canonicalize().unwrap()))
        .collect();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: orchestratord\n    authorization: {{ credentials: {key:?} }}\n    static_configs:\n      - targets: [\"{target}\"]\n",
        if rule_files.is_empty() { "  []".to_string() } else { rule_files.join("\n") }
    );
    let cfg_path = dir.join("prometheus.yml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let port = free_port();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", cfg_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Prometheus {
        base: format!("http://127.0.0.1:{port}"),
        _child: Reap(child),
        dir,
    };
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        let ok = http
            .get(format!("{}/-/ready", p.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "prometheus not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Prometheus {
    /// An instant query: its result vector, or the API's error.
    pub async fn query(&self, http: &reqwest::Client, expr: &str) -> Result<Vec<Value>, String> {
        let r = http
            .get(format!("{}/api/v1/query?query={}", self.base, encode(expr)))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Wait until Prometheus holds at least `n` successful scrapes of orchestratord.
    pub async fn wait_scrapes(&self, http: &reqwest::Client, n: u32) {
        let t0 = Instant::now();
        loop {
            let got = self
                .query(http, "sum_over_time(up{job=\"orchestratord\"}[5m])")
                .await
                .ok()
                .and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            if got >= f64::from(n) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "prometheus scraped orchestratord only {got} times in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Percent-encode a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Run promtool with `args` (stdin from `input`); exit code and combined output.
pub fn promtool(args: &[&str], input: Option<&str>) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(text) = input {
        stdin.write_all(text.as_bytes()).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
