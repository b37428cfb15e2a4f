// SPDX-License-Identifier: Apache-2.0
// AVX2+FMA kernels emulating 16 lanes with two 8-lane registers, so results
// are bit-identical to kernels_avx512.cc. Compiled with -mavx2 -mfma.
#include <immintrin.h>

#include "worker/engine/kernels.h"
#include "worker/engine/kernels_impl.h"
#include "worker/engine/kernels_reduce8.h"

namespace statestream::engine {
namespace {

inline __m256i Mask8(int n) {
  // Lanes [0, n) set, n clamped to [0, 8].
  n = n < 0 ? 0 : (n > 8 ? 8 : n);
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

struct V {
  __m256 lo, hi;  // lanes 0..7 and 8..15
  // 8 accumulator and 4 weight registers of 16.
  static constexpr int kRows = 4, kPanels = 1;
  // bf16: 6 accumulators (even, odd, block sums for 2 terms) of 8.
  static constexpr int kBf16Rows = 1, kBf16Panels = 1, kBf16OneRowPanels = 1;
  static V Zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static V Set1(float f) { return {_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
  static V Load(const float* p) {
    return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
  }
  static V LoadPartial(const float* p, int n) {
    return {_mm256_maskload_ps(p, Mask8(n)),
            _mm256_maskload_ps(p + 8, Mask8(n - 8))};
  }
  static V LoadStep(const float* p, int) { return Load(p); }
  // Outputs 0-7 x 2 inputs, then outputs 8-15: input 0 in the low half of
  // each 32-bit lane (shifted up), input 1 in the high half (masked).
  static V LoadStep(const uint16_t* p, int s) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i b =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16));
    if (s == 0) {
      return {_mm256_castsi256_ps(_mm256_slli_epi32(a, 16)),
              _mm256_castsi256_ps(_mm256_slli_epi32(b, 16))};
    }
    const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    return {_mm256_castsi256_ps(_mm256_and_si256(a, hi)),
            _mm256_castsi256_ps(_mm256_and_si256(b, hi))};
  }
  static V Fma(V a, V b, V c) {
    return {_mm256_fmadd_ps(a.lo, b.lo, c.lo),
            _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
  }
  static V Mul(V a, V b) {
    return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
  }
  static V Add(V a, V b) {
    return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
  }
  void Store(float* p) const {
    _mm256_storeu_ps(p, lo);
    _mm256_storeu_ps(p + 8, hi);
  }
  void StorePartial(float* p, int n) const {
    _mm256_maskstore_ps(p, Mask8(n), lo);
    _mm256_maskstore_ps(p + 8, Mask8(n - 8), hi);
  }
  static void Reduce16(const V* a, float* out) {
    for (int j = 0; j < 16; ++j) out[j] = a[j].ReduceAdd();
  }
  float ReduceAdd() const { return ReduceAdd8(_mm256_add_ps(lo, hi)); }
};

}  // namespace

extern const Kernels kKernelsAvx2 = {
    "avx2",
    &kernels_impl::Gemm<V>,
    &kernels_impl::GemmBf16Terms<V>,
    &Bf16Fp32Copy,
    &kernels_impl::GemmI8Generic<V>,
    &NoI8Tiles,
    &kernels_impl::Wkv7Step<V>,
};

}  // namespace statestream::engine
