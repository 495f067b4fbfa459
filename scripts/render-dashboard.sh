#!/usr/bin/env bash
# Render the overview dashboard's main panels to docs/dashboard.png from real data:
# the observability test runs orchestratord (mock pools) under its workload for
# ORCH_OBS_SECONDS (default 90), a real Prometheus scrapes it every second, and
# scripts/render_dashboard.py draws the panels from Prometheus' query_range.
#
#   scripts/render-dashboard.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
MATPLOTLIB_VERSION=3.11.2

scripts/provision.sh
eval "$(scripts/provision.sh --print | sed 's/^/export /')"
if ! "$ORCH_PYTHON" -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null; then
  echo "[render] installing matplotlib $MATPLOTLIB_VERSION into the project venv" >&2
  "$ORCH_PYTHON" -m pip install -q "matplotlib==$MATPLOTLIB_VERSION"
fi
out=$(realpath -m "${1:-docs/dashboard.png}")
mkdir -p "$(dirname "$out")"
ORCH_OBS_SECONDS=${ORCH_OBS_SECONDS:-90} ORCH_DASHBOARD_PNG=$out \
  cargo test -p orchestratord --test observability prometheus_scrapes -- --nocapture
echo "[render] wrote $out" >&2
