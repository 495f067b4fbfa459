#!/usr/bin/env bash
# The whole test suite, from a fresh machine: provision the real engine and model
# (idempotent, cached), check formatting and lints, run every test.
# A missing engine fails the real-engine tests (provisioning above makes sure it exists).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/provision.sh
eval "$(scripts/provision.sh --print | sed 's/^/export /')"

echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] cargo test (default members)" >&2
cargo test --locked -- --nocapture
# the pact crate on its own, so its reqwest features do not leak into the product crates
echo "[test] cargo test -p orch-pacts" >&2
cargo test -p orch-pacts --locked -- --nocapture
# cluster mode on its own (a cargo feature; the standalone build above has no NATS):
# its NATS side against three real nats-servers, then the three-instance scenarios
# (kill -9 of the leader, of the client's instance, of nats-servers)
echo "[test] cluster mode: clippy, orch-cluster, three-instance scenarios" >&2
cargo clippy -p orch-cluster -p orchestratord --features orchestratord/cluster-tests --all-targets --locked -- -D warnings
cargo test -p orch-cluster --locked -- --nocapture
timeout 900 cargo test -p orchestratord --features cluster-tests --test cluster --locked -- --nocapture
