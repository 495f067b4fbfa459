#!/usr/bin/env bash
# The main job: provision llama-server and the bundled model (first run ~10 min on
# 2 cores, cached after), then serve a real llama.cpp pool on loopback.
#   scripts/run.sh [extra orchestratord args, e.g. --addr 127.0.0.1:9000]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/provision.sh
eval "$(scripts/provision.sh --print | sed 's/^/export /')"
cargo build --release --locked --bin orchestratord
exec target/release/orchestratord --config "${ORCH_CONFIG_FILE:-examples/quickstart.toml}" "$@"
