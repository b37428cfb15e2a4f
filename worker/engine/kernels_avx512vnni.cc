// SPDX-License-Identifier: Apache-2.0
// int8 x int8 products on AVX512_VNNI: vpdpbusd multiplies 64 unsigned
// activation bytes by 64 signed weight bytes and adds each group of four
// products into one of 16 int32 lanes — 64 multiply-adds per instruction,
// against 16 for an fp32 FMA. Compiled with -mavx512vnni (see model.cmake);
// runs only where the CPU reports it. Integer sums are exact, so the result
// is bit-identical to kernels_impl::GemmI8Generic.
#include <immintrin.h>

#include <cstdint>

#include "worker/engine/kernels.h"

namespace statestream::engine {
namespace {

constexpr int kStep = 64;  // bytes per vpdpbusd

// acc += vpdpbusd(x, w) in place. GCC 12's _mm512_dpbusd_epi32 copies the
// accumulator to a fresh register at every call (one extra move per
// instruction, a third of the loop); the asm ties it to its register.
inline void Dpbusd(__m512i& acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
}

// Writes the outputs of one RT x OT block: acc holds sum_i w * xq with xq's
// zero point 128 still in, removed here as 128 * wsum (exact in int32 for
// in <= 65536: |sum| <= 255 * 128 * in).
template <int RT, int OT>
inline void Finish(const __m512i* acc, const float* wscale, const int32_t* wsum,
                   const float* xscale, float* y, int ldy) {
#pragma GCC unroll 16
  for (int t = 0; t < RT; ++t) {
    for (int u = 0; u < OT; ++u) {
      const int32_t dot =
          _mm512_reduce_add_epi32(acc[t * OT + u]) - 128 * wsum[u];
      y[static_cast<int64_t>(t) * ldy + u] =
          static_cast<float>(dot) * xscale[t] * wscale[u];
    }
  }
}

// RT rows x OT outputs; `w` at the block's first output row (stride `in`),
// `xq` at its first row (stride ldq), y at y[first row][first output].
template <int RT, int OT>
inline void Block(const int8_t* w, int in, const uint8_t* xq, int ldq,
                  const float* wscale, const int32_t* wsum, const float* xscale,
                  float* y, int ldy) {
  static_assert(RT * OT <= 16, "at most 16 accumulators");
  __m512i acc[RT * OT];
#pragma GCC unroll 16
  for (int a = 0; a < RT * OT; ++a) acc[a] = _mm512_setzero_si512();
  const int full = in & ~(kStep - 1);
  // One row (decode) is bound by memory latency: the next block's weights
  // (contiguous after this block's) are fetched a line per row per step.
  constexpr bool kPrefetchNext = RT == 1;
  const char* pf = reinterpret_cast<const char*>(w + OT * in);
  for (int i = 0; i < full; i += kStep) {
    if constexpr (kPrefetchNext) {
#pragma GCC unroll 16
      for (int l = 0; l < OT; ++l) __builtin_prefetch(pf + 64 * l, 0, 3);
      pf += OT * kStep;
    }
    __m512i wv[OT];
#pragma GCC unroll 16
    for (int u = 0; u < OT; ++u) {
      wv[u] = _mm512_loadu_si512(w + static_cast<int64_t>(u) * in + i);
    }
#pragma GCC unroll 16
    for (int t = 0; t < RT; ++t) {
      const __m512i xv =
          _mm512_loadu_si512(xq + static_cast<int64_t>(t) * ldq + i);
#pragma GCC unroll 16
      for (int u = 0; u < OT; ++u) {
        Dpbusd(acc[t * OT + u], xv, wv[u]);
      }
    }
  }
  if (full < in) {
    // Zero weights beyond `in`, so whatever the activation padding holds
    // adds nothing.
    const __mmask64 m = (~__mmask64{0}) >> (kStep - (in - full));
    __m512i wv[OT];
#pragma GCC unroll 16
    for (int u = 0; u < OT; ++u) {
      wv[u] =
          _mm512_maskz_loadu_epi8(m, w + static_cast<int64_t>(u) * in + full);
    }
#pragma GCC unroll 16
    for (int t = 0; t < RT; ++t) {
      const __m512i xv =
          _mm512_maskz_loadu_epi8(m, xq + static_cast<int64_t>(t) * ldq + full);
#pragma GCC unroll 16
      for (int u = 0; u < OT; ++u) {
        Dpbusd(acc[t * OT + u], xv, wv[u]);
      }
    }
  }
  Finish<RT, OT>(acc, wscale, wsum, xscale, y, ldy);
}

template <int RT, int OT>
inline void RowBlock(const int8_t* w, int in, const uint8_t* xq, int ldq,
                     const float* wscale, const int32_t* wsum,
                     const float* xscale, float* y, int ldy, int outs) {
  int o = 0;
  for (; o + OT <= outs; o += OT) {
    Block<RT, OT>(w + static_cast<int64_t>(o) * in, in, xq, ldq, wscale + o,
                  wsum + o, xscale, y + o, ldy);
  }
  for (; o < outs; ++o) {
    Block<RT, 1>(w + static_cast<int64_t>(o) * in, in, xq, ldq, wscale + o,
                 wsum + o, xscale, y + o, ldy);
  }
}

}  // namespace

// Output tiles of 16 rows of W (16 x in bytes, in L1/L2) against every row
// of the call in 4-row register blocks; the next tile is prefetched a slice
// per block.
void GemmI8Vnni(const int8_t* w, const float* wscale, const int32_t* wsum,
                int in, const uint8_t* xq, const float* xscale, int ldq,
                int rows, float* y, int ldy, int o_begin, int o_end) {
  if (rows <= 0 || o_begin >= o_end) return;
  constexpr int kOTile = 16;
  for (int ot = o_begin; ot < o_end; ot += kOTile) {
    const int outs = ot + kOTile < o_end ? kOTile : o_end - ot;
    const int8_t* wt = w + static_cast<int64_t>(ot) * in;
    const float* ws = wscale + ot;
    const int32_t* wsm = wsum + ot;
    const int next = o_end - ot - outs < kOTile ? o_end - ot - outs : kOTile;
    const char* pf =
        reinterpret_cast<const char*>(wt + static_cast<int64_t>(outs) * in);
    int64_t pf_bytes = rows > 1 ? static_cast<int64_t>(next) * in : 0;
    const int blocks = (rows + 3) / 4;
    const int64_t slice = (pf_bytes / blocks + 63) & ~int64_t{63};
    int t = 0;
    for (; t + 4 <= rows; t += 4) {
      const int64_t n = pf_bytes < slice ? pf_bytes : slice;
      for (int64_t b = 0; b < n; b += 64) __builtin_prefetch(pf + b, 0, 2);
      pf += n;
      pf_bytes -= n;
      RowBlock<4, 4>(wt, in, xq + static_cast<int64_t>(t) * ldq, ldq, ws, wsm,
                     xscale + t, y + static_cast<int64_t>(t) * ldy + ot, ldy,
                     outs);
    }
    for (int64_t b = 0; b < pf_bytes; b += 64) __builtin_prefetch(pf + b, 0, 2);
    const uint8_t* xt = xq + static_cast<int64_t>(t) * ldq;
    float* yt = y + static_cast<int64_t>(t) * ldy + ot;
    switch (rows - t) {
      case 3:
        RowBlock<3, 4>(wt, in, xt, ldq, ws, wsm, xscale + t, yt, ldy, outs);
        break;
      case 2:
        RowBlock<2, 8>(wt, in, xt, ldq, ws, wsm, xscale + t, yt, ldy, outs);
        break;
      case 1:
        RowBlock<1, 8>(wt, in, xt, ldq, ws, wsm, xscale + t, yt, ldy, outs);
        break;
      default:
        break;
    }
  }
}

}  // namespace statestream::engine
