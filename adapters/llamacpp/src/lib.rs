//! `llamacpp`: llama.cpp's `llama-server` behind [`adapter_api::WorkerAdapter`].
//!
//! * [`client`]: the native HTTP API (`/completion` streaming, `/health`, `/props`,
//!   `/slots`), with connect / first-token / idle timeouts and pooled keep-alive
//!   connections; cancel by dropping the upstream request, verified on `/slots`.
//! * [`launcher`]: starts `llama-server` child processes on free loopback ports.
//! * [`model`]: model files and their `sha256:` digests (computed once, cached).
//! * [`orphans`]: pid files, and stopping engines an earlier instance left behind.

pub mod client;
pub mod identity;
pub mod launcher;
pub mod model;
pub mod orphans;
pub mod stream;
mod wire;

pub use client::{ClientOptions, LlamaCppAdapter};
pub use launcher::{LlamaServerConfig, LlamaServerLauncher, RemoteLauncher};

pub const ENGINE: &str = "llamacpp";
