//! orchestratord's services: everything between the HTTP layer and the engines.
//!
//! * [`admission`] validates and enqueues tasks (bounded queues, full-policies, ETAs);
//! * [`dispatch`] pulls work when a replica slot is free and drives the engine stream;
//! * [`task_log`] / [`reader`] are the streaming bridge (replay, resume, many readers);
//! * [`sessions`] tracks turns, budgets and KV affinity;
//! * [`pool`] holds each pool's queue and replicas; [`orchestrator`] is the facade.
//!
//! This crate never imports axum or any HTTP type, and never names a concrete engine:
//! engines are reached only through `adapter_api::WorkerAdapter`.

pub mod admission;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod manager;
pub mod metrics;
pub mod orchestrator;
pub mod pool;
pub mod reader;
pub mod selftest;
pub mod sessions;
pub mod task;
pub mod task_log;

pub use config::{PoolSpec, ServiceConfig};
pub use manager::{ManagerConfig, PoolManager};
pub use orchestrator::{Orchestrator, PoolError};
pub use reader::{ReadItem, StreamReader};
pub use task_log::Frame;
