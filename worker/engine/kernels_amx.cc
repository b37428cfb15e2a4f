// SPDX-License-Identifier: Apache-2.0
// int8 x int8 products on AMX (Sapphire Rapids and later): TDPBUSD
// multiplies a 16-row x 64-byte tile of activations (uint8) by a 64 x 16
// tile of weights (int8, exactly the packed layout of kernels.h) into 16 x 16
// int32 sums — 16,384 multiply-adds per instruction. Calls with fewer than
// 16 rows go to the VNNI kernel. Compiled with -mamx-tile -mamx-int8 (see
// model.cmake); used only where the CPU has AMX and the kernel granted the
// tile state (kernels.cc). Integer sums are exact, so the result is
// bit-identical to every other build.
#include <immintrin.h>

#include <cstdint>

#include "worker/engine/kernels.h"

namespace statestream::engine {

void GemmI8Vnni(const int8_t* w, const float* wscale, const int32_t* wsum,
                int in, const uint8_t* xq, const float* xscale, int ldq,
                int rows, float* y, int ldy, int o_begin, int o_end);
extern const Kernels kKernelsAvx512;

namespace {

// Tiles 0-3: sums for 2 row blocks x 2 output groups; 4-5: activations of
// the 2 row blocks; 6-7: weights of the 2 groups. All 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void LoadConfig() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
}

// Finishes one 16 x 16 block of sums (int32, row stride 16): rows
// [0, nrows), outputs [0, outs).
void Finish(const int32_t* sums, const float* wscale, const int32_t* wsum,
            const float* xscale, float* y, int ldy, int nrows, int outs) {
  const __mmask16 m = static_cast<__mmask16>((1u << outs) - 1u);
  const __m512i bias = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, wsum), 7);
  const __m512 ws = _mm512_maskz_loadu_ps(m, wscale);
  for (int t = 0; t < nrows; ++t) {
    const __m512i s = _mm512_loadu_si512(sums + 16 * t);
    const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(s, bias));
    const __m512 r =
        _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(xscale[t])), ws);
    _mm512_mask_storeu_ps(y + static_cast<int64_t>(t) * ldy, m, r);
  }
}

// How many steps ahead Tiles2x2 fetches its B tiles into L2 (0.1B int8,
// 32 sessions, alternating runs: 2,146-2,239 tok/s without, 2,186-2,311
// at 4, 2,249-2,315 at 6).
constexpr int64_t kFetchSteps = 6;

// The 2 x 2 tile loop of both products: tiles 0-3 sum A tiles 4-5 (the
// first rows at a0 and a1, rows lda bytes apart) times B tiles 6-7 (b0, b1)
// over `steps` steps, each a_step bytes further along A (int8: 64 along
// every row; bf16: the next contiguous tile) and one 1 KiB B tile further,
// and stores them to sums (4 x 16 x 16, 64-byte rows). A missing
// second A or B tile is skipped. kBf16: TDPBF16PS, else TDPBUSD.
//
// With fetch_end set, each step also fetches into L2 the B tiles it will
// load kFetchSteps steps later: the same two streams, continuing into the
// next pair of streams (the next 2 * steps KiB: both products keep a
// pair's streams adjacent), none past fetch_end. A tile load waits for the
// TDPBUSDs still reading its register (tile registers are not renamed),
// so without this the weight stream is latency-bound: ~12 GB/s a core from
// memory at 32 rows.
template <bool kBf16>
void Tiles2x2(const char* a0, const char* a1, int lda, int a_step,
              const char* b0, const char* b1, int64_t steps, bool two_a,
              bool two_b, char* sums, const char* fetch_end) {
// The tile intrinsics take register numbers as literals.
#define STATESTREAM_TILE_DOT(c, a, b) \
  do {                                \
    if constexpr (kBf16) {            \
      _tile_dpbf16ps(c, a, b);        \
    } else {                          \
      _tile_dpbusd(c, a, b);          \
    }                                 \
  } while (0)
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k = 0; k < steps; ++k) {
    if (fetch_end != nullptr) {
      const int64_t ahead = k + kFetchSteps;
      const int64_t tile = ahead < steps ? ahead : ahead + steps;
      const char* const next[2] = {b0 + tile * 1024, b1 + tile * 1024};
      for (const char* p : next) {
        if (p + 1024 > fetch_end) continue;
        for (int line = 0; line < 1024; line += 64) {
          _mm_prefetch(p + line, _MM_HINT_T1);
        }
      }
    }
    _tile_loadd(4, a0 + k * a_step, lda);
    _tile_loadd(6, b0 + k * 1024, 64);
    STATESTREAM_TILE_DOT(0, 4, 6);
    if (two_b) {
      _tile_loadd(7, b1 + k * 1024, 64);
      STATESTREAM_TILE_DOT(1, 4, 7);
    }
    if (two_a) {
      _tile_loadd(5, a1 + k * a_step, lda);
      STATESTREAM_TILE_DOT(2, 5, 6);
      if (two_b) STATESTREAM_TILE_DOT(3, 5, 7);
    }
  }
