// SPDX-License-Identifier: Apache-2.0
// Device helpers shared by the kernel files (cuda_kernels.cu,
// rwkv6_kernels.cu). Internal to the CUDA backend.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_DEVICE_UTIL_CUH_
#define STATESTREAM_WORKER_ENGINE_CUDA_DEVICE_UTIL_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "worker/engine/cuda/cuda_kernels.cuh"

namespace statestream::engine::cuda {

__device__ __forceinline__ void Put(const ActOut& o, int64_t i, float v) {
  if (o.f32 != nullptr) o.f32[i] = v;
  if (o.hi != nullptr) {
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    o.hi[i] = h;
    if (o.lo != nullptr) o.lo[i] = __float2bfloat16_rn(v - __bfloat162float(h));
  }
}

__device__ __forceinline__ float Sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024). `sh` holds
// 32 floats; every thread gets the result.
__device__ inline float BlockSum(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = WarpSum(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < warps ? sh[lane] : 0.0f;
  v = WarpSum(v);
  __syncthreads();  // sh may be reused right after
  return v;
}

// GroupNorm of one head: thread x of a block of n threads holds y, its
// channel's value; returns (y - mean) / sqrt(var + eps) * w[ch] + b[ch]
// over the block (population variance; `sh` 32 floats of shared memory).
__device__ __forceinline__ float GroupNormLane(float y, int n, float eps,
                                               const float* w, const float* b,
                                               int ch, float* sh) {
  const float mean = BlockSum(y, sh) / n;
  const float d = y - mean;
  const float var = BlockSum(d * d, sh) / n;
  return d / sqrtf(var + eps) * w[ch] + b[ch];
}

__device__ __forceinline__ float Load(const float* p, int64_t i) {
  return p[i];
}
__device__ __forceinline__ float Load(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

inline int Blocks(int64_t n, int per) {
  return static_cast<int>((n + per - 1) / per);
}

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_DEVICE_UTIL_CUH_
