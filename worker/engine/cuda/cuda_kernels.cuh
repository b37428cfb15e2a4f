// SPDX-License-Identifier: Apache-2.0
// The RWKV-7 kernels (everything but the matrix products, which are cuBLAS).
// Rows are a chunk's tokens, row-major [rows][width]; per-row tables come
// from batch_plan.h. `states` is a device table of per-slot state pointers.
// All launches go to `stream`; nothing here synchronises.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_CUDA_KERNELS_CUH_
#define STATESTREAM_WORKER_ENGINE_CUDA_CUDA_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace statestream::engine::cuda {

// Where an activation that feeds a matrix product is written: any of an
// fp32 copy, a bf16 copy (hi) and the bf16 rounding remainder (lo).
struct ActOut {
  float* f32 = nullptr;
  __nv_bfloat16* hi = nullptr;
  __nv_bfloat16* lo = nullptr;
};

// Per-row tables of a chunk (device pointers into one packed buffer).
struct RowTables {
  const int32_t* tokens;
  const int32_t* slot;
  const int32_t* flags;
  const int32_t* seg_slot;
  const int32_t* seg_begin;
  const int32_t* seg_end;
  const int32_t* logit_rows;
};

// out[t] = LayerNorm(in[map ? map[t] : t]) for t < rows; width c.
void LaunchLayerNorm(const float* in_f32, const __nv_bfloat16* in_bf16,
                     const int32_t* map, int rows, int c, const float* w,
                     const float* b, float eps, ActOut out,
                     cudaStream_t stream);

// Token shift: out_k[t] = xa[t] + (prev - xa[t]) * param_k, prev being row
// t-1 or, for a segment's first row, states[slot][shift_offset ...].
struct ShiftMix {
  int n = 0;
  const float* param[6];
  ActOut out[6];
};
void LaunchShiftMix(const float* xa, int rows, int c, RowTables tab,
                    float* const* states, int64_t shift_offset,
                    const ShiftMix& mix, cudaStream_t stream);

enum class Act { kTanh, kSigmoid };
void LaunchActivation(float* x, int64_t n, Act act, cudaStream_t stream);

// Decay, in-context rate, value residual, kk and the k adjustment, per
// (row, head). In: r? no; w (LoRA out), a (LoRA out), k, v, vl (v LoRA out,
// unused in layer 0). Out: w = decay multiplier, k adjusted, v mixed,
// v_first (layer 0 writes it), nkk = -kk, kka = kk * a.
struct PrepArgs {
  const float *w0, *a0, *v0, *k_k, *k_a;
  float *w, *a, *k, *v, *v_first, *nkk, *kka;
  const float* vl;
  bool first_layer;
};
void LaunchPrep(int rows, int c, int h, int n, const PrepArgs& args,
                cudaStream_t stream);

// The recurrence, one block per (segment, head); state slice at
// states[slot] + wkv_offset, layout [H][N value][N key]. Writes y.
void LaunchWkv7(int segments, int c, int h, int n, RowTables tab,
                float* const* states, int64_t wkv_offset, const float* r,
                const float* w, const float* k, const float* v,
                const float* nkk, const float* kka, float* y,
                cudaStream_t stream);

// GroupNorm(y) + bonus (r.k.r_k) v, times g, to `out`; the last row of each
// segment also stores xa into states[slot][shift_offset ...].
struct PostArgs {
  const float *y, *r, *k, *v, *g, *r_k, *lnx_w, *lnx_b, *xa;
  float eps;
  int64_t shift_offset;
};
void LaunchPost(int rows, int c, int h, int n, RowTables tab,
                float* const* states, const PostArgs& args, ActOut out,
                cudaStream_t stream);

// out = relu(x)^2 over [rows][f]; the last row of each segment also stores
// xa[t] (width c) into states[slot][shift_offset ...].
void LaunchReluSq(const float* x, int rows, int f, int c, RowTables tab,
                  float* const* states, const float* xa, int64_t shift_offset,
                  ActOut out, cudaStream_t stream);

// Uniform [lo, hi) values from a counter-based hash (benchmarks).
void LaunchFillUniform(float* f32, __nv_bfloat16* bf16, int64_t n, float lo,
                       float hi, uint64_t seed, cudaStream_t stream);
// fp32 -> bf16 (round to nearest even).
void LaunchToBF16(const float* in, __nv_bfloat16* out, int64_t n,
                  cudaStream_t stream);

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_CUDA_KERNELS_CUH_
