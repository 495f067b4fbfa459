//! Scheduling algorithms with no I/O and no async runtime.
//!
//! Owns the bounded two-lane priority queue ([`queue::BoundedQueue`]), replica
//! placement ([`placement`]) and the start-time estimate ([`eta`]). Everything here is a
//! pure function or a plain data structure, unit- and property-tested without tokio.

pub mod eta;
pub mod placement;
pub mod queue;

pub use queue::{Admitted, BoundedQueue, QueueConfig, QueueFull};
