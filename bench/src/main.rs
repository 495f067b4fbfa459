//! `orch-bench <latency|cpu|streams|llama>`: each scenario runs orchestratord and its
//! baseline side by side in one run and prints figures and ratios (see BENCHMARKS.md).

mod llama;
mod mock;
mod stats;

#[tokio::main]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match which.as_str() {
        "latency" => mock::latency().await,
        "cpu" => mock::cpu_per_token().await,
        "streams" => mock::open_streams().await,
        "llama" => llama::throughput().await,
        "all" => {
            mock::latency().await;
            mock::cpu_per_token().await;
            mock::open_streams().await;
        }
        other => {
            eprintln!("unknown scenario {other}; use latency | cpu | streams | llama | all");
            std::process::exit(2);
        }
    }
}