#undef STATESTREAM_TILE_DOT
  _tile_stored(0, sums, 64);
  _tile_stored(1, sums + 1024, 64);
  _tile_stored(2, sums + 2048, 64);
  _tile_stored(3, sums + 3072, 64);
}

}  // namespace

// bf16 products on AMX-BF16: TDPBF16PS multiplies 16 row-terms x 32 inputs
// of activation terms (bf16, SplitBf16Terms) by a panel's 16 steps — one
// 1 KiB tile, the packed layout as it is — into 16 x 16 fp32 sums with
// exactly gemm_bf16's arithmetic (kernels.h; docs/engine-kernels.md
// "AMX-BF16"), so the FMA builds give the same bits. One row, or inputs
// not a multiple of 32 (whose last block AMX would need another tile
// shape for), go to the AVX-512 FMA kernel.
Bf16Copy Bf16AmxCopy(int rows, int in) {
  return rows >= 2 && in % 32 == 0 ? Bf16Copy::kTiles : Bf16Copy::kFp32;
}

void GemmBf16Amx(const uint16_t* w, int in, const float* xs, const uint16_t* xb,
                 int terms_a_row, int rows, float* y, int ldy, int o_begin,
                 int o_end) {
  if (Bf16AmxCopy(rows, in) != Bf16Copy::kTiles) {
    kKernelsAvx512.gemm_bf16(w, in, xs, xb, terms_a_row, rows, y, ldy, o_begin,
                             o_end);
    return;
  }
  if (o_begin >= o_end) return;
  const uint32_t mxcsr = EnterFlushToZero();
  LoadConfig();
  const int64_t pstride = PanelElems(in, 2);
  const int k = terms_a_row;
  const int terms = k * rows;  // xb holds whole pairs of tiles (padded)
  const int blocks = in / 32;
  static_assert(kPanelOut * 32 * sizeof(uint16_t) == 1024, "a B tile");
  alignas(64) float sums[4][16 * 16];
  const char* fetch_end = reinterpret_cast<const char*>(
      w + (o_end + kPanelOut - 1) / kPanelOut * pstride);
  // Panels in pairs (outer: their tiles stay in L1/L2 while every pair of
  // row-term tiles passes), row-term tiles in pairs (inner).
  for (int o0 = o_begin; o0 < o_end; o0 += 2 * kPanelOut) {
    const bool two_panels = o0 + kPanelOut < o_end;
    const uint16_t* b0 = w + o0 / kPanelOut * pstride;
    const uint16_t* b1 = b0 + pstride;
    for (int m0 = 0; m0 < terms; m0 += 32) {
      const bool two_tiles = m0 + 16 < terms;
      // A step is one tile of each band (xb's tile order: 32 inputs of 16
      // term rows, 1 KiB contiguous) and one panel tile.
      const uint16_t* a0 = xb + Bf16TileIndex(m0, 0, in);
      Tiles2x2<true>(
          reinterpret_cast<const char*>(a0),
          reinterpret_cast<const char*>(xb + Bf16TileIndex(m0 + 16, 0, in)), 64,
          1024, reinterpret_cast<const char*>(b0),
          reinterpret_cast<const char*>(b1), blocks, two_tiles, two_panels,
          reinterpret_cast<char*>(sums), m0 == 0 ? fetch_end : nullptr);
      // y = c(hi) + c(lo): a row's two terms are adjacent rows of a tile;
      // or y = c(hi).
      for (int q = 0; q < 4; ++q) {
        const int g = o0 + (q & 1) * kPanelOut;
        const int first = m0 + (q >> 1) * 16;
        if (g >= o_end || first >= terms) continue;
        const int outs = o_end - g < kPanelOut ? o_end - g : kPanelOut;
        const __mmask16 mask = static_cast<__mmask16>((1u << outs) - 1u);
        for (int j = 0; j < 16 && first + j < terms; j += k) {
          __m512 v = _mm512_load_ps(sums[q] + 16 * j);
          if (k == 2)
            v = _mm512_add_ps(v, _mm512_load_ps(sums[q] + 16 * j + 16));
          _mm512_mask_storeu_ps(
              y + static_cast<int64_t>((first + j) / k) * ldy + g, mask, v);
        }
      }
    }
  }
  _tile_release();
  RestoreMxcsr(mxcsr);
}

