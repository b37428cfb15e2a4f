// SPDX-License-Identifier: Apache-2.0
// The RWKV-6 kernels that RWKV-7 does not share (LayerNorm, the plain token
// shift, activations and relu² come from cuda_kernels.cuh). Same
// conventions: rows are a chunk's tokens, [rows][width] row-major; `states`
// is the device table of per-slot state pointers; every launch goes to
// `stream` and nothing synchronises. Equations: rwkv6.cc.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_KERNELS_CUH_
#define STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_KERNELS_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "worker/engine/cuda/cuda_kernels.cuh"

namespace statestream::engine::cuda {

// The five data-dependent mixes, in the order of time_maa_w1/w2.
inline constexpr int kMixes6 = 5;  // w, k, v, r, g

// Token shift of the time mix: d[t] = prev - xa[t] (prev = row t-1, or
// states[slot][shift_offset ...] for a segment's first row) and
// xxx[t] = xa[t] + d[t] * maa_x.
void LaunchShift6(const float* xa, int rows, int c, RowTables tab,
                  float* const* states, int64_t shift_offset,
                  const float* maa_x, float* d, float* xxx,
                  cudaStream_t stream);

// out_f[t] = xa[t] + d[t] * (maa[f] + mf[f][t]) for the five mixes; `mf` is
// [5][rows][c] (the LoRA products).
struct Mix6 {
  const float* maa[kMixes6];
  ActOut out[kMixes6];
};
void LaunchMix6(const float* xa, const float* d, const float* mf, int rows,
                int c, const Mix6& mix, cudaStream_t stream);

// The recurrence, one block per (segment, head); state slice at
// states[slot] + wkv_offset, layout [H][N key][N value]. The decay is
// exp(-exp(decay + w_lora)) per key channel, u the bonus (time_faaaa).
// Writes y (the read-out uses the state before each token's update).
struct Wkv6Args {
  const float *r, *k, *v, *w_lora, *decay, *u;
  float* y;
};
void LaunchWkv6(int segments, int c, int h, int n, RowTables tab,
                float* const* states, int64_t wkv_offset, const Wkv6Args& args,
                cudaStream_t stream);

// GroupNorm(y) per head (ln_x) times silu(g), to `out`; the last row of
// each segment also stores xa into states[slot][shift_offset ...].
struct Post6Args {
  const float *y, *g, *lnx_w, *lnx_b, *xa;
  float eps;
  int64_t shift_offset;
};
void LaunchPost6(int rows, int c, int h, int n, RowTables tab,
                 float* const* states, const Post6Args& args, ActOut out,
                 cudaStream_t stream);

// x += sigmoid(r) * kv over n floats (the channel mix's gated residual).
void LaunchGatedAdd(float* x, const float* r, const float* kv, int64_t n,
                    cudaStream_t stream);

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_KERNELS_CUH_
