// SPDX-License-Identifier: Apache-2.0
// int8 x int8 products on AVX512_VNNI over the packed weight layout of
// kernels.h: one row of a 16 x 64 tile is 16 outputs x 4 inputs, so
//   vpdpbusd acc, broadcast(4 activation bytes), tile row
// adds 64 products into the 16 outputs' int32 lanes — no horizontal
// reduction, and one output group's weights are one contiguous stream.
// Compiled with -mavx512vnni (see model.cmake); runs only where the CPU
// reports it. Integer sums are exact, so the result is bit-identical to
// kernels_impl::GemmI8Generic.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "worker/engine/kernels.h"

namespace statestream::engine {
namespace {

// acc += vpdpbusd(x, w) in place. GCC 12's _mm512_dpbusd_epi32 copies the
// accumulator to a fresh register at every call (one extra move per
// instruction); the asm ties it to its register.
inline void Dpbusd(__m512i& acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
}

// Writes the outputs [0, popcount(m)) of one row: `sum` holds sum w * xq per
// output with xq's zero point 128 still in, removed as 128 * wsum (exact in
// int32), then y = float(dot) * xscale * wscale.
inline void StoreRow(__m512i sum, __mmask16 m, const int32_t* wsum,
                     const float* wscale, float xscale, float* y) {
  const __m512i bias = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, wsum), 7);
  const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, bias));
  _mm512_mask_storeu_ps(y, m,
                        _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(xscale)),
                                      _mm512_maskz_loadu_ps(m, wscale)));
}

inline __m512i Broadcast4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return _mm512_set1_epi32(v);
}

// RT rows against G consecutive groups of 16 outputs (`tiles`: the first
// group's `chunks` tiles, the others' after it). Each broadcast of 4
// activation bytes feeds G tile rows, so G > 1 loads fewer bytes per
// product. Each (row, group) keeps S accumulators taking the tile rows in
// turn, so RT * G * S independent chains hide vpdpbusd's latency; they are
// summed at the end (exact). Writes y[t][0..outs) for t < RT (outs < 16
// only with G = 1). `fetch`, when not null, is `fetch_groups` groups to
// come: each chunk fetches its tile of each into L2.
template <int RT, int S, int G = 1>
inline void Rows(const int8_t* tiles, int64_t chunks, const uint8_t* xq,
                 int ldq, const float* wscale, const int32_t* wsum,
                 const float* xscale, float* y, int ldy, int outs,
                 const int8_t* fetch = nullptr, int fetch_groups = 1) {
  static_assert(RT * G * S + G < 32, "accumulators and tile rows in zmm");
  __m512i acc[RT][G * S];
  const int64_t group_bytes = chunks * kI8TileBytes;
#pragma GCC unroll 16
  for (int t = 0; t < RT; ++t) {
#pragma GCC unroll 16
    for (int s = 0; s < G * S; ++s) acc[t][s] = _mm512_setzero_si512();
  }
  for (int64_t c = 0; c < chunks; ++c) {
    const int8_t* tile = tiles + c * kI8TileBytes;
    // The next tile of this group, a line per tile row, 1 KiB ahead.
    if constexpr (RT == 1) {
#pragma GCC unroll 16
      for (int l = 0; l < kI8TileBytes / 64; l += 4) {
        __builtin_prefetch(tile + kI8TileBytes + 64 * l, 0, 3);
      }
    }
    if (fetch != nullptr) {
      for (int g = 0; g < fetch_groups; ++g) {
#pragma GCC unroll 16
        for (int l = 0; l < kI8TileBytes / 64; ++l) {
          __builtin_prefetch(
              fetch + g * group_bytes + c * kI8TileBytes + 64 * l, 0, 2);
        }
      }
    }
#pragma GCC unroll 16
    for (int k4 = 0; k4 < kI8TileIn / 4; ++k4) {
      __m512i wv[G];
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) {
        wv[g] = _mm512_loadu_si512(tile + g * group_bytes + k4 * 64);
      }
#pragma GCC unroll 16
      for (int t = 0; t < RT; ++t) {
        const __m512i xv = Broadcast4(xq + static_cast<int64_t>(t) * ldq +
                                      c * kI8TileIn + k4 * 4);
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) Dpbusd(acc[t][g * S + k4 % S], xv, wv[g]);
      }
    }
  }
  const __mmask16 m =
      G > 1 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << outs) - 1u);
