//! orchestratord's services: everything between the HTTP layer and the engines.
//!
//! Layers, bottom up (a module uses only modules below it; `tests/module_graph.rs`
//! enforces this and that nothing imports the facade):
//!
//! * [`config`], [`metrics`], [`lifecycle`], [`auth`] — settings, metric names, task
//!   phases and the one place terminal frames are built, API keys and callers;
//! * [`task`] — a task's record, event log and token counter; [`sessions`];
//!   [`tenants`] — weights, quotas and what each tenant has in flight;
//! * [`pool`] — one actor per pool owning its queue, replicas and slots;
//! * [`runner`] — drives one task on an engine (watchdogs, retries, cancel);
//!   [`cluster`] — cluster mode's seam (a trait; no NATS here);
//! * [`table`] — the bounded task table; [`registry`] — the pools;
//! * `core` — the shared core and the one cancel path;
//! * [`streaming`], [`admission`], [`control`], [`manager`], `gauges` — readers,
//!   admission, control views and drain, replica supervision and reload, gauges
//!   republished from pool snapshots and engines;
//! * [`orchestrator`] — the data-plane facade, which nothing here imports.
//!
//! This crate never imports axum or any HTTP type, and never names a concrete engine:
//! engines are reached only through `adapter_api::WorkerAdapter`.

pub mod admission;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod control;
mod core;
mod gauges;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod orchestrator;
pub mod pool;
pub mod registry;
pub mod runner;
pub mod sessions;
pub mod streaming;
pub mod table;
pub mod task;
pub mod tenants;

pub use auth::{Caller, KeyRing, Role};
pub use cluster::{ClusterPort, ClusterStatus, QueueHint, ReplicatedTask};
pub use config::{PoolSpec, Quotas, Retention, ServiceConfig, Tenancy, TenantSpec};
pub use lifecycle::{CancelReason, Ending, Phase};
pub use manager::{ManagerConfig, PoolManager};
pub use orchestrator::Orchestrator;
pub use pool::{PoolError, PoolHandle};
pub use registry::{PoolRegistry, ReplicaOrigin};
pub use streaming::{Read, ReadItem, StreamReader};
pub use table::TableStats;
pub use task::log::{Frame, FrameRef};
