//! orchestratord's services: everything between the HTTP layer and the engines.
//!
//! Layers, bottom up (a module uses only modules below it; `tests/module_graph.rs`
//! enforces this and that nothing imports the facade):
//!
//! * [`config`], [`metrics`], `lifecycle`, [`auth`] — settings, metric names, task
//!   phases and the one place terminal frames are built, API keys and callers;
//! * `task` — a task's record, event log and token counter; `sessions`;
//!   `tenants` — weights, quotas and what each tenant has in flight;
//! * `pool` — one actor per pool owning its queue, replicas and slots;
//! * `runner` — drives one task on an engine (watchdogs, retries, cancel);
//!   [`home`] — where admitted tasks live: the seam a backend implements;
//! * `table` — the bounded task table; `registry` — the pools;
//! * `local` — this instance's pools as the default home, and [`LocalPools`], the
//!   narrow handle a replicated home runs tasks with;
//! * `core` — the shared core and the one cancel path;
//! * `streaming`, `admission`, `control`, [`manager`], `gauges` — readers,
//!   admission, control views and drain, replica supervision and reload, gauges
//!   republished from pool snapshots and engines;
//! * `console` — the operator console's snapshot and its sampler (`recent`, on the
//!   pool's layer, keeps what it charts);
//! * `orchestrator` — the data-plane facade ([`Orchestrator`]), which nothing here
//!   imports.
//!
//! The public surface is what embedders, `orch-api`, the binary and a task home
//! need: the facade, the pool registry and manager, the [`home`] seam, keys and
//! callers, settings, metric names, and the frame and record types readers and homes
//! handle. Everything else is private (`tests/public_surface.rs` holds the list).
//!
//! This crate never imports axum or any HTTP type, and never names a concrete engine:
//! engines are reached only through `adapter_api::WorkerAdapter`.

pub mod accounts;
mod admission;
pub mod auth;
pub mod config;
mod console;
mod control;
mod core;
mod gauges;
pub mod home;
mod lifecycle;
mod local;
pub mod manager;
pub mod metrics;
mod orchestrator;
mod pool;
mod recent;
mod registry;
mod runner;
mod sessions;
mod streaming;
mod table;
mod task;
mod tenants;

pub use accounts::Accounts;
pub use auth::{Caller, KeyRing, Role};
pub use config::{PoolSpec, Quotas, Retention, ServiceConfig, Tenancy, TenantSpec};
pub use home::{Admitted, PoolLoad, TaskHome};
pub use lifecycle::{CancelReason, Ending, Phase};
pub use local::{LocalPools, LocalReplica, NewTask};
pub use manager::{ManagerConfig, PoolManager};
pub use orchestrator::{Orchestrator, Stats};
pub use pool::{PoolError, PoolHandle, Snapshot};
pub use registry::{PoolRegistry, ReplicaOrigin};
pub use streaming::{Read, ReadItem, StreamReader};
pub use table::TableStats;
pub use task::log::{Frame, FrameRef};
pub use task::{Resumed, TaskRecord};
