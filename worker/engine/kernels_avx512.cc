// SPDX-License-Identifier: Apache-2.0
// AVX-512 kernels; this file alone is compiled with -mavx512f (see
// model.cmake) and only runs where the CPU reports AVX-512F.
#include <immintrin.h>

#include "worker/engine/kernels.h"
#include "worker/engine/kernels_impl.h"

namespace statestream::engine {
namespace {

struct V {
  __m512 v;
  static V Zero() { return {_mm512_setzero_ps()}; }
  static V Set1(float f) { return {_mm512_set1_ps(f)}; }
  static V Load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static __mmask16 Mask(int n) {
    return static_cast<__mmask16>((1u << n) - 1u);
  }
  static V LoadPartial(const float* p, int n) {
    return {_mm512_maskz_loadu_ps(Mask(n), p)};
  }
  static V Widen(__m256i h) {
    return {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static V LoadBF16(const uint16_t* p) {
    return Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V LoadBF16Partial(const uint16_t* p, int n) {
    return Widen(_mm256_maskz_loadu_epi16(Mask(n), p));
  }
  static V Fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static V Mul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
  void Store(float* p) const { _mm512_storeu_ps(p, v); }
  void StorePartial(float* p, int n) const {
    _mm512_mask_storeu_ps(p, Mask(n), v);
  }
  // The ReduceAdd() tree for 16 vectors at once: each level adds the same
  // lane pairs (j, j + 8), (j, j + 4), (j, j + 2), (j, j + 1) of every
  // vector, two vectors per instruction, so out[j] == a[j].ReduceAdd()
  // bit for bit.
  static void Reduce16(const V* a, float* out) {
    __m512 b[8], c[4], d[2];
    for (int k = 0; k < 8; ++k) {  // [a8 of 2k | a8 of 2k+1]
      const __m512 p = a[2 * k].v, q = a[2 * k + 1].v;
      b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int m = 0; m < 4; ++m) {  // quarter q: a4 of 4m+q
      const __m512 p = b[2 * m], q = b[2 * m + 1];
      c[m] = _mm512_add_ps(_mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    for (int n = 0; n < 2; ++n) {  // quarter q: [a2 of 8n+q, a2 of 8n+4+q]
      const __m512 p = c[2 * n], q = c[2 * n + 1];
      d[n] = _mm512_add_ps(_mm512_shuffle_ps(p, q, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(p, q, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    // Lane 4q + r holds the sum of a[4r + q].
    const __m512 e =
        _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i idx =
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(idx, e));
  }
  float ReduceAdd() const {
    __m256 h8 =
        _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 h4 =
        _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    __m128 h1 = _mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1));
    return _mm_cvtss_f32(h1);
  }
};

}  // namespace

extern const Kernels kKernelsAvx512 = {
    "avx512",
    &kernels_impl::Gemm<V, float>,
    &kernels_impl::Gemm<V, uint16_t>,
    &kernels_impl::GemmI8Generic<V>,
    &kernels_impl::Wkv7Step<V>,
};

}  // namespace statestream::engine