bool I8AmxTiles(int rows) { return rows >= 16; }

void GemmI8Amx(const int8_t* w, const float* wscale, const int32_t* wsum,
               int in, const uint8_t* xq, const float* xscale, int ldq,
               int rows, float* y, int ldy, int o_begin, int o_end) {
  if (!I8AmxTiles(rows)) {
    GemmI8Vnni(w, wscale, wsum, in, xq, xscale, ldq, rows, y, ldy, o_begin,
               o_end);
    return;
  }
  LoadConfig();
  static_assert(kI8TileIn == 64 && kI8TileBytes == 1024, "Tiles2x2 steps");
  const int64_t chunks = I8Chunks(in);
  alignas(64) int32_t sums[4][16 * 16];
  const char* fetch_end = reinterpret_cast<const char*>(
      w + (o_end + kI8TileOut - 1) / kI8TileOut * chunks * kI8TileBytes);
  // Output groups in pairs (outer: their weights stay in L1/L2 while every
  // row block passes), row blocks in pairs (inner). A missing second group
  // or block is skipped; rows past `rows` are computed (xq is allocated to
  // a multiple of 16 rows) but never stored.
  //
  // At decode batch sizes each weight tile serves two TDPBUSD, so streaming
  // the weights is the cost. Tiles2x2 fetches them ahead (fetch_end) while
  // the first row blocks pass; later ones find them in L1/L2. Fetching only
  // one step ahead, or into L1, did not help (docs/engine-kernels.md).
  for (int g0 = o_begin; g0 < o_end; g0 += 2 * kI8TileOut) {
    const bool two_groups = g0 + kI8TileOut < o_end;
    const int8_t* b0 = w + g0 / kI8TileOut * chunks * kI8TileBytes;
    const int8_t* b1 = b0 + chunks * kI8TileBytes;
    for (int r0 = 0; r0 < rows; r0 += 32) {
      const bool two_blocks = r0 + 16 < rows;
      // xq in tile order (I8TileIndex): a step is the next contiguous tile
      // of each band of 16 rows.
      const uint8_t* a0 = xq + I8TileIndex(r0, 0, ldq);
      Tiles2x2<false>(
          reinterpret_cast<const char*>(a0),
          reinterpret_cast<const char*>(xq + I8TileIndex(r0 + 16, 0, ldq)), 64,
          1024, reinterpret_cast<const char*>(b0),
          reinterpret_cast<const char*>(b1), chunks, two_blocks, two_groups,
          reinterpret_cast<char*>(sums), r0 == 0 ? fetch_end : nullptr);
      for (int q = 0; q < 4; ++q) {
        const int g = g0 + (q & 1) * kI8TileOut;
        const int r = r0 + (q >> 1) * 16;
        if (g >= o_end || r >= rows) continue;
        const int outs = o_end - g < kI8TileOut ? o_end - g : kI8TileOut;
        const int nrows = rows - r < 16 ? rows - r : 16;
        Finish(sums[q], wscale + g, wsum + g, xscale + r,
               y + static_cast<int64_t>(r) * ldy + g, ldy, nrows, outs);
      }
    }
  }
  _tile_release();
}

}  // namespace statestream::engine