#pragma GCC unroll 16
  for (int t = 0; t < RT; ++t) {
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      __m512i sum = acc[t][g * S];
#pragma GCC unroll 16
      for (int s = 1; s < S; ++s) {
        sum = _mm512_add_epi32(sum, acc[t][g * S + s]);
      }
      StoreRow(sum, m, wsum + 16 * g, wscale + 16 * g, xscale[t],
               y + static_cast<int64_t>(t) * ldy + 16 * g);
    }
  }
}

using RowsFn = void (*)(const int8_t*, int64_t, const uint8_t*, int,
                        const float*, const int32_t*, const float*, float*, int,
                        int, const int8_t*, int);

// 16+ rows: the outputs [*g0, o_end) two groups at a time while two full
// groups remain (advancing *g0). Blocks of 8 rows, then the last 1-7 rows
// in one block (one or two rows with more accumulators each). The pair's
// first block waits on memory for its weights; the later ones fetch the
// groups that follow in the range (the next pair, or the one group left)
// into L2 while they compute, one group each (both in the second block
// when there are fewer than 24 rows).
void GroupPairs(const int8_t* w, int64_t chunks, const uint8_t* xq, int ldq,
                const float* wscale, const int32_t* wsum, const float* xscale,
                int rows, float* y, int ldy, int* g0, int o_end) {
  static constexpr RowsFn kRest[8] = {
      nullptr,        &Rows<1, 4, 2>, &Rows<2, 2, 2>, &Rows<3, 1, 2>,
      &Rows<4, 1, 2>, &Rows<5, 1, 2>, &Rows<6, 1, 2>, &Rows<7, 1, 2>};
  const int64_t group_bytes = chunks * kI8TileBytes;
  for (; *g0 + 2 * kI8TileOut <= o_end; *g0 += 2 * kI8TileOut) {
    const int o = *g0;
    const int8_t* tiles = w + o / kI8TileOut * group_bytes;
    // Groups after this pair within the range, up to 2 (a last one may be
    // partial). No std::min: no std-lib inline code in an ISA's TU.
    const int left = (o_end - o - kI8TileOut - 1) / kI8TileOut;
    const int after = left < 2 ? left : 2;
    const int8_t* next = tiles + 2 * group_bytes;
    int t = 0;
    for (; t + 8 <= rows; t += 8) {
      const int8_t* fetch = nullptr;
      int fetch_groups = 0;
      if (t == 8) {
        fetch = next;
        fetch_groups = rows < 24 || after < 1 ? after : 1;
      } else if (t == 16) {
        fetch = next + group_bytes;
        fetch_groups = after - 1;
      }
      if (fetch_groups <= 0) fetch = nullptr;
      Rows<8, 1, 2>(tiles, chunks, xq + static_cast<int64_t>(t) * ldq, ldq,
                    wscale + o, wsum + o, xscale + t,
                    y + static_cast<int64_t>(t) * ldy + o, ldy, 2 * kI8TileOut,
                    fetch, fetch_groups);
    }
    if (t < rows) {
      kRest[rows - t](tiles, chunks, xq + static_cast<int64_t>(t) * ldq, ldq,
                      wscale + o, wsum + o, xscale + t,
                      y + static_cast<int64_t>(t) * ldy + o, ldy,
                      2 * kI8TileOut, nullptr, 0);
    }
  }
}

