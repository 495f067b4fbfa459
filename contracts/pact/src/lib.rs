//! Pact tests live under `tests/`; this crate ships nothing.
