// SPDX-License-Identifier: Apache-2.0
// The AVX-512 vector type of kernels_impl.h, shared by the AVX-512 kernel
// files (kernels_avx512.cc, kernels_avx512_onerow.cc). Include it only from
// files compiled with -mavx512f: like kernels_avx512_reduce.h it is TU-local
// (anonymous namespace), so no out-of-line copy can leak into code built for
// another instruction set. Internal to the engine.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_AVX512_V_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_AVX512_V_H_

#include <immintrin.h>

#include <cstdint>

#include "worker/engine/kernels_avx512_reduce.h"
#include "worker/engine/kernels_reduce8.h"

namespace statestream::engine {
namespace {

struct V {
  __m512 v;
  // 24 accumulators, 3 widened weight vectors, a broadcast and the mask
  // of 32 zmm.
  static constexpr int kRows = 8, kPanels = 3;
  // bf16 (gemm_bf16's two terms and two chains): even, odd and block sums
  // for 2 rows x 2 terms x 2 panels, or one row x 2 terms x 4 panels.
  static constexpr int kBf16Rows = 2, kBf16Panels = 2, kBf16OneRowPanels = 4;
  static V Zero() { return {_mm512_setzero_ps()}; }
  static V Set1(float f) { return {_mm512_set1_ps(f)}; }
  static V Load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static __mmask16 Mask(int n) {
    return static_cast<__mmask16>((1u << n) - 1u);
  }
  static V LoadPartial(const float* p, int n) {
    return {_mm512_maskz_loadu_ps(Mask(n), p)};
  }
  static V LoadStep(const float* p, int) { return Load(p); }
  // 16 outputs x 2 inputs: input 0 in the low half of each 32-bit lane
  // (shifted up), input 1 in the high half (masked).
  static V LoadStep(const uint16_t* p, int s) {
    const __m512i b = _mm512_loadu_si512(p);
    return {_mm512_castsi512_ps(
        s == 0 ? _mm512_slli_epi32(b, 16)
               : _mm512_and_si512(
                     b, _mm512_set1_epi32(static_cast<int>(0xffff0000u))))};
  }
  static V Fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static V Mul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static V Add(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
  void Store(float* p) const { _mm512_storeu_ps(p, v); }
  void StorePartial(float* p, int n) const {
    _mm512_mask_storeu_ps(p, Mask(n), v);
  }
  // The ReduceAdd() tree for 16 vectors at once (kernels_avx512_reduce.h).
  static void Reduce16(const V* a, float* out) {
    __m512 r[16];
    for (int k = 0; k < 16; ++k) r[k] = a[k].v;
    Reduce16Ps(r, out);
  }
  float ReduceAdd() const {
    return ReduceAdd8(
        _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
  }
};

}  // namespace
}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_AVX512_V_H_
