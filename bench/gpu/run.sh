#!/usr/bin/env bash
# The one GPU script (issue 10): probe the machine, get the CUDA test and
# bench binaries, run the GPU tests, benchmark, write details under $OUT.
#
# Binaries: prebuilt ones in out/gpu-bin/ (made by bench/gpu/prepare.sh on a
# Debian 12 build machine, with the Abseil/xxhash shared libraries they need
# in out/gpu-bin/lib) are used when present — the GPU machine may lack the
# Debian dev packages and its time is scarce. Otherwise the script builds
# engine-only (STATESTREAM_ENGINE_ONLY=ON, no gRPC/Redis) if Abseil, GTest,
# nlohmann-json and xxhash are found, and says what is missing if not.
# Golden files: $STATESTREAM_SHARED_DIR, else out/gpu-testdata if carried.
#
# Time budget: BUDGET_S seconds in all (default 540; a device command may
# run 600), counted from the start. Steps run in this order, each under
# min(its own cap, what is left): x060 tests (cap 150 s), x070 tests (150),
# x060 bench (1.6B: batch 1/64/256 and prefill; 120), x070 bench (0.1B,
# 1.5B, 7.2B; 240), then the 7.2B split-activation and no-graph runs (90
# each). A step with under 20 s left is skipped and says so.
#
#   OUT=/tmp/out bench/gpu/run.sh            (BENCH_ARGS="..." to override
#                                             the x070 bench's arguments)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/statestream-gpu}
mkdir -p "$OUT"
LOG="$OUT/run.log"
exec > >(tee "$LOG") 2>&1

