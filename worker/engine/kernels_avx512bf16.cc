// SPDX-License-Identifier: Apache-2.0
// bf16 x bf16 dot products with vdpbf16ps (AVX512_BF16), for the opt-in
// "avx512bf16" kernel build. Compiled with -mavx512bf16; only runs where the
// CPU reports it.
//
// Not bit-identical to the other builds: the activations are rounded to
// bf16 (round to nearest even) before the product, and vdpbf16ps adds the
// pair (2j+1, 2j) of each 32-element step into lane j, flushing denormals.
// It keeps the engine's batching rules: a row's result depends only on that
// row and the weights (fixed per-lane order, then the fixed 16 -> 1 tree),
// never on the other rows, the output split or the thread count.
#include <immintrin.h>

#include <cstdint>

#include "worker/engine/kernels_avx512_reduce.h"
#include "worker/engine/kernels_impl.h"

namespace statestream::engine {
namespace {

constexpr int kStep = 32;  // bf16 elements per vdpbf16ps

// Rows of x rounded to bf16, each zero-padded to `ld` (a multiple of 32).
void RoundRows(const float* x, int ldx, int rows, int in, uint16_t* out,
               int ld) {
  for (int t = 0; t < rows; ++t) {
    const float* src = x + static_cast<int64_t>(t) * ldx;
    uint16_t* dst = out + static_cast<int64_t>(t) * ld;
    for (int i = 0; i < ld; i += kStep) {
      const int n = in - i;
      const __mmask16 lo_mask =
          n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1u);
      const __mmask16 hi_mask =
          n >= 32
              ? 0xffff
              : (n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1u));
      const __m512 lo = _mm512_maskz_loadu_ps(lo_mask, src + i);
      const __m512 hi = _mm512_maskz_loadu_ps(hi_mask, src + i + 16);
      _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// RT rows x OT outputs; `xb` rows are padded, `w` rows are not (the last
// step's weights are a masked load).
template <int RT, int OT>
inline void Block(const uint16_t* w, int64_t ldw, int in, const uint16_t* xb,
                  int ldxb, float* y, int ldy) {
  __m512 acc[16];
  for (int a = 0; a < 16; ++a) acc[a] = _mm512_setzero_ps();
  const int full = in & ~(kStep - 1);
  for (int i = 0; i < full; i += kStep) {
    __m512bh wv[OT];
#pragma GCC unroll 16
    for (int u = 0; u < OT; ++u) {
      wv[u] = (__m512bh)_mm512_loadu_si512(w + u * ldw + i);
    }
#pragma GCC unroll 16
    for (int t = 0; t < RT; ++t) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + t * ldxb + i);
#pragma GCC unroll 16
      for (int u = 0; u < OT; ++u) {
        acc[t * OT + u] = _mm512_dpbf16_ps(acc[t * OT + u], wv[u], xv);
      }
    }
  }
  if (full < in) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (in - full)) - 1ull);
    __m512bh wv[OT];
    for (int u = 0; u < OT; ++u) {
      wv[u] = (__m512bh)_mm512_maskz_loadu_epi16(m, w + u * ldw + full);
    }
    for (int t = 0; t < RT; ++t) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + t * ldxb + full);
      for (int u = 0; u < OT; ++u) {
        acc[t * OT + u] = _mm512_dpbf16_ps(acc[t * OT + u], wv[u], xv);
      }
    }
  }
  alignas(64) float out[16];
  Reduce16Ps(acc, out);
  for (int t = 0; t < RT; ++t) {
    for (int u = 0; u < OT; ++u) {
      y[static_cast<int64_t>(t) * ldy + u] = out[t * OT + u];
    }
  }
}

template <int RT, int OT>
inline void RowBlock(const uint16_t* w, int64_t ldw, int in, const uint16_t* xb,
                     int ldxb, float* y, int ldy, int outs) {
  int o = 0;
  for (; o + OT <= outs; o += OT) {
    Block<RT, OT>(w + o * ldw, ldw, in, xb, ldxb, y + o, ldy);
  }
  for (; o < outs; ++o)
    Block<RT, 1>(w + o * ldw, ldw, in, xb, ldxb, y + o, ldy);
}

}  // namespace

void GemmBf16Dot(const uint16_t* w, int in, const float* x, int ldx, int rows,
                 float* y, int ldy, int o_begin, int o_end) {
  if (rows <= 0 || o_begin >= o_end) return;
  const int ld = (in + kStep - 1) / kStep * kStep;
  uint16_t* xb = reinterpret_cast<uint16_t*>(
      kernels_impl::ThreadScratch(1, (static_cast<size_t>(rows) * ld + 1) / 2));
  RoundRows(x, ldx, rows, in, xb, ld);
  constexpr int kOTile = 16;
  for (int ot = o_begin; ot < o_end; ot += kOTile) {
    const int outs = ot + kOTile < o_end ? kOTile : o_end - ot;
    const uint16_t* wt = w + static_cast<int64_t>(ot) * in;
    int t = 0;
    for (; t + 4 <= rows; t += 4) {
      RowBlock<4, 4>(wt, in, in, xb + static_cast<int64_t>(t) * ld, ld,
                     y + static_cast<int64_t>(t) * ldy + ot, ldy, outs);
    }
    const uint16_t* xt = xb + static_cast<int64_t>(t) * ld;
    float* yt = y + static_cast<int64_t>(t) * ldy + ot;
    switch (rows - t) {
      case 3:
        RowBlock<3, 4>(wt, in, in, xt, ld, yt, ldy, outs);
        break;
      case 2:
        RowBlock<2, 8>(wt, in, in, xt, ld, yt, ldy, outs);
        break;
      case 1:
        RowBlock<1, 8>(wt, in, in, xt, ld, yt, ldy, outs);
        break;
      default:
        break;
    }
  }
}

}  // namespace statestream::engine
