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

// int8 weight matrices are stored packed in tiles of 16 outputs x 64 inputs
// (1 KiB), the layout of an AMX B tile and of a VNNI row of 16 outputs:
// within a tile, byte (k4 * 64 + n * 4 + j) holds w[16 g + n][64 c + 4 k4 + j]
// for tile (g, c); tiles run over c first (one output group's tiles are
// contiguous), then g. Missing outputs and inputs (the last group, the last
// chunk) are zero. See docs/engine-kernels.md.
inline constexpr int kI8TileOut = 16;
inline constexpr int kI8TileIn = 64;
inline constexpr int kI8TileBytes = kI8TileOut * kI8TileIn;
inline int64_t I8Chunks(int in) { return (in + kI8TileIn - 1) / kI8TileIn; }
inline int64_t I8PackedBytes(int out, int in) {
  return (out + kI8TileOut - 1) / kI8TileOut * I8Chunks(in) * kI8TileBytes;
}
inline int64_t I8PackedOffset(int o, int i, int in) {
  return (o / kI8TileOut * I8Chunks(in) + i / kI8TileIn) * kI8TileBytes +
         (i % kI8TileIn) / 4 * 64 + o % kI8TileOut * 4 + i % 4;
}

struct Kernels {
  // "avx512", "avx512+amx", "avx512+vnni", "avx2", "scalar", or the opt-in
  // "avx512bf16".
  const char* name;

  // y[t*ldy + o] = sum_i w[o*in + i] * x[t*ldx + i] for t < rows and
  // o in [o_begin, o_end). `w` is row-major [out][in] (PyTorch Linear layout),
  // fp32 or bf16 (upper half of an fp32).
  void (*gemm_f32)(const float* w, int in, const float* x, int ldx, int rows,
                   float* y, int ldy, int o_begin, int o_end);
  void (*gemm_bf16)(const uint16_t* w, int in, const float* x, int ldx,
                    int rows, float* y, int ldy, int o_begin, int o_end);
  // int8 weights (packed as above) times int8 activations, both exact
  // integers. o_begin and o_end are multiples of 16 or o_end is the matrix's
  // last output. `xq` holds
  // each row's activations quantized to uint8 with zero point 128 (see
  // QuantizeRows in ops.h; row stride ldq), `xscale` one scale per row,
  // `wscale` one per output row and `wsum[o]` = sum_i w[o][i]. Rows of xq
  // are padded with 128 to ldq (a multiple of 64) and the row count to a
  // multiple of 16 (rows of 128), so kernels may read whole tiles. Then
  //   y[t*ldy + o] = float(sum_i w[o][i] * (xq[t*ldq + i] - 128))
  //                  * xscale[t] * wscale[o]
  // (two fp32 multiplications in that order). The integer sum is exact
  // whatever its order, so every build — VNNI or not — gives the same bits.
  void (*gemm_i8)(const int8_t* w, const float* wscale, const int32_t* wsum,
                  int in, const uint8_t* xq, const float* xscale, int ldq,
                  int rows, float* y, int ldy, int o_begin, int o_end);

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
// the instruction set. GetKernels()'s AVX-512 build does gemm_i8 on AMX
// tiles from 16 rows where the CPU has AMX-INT8 ("avx512+amx"), else on
// vpdpbusd where it has AVX512_VNNI ("avx512+vnni") — exact integer sums,
// bit-identical to the others; "avx512amx" / "avx512vnni" ask for them.
// "avx512bf16" is never chosen by GetKernels(): it is
// the AVX-512 build with gemm_bf16 on vdpbf16ps, which rounds the
// activations to bf16 and so is NOT bit-identical to the other builds (nor
// within the golden tolerance); it keeps the batch/thread independence of
// each row. See docs/engine-kernels.md.
const Kernels* GetKernelsByName(const char* name);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_H_
