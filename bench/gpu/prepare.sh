#!/usr/bin/env bash
# Builds the CUDA test and bench binaries here (Debian 12 + nvcc) and puts
# them, the non-system shared libraries they load and the golden files into
# out/ (git-ignored) for bench/gpu/run.sh on the GPU machine:
#   out/gpu-bin/{engine_cuda_test,cuda_bench,lib/*}   out/gpu-testdata/testdata/*
# Pass both folders as the device run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD_DIR:-build-cuda}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSTATESTREAM_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc >/dev/null
cmake --build "$BUILD" -j "${JOBS:-2}" --target engine_cuda_test cuda_bench
rm -rf out/gpu-bin && mkdir -p out/gpu-bin/lib
cp "$BUILD/worker/engine/engine_cuda_test" "$BUILD/worker/engine/cuda_bench" out/gpu-bin/
# Everything but glibc, libstdc++/libgcc and the CUDA libraries (the GPU
# machine has its own, matching its driver).
ldd out/gpu-bin/engine_cuda_test out/gpu-bin/cuda_bench | awk '/=> \// {print $3}' |
  sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|libcu[A-Za-z]*)\.so' |
  xargs -r cp -L -t out/gpu-bin/lib/
SHARED=${STATESTREAM_SHARED_DIR:-../shared}
rm -rf out/gpu-testdata && mkdir -p out/gpu-testdata/testdata
for f in rwkv7-tiny.pth rwkv7-tiny.safetensors rwkv7-tiny-bf16.pth rwkv7-tiny.golden.json \
  rwkv6-tiny.pth rwkv6-tiny.golden.json; do
  cp "$SHARED/testdata/$f" out/gpu-testdata/testdata/
done
du -sh out/gpu-bin out/gpu-testdata
