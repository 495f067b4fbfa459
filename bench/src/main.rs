//! `orch-bench <latency|large|cpu|streams|admission|ledger|console|llama|llama-ttft|large-llama|llama-migration|openai|prefix|prefix-observed|all|cluster|cluster-capacity|cluster-capacity-llama|cluster-failover|cluster-store>`: each scenario runs orchestratord and
//! its floor or baseline side by side in one run and prints figures, differences and
//! ratios as markdown tables (see BENCHMARKS.md).
//!
//! `orch-bench floor-server --addr HOST:PORT --tokens-per-sec X --tokens N [--ttft-ms M]`
//! runs the floor server (see `floor.rs`); the mock scenarios spawn it themselves.

#[cfg(feature = "cluster")]
mod admit;
#[cfg(feature = "cluster")]
mod capacity;
#[cfg(feature = "cluster")]
mod cluster;
mod floor;
mod large_llama;
mod llama;
mod migration;
mod mock;
mod observed;
mod openai;
mod prefix;
mod stats;
#[cfg(feature = "cluster")]
mod store;
mod ttft;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("all", String::as_str);
    match which {
        "floor-server" => match floor::parse_args(&args[2..]) {
            Ok((addr, pace)) => {
                if let Err(e) = floor::serve(&addr, pace).await {
                    eprintln!("floor-server: {e}");
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("floor-server: {e}");
                std::process::exit(2);
            }
        },
        "latency" => mock::latency::run().await,
        "large" => mock::large::run().await,
        "cpu" => mock::cpu::run().await,
        "streams" => mock::streams::run().await,
        "admission" => mock::admission::run().await,
        "ledger" => mock::ledger::run().await,
        "console" => mock::console::run().await,
        "llama" => llama::throughput().await,
        "llama-ttft" => ttft::run().await,
        "large-llama" => large_llama::run().await,
        "llama-migration" => migration::run().await,
        "openai" => openai::run().await,
        "prefix" => prefix::run().await,
        "prefix-observed" => observed::run().await,
        #[cfg(feature = "cluster")]
        "cluster" => cluster::run().await,
        #[cfg(feature = "cluster")]
        "cluster-capacity" => capacity::run().await,
        #[cfg(feature = "cluster")]
        "cluster-capacity-llama" => capacity::run_llama().await,
        #[cfg(feature = "cluster")]
        "cluster-failover" => capacity::failover().await,
        #[cfg(feature = "cluster")]
        "cluster-store" => store::run().await,
        "all" => {
            mock::latency::run().await;
            mock::cpu::run().await;
            mock::streams::run().await;
            mock::admission::run().await;
        }
        other => {
            eprintln!(
                "unknown scenario {other}; use latency | large | cpu | streams | admission | ledger | console | llama | llama-ttft | large-llama | llama-migration | openai | prefix | prefix-observed | all (| cluster | cluster-capacity | cluster-capacity-llama | cluster-failover | cluster-store, built with --features cluster)"
            );
            std::process::exit(2);
        }
    }
}
