//! Percentiles and process CPU/RSS readings from /proc.

use std::time::Duration;

pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

pub fn summary(name: &str, mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let (p50, p99) = (pct(&v, 0.5), pct(&v, 0.99));
    println!(
        "  {name:<34} n={:<6} p50={p50:.3} ms  p99={p99:.3} ms",
        v.len()
    );
    (p50, p99)
}

/// Sorted-copy p50 and p99 in milliseconds.
pub fn p50_p99(v: &[Duration]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort();
    (pct(&v, 0.5), pct(&v, 0.99))
}

/// user+system CPU seconds of a process (10 ms resolution).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0; // CLK_TCK on Linux
    let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    (ut + st) / tick
}

/// Resident set size of a process in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