export PATH="$PATH:/usr/local/nvidia/bin:/usr/local/cuda/bin"
echo "== probe"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader || echo "nvidia-smi failed"
command -v nvcc >/dev/null && nvcc --version | tail -1
uname -m; (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
for p in libabsl-dev libgtest-dev nlohmann-json3-dev libxxhash-dev; do
  dpkg -s "$p" >/dev/null 2>&1 && echo "$p: yes" || echo "$p: no"
done
echo "cmake: $(cmake --version 2>/dev/null | head -1)  ninja: $(ninja --version 2>/dev/null)"

# The CUDA runtime libraries the binaries load (cudart, cublas, cublasLt).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
if ! ls /usr/local/cuda/lib64/libcublas.so.13 >/dev/null 2>&1; then
  d=$(find /usr /opt -name 'libcublas.so.13' 2>/dev/null | head -1)
  [ -n "$d" ] && export LD_LIBRARY_PATH="$(dirname "$d"):${LD_LIBRARY_PATH:-}"
fi

BIN=""
if [ -x out/gpu-bin/engine_cuda_test ] && [ -x out/gpu-bin/cuda_bench ]; then
  echo "== using prebuilt binaries from out/gpu-bin"
  BIN=out/gpu-bin
  export LD_LIBRARY_PATH="$PWD/out/gpu-bin/lib:${LD_LIBRARY_PATH}"
else
  missing=""
  [ -d /usr/lib/x86_64-linux-gnu/cmake/absl ] || missing+=" absl"
  [ -f /usr/include/gtest/gtest.h ] || missing+=" gtest"
  [ -f /usr/include/nlohmann/json.hpp ] || missing+=" nlohmann-json"
  [ -f /usr/include/xxhash.h ] || missing+=" xxhash"
  if [ -n "$missing" ]; then
    echo "error: cannot build here, missing:$missing (carry out/gpu-bin)"
    exit 1
  fi
  echo "== building (engine only)"
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DSTATESTREAM_ENGINE_ONLY=ON -DSTATESTREAM_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
    >"$OUT/configure.log" || { tail -20 "$OUT/configure.log"; exit 1; }
  cmake --build build-gpu -j16 --target engine_cuda_test cuda_bench || exit 1
  BIN=build-gpu/worker/engine
fi
ldd "$BIN/engine_cuda_test" | grep "not found" && echo "error: missing libraries"

if [ -z "${STATESTREAM_SHARED_DIR:-}" ] && [ -d out/gpu-testdata/testdata ]; then
  export STATESTREAM_SHARED_DIR="$PWD/out/gpu-testdata"
fi
BUDGET=${BUDGET_S:-540}
# Seconds for a step: min(cap, budget left); 0 when under 20 s are left.
cap() {
  local left=$(( BUDGET - SECONDS ))
  if (( left < 20 )); then echo 0; elif (( left < $1 )); then echo "$left"; else echo "$1"; fi
}
# step NAME CAP CMD...: runs CMD under the step's time limit.
step() {
  local name=$1 t
  t=$(cap "$2")
  shift 2
  if (( t == 0 )); then echo "== $name: skipped (budget spent)"; return 124; fi
  echo "== $name (limit ${t}s, ${SECONDS}s used)"
  timeout "$t" "$@"
}

# tests NAME FILTER: one engine_cuda_test run, its log/XML and a summary
# (first backend line, failures, skips, the worst difference per check kind).
tests() {
  local name=$1 log="$OUT/$1.log" t
  t=$(cap 150)
  if (( t == 0 )); then echo "== $name: skipped (budget spent)"; return 124; fi
  echo "== $name (limit ${t}s, ${SECONDS}s used;" \
    "STATESTREAM_SHARED_DIR=${STATESTREAM_SHARED_DIR:-unset})"
  timeout "$t" "$BIN/engine_cuda_test" --gtest_filter="$2" \
    --gtest_output="xml:$OUT/$name.xml" >"$log" 2>&1
  local rc=$?
  grep -m1 "backend" "$log"
  grep -E -A3 "Failure" "$log" | head -40
  grep -E "FAILED|SKIPPED  \]" "$log" | head -20
  grep -E "^\[==========\]|PASSED|FAILED  \]" "$log" | tail -4
  awk '/max \|diff\|/ {k=$0; sub(/^ +/,"",k); sub(/round [0-9]+ seq [0-9]+ /,"",k);
       sub(/ at [0-9]+/,"",k); sub(/: max.*/,"",k); sub(/ [0-9]+$/,"",k);
       v=$NF+0; if (v>m[k]) m[k]=v} END {for (k in m) printf "  worst %-36s %.3g\n", k, m[k]}' \
    "$log" | sort
  return $rc
}
# x060 first: implemented without a GPU, never run before the first device
# session that carries it (docs/cuda.md).
tests engine_cuda_test_x060 '*Rwkv6*'
test6_rc=$?
tests engine_cuda_test '-*Rwkv6*'
test_rc=$?

step "bench x060 1.6b" 120 "$BIN/cuda_bench" --arch x060 --shapes 1.6b \
  --batches 1,64,256 --prefill 2048 --prefill_seqs 1,16 \
  --json "$OUT/cuda_bench_x060.json"
bench6_rc=$?
step "bench x070" 240 "$BIN/cuda_bench" ${BENCH_ARGS:-} --json "$OUT/cuda_bench.json"
bench_rc=$?
if [ -z "${BENCH_ARGS:-}" ]; then
  step "7.2b: split (about-fp32) activations" 90 "$BIN/cuda_bench" \
    --shapes 7.2b --batches 1,256 --prefill_seqs 16 --mode bf16-split \
    --json "$OUT/cuda_bench_split.json" | grep -E "^(7.2b|==)"
  step "7.2b, 0.1b: no graphs" 90 "$BIN/cuda_bench" --shapes 7.2b,0.1b \
    --batches 1,64 --prefill_seqs 1 --prefill 1024 --graphs 0 \
    --json "$OUT/cuda_bench_nographs.json" | grep -E "^(7.2b|0.1b|==)"
fi
echo "== done in ${SECONDS}s: tests x060 rc=$test6_rc x070 rc=$test_rc," \
  "bench x060 rc=$bench6_rc x070 rc=$bench_rc"
exit $(( test6_rc != 0 || test_rc != 0 || bench6_rc != 0 || bench_rc != 0 ))
