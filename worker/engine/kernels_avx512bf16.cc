// SPDX-License-Identifier: Apache-2.0
// bf16 products on vdpbf16ps (AVX512_BF16: Zen 4, Cooper Lake and later),
// with exactly gemm_bf16's arithmetic (kernels.h: TDPBF16PS's even and odd
// chains per block of 32 inputs), so the result is bit-identical to the AMX
// and FMA builds. Compiled with -mavx512bf16 (see model.cmake); runs only
// where the CPU reports it.
//
// vdpbf16ps adds two products into each fp32 lane as two fused
// multiply-adds, the lane's high bf16 first, denormals flushed (checked on
// Zen 4 and on Xeon: docs/engine-kernels.md "vdpbf16ps"). Both products of
// an instruction must belong to one chain, in input order, so the weights
// of two panel steps (lane n: w[4q], w[4q+1] and w[4q+2], w[4q+3]) are
// regrouped in registers into an even vector (high w[4q], low w[4q+2]) and
// an odd one (w[4q+1], w[4q+3]), and the activation terms come in the same
// order (Bf16Copy::kPairedTiles: [x2, x0, x3, x1] per 4 inputs), each pair
// one 32-bit broadcast. One instruction is then 32 multiply-adds of the
// definition, where the FMA emulation gets 16 from an FMA and widens every
// weight first.
#include <immintrin.h>

#include <cstdint>

#include "worker/engine/kernels.h"

namespace statestream::engine {

extern const Kernels kKernelsAvx512;

namespace {

// acc = vdpbf16ps(acc, w, broadcast(*pair)). GCC 12's intrinsic copies the
// accumulator to a fresh register at every call; the asm ties it to its
// register and folds the broadcast into the instruction.
inline void Dp(__m512& acc, __m512i w, const uint16_t* pair) {
  asm("vdpbf16ps %2%{1to16%}, %1, %0"
      : "+v"(acc)
      : "v"(w), "m"(*reinterpret_cast<const uint32_t*>(pair)));
}

// T term rows (T / K rows of K terms: hi and lo, or hi) x one panel of 16
// outputs, over
// `blocks` blocks of 32 inputs. `panel` is the panel's first step, `xp` the
// first term row's first block (kPairedTiles: term rows 32 values apart
// within a band, the next block 512 values on). Per term row three
// accumulators: the block's even and odd chains and the block sums c.
// `fetch`, when not null, is the next panel: each block of inputs fetches
// its KiB of it into L2.
template <int T, int K>
void Block(const uint16_t* panel, int blocks, const uint16_t* xp, float* y,
           int ldy, __mmask16 mask, const uint16_t* fetch) {
  const __m512i low_words = _mm512_set1_epi32(0xffff);
  __m512 c[T];
#pragma GCC unroll 8
  for (int j = 0; j < T; ++j) c[j] = _mm512_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    const uint16_t* wb = panel + b * 512;  // 16 steps of 16 x 2 weights
    const uint16_t* xb = xp + b * 512;
    if (fetch != nullptr) {
      const char* f = reinterpret_cast<const char*>(fetch + b * 512);
#pragma GCC unroll 16
      for (int l = 0; l < 16; ++l) __builtin_prefetch(f + 64 * l, 0, 2);
    }
    __m512 even[T], odd[T];
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) even[j] = odd[j] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      const __m512i a = _mm512_loadu_si512(wb + 64 * q);
      const __m512i n = _mm512_loadu_si512(wb + 64 * q + 32);
      // even: (a.lo << 16) | n.lo; odd: a.hi | (n.hi >> 16).
      const __m512i e =
          _mm512_ternarylogic_epi32(_mm512_slli_epi32(a, 16), n, low_words,
                                    0xf8);  // x | (y & z)
      const __m512i o =
          _mm512_ternarylogic_epi32(_mm512_srli_epi32(n, 16), a, low_words,
                                    0xf4);  // x | (y & ~z)
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j) {
        Dp(even[j], e, xb + 32 * j + 4 * q);
        Dp(odd[j], o, xb + 32 * j + 4 * q + 2);
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) {
      c[j] = _mm512_add_ps(c[j], _mm512_add_ps(even[j], odd[j]));
    }
  }
  // y = c(hi) + c(lo), or c(hi).
#pragma GCC unroll 8
  for (int j = 0; j < T; j += K) {
    _mm512_mask_storeu_ps(y + static_cast<int64_t>(j / K) * ldy, mask,
                          K == 2 ? _mm512_add_ps(c[j], c[j + 1]) : c[j]);
  }
}

// Block<T, K> for the n term rows left (n a multiple of K, at most T).
template <int T, int K>
void LastBlock(int n, const uint16_t* panel, int blocks, const uint16_t* xp,
               float* y, int ldy, __mmask16 mask, const uint16_t* fetch) {
  if constexpr (T > K) {
    if (n < T) {
      return LastBlock<T - K, K>(n, panel, blocks, xp, y, ldy, mask, fetch);
    }
  }
  Block<T, K>(panel, blocks, xp, y, ldy, mask, fetch);
}

// Term rows [0, terms) in blocks of 8 (each within one band of 16,
// Bf16TileIndex), against one panel; the second block fetches `next`.
template <int K>
void Rows(const uint16_t* panel, int blocks, const uint16_t* xb, int in,
          int terms, float* y, int ldy, __mmask16 mask, const uint16_t* next) {
  for (int r = 0; r < terms; r += 8) {
    LastBlock<8, K>(terms - r, panel, blocks, xb + Bf16TileIndex(r, 0, in),
                    y + static_cast<int64_t>(r / K) * ldy, ldy, mask,
                    r == 8 ? next : nullptr);
  }
}

}  // namespace

// From 2 rows of whole 32-input blocks; one row (bound by the weight
// stream, where the FMA kernel already runs at the memory's speed) and
// other input counts go to the AVX-512 FMA kernel.
Bf16Copy Bf16DpCopy(int rows, int in) {
  return rows >= 2 && in % 32 == 0 ? Bf16Copy::kPairedTiles : Bf16Copy::kFp32;
}

void GemmBf16Dp(const uint16_t* w, int in, const float* xs, const uint16_t* xb,
                int terms, int rows, float* y, int ldy, int o_begin,
                int o_end) {
  if (Bf16DpCopy(rows, in) != Bf16Copy::kPairedTiles) {
    kKernelsAvx512.gemm_bf16(w, in, xs, xb, terms, rows, y, ldy, o_begin,
                             o_end);
    return;
  }
  if (o_begin >= o_end) return;
  const uint32_t mxcsr = EnterFlushToZero();  // the block sums' additions
  const int64_t pstride = PanelElems(in, 2);
  const int blocks = in / 32;
  const int term_rows = terms * rows;
  for (int o = o_begin; o < o_end; o += kPanelOut) {
    const int outs = o_end - o < kPanelOut ? o_end - o : kPanelOut;
    const __mmask16 mask = static_cast<__mmask16>((1u << outs) - 1u);
    const uint16_t* panel = w + o / kPanelOut * pstride;
    // The next panel comes from memory: the second block of term rows (this
    // panel already in L1) fetches it while it computes, so the next
    // panel's first block does not wait for it.
    const uint16_t* next =
        o + kPanelOut < o_end && term_rows > 8 ? panel + pstride : nullptr;
    if (terms == 1) {
      Rows<1>(panel, blocks, xb, in, term_rows, y + o, ldy, mask, next);
    } else {
      Rows<2>(panel, blocks, xb, in, term_rows, y + o, ldy, mask, next);
    }
  }
  RestoreMxcsr(mxcsr);
}

}  // namespace statestream::engine
