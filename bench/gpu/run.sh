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
#   OUT=/tmp/out bench/gpu/run.sh            (BENCH_ARGS="..." to override)
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
echo "== tests (STATESTREAM_SHARED_DIR=${STATESTREAM_SHARED_DIR:-unset})"
timeout 240 "$BIN/engine_cuda_test" \
  --gtest_output="xml:$OUT/engine_cuda_test.xml" >"$OUT/engine_cuda_test.log" 2>&1
test_rc=$?
grep -m1 "backend" "$OUT/engine_cuda_test.log"
grep -E -A3 "Failure" "$OUT/engine_cuda_test.log" | head -40
grep -E "FAILED|SKIPPED  \]" "$OUT/engine_cuda_test.log" | head -20
grep -E "^\[==========\]|PASSED|FAILED  \]" "$OUT/engine_cuda_test.log" | tail -4
# The worst difference reached per check kind (accuracy summary).
awk '/max \|diff\|/ {k=$0; sub(/^ *round [0-9]+ seq [0-9]+ /,"",k);
     sub(/ at [0-9]+/,"",k); sub(/: max.*/,"",k); sub(/ [0-9]+$/,"",k);
     v=$NF+0; if (v>m[k]) m[k]=v} END {for (k in m) printf "  worst %-28s %.3g\n", k, m[k]}' \
  "$OUT/engine_cuda_test.log"

echo "== bench"
timeout 300 "$BIN/cuda_bench" ${BENCH_ARGS:-} --json "$OUT/cuda_bench.json"
bench_rc=$?
if [ -z "${BENCH_ARGS:-}" ]; then
  echo "== 7.2b: split (about-fp32) activations; no graphs"
  timeout 120 "$BIN/cuda_bench" --shapes 7.2b --batches 1,256 \
    --prefill_seqs 16 --mode bf16-split --json "$OUT/cuda_bench_split.json" |
    grep -E "^7.2b"
  timeout 120 "$BIN/cuda_bench" --shapes 7.2b,0.1b --batches 1,64 \
    --prefill_seqs 1 --prefill 1024 --graphs 0 \
    --json "$OUT/cuda_bench_nographs.json" | grep -E "^(7.2b|0.1b)"
fi
echo "== done: tests rc=$test_rc bench rc=$bench_rc"
exit $(( test_rc != 0 || bench_rc != 0 ))
