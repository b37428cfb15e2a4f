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

}  // namespace

// bf16 products on AMX-BF16: TDPBF16PS multiplies 16 row-terms x 32 inputs
// of activation terms (bf16, SplitBf16Terms) by a panel's 16 steps — one
// 1 KiB tile, the packed layout as it is — into 16 x 16 fp32 sums with
// exactly gemm_bf16's arithmetic (kernels.h; docs/engine-kernels.md
// "AMX-BF16"), so the FMA builds give the same bits. One row, or inputs
// not a multiple of 32 (whose last block AMX would need another tile
// shape for), go to the AVX-512 FMA kernel.
void GemmBf16Amx(const uint16_t* w, int in, const float* xs, const uint16_t* xb,
                 int rows, float* y, int ldy, int o_begin, int o_end) {
  if (rows < 2 || in % 32 != 0) {
    kKernelsAvx512.gemm_bf16(w, in, xs, xb, rows, y, ldy, o_begin, o_end);
    return;
  }
  if (o_begin >= o_end) return;
  const uint32_t mxcsr = EnterFlushToZero();
  LoadConfig();
  const int64_t pstride = PanelElems(in, 2);
  const int terms = 2 * rows;  // xb holds whole pairs of tiles (padded)
  const int blocks = in / 32;
  constexpr int kTileElems = 16 * 32;  // a panel's 16 steps
  alignas(64) float sums[4][16 * 16];
  // Panels in pairs (outer: their tiles stay in L1/L2 while every pair of
  // row-term tiles passes), row-term tiles in pairs (inner).
  for (int o0 = o_begin; o0 < o_end; o0 += 2 * kPanelOut) {
    const bool two_panels = o0 + kPanelOut < o_end;
    const uint16_t* b0 = w + o0 / kPanelOut * pstride;
    const uint16_t* b1 = b0 + pstride;
    for (int m0 = 0; m0 < terms; m0 += 32) {
      const bool two_tiles = m0 + 16 < terms;
      const uint16_t* a0 = xb + static_cast<int64_t>(m0) * in;
      const uint16_t* a1 = a0 + static_cast<int64_t>(16) * in;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int k = 0; k < blocks; ++k) {
        _tile_loadd(4, a0 + k * 32, in * 2);
        _tile_loadd(6, b0 + static_cast<int64_t>(k) * kTileElems, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two_panels) {
          _tile_loadd(7, b1 + static_cast<int64_t>(k) * kTileElems, 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two_tiles) {
          _tile_loadd(5, a1 + k * 32, in * 2);
          _tile_dpbf16ps(2, 5, 6);
          if (two_panels) _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, sums[0], 64);
      _tile_stored(1, sums[1], 64);
      _tile_stored(2, sums[2], 64);
      _tile_stored(3, sums[3], 64);
      // y = c(hi) + c(lo): a row's two terms are adjacent rows of a tile.
      for (int q = 0; q < 4; ++q) {
        const int g = o0 + (q & 1) * kPanelOut;
        const int first = m0 + (q >> 1) * 16;
        if (g >= o_end || first >= terms) continue;
        const int outs = o_end - g < kPanelOut ? o_end - g : kPanelOut;
        const __mmask16 mask = static_cast<__mmask16>((1u << outs) - 1u);
        for (int j = 0; j < 16 && first + j < terms; j += 2) {
          const __m512 v = _mm512_add_ps(_mm512_load_ps(sums[q] + 16 * j),
                                         _mm512_load_ps(sums[q] + 16 * j + 16));
          _mm512_mask_storeu_ps(
              y + static_cast<int64_t>((first + j) / 2) * ldy + g, mask, v);
        }
      }
    }
  }
  _tile_release();
  RestoreMxcsr(mxcsr);
}

void GemmI8Amx(const int8_t* w, const float* wscale, const int32_t* wsum,
               int in, const uint8_t* xq, const float* xscale, int ldq,
               int rows, float* y, int ldy, int o_begin, int o_end) {
  if (rows < 16) {
    GemmI8Vnni(w, wscale, wsum, in, xq, xscale, ldq, rows, y, ldy, o_begin,
               o_end);
    return;
  }
  LoadConfig();
  const int64_t chunks = I8Chunks(in);
  alignas(64) int32_t sums[4][16 * 16];
  // Output groups in pairs (outer: their weights stay in L1/L2 while every
  // row block passes), row blocks in pairs (inner). A missing second group
  // or block is skipped; rows past `rows` are computed (xq is allocated to
  // a multiple of 16 rows) but never stored.
  //
  // At decode batch sizes each weight tile serves two TDPBUSD, so streaming
  // the weights is the cost (~12 GB/s a core from L3, ~30 from L2).
  // Software prefetch did not raise it: neither the next pair's tiles into
  // L1 nor the range 16 KiB ahead into L2 (measured in the model and with
  // bench/engine_bench --benchmark_filter=MatMulI8), nor, with the weights
  // on huge pages, both groups' tiles 4 or 12 chunks ahead into L2 (0.1B,
  // 32 sessions: 1,695-1,769 against 1,783-1,792 tok/s without).
  for (int g0 = o_begin; g0 < o_end; g0 += 2 * kI8TileOut) {
    const bool two_groups = g0 + kI8TileOut < o_end;
    const int8_t* b0 = w + g0 / kI8TileOut * chunks * kI8TileBytes;
    const int8_t* b1 = b0 + chunks * kI8TileBytes;
    for (int r0 = 0; r0 < rows; r0 += 32) {
      const bool two_blocks = r0 + 16 < rows;
      const uint8_t* a0 = xq + static_cast<int64_t>(r0) * ldq;
      const uint8_t* a1 = a0 + static_cast<int64_t>(16) * ldq;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t c = 0; c < chunks; ++c) {
        _tile_loadd(4, a0 + c * kI8TileIn, ldq);
        _tile_loadd(6, b0 + c * kI8TileBytes, 64);
        _tile_dpbusd(0, 4, 6);
        if (two_groups) {
          _tile_loadd(7, b1 + c * kI8TileBytes, 64);
          _tile_dpbusd(1, 4, 7);
        }
        if (two_blocks) {
          _tile_loadd(5, a1 + c * kI8TileIn, ldq);
          _tile_dpbusd(2, 5, 6);
          if (two_groups) _tile_dpbusd(3, 5, 7);
        }
      }
      _tile_stored(0, sums[0], 64);
      _tile_stored(1, sums[1], 64);
      _tile_stored(2, sums[2], 64);
      _tile_stored(3, sums[3], 64);
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