// One row against NG full groups at once (NG * 16 outputs). From memory a
// single row is bound by how many lines are in flight: NG groups are NG
// streams the hardware prefetcher follows side by side, where one group at
// a time is one stream. Each stream is also fetched kAhead bytes ahead into
// L2, nothing at or past `end` (the call's last group). Two accumulators
// per group.
template <int NG>
inline void OneRowGroups(const int8_t* tiles, int64_t chunks, const uint8_t* xq,
                         const float* wscale, const int32_t* wsum, float xscale,
                         float* y, const int8_t* end) {
  __m512i acc[NG][2];
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
    acc[g][0] = _mm512_setzero_si512();
    acc[g][1] = _mm512_setzero_si512();
  }
  const int64_t group_bytes = chunks * kI8TileBytes;
  constexpr int kAhead = 1024;
  for (int64_t c = 0; c < chunks; ++c) {
    const int8_t* tile = tiles + c * kI8TileBytes;
    const bool fetch = tile + (NG - 1) * group_bytes + 2 * kAhead <= end;
#pragma GCC unroll 16
    for (int k4 = 0; k4 < kI8TileIn / 4; ++k4) {
      const __m512i xv = Broadcast4(xq + c * kI8TileIn + k4 * 4);
      if (fetch) {
#pragma GCC unroll 16
        for (int g = 0; g < NG; ++g) {
          __builtin_prefetch(tile + g * group_bytes + k4 * 64 + kAhead, 0, 2);
        }
      }
#pragma GCC unroll 16
      for (int g = 0; g < NG; ++g) {
        Dpbusd(acc[g][k4 & 1], xv,
               _mm512_loadu_si512(tile + g * group_bytes + k4 * 64));
      }
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
    StoreRow(_mm512_add_epi32(acc[g][0], acc[g][1]), 0xffff, wsum + 16 * g,
             wscale + 16 * g, xscale, y + 16 * g);
  }
}

}  // namespace

void GemmI8Vnni(const int8_t* w, const float* wscale, const int32_t* wsum,
                int in, const uint8_t* xq, const float* xscale, int ldq,
                int rows, float* y, int ldy, int o_begin, int o_end) {
  const int64_t chunks = I8Chunks(in);
  int g0 = o_begin;
  if (rows == 1) {
    constexpr int kGroups = 4;
    const int8_t* end =
        w + (o_end + kI8TileOut - 1) / kI8TileOut * chunks * kI8TileBytes;
    for (; g0 + kGroups * kI8TileOut <= o_end; g0 += kGroups * kI8TileOut) {
      OneRowGroups<kGroups>(w + g0 / kI8TileOut * chunks * kI8TileBytes, chunks,
                            xq, wscale + g0, wsum + g0, xscale[0], y + g0, end);
    }
  }
  if (rows >= 16) {
    GroupPairs(w, chunks, xq, ldq, wscale, wsum, xscale, rows, y, ldy, &g0,
               o_end);
  }
  for (; g0 < o_end; g0 += kI8TileOut) {
    const int outs = o_end - g0 < kI8TileOut ? o_end - g0 : kI8TileOut;
    const int8_t* tiles = w + g0 / kI8TileOut * chunks * kI8TileBytes;
    const float* ws = wscale + g0;
    const int32_t* wsm = wsum + g0;
    // The next group's weights come from memory. Its first block of rows
    // would wait for them; instead the second block of this group (its
    // tiles already in L1) fetches them while it computes.
    const int8_t* next = g0 + kI8TileOut < o_end && rows >= 16
                             ? tiles + chunks * kI8TileBytes
                             : nullptr;
    int t = 0;
    for (; t + 8 <= rows; t += 8) {
      Rows<8, 1>(tiles, chunks, xq + static_cast<int64_t>(t) * ldq, ldq, ws,
                 wsm, xscale + t, y + static_cast<int64_t>(t) * ldy + g0, ldy,
                 outs, t == 8 ? next : nullptr);
    }
    // The last 1-7 rows: fewer rows, more accumulators per row.
    static constexpr RowsFn kRest[8] = {nullptr,     &Rows<1, 8>, &Rows<2, 4>,
                                        &Rows<3, 2>, &Rows<4, 2>, &Rows<5, 1>,
                                        &Rows<6, 1>, &Rows<7, 1>};
    if (t < rows) {
      kRest[rows - t](tiles, chunks, xq + static_cast<int64_t>(t) * ldq, ldq,
                      ws, wsm, xscale + t,
                      y + static_cast<int64_t>(t) * ldy + g0, ldy, outs,
                      nullptr, 0);
    }
  }
}

}  // namespace statestream::engine
