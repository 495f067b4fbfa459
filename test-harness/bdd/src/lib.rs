//! Cucumber journeys live in `tests/`: see `tests/journeys.rs` and `tests/features/`.
