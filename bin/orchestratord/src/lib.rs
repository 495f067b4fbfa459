//! orchestratord as a library: config parsing and wiring, so integration tests and
//! embedders start the same server the binary runs.

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod config;
pub mod engines;
pub mod gpu;
pub mod notify;
pub mod reconfig;
pub mod selftest;
pub mod serve;
pub mod server;
pub mod settings;
pub mod telemetry;

pub use config::Config;
pub use server::{start, start_with, Server, StartError, StartOptions};
