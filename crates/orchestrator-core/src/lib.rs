//! Scheduling algorithms with no I/O and no async runtime.
//!
//! Owns the bounded two-lane priority queue ([`queue::BoundedQueue`]) with weighted
//! fair sharing across tenants ([`fair`]), the tokens-per-minute bucket ([`bucket`]),
//! replica placement ([`placement`]) and the start-time and on-time estimates ([`eta`]). Everything here is a
//! pure function or a plain data structure, unit- and property-tested without tokio.

pub mod bucket;
pub mod eta;
pub mod fair;
pub mod placement;
pub mod prefix;
pub mod queue;

pub use queue::{Admitted, BoundedQueue, Fairness, Flow, QueueConfig, QueueFull};
