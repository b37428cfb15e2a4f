// SPDX-License-Identifier: Apache-2.0
// AVX-512 kernels; this file alone is compiled with -mavx512f (see
// model.cmake) and only runs where the CPU reports AVX-512F.
#include <immintrin.h>

#include "worker/engine/kernels.h"
#include "worker/engine/kernels_avx512_v.h"
#include "worker/engine/kernels_impl.h"

namespace statestream::engine {

// kernels_avx512_onerow.cc: the same Gemm for one row, scheduled for an
// AVX-512 core.
void GemmBf16OneRowAvx512(const uint16_t* w, int in, const float* xs,
                          const uint16_t* xb, int terms, int rows, float* y,
                          int ldy, int o_begin, int o_end);

namespace {

// F32ToBF16 on 16 lanes: the same integer operations and NaN select.
inline __m512i RoundToBf16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i high = _mm512_srli_epi32(u, 16);
  const __m512i nan = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                       _mm512_and_si512(high, _mm512_set1_epi32(1))),
      16);
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
      _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_blend_epi32(is_nan, rounded, nan);
}

// Terms 0-31 (v0: 0-15, v1: 16-31) as kPairedTiles' dwords: x2 | x0 << 16,
// x3 | x1 << 16 for each quad (`first` picks lanes 4q and 4q+1, `second`
// 4q+2 and 4q+3).
inline __m512i Paired(__m512i v0, __m512i v1, __m512i first, __m512i second) {
  return _mm512_or_si512(
      _mm512_permutex2var_epi32(v0, second, v1),
      _mm512_slli_epi32(_mm512_permutex2var_epi32(v0, first, v1), 16));
}

}  // namespace

// SplitBf16Terms with AVX-512 (kernels.cc): a block of 32 inputs is two
// vectors of terms, stored as fp32 (kFp32), as they are (kTiles) or
// regrouped by quads (kPairedTiles) with two lane permutes. The portable
// loop's word shuffles did not vectorise: 10 % of a 32-session bf16 step.
void SplitBf16TermsAvx512(const float* x, int ldx, int row_begin, int row_end,
                          int in, int terms, Bf16Copy copy, float* xs,
                          uint16_t* xb) {
  const int stride = Bf16TermsStride(in);
  // Lanes 4q, 4q+1 (x0, x1 of each quad) and 4q+2, 4q+3 (x2, x3) of the
  // 32 terms in two vectors.
  const __m512i first = _mm512_set_epi32(29, 28, 25, 24, 21, 20, 17, 16, 13, 12,
                                         9, 8, 5, 4, 1, 0);
  const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(2));
  for (int t = row_begin; t < row_end; ++t) {
    const float* row = x + static_cast<int64_t>(t) * ldx;
    float* hs = copy == Bf16Copy::kFp32
                    ? xs + static_cast<int64_t>(terms * t) * stride
                    : nullptr;
    uint16_t* band = copy == Bf16Copy::kFp32
                         ? nullptr
                         : xb + Bf16TileIndex(terms * t, 0, in);
    for (int b = 0; b < stride; b += 32) {
      const int n = in - b < 32 ? in - b : 32;
      const __mmask16 m0 =
          n >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << n) - 1u);
      const __mmask16 m1 = n >= 32 ? __mmask16{0xffff}
                           : n <= 16
                               ? __mmask16{0}
                               : static_cast<__mmask16>((1u << (n - 16)) - 1u);
      const __m512 x0 = _mm512_maskz_loadu_ps(m0, row + b);
      const __m512 x1 = _mm512_maskz_loadu_ps(m1, row + b + 16);
      const __m512i h0 = RoundToBf16(x0), h1 = RoundToBf16(x1);
      const __m512 hf0 = _mm512_castsi512_ps(_mm512_slli_epi32(h0, 16));
      const __m512 hf1 = _mm512_castsi512_ps(_mm512_slli_epi32(h1, 16));
      // lo only with two terms a row (one: hi alone).
      const bool lo = terms == 2;
      const __m512i l0 = lo ? RoundToBf16(_mm512_sub_ps(x0, hf0)) : h0;
      const __m512i l1 = lo ? RoundToBf16(_mm512_sub_ps(x1, hf1)) : h1;
      if (copy == Bf16Copy::kFp32) {  // hi at hs, lo a stride after
        _mm512_storeu_ps(hs + b, hf0);
        _mm512_storeu_ps(hs + b + 16, hf1);
        if (lo) {
          _mm512_storeu_ps(hs + stride + b,
                           _mm512_castsi512_ps(_mm512_slli_epi32(l0, 16)));
          _mm512_storeu_ps(hs + stride + b + 16,
                           _mm512_castsi512_ps(_mm512_slli_epi32(l1, 16)));
        }
        continue;
      }
      uint16_t* hib = band + int64_t{b} * 16;
      if (copy == Bf16Copy::kTiles) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(hib),
                            _mm512_cvtepi32_epi16(h0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(hib + 16),
                            _mm512_cvtepi32_epi16(h1));
        if (lo) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(hib + 32),
                              _mm512_cvtepi32_epi16(l0));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(hib + 48),
                              _mm512_cvtepi32_epi16(l1));
        }
      } else {  // dword 2q: x2 | x0 << 16; dword 2q+1: x3 | x1 << 16
        _mm512_storeu_si512(hib, Paired(h0, h1, first, second));
        if (lo) _mm512_storeu_si512(hib + 32, Paired(l0, l1, first, second));
      }
    }
  }
}

namespace {

// One row goes to the AVX-512-tuned copy (the same operations, so the same
// bits); more rows to this file's, whose batched blocks the tuning slowed.
void GemmBf16(const uint16_t* w, int in, const float* xs, const uint16_t* xb,
              int terms, int rows, float* y, int ldy, int o_begin, int o_end) {
  if (rows == 1) {
    GemmBf16OneRowAvx512(w, in, xs, xb, terms, rows, y, ldy, o_begin, o_end);
  } else {
    kernels_impl::GemmBf16Terms<V>(w, in, xs, xb, terms, rows, y, ldy, o_begin,
                                   o_end);
  }
}

}  // namespace

extern const Kernels kKernelsAvx512 = {
    "avx512",
    &kernels_impl::Gemm<V>,
    &GemmBf16,
    &Bf16Fp32Copy,
    &kernels_impl::GemmI8Generic<V>,
    &NoI8Tiles,
    &kernels_impl::Wkv7Step<V>,
};

}  // namespace statestream::engine
