//! A test harness (feature `testing`): three clustered nats-servers with JetStream on
//! free loopback ports, from the provisioned binary, secured as in production: TLS on
//! the client port and between servers (certificates made here, one CA, clients
//! verified), a user and password, and `sync_interval: always`. Used by this crate's
//! tests and by orchestratord's cluster scenarios; never by the product.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spawn(bin: &Path, conf: &Path) -> Child {
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts")
}

/// The provisioned nats-server (`ORCH_NATS_SERVER`, else the cache path); panics
/// with what to run when it is missing.
pub fn nats_server() -> PathBuf {
    let p = std::env::var_os("ORCH_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/orchestratord/tools/nats-server-2.14.6/nats-server")
        });
    assert!(
        p.is_file(),
        "nats-server not found at {} — run scripts/provision.sh or set ORCH_NATS_SERVER",
        p.display()
    );
    p
}

/// `n` distinct free loopback ports (all held until every one is chosen).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The user and password the harness's servers accept.
pub const USER: &str = "orch";
pub const PASSWORD: &str = "orch-test-password";

/// PEM files of the harness's certificates.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    /// One certificate for servers (client port and routes) and instances alike:
    /// `localhost` and `127.0.0.1`, server and client authentication.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// A fresh CA and a certificate it signs, written under `dir`.
    pub fn make(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "orchestratord test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "orch-node");
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let c = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
        };
        std::fs::write(&c.ca, ca_cert.pem()).unwrap();
        std::fs::write(&c.cert, cert.pem()).unwrap();
        std::fs::write(&c.key, key.serialize_pem()).unwrap();
        c
    }
}

/// Three clustered nats-servers; killed and their stores removed when dropped.
pub struct Nats {
    dir: PathBuf,
    pub certs: Certs,
    confs: Vec<PathBuf>,
    procs: Vec<Option<Child>>,
    pub client_ports: Vec<u16>,
    pub http_ports: Vec<u16>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nats {
    /// Start three clustered servers and wait until JetStream has a meta leader.
    pub async fn start(name: &str) -> Self {
        let bin = nats_server();
        let dir = std::env::temp_dir().join(format!("orch-nats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let all = free_ports(9);
        let (client, http, route) = (all[0..3].to_vec(), all[3..6].to_vec(), all[6..9].to_vec());
        let routes = route
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let certs = Certs::make(&dir);
        // `always` unless a benchmark asks to compare (ORCH_TEST_NATS_SYNC_INTERVAL=2m,
        // nats-server's default)
        let sync =
            std::env::var("ORCH_TEST_NATS_SYNC_INTERVAL").unwrap_or_else(|_| "always".into());
        let tls = format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 5 }}",
            certs.cert, certs.key, certs.ca
        );
        let mut procs = Vec::new();
        let mut confs = Vec::new();
        for i in 0..3 {
            let conf = format!(
                // sync_interval always: a write is on disk before JetStream acks it
                // (the default, 2 min, loses acknowledged writes on a power loss)
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n{tls}\nauthorization {{ user: {USER}, password: {PASSWORD:?} }}\njetstream {{ store_dir: {:?}, sync_interval: {sync} }}\ncluster {{ name: orch, listen: 127.0.0.1:{}, routes: [{routes}], {tls} }}\n",
                client[i],
                http[i],
                dir.join(format!("js{i}")),
                route[i]
            );
            let path = dir.join(format!("n{i}.conf"));
            std::fs::write(&path, conf).unwrap();
            procs.push(Some(spawn(&bin, &path)));
            confs.push(path);
        }
        let n = Nats {
            dir,
            certs,
            confs,
            procs,
            client_ports: client,
            http_ports: http,
        };
        for i in 0..3 {
            n.wait_healthy(i).await;
        }
        n.wait_meta_current().await;
        n
    }

    /// Wait until JetStream has a meta leader that sees every other server as a
    /// current peer (R3 assets created before then may find "no suitable peers"),
    /// at most 30 s.
    pub async fn wait_meta_current(&self) {
        let t0 = Instant::now();
        loop {
            for &p in &self.http_ports {
                let Some(body) = http_body(p, "/jsz").await else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                    continue;
                };
                let meta = &v["meta_cluster"];
                // only the meta leader lists the others, as its replicas
                let Some(replicas) = meta["replicas"].as_array() else {
                    continue;
                };
                let current = replicas
                    .iter()
                    .filter(|r| r["current"].as_bool() == Some(true))
                    .count();
                if meta["leader"].is_string() && current + 1 >= self.alive() {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no JetStream meta leader with every peer current in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many messages stream `name` holds, the most any live server reports (from
    /// the monitoring endpoint, so nothing about the stream is changed by asking).
    pub async fn stream_messages(&self, name: &str) -> Option<u64> {
        let mut most = None;
        for (i, &p) in self.http_ports.iter().enumerate() {
            if self.procs[i].is_none() {
                continue;
            }
            let Some(body) = http_body(p, "/jsz?accounts=true&streams=true").await else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let streams = v["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten());
            for s in streams.filter(|s| s["name"] == name) {
                let n = s["state"]["messages"].as_u64();
                most = most.max(n);
            }
        }
        most
    }

    fn alive(&self) -> usize {
        self.procs.iter().filter(|p| p.is_some()).count()
    }

    /// Wait until server `i` answers bare `/healthz` with 200 (JetStream has a meta
    /// leader and its streams are current), at most 30 s.
    pub async fn wait_healthy(&self, i: usize) {
        let p = self.http_ports[i];
        let t0 = Instant::now();
        while http_status(p, "/healthz").await != Some(200) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "nats-server on {p} not healthy in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start server `i` again (after [`kill`](Self::kill)), with its store.
    pub fn restart(&mut self, i: usize) {
        if self.procs[i].is_none() {
            self.procs[i] = Some(spawn(&nats_server(), &self.confs[i]));
        }
    }

    /// The URLs as a TOML array's items (`"nats://…", "nats://…", …`).
    pub fn urls_toml(&self) -> String {
        self.urls()
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What an instance needs to reach these servers: the user and password, and TLS
    /// with the harness's CA and certificate.
    pub fn security(&self) -> crate::Security {
        crate::Security {
            auth: crate::Auth::UserPassword {
                user: USER.into(),
                password: PASSWORD.into(),
            },
            tls: Some(crate::Tls {
                ca_file: self.certs.ca.clone(),
                client_cert: Some((self.certs.cert.clone(), self.certs.key.clone())),
            }),
        }
    }

    /// The `[cluster]` lines of orchestratord's config for [`security`](Self::security)
    /// (the password in environment variable `password_env`).
    pub fn security_toml(&self, password_env: &str) -> String {
        format!(
            "user = {USER:?}\npassword_env = {password_env:?}\ntls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            self.certs.ca, self.certs.cert, self.certs.key
        )
    }

    pub fn urls(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    /// `kill -9` server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` on a loopback port (a bare HTTP/1.0 exchange): status and body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The body of a 200 answer to `GET path` on a loopback port.
pub async fn http_body(port: u16, path: &str) -> Option<String> {
    http_get(port, path)
        .await
        .and_then(|(status, body)| (status == 200).then_some(body))
}

/// The status code of `GET path` on a loopback port.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(status, _)| status)
}
