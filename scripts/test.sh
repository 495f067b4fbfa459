#!/usr/bin/env bash
# The whole test suite, from a fresh machine: provision the real engine and model
# (idempotent, cached), check formatting and lints, run every test.
# A missing engine fails the real-engine tests (provisioning above makes sure it exists).
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-shot build gains nothing from incremental compilation, and its cache more than
# doubles the target dir (a CI run once failed with "No space left on device").
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
avail_mb=$(( $(df -Pk "$target_dir" | awk 'NR==2 {print $4}') / 1024 ))
echo "[test] $avail_mb MiB free for $target_dir (a build from scratch takes about 5 GiB)" >&2
if (( avail_mb < 5 * 1024 )); then
  echo "[test] warning: less than 5 GiB free; the build may fail with 'No space left on device'" >&2
fi

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
timeout 900 cargo test -p orchestratord --features cluster-tests --lib --test cluster --locked -- --nocapture
echo "[test] all passed; $target_dir takes $(du -sh "$target_dir" | cut -f1)" >&2
