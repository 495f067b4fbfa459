#!/usr/bin/env bash
# The whole test suite, from a fresh machine: provision the real engine and model
# (idempotent, cached), check formatting and lints, run every test.
# REQUIRE_REAL_LLAMA defaults to 1 here: a missing engine fails the real-engine tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/provision.sh
eval "$(scripts/provision.sh --print | sed 's/^/export /')"
export REQUIRE_REAL_LLAMA=${REQUIRE_REAL_LLAMA:-1}

echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] cargo test" >&2
cargo test --workspace --locked -- --nocapture
