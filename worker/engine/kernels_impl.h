// SPDX-License-Identifier: Apache-2.0
// Kernel bodies written once over a 16-lane vector type V, included by
// kernels_{avx512,avx2,scalar}.cc with their own V. Internal to the engine.
//
// V must provide: Zero(), Load(const float*), LoadPartial(const float*, n),
// LoadStep(const W* p, s) (the 16 outputs' weights of input s of the panel
// step at p, widened exactly: s = 0 for fp32, 0 or 1 for bf16), Set1(float),
// Fma(a, b, c) = a*b+c (fused), Mul, Add, Store(float*), StorePartial(float*,
// n), ReduceAdd() with the fixed tree: 16 -> 8 (lane j + lane j+8) -> 4 -> 2 ->
// 1, and Reduce16(const V a[16], float out[16]) with out[j] bit-identical to
// a[j].ReduceAdd(). Partial loads fill missing lanes with +0. And the
// register blocks of its products: kRows rows x kPanels panels for fp32,
// kBf16Rows x kBf16Panels (kBf16OneRowPanels for one row) for bf16 (shapes
// only: every shape gives the same bits).
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_

#include <cstddef>
#include <cstdint>

#include "worker/engine/kernels.h"

namespace statestream::engine::kernels_impl {

inline constexpr int kLanes = 16;

template <typename V>
inline V LoadW(const float* w, int n) {
  return n >= kLanes ? V::Load(w) : V::LoadPartial(w, n);
}

// What a block prefetches into L2 besides its own weights (a hint: it
// never changes a result). Nothing at or past `end` (another task's
// weights, or nothing at all) is fetched.
struct Fetch {
  // [next, next + next_bytes), spread evenly over the block's input steps:
  // a share of the next group of panels, fetched while this one is
  // computed.
  const char* next = nullptr;
  int64_t next_bytes = 0;
  // Bytes ahead of each of the block's own panel streams (one row: the
  // hardware prefetcher alone keeps too few lines in flight).
  int ahead = 0;
  const char* end = nullptr;
};

// RT rows x P panels over all `in` inputs: acc[t][u] (16 outputs in the
// lanes) += w[u][i] * x[t][i] for i in order, one fused multiply-add per
// input and output, so every output is gemm_f32's chain (kernels.h) whatever
// RT and P. `w` is the block's first panel (panels `pstride` elements apart),
// `x` its first row, `y` y[first row][first output]; `outs` outputs are
// stored (the last panel may be partial).
template <typename V, int RT, int P>
inline void PanelBlock(const float* w, int64_t pstride, int in, const float* x,
                       int ldx, float* y, int ldy, int outs, Fetch fetch = {}) {
  static_assert(RT * P <= 24, "at most 24 accumulators");
  V acc[RT * P];
#pragma GCC unroll 24
  for (int a = 0; a < RT * P; ++a) acc[a] = V::Zero();
  const char* next = fetch.next;
  const char* next_end = next + fetch.next_bytes;
  if (next_end > fetch.end) next_end = fetch.end;
  const int steps = in > 0 ? in : 1;
  const int64_t next_lines = (next_end - next + 63) / 64;
  const int lines_per_step =
      next == nullptr || next_lines <= 0
          ? 0
          : static_cast<int>((next_lines + steps - 1) / steps);
  const float* ws = w;
  // Input i: each panel's 16 weights loaded, then every row's broadcast
  // against them. Only P weight vectors are live at a time, so the 8 x 3
  // block's 24 accumulators stay in registers.
  for (int i = 0; i < in; ++i, ws += kPanelOut) {
    for (int l = 0; l < lines_per_step && next < next_end; ++l) {
      __builtin_prefetch(next, 0, 2);
      next += 64;
    }
    if (fetch.ahead > 0) {
#pragma GCC unroll 4
      for (int u = 0; u < P; ++u) {
        const char* q =
            reinterpret_cast<const char*>(ws + u * pstride) + fetch.ahead;
        if (q < fetch.end) __builtin_prefetch(q, 0, 2);
      }
    }
    V wv[P];
#pragma GCC unroll 4
    for (int u = 0; u < P; ++u) wv[u] = V::LoadStep(ws + u * pstride, 0);
#pragma GCC unroll 8
    for (int t = 0; t < RT; ++t) {
      const V xv = V::Set1(x[static_cast<int64_t>(t) * ldx + i]);
#pragma GCC unroll 4
      for (int u = 0; u < P; ++u) {
        acc[t * P + u] = V::Fma(wv[u], xv, acc[t * P + u]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < RT; ++t) {
    float* yt = y + static_cast<int64_t>(t) * ldy;
#pragma GCC unroll 4
    for (int u = 0; u < P; ++u) {
      const int n = outs - u * kPanelOut;
      if (n >= kPanelOut) {
        acc[t * P + u].Store(yt + u * kPanelOut);
      } else if (n > 0) {
        acc[t * P + u].StorePartial(yt + u * kPanelOut, n);
      }
    }
  }
}

// k.Block<R, P> for a run-time row count rt in [1, R] (PanelLoop).
template <int R, int P, typename K, typename W>
inline void BlockRows(const K& k, int rt, int t, const W* w, float* y, int ldy,
                      int outs, Fetch fetch) {
  if constexpr (R > 1) {
    if (rt < R) return BlockRows<R - 1, P>(k, rt, t, w, y, ldy, outs, fetch);
  }
  k.template Block<R, P>(t, w, y, ldy, outs, fetch);
}

// Outputs [o_begin, o_end) of all rows of a panel-packed matrix, for Gemm
// and GemmBf16Terms. `k` runs the register blocks: K::W (the weight type),
// K::kRows x K::kPanels (the block of several rows), K::kOneRowPanels,
// k.pstride, k.RowBytes() (a row's activation bytes), and
// k.Block<R, P>(t, w, y, ldy, outs, fetch): rows [t, t + R) of P panels
// from w into y (y at row t).
//
// One row (decode) streams kOneRowPanels panels side by side, prefetching
// each stream a little ahead. More rows walk the rows in chunks whose
// activations stay in L2 (kChunkBytes); within a chunk, each group of
// kPanels panels (which stays in L1/L2) meets every block of kRows rows.
// The activations come in by broadcast, one per row and input, and nothing
// is reduced across lanes.
template <typename K>
void PanelLoop(const K& k, const typename K::W* w, int rows, float* y, int ldy,
               int o_begin, int o_end) {
  using W = typename K::W;
  if (rows <= 0 || o_begin >= o_end) return;
  const int64_t pstride = k.pstride;
  const W* wb = w + o_begin / kPanelOut * pstride;
  float* yb = y + o_begin;
  const int outs = o_end - o_begin;
  const char* end = reinterpret_cast<const char*>(
      wb + static_cast<int64_t>((outs + kPanelOut - 1) / kPanelOut) * pstride);
  if (rows == 1) {
    // 1 KiB ahead of each stream: 0.1B bf16 decode 96-105 tok/s against
    // 88-92 with none, 84-96 at 2-8 KiB or one block ahead (measured on
    // the fp32 chain over bf16 weights, session 7).
    constexpr int kP = K::kOneRowPanels, kAhead = 1024;
    constexpr int kBlockOuts = kP * kPanelOut;
    int o = 0;
    for (; o + kBlockOuts <= outs; o += kBlockOuts) {
      const W* block = wb + o / kPanelOut * pstride;
      // The next block's streams start where this block's ahead-fetches do
      // not reach (its first panel follows this block's last; the others
      // are a panel apart): their first kAhead bytes, fetched now.
      const char* heads = reinterpret_cast<const char*>(block + kP * pstride);
      for (int u = 0; u < kP; ++u) {
        const char* h = heads + u * pstride * static_cast<int64_t>(sizeof(W));
        for (int b = 0; b < kAhead && h + b < end; b += 64) {
          __builtin_prefetch(h + b, 0, 2);
        }
      }
      k.template Block<1, kP>(0, block, yb + o, ldy, kBlockOuts,
                              {nullptr, 0, kAhead, end});
    }
    for (; o < outs; o += kPanelOut) {
      k.template Block<1, 1>(0, wb + o / kPanelOut * pstride, yb + o, ldy,
                             outs - o, {nullptr, 0, kAhead, end});
    }
    return;
  }
  constexpr int kR = K::kRows, kP = K::kPanels;
  constexpr int kChunkBytes = 512 * 1024;
  constexpr int kGroupOuts = kP * kPanelOut;
  // (No std::min/max: this header is compiled for several instruction sets,
  // and one linked copy of an inline library function serves them all.)
  const int fit = kChunkBytes / k.RowBytes() / kR * kR;
  const int chunk = fit > kR ? fit : kR;
  const int64_t group_bytes = kP * pstride * static_cast<int64_t>(sizeof(W));
  const int first_chunk = rows < chunk ? rows : chunk;
  const int blocks = (first_chunk + kR - 1) / kR;
  const int64_t share = (group_bytes + blocks * 64 - 1) / (blocks * 64) * 64;
  for (int r0 = 0; r0 < rows; r0 += chunk) {
    const int r1 = rows - r0 < chunk ? rows : r0 + chunk;
    for (int o = 0; o < outs; o += kGroupOuts) {
      const W* wo = wb + o / kPanelOut * pstride;
      const int n = outs - o < kGroupOuts ? outs - o : kGroupOuts;
      for (int t = r0; t < r1; t += kR) {
        const int rt = r1 - t < kR ? r1 - t : kR;
        float* yt = yb + static_cast<int64_t>(t) * ldy + o;
        if (n > (kP - 1) * kPanelOut) {
          // The first chunk's row blocks fetch the next group into L2 as
          // they go, a share each (the first block brings its own group
          // in from memory; the rest find it in L2).
          const char* next =
              r0 == 0 ? reinterpret_cast<const char*>(wo + kP * pstride) +
                            (t / kR) * share
                      : nullptr;
          BlockRows<kR, kP>(k, rt, t, wo, yt, ldy, n,
                            {next, next != nullptr ? share : 0, 0, end});
        } else if constexpr (kP > 1) {
          // The range's last panels, one at a time.
          for (int p = 0; p * kPanelOut < n; ++p) {
            BlockRows<kR, 1>(k, rt, t, wo + p * pstride, yt + p * kPanelOut,
                             ldy, n - p * kPanelOut, {});
          }
        }
      }
    }
  }
}

// gemm_f32: PanelBlock over x.
template <typename V>
struct F32Panels {
  using W = float;
  static constexpr int kRows = V::kRows, kPanels = V::kPanels;
  static constexpr int kOneRowPanels = 4;
  const float* x;
  int ldx;
  int in;
  int64_t pstride;
  int RowBytes() const { return in * 4; }
  template <int R, int P>
  void Block(int t, const float* w, float* y, int ldy, int outs,
             Fetch fetch) const {
    PanelBlock<V, R, P>(w, pstride, in, x + static_cast<int64_t>(t) * ldx, ldx,
                        y, ldy, outs, fetch);
  }
};

template <typename V>
void Gemm(const float* w, int in, const float* x, int ldx, int rows, float* y,
          int ldy, int o_begin, int o_end) {
  const F32Panels<V> k{x, ldx, in, PanelElems(in, 1)};
  PanelLoop(k, w, rows, y, ldy, o_begin, o_end);
}

// gemm_bf16 (kernels.h): R rows x P panels, with T terms a row. Per row,
// term (hi, lo) and panel three accumulators: the even and odd chains of
// the current block of 32 inputs and the block sums c, so every output is
// exactly the definition (TDPBF16PS's arithmetic) whatever R and P. `xs` is
// the block's first row's hi terms (rows T * stride floats apart, lo after
// hi). Call under FTZ | DAZ (GemmBf16Terms). Not inlined: GCC inlined the
// one-term one-row block into PanelLoop, and that copy ran one-session
// decode 25-30 % slower (0.1B, 90-94 against 123-158 tok/s).
template <typename V, int R, int P, int T = 2>
__attribute__((noinline)) void Bf16Block(const uint16_t* w, int64_t pstride,
                                         int in, const float* xs, int stride,
                                         float* y, int ldy, int outs,
                                         Fetch fetch = {}) {
  constexpr int kPairsPerBlock = 16;
  constexpr int kAcc = R * T * P;  // [row][term][panel]
  V even[kAcc], odd[kAcc], c[kAcc];
#pragma GCC unroll 16
  for (int a = 0; a < kAcc; ++a) even[a] = odd[a] = c[a] = V::Zero();
  const int pairs = (in + 1) / 2;
  const char* next = fetch.next;
  const char* next_end = next + fetch.next_bytes;
  if (next_end > fetch.end) next_end = fetch.end;
  const int64_t next_lines = (next_end - next + 63) / 64;
  const int lines_per_pair =
      next == nullptr || next_lines <= 0
          ? 0
          : static_cast<int>((next_lines + pairs - 1) / pairs);
  // A pair is 64 bytes of each panel; the last panel's stream reaches
  // `end` first.
  const int64_t safe_pairs =
      fetch.ahead > 0
          ? (fetch.end - reinterpret_cast<const char*>(w + (P - 1) * pstride) -
             fetch.ahead) /
                64
          : 0;
  const uint16_t* ws = w;
  for (int p0 = 0; p0 < pairs; p0 += kPairsPerBlock) {
    const int p1 = pairs - p0 < kPairsPerBlock ? pairs : p0 + kPairsPerBlock;
    auto pair = [&](int p) {
      for (int l = 0; l < lines_per_pair && next < next_end; ++l) {
        __builtin_prefetch(next, 0, 2);
        next += 64;
      }
      if (fetch.ahead > 0) {
        // Up to safe_pairs, every stream's line ahead is below `end`.
        const bool safe = p < safe_pairs;
#pragma GCC unroll 4
        for (int u = 0; u < P; ++u) {
          const char* q =
              reinterpret_cast<const char*>(ws + u * pstride) + fetch.ahead;
          if (safe || q < fetch.end) __builtin_prefetch(q, 0, 2);
        }
      }
      // The pair's even input, then its odd one: each panel's 16 weights
      // widened once, every row's two terms broadcast against them.
#pragma GCC unroll 2
      for (int s = 0; s < 2; ++s) {
        V* chain = s == 0 ? even : odd;
        V wv[P];
#pragma GCC unroll 4
        for (int u = 0; u < P; ++u) wv[u] = V::LoadStep(ws + u * pstride, s);
#pragma GCC unroll 4
        for (int rt = 0; rt < T * R; ++rt) {
          const V xv =
              V::Set1(xs[static_cast<int64_t>(rt) * stride + 2 * p + s]);
#pragma GCC unroll 4
          for (int u = 0; u < P; ++u) {
            chain[rt * P + u] = V::Fma(wv[u], xv, chain[rt * P + u]);
          }
        }
      }
      ws += 2 * kPanelOut;
    };
    if (p1 - p0 == kPairsPerBlock) {
      // A whole block unrolled: no loop exit to mispredict every 16 pairs
      // (32 rows x 768 x 768 on one core: 58 -> 61-63 GFLOP/s).
#pragma GCC unroll 16
      for (int q = 0; q < kPairsPerBlock; ++q) pair(p0 + q);
    } else {
      for (int p = p0; p < p1; ++p) pair(p);
    }
#pragma GCC unroll 16
    for (int a = 0; a < kAcc; ++a) {
      c[a] = V::Add(c[a], V::Add(even[a], odd[a]));
      even[a] = odd[a] = V::Zero();
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r) {
    float* yr = y + static_cast<int64_t>(r) * ldy;
#pragma GCC unroll 4
    for (int u = 0; u < P; ++u) {
      const V v = T == 2 ? V::Add(c[(2 * r) * P + u], c[(2 * r + 1) * P + u])
                         : c[r * P + u];
      const int n = outs - u * kPanelOut;
      if (n >= kPanelOut) {
        v.Store(yr + u * kPanelOut);
      } else if (n > 0) {
        v.StorePartial(yr + u * kPanelOut, n);
      }
    }
  }
}

// gemm_bf16 over the terms xs (T a row): Bf16Block.
template <typename V, int T>
struct Bf16Panels {
  using W = uint16_t;
  // One term a row: twice the rows in the same accumulators.
  static constexpr int kRows = V::kBf16Rows * (T == 1 ? 2 : 1);
  static constexpr int kPanels = V::kBf16Panels;
  static constexpr int kOneRowPanels = V::kBf16OneRowPanels;
  const float* xs;
  int stride;
  int in;
  int64_t pstride;
  int RowBytes() const { return T * stride * 4; }
  template <int R, int P>
  void Block(int t, const uint16_t* w, float* y, int ldy, int outs,
             Fetch fetch) const {
    Bf16Block<V, R, P, T>(w, pstride, in,
                          xs + static_cast<int64_t>(T * t) * stride, stride, y,
                          ldy, outs, fetch);
  }
};

// gemm_bf16 with fused multiply-adds (the AVX-512 build without AMX-BF16,
// AVX2, scalar; and one row on AMX machines), the loops of Gemm.
template <typename V>
void GemmBf16Terms(const uint16_t* w, int in, const float* xs,
                   const uint16_t* /*xb*/, int terms, int rows, float* y,
                   int ldy, int o_begin, int o_end) {
  const uint32_t mxcsr = EnterFlushToZero();
  if (terms == 1) {
    const Bf16Panels<V, 1> k{xs, Bf16TermsStride(in), in, PanelElems(in, 2)};
    PanelLoop(k, w, rows, y, ldy, o_begin, o_end);
  } else {
    const Bf16Panels<V, 2> k{xs, Bf16TermsStride(in), in, PanelElems(in, 2)};
    PanelLoop(k, w, rows, y, ldy, o_begin, o_end);
  }
  RestoreMxcsr(mxcsr);
}

// int8 x int8 products on the packed layout (kernels.h), plain integer
// loops vectorised by the compiler for each build's instruction set;
// kernels_avx512vnni.cc and kernels_amx.cc are the fast paths. Exact
// integers, so the loop order is free. A template on the build's V (unused)
// only so each build gets its own copy: a plain inline function would be
// merged by the linker across builds of different instruction sets.
template <typename V>
void GemmI8Generic(const int8_t* w, const float* wscale, const int32_t* wsum,
                   int in, const uint8_t* xq, const float* xscale, int ldq,
                   int rows, float* y, int ldy, int o_begin, int o_end) {
  (void)wsum;
  const int64_t chunks = I8Chunks(in);
  for (int g0 = o_begin; g0 < o_end; g0 += kI8TileOut) {
    const int outs = o_end - g0 < kI8TileOut ? o_end - g0 : kI8TileOut;
    const int8_t* tiles = w + g0 / kI8TileOut * chunks * kI8TileBytes;
    for (int t = 0; t < rows; ++t) {
      const uint8_t* xr = xq + static_cast<int64_t>(t) * ldq;
      int32_t acc[kI8TileOut] = {};
      for (int64_t c = 0; c < chunks; ++c) {
        const int8_t* tile = tiles + c * kI8TileBytes;
        const uint8_t* xc = xr + c * kI8TileIn;
        for (int k4 = 0; k4 < kI8TileIn / 4; ++k4) {
          for (int n = 0; n < kI8TileOut; ++n) {
            for (int j = 0; j < 4; ++j) {
              acc[n] += static_cast<int32_t>(tile[k4 * 64 + n * 4 + j]) *
                        (static_cast<int32_t>(xc[k4 * 4 + j]) - 128);
            }
          }
        }
      }
      for (int n = 0; n < outs; ++n) {
        y[static_cast<int64_t>(t) * ldy + g0 + n] =
            static_cast<float>(acc[n]) * xscale[t] * wscale[g0 + n];
      }
    }
  }
}

// Rows of the state in groups of 16: the group's 16 dot products with
// neg_kk are reduced together (V::Reduce16), then its rows are updated and
// their 16 outputs reduced together. Per element the operations are those of
// one row at a time: the lane accumulations in j order, then the fixed tree.
// kN > 0 fixes n at compile time (Wkv7Step below): the loops unroll and the
// 16 accumulators stay in registers, where with a run-time n GCC kept them
// on the stack, every FMA a load and a store.
template <typename V, int kN>
inline void Wkv7StepN(float* s, int n_arg, const float* r, const float* w,
                      const float* k, const float* v, const float* neg_kk,
                      const float* kka, float* y, const float* next) {
  const int n = kN > 0 ? kN : n_arg;
  alignas(64) float red[16];
  for (int i0 = 0; i0 < n; i0 += 16) {
    const int rows = kN % 16 == 0 && kN > 0 ? 16 : (n - i0 < 16 ? n - i0 : 16);
    V acc[16];
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) acc[q] = V::Zero();
#pragma GCC unroll 16
    for (int q = 0; q < rows; ++q) {
      const float* row = s + static_cast<int64_t>(i0 + q) * n;
      if (next != nullptr) {
        // The same row of the next state, in step with this walk.
        const float* ahead = next + static_cast<int64_t>(i0 + q) * n;
#pragma GCC unroll 8
        for (int j = 0; j < n; j += kLanes) __builtin_prefetch(ahead + j, 1, 3);
      }
#pragma GCC unroll 8
      for (int j = 0; j < n; j += kLanes) {
        const int m = n - j;
        acc[q] = V::Fma(LoadW<V>(row + j, m), LoadW<V>(neg_kk + j, m), acc[q]);
      }
    }
    V::Reduce16(acc, red);
    // The update reads the rows again from L1: without this barrier GCC
    // keeps the 64 vectors of the first pass, and with 32 registers it
    // parks them on the stack.
    __asm__ volatile("" ::: "memory");
#pragma GCC unroll 16
    for (int q = 0; q < rows; ++q) {
      const int i = i0 + q;
      float* row = s + static_cast<int64_t>(i) * n;
      const V sa = V::Set1(red[q]);
      const V vi = V::Set1(v[i]);
      V out = V::Zero();
#pragma GCC unroll 8
      for (int j = 0; j < n; j += kLanes) {
        const int m = n - j;
        V sv = V::Mul(LoadW<V>(row + j, m), LoadW<V>(w + j, m));
        sv = V::Fma(sa, LoadW<V>(kka + j, m), sv);
        sv = V::Fma(vi, LoadW<V>(k + j, m), sv);
        if (m >= kLanes) {
          sv.Store(row + j);
        } else {
          sv.StorePartial(row + j, m);
        }
        out = V::Fma(sv, LoadW<V>(r + j, m), out);
      }
      acc[q] = out;
    }
#pragma GCC unroll 16
    for (int q = rows; q < 16; ++q) acc[q] = V::Zero();
    V::Reduce16(acc, red);
    for (int q = 0; q < rows; ++q) y[i0 + q] = red[q];
  }
}

// Kernels::wkv7_step. RWKV-7 heads are 64 wide in every released size.
template <typename V>
void Wkv7Step(float* s, int n, const float* r, const float* w, const float* k,
              const float* v, const float* neg_kk, const float* kka, float* y,
              const float* next) {
  if (n == 64) {
    Wkv7StepN<V, 64>(s, n, r, w, k, v, neg_kk, kka, y, next);
  } else {
    Wkv7StepN<V, 0>(s, n, r, w, k, v, neg_kk, kka, y, next);
  }
}

}  // namespace statestream::engine::kernels_impl

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_
