#!/usr/bin/env bash
# Peers for side-by-side benchmarks (not needed by the tests): LiteLLM's proxy in its
# own virtualenv under the cache dir. Idempotent; prints the proxy's path.
set -euo pipefail
CACHE=${ORCH_CACHE_DIR:-$HOME/.cache/orchestratord}
LITELLM_VERSION=${ORCH_LITELLM_VERSION:-}
VENV=$CACHE/venv-litellm
say() { printf '[provision-bench] %s\n' "$*" >&2; }
if [[ ! -x "$VENV/bin/litellm" ]]; then
  say "installing litellm[proxy]${LITELLM_VERSION:+==$LITELLM_VERSION} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "litellm[proxy]${LITELLM_VERSION:+==$LITELLM_VERSION}"
fi
echo "$VENV/bin/litellm"
