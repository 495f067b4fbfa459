//! 10,000 concurrent open streams (paced slowly so every one stays open): RSS of the
//! floor and of orchestratord after all tasks are submitted and all streams are open.
//! Streams are opened on raw loopback sockets and each one's first chunk is read, so
//! the client holds only a socket per stream.

use super::{client, submit, thousands, Pace, Server};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STREAMS: usize = 10_000;

struct Mem {
    idle: f64,
    submitted: f64,
    open: f64,
    tasks: usize,
    streams: usize,
}

/// Soft limit on open files of this process, from /proc.
fn fd_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

async fn hold(s: &Server, pace: &Pace) -> Mem {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = s.rss_mib();
    let h = client(64);
    let paths: Vec<String> = futures_util::stream::iter(0..STREAMS)
        .map(|_| {
            let (h, base) = (h.clone(), s.base.clone());
            async move { Some(submit(&h, &base, pace.tokens).await?.1) }
        })
        .buffer_unordered(64)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let submitted = s.rss_mib();
    let addr = s.base.trim_start_matches("http://");
    let mut conns = Vec::with_capacity(paths.len());
    for p in &paths {
        let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
            break;
        };
        let req = format!("GET {p} HTTP/1.1\r\nhost: bench\r\n\r\n");
        if c.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        conns.push(c);
    }
    // each stream's first chunk: the stream is open and serving
    let mut open = 0;
    for c in conns.iter_mut() {
        let mut buf = [0u8; 2048];
        let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
        if matches!(read, Ok(Ok(k)) if k > 0 && buf[..k].starts_with(b"HTTP/1.1 200")) {
            open += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem = Mem {
        idle,
        submitted,
        open: s.rss_mib(),
        tasks: paths.len(),
        streams: open,
    };
    drop(conns);
    mem
}

pub async fn run() {
    let pace = Pace {
        tokens_per_sec: 0.2,
        ttft_ms: 0,
        tokens: 1000,
    };
    println!(
        "== {} concurrent open streams: RSS, mock and floor at 0.2 tokens/s ==",
        thousands(STREAMS as u64)
    );
    if let Some(l) = fd_limit().filter(|l| *l < STREAMS as u64 + 1000) {
        println!("  warning: open-files limit {l}; run under `ulimit -n 20000`");
    }
    let floor = hold(&Server::floor(&pace), &pace).await;
    let orch = hold(&Server::orchestratord(&pace, 20_000, 20_000), &pace).await;
    for (name, m) in [("floor", &floor), ("orchestratord", &orch)] {
        if m.tasks != STREAMS || m.streams != STREAMS {
            println!(
                "  note: {name}: {} tasks submitted, {} streams open",
                m.tasks, m.streams
            );
        }
    }
    let n = thousands(STREAMS as u64);
    println!();
    println!("| state | floor RSS | orchestratord RSS | ratio |");
    println!("|---|---|---|---|");
    let rows = [
        ("idle".to_string(), floor.idle, orch.idle),
        (
            format!("{n} tasks submitted"),
            floor.submitted,
            orch.submitted,
        ),
        (format!("plus {n} open streams"), floor.open, orch.open),
        (
            "growth, idle → open streams".to_string(),
            floor.open - floor.idle,
            orch.open - orch.idle,
        ),
    ];
    for (state, f, o) in rows {
        println!("| {state} | {f:.1} MiB | {o:.1} MiB | {:.2} |", o / f);
    }
    println!();
    println!("Target: orchestratord RSS with {n} open streams ≤ 1.25 × the floor's.");
}
