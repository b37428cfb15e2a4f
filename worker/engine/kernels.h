// SPDX-License-Identifier: Apache-2.0
// The engine's hot loops, compiled once per instruction set (AVX-512, AVX2,
// portable scalar) and chosen at run time by GetKernels().
//
// Determinism contract: every kernel computes each output element with one
// fixed sequence of fp32 operations that depends only on the element's inputs
// — never on how many rows are processed together, where a row sits in a
// batch, how the output range is split over threads, or which instruction set
// runs. Dot products accumulate in 16 interleaved lanes (element i goes to lane
// i % 16) with fused multiply-adds and end in one fixed reduction tree; the
// AVX2 and scalar builds emulate the same 16 lanes. See docs/engine.md.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_H_

#include <cstdint>

namespace statestream::engine {

struct Kernels {
  // "avx512", "avx2", "scalar", or the opt-in "avx512bf16".
  const char* name;

  // y[t*ldy + o] = sum_i w[o*in + i] * x[t*ldx + i] for t < rows and
  // o in [o_begin, o_end). `w` is row-major [out][in] (PyTorch Linear layout),
  // fp32 or bf16 (upper half of an fp32).
  void (*gemm_f32)(const float* w, int in, const float* x, int ldx, int rows,
                   float* y, int ldy, int o_begin, int o_end);
  void (*gemm_bf16)(const uint16_t* w, int in, const float* x, int ldx,
                    int rows, float* y, int ldy, int o_begin, int o_end);
  // The same for int8 weights with one scale per output row:
  // y[t*ldy + o] = (sum_i w[o*in + i] * x[t*ldx + i]) * scale[o] — the dot
  // product of the exact integer values, then one multiplication.
  void (*gemm_i8)(const int8_t* w, const float* scale, int in, const float* x,
                  int ldx, int rows, float* y, int ldy, int o_begin, int o_end);

  // One RWKV-7 state step for one head of size n, in place on s[n][n]
  // (s[i][j]: i = value channel, j = key channel):
  //   s[i][j] = s[i][j]*w[j] + (sum_m s[i][m]*neg_kk[m]) * kka[j] + v[i]*k[j]
  // then y[i] = sum_j s[i][j]*r[j] with the updated state.
  void (*wkv7_step)(float* s, int n, const float* r, const float* w,
                    const float* k, const float* v, const float* neg_kk,
                    const float* kka, float* y);
};

// The best kernels this CPU supports (decided once, thread-safe).
const Kernels& GetKernels();
// Specific builds, for tests that compare them; nullptr when the CPU lacks
// the instruction set. "avx512bf16" is never chosen by GetKernels(): it is
// the AVX-512 build with gemm_bf16 on vdpbf16ps, which rounds the
// activations to bf16 and so is NOT bit-identical to the other builds (nor
// within the golden tolerance); it keeps the batch/thread independence of
// each row. See docs/engine-kernels.md.
const Kernels* GetKernelsByName(const char* name);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_H_
