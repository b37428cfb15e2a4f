// SPDX-License-Identifier: Apache-2.0
// Kernel bodies written once over a 16-lane vector type V, included by
// kernels_{avx512,avx2,scalar}.cc with their own V. Internal to the engine.
//
// V must provide: Zero(), Load(const float*), LoadPartial(const float*, n),
// LoadBF16(const uint16_t*), LoadBF16Partial(const uint16_t*, n),
// Set1(float),
// Fma(a, b, c) = a*b+c (fused), Mul, Store(float*), StorePartial(float*, n)
// and ReduceAdd() with the fixed tree: 16 -> 8 (lane j + lane j+8) -> 4 -> 2
// -> 1, and Reduce16(const V a[16], float out[16]) with out[j] bit-identical
// to a[j].ReduceAdd(). Partial loads fill missing lanes with +0.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_

#include <cstddef>
#include <cstdint>

#include "worker/engine/kernels.h"

namespace statestream::engine::kernels_impl {

inline constexpr int kLanes = 16;

// A per-thread buffer of at least `floats` floats, 64-byte aligned, valid
// until the thread's next call with the same `slot` (0: widened bf16 tiles,
// 1: the avx512bf16 build's rounded rows, 2: panel accumulators). Defined in
// kernels.cc, which is compiled for the baseline ISA: the ISA-specific files
// must not instantiate std::vector or other inline library code, whose one
// linked copy could otherwise come from an AVX-512 object.
float* ThreadScratch(int slot, size_t floats);

template <typename V>
inline V LoadW(const float* w, int n) {
  return n >= kLanes ? V::Load(w) : V::LoadPartial(w, n);
}
template <typename V>
inline V LoadW(const uint16_t* w, int n) {
  return n >= kLanes ? V::LoadBF16(w) : V::LoadBF16Partial(w, n);
}
template <typename V>
inline V LoadFull(const float* w) {
  return V::Load(w);
}
template <typename V>
inline V LoadFull(const uint16_t* w) {
  return V::LoadBF16(w);
}

// One full 16-lane step of an RT x OT register block at input i: acc[t][u]
// += w[u][i..i+15] * x[t][i..i+15], lane by lane (fused).
template <typename V, typename W, int RT, int OT>
inline void BlockStep(const W* w, int64_t ldw, const float* x, int ldx, int i,
                      V* acc) {
  V wv[OT];
#pragma GCC unroll 16
  for (int u = 0; u < OT; ++u) wv[u] = LoadFull<V>(w + u * ldw + i);
#pragma GCC unroll 16
  for (int t = 0; t < RT; ++t) {
    const V xv = V::Load(x + static_cast<int64_t>(t) * ldx + i);
#pragma GCC unroll 16
    for (int u = 0; u < OT; ++u) {
      acc[t * OT + u] = V::Fma(wv[u], xv, acc[t * OT + u]);
    }
  }
}

// The partial step of the last n < 16 inputs at i, +0 in the missing lanes.
template <typename V, typename W, int RT, int OT>
inline void BlockTail(const W* w, int64_t ldw, const float* x, int ldx, int i,
                      int n, V* acc) {
  V wv[OT];
  for (int u = 0; u < OT; ++u) wv[u] = LoadW<V>(w + u * ldw + i, n);
  for (int t = 0; t < RT; ++t) {
    const V xv = V::LoadPartial(x + static_cast<int64_t>(t) * ldx + i, n);
    for (int u = 0; u < OT; ++u) {
      acc[t * OT + u] = V::Fma(wv[u], xv, acc[t * OT + u]);
    }
  }
}

// One row x OT outputs (decode): GemmBlock's operations for RT = 1, in an
// order that streams. One row against bf16 weights is bound by how many
// cache misses a core keeps in flight: widening costs uops, so the
// out-of-order window covers fewer bytes than fp32's. So each weight vector
// is widened and used at once, the block two blocks ahead (contiguous after
// this one's) is fetched into L2 (prefetcht1) as many lines per step as
// this one consumes, placed between the products, and only the block's own
// accumulators are reduced (ReduceAdd: Reduce16's bits). Measured on 300 MB
// of 768-input rows, two threads: 17-18 GB/s with prefetcht0 one block
// ahead, 27-29 with prefetcht1 two blocks ahead, 30-34 in this order under
// an AVX-512 scheduling tune (kernels_avx512_onerow.cc;
// docs/engine-kernels.md "One-row bf16").
// Nothing is prefetched past `pf_end` (the end of the call's rows: another
// task's rows, or nothing at all).
template <typename V, typename W, int OT>
inline void OneRowBlock(const W* w, int64_t ldw, int in, const float* x,
                        float* y, const void* pf_end) {
  static_assert(OT <= 16, "at most 16 accumulators");
  V acc[OT];
#pragma GCC unroll 16
  for (int u = 0; u < OT; ++u) acc[u] = V::Zero();
  const int full = in & ~(kLanes - 1);
  constexpr bool kPrefetch = sizeof(W) < 4;
  constexpr int kLinesPerStep = OT * kLanes * static_cast<int>(sizeof(W)) / 64;
  constexpr int kBlocksAhead = 2;
  const char* pf = reinterpret_cast<const char*>(w + kBlocksAhead * OT * ldw);
  const bool prefetch =
      kPrefetch && (pf_end == nullptr || pf + OT * ldw * sizeof(W) <=
                                             static_cast<const char*>(pf_end));
  for (int i = 0; i < full; i += kLanes) {
    const V xv = V::Load(x + i);
#pragma GCC unroll 16
    for (int u = 0; u < OT; ++u) {
      acc[u] = V::Fma(LoadFull<V>(w + u * ldw + i), xv, acc[u]);
      if (prefetch && u < kLinesPerStep) {
        __builtin_prefetch(pf + 64 * u, 0, 2);
      }
    }
    if (prefetch) pf += OT * kLanes * sizeof(W);
  }
  if (full < in) BlockTail<V, W, 1, OT>(w, ldw, x, 0, full, in - full, acc);
#pragma GCC unroll 16
  for (int u = 0; u < OT; ++u) y[u] = acc[u].ReduceAdd();
}

// A block of RT rows x OT outputs (RT * OT <= 16 accumulators, all kept in
// registers). `w` points at the block's first output row (row stride ldw),
// `x` at its first input row, `y` at y[first row][first output]. Each
// accumulator sees exactly the operation sequence of a 1x1 block: full
// 16-lane steps, then one partial step with +0 in the missing lanes, then the
// fixed reduction tree (V::Reduce16 is 16 ReduceAdd()s done at once). One
// row goes to OneRowBlock (the same operations).
template <typename V, typename W, int RT, int OT>
inline void GemmBlock(const W* w, int64_t ldw, int in, const float* x, int ldx,
                      float* y, int ldy, const void* pf_end = nullptr) {
  static_assert(RT * OT <= 16, "at most 16 accumulators");
  if constexpr (RT == 1) {
    OneRowBlock<V, W, OT>(w, ldw, in, x, y, pf_end);
  } else {
    V acc[16];
#pragma GCC unroll 16
    for (int a = 0; a < 16; ++a) acc[a] = V::Zero();
    const int full = in & ~(kLanes - 1);
    for (int i = 0; i < full; i += kLanes) {
      BlockStep<V, W, RT, OT>(w, ldw, x, ldx, i, acc);
    }
    if (full < in) {
      BlockTail<V, W, RT, OT>(w, ldw, x, ldx, full, in - full, acc);
    }
    alignas(64) float out[16];
    V::Reduce16(acc, out);
    for (int t = 0; t < RT; ++t) {
      for (int u = 0; u < OT; ++u) {
        y[static_cast<int64_t>(t) * ldy + u] = out[t * OT + u];
      }
    }
  }
}

// Outputs [0, outs) of `RT` rows, OT outputs at a time, then one by one.
template <typename V, typename W, int RT, int OT>
inline void GemmRowBlock(const W* w, int64_t ldw, int in, const float* x,
                         int ldx, float* y, int ldy, int outs,
                         const void* pf_end = nullptr) {
  int o = 0;
  for (; o + OT <= outs; o += OT) {
    GemmBlock<V, W, RT, OT>(w + o * ldw, ldw, in, x, ldx, y + o, ldy, pf_end);
  }
  for (; o < outs; ++o) {
    GemmBlock<V, W, RT, 1>(w + o * ldw, ldw, in, x, ldx, y + o, ldy, pf_end);
  }
}

// Prefetches [p, p + bytes) into the cache, one line per instruction.
inline void Prefetch(const char* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
}

// All `rows` rows against outputs [0, outs): 4x4 register blocks over a
// tile of W small enough to stay in L1/L2 while the rows stream past.
// [pf, pf + pf_bytes) (the next tile) is prefetched a slice per row block,
// so its memory latency overlaps this tile's arithmetic.
template <typename V, typename W>
inline void GemmTile(const W* w, int64_t ldw, int in, const float* x, int ldx,
                     int rows, float* y, int ldy, int outs, const char* pf,
                     int64_t pf_bytes, const void* pf_end = nullptr) {
  const int blocks = (rows + 3) / 4;
  const int64_t slice = (pf_bytes / blocks + 63) & ~int64_t{63};
  int t = 0;
  for (; t + 4 <= rows; t += 4) {
    const int64_t n = pf_bytes < slice ? pf_bytes : slice;
    Prefetch(pf, n);
    pf += n;
    pf_bytes -= n;
    GemmRowBlock<V, W, 4, 4>(w, ldw, in, x + static_cast<int64_t>(t) * ldx, ldx,
                             y + static_cast<int64_t>(t) * ldy, ldy, outs);
  }
  Prefetch(pf, pf_bytes);
  const float* xt = x + static_cast<int64_t>(t) * ldx;
  float* yt = y + static_cast<int64_t>(t) * ldy;
  switch (rows - t) {
    case 3:
      GemmRowBlock<V, W, 3, 4>(w, ldw, in, xt, ldx, yt, ldy, outs);
      break;
    case 2:
      GemmRowBlock<V, W, 2, 8>(w, ldw, in, xt, ldx, yt, ldy, outs);
      break;
    case 1:
      // One-row bf16 (decode): 4-output blocks stream best (see GemmBlock).
      if constexpr (sizeof(W) < 4) {
        GemmRowBlock<V, W, 1, 4>(w, ldw, in, xt, ldx, yt, ldy, outs, pf_end);
      } else {
        GemmRowBlock<V, W, 1, 8>(w, ldw, in, xt, ldx, yt, ldy, outs);
      }
      break;
    default:
      break;
  }
}

// One RT x OT block over inputs [i0, i1) (a multiple of kLanes apart) and,
// when tail > 0, the partial step of `tail` inputs at i1. The block's
// 16-lane accumulators wait in `acc` ([row][16 outputs][kLanes], row stride
// kPanelAcc floats) between input chunks: zero for the first chunk, then
// loaded, advanced with GemmBlock's FMAs in GemmBlock's order, and stored
// back exactly.
inline constexpr int kPanelAcc = 16 * kLanes;
template <typename V, int RT, int OT>
inline void PanelBlock(const float* w, int64_t ldw, const float* x, int ldx,
                       int i0, int i1, int tail, bool first, float* acc) {
  V a[RT * OT];
#pragma GCC unroll 16
  for (int t = 0; t < RT; ++t) {
#pragma GCC unroll 16
    for (int u = 0; u < OT; ++u) {
      a[t * OT + u] =
          first ? V::Zero() : V::Load(acc + t * kPanelAcc + u * kLanes);
    }
  }
  for (int i = i0; i < i1; i += kLanes) {
    BlockStep<V, float, RT, OT>(w, ldw, x, ldx, i, a);
  }
  if (tail > 0) BlockTail<V, float, RT, OT>(w, ldw, x, ldx, i1, tail, a);
#pragma GCC unroll 16
  for (int t = 0; t < RT; ++t) {
#pragma GCC unroll 16
    for (int u = 0; u < OT; ++u) {
      a[t * OT + u].Store(acc + t * kPanelAcc + u * kLanes);
    }
  }
}

// A block of `rt` (1-4) rows.
template <typename V, int OT>
inline void PanelBlockRows(int rt, const float* w, int64_t ldw, const float* x,
                           int ldx, int i0, int i1, int tail, bool first,
                           float* acc) {
  switch (rt) {
    case 4:
      return PanelBlock<V, 4, OT>(w, ldw, x, ldx, i0, i1, tail, first, acc);
    case 3:
      return PanelBlock<V, 3, OT>(w, ldw, x, ldx, i0, i1, tail, first, acc);
    case 2:
      return PanelBlock<V, 2, OT>(w, ldw, x, ldx, i0, i1, tail, first, acc);
    default:
      return PanelBlock<V, 1, OT>(w, ldw, x, ldx, i0, i1, tail, first, acc);
  }
}

// Many rows against an fp32 tile of up to 16 outputs with a wide input
// (FFN value projections: 3072-4096 inputs). GemmTile's 4x4 blocks read a
// whole row of the tile per block: at that width a block's four rows of x
// fill L1 and the tile (16 x in floats) streams from L2 for every block,
// ~2/3 of the rate at 768 inputs. Here the input is walked in chunks of
// kChunk for all rows (panels of 16) before the next chunk, so a chunk's
// slice of the tile stays near while every row block uses it. Each (row,
// output) sees exactly GemmBlock's FMAs in GemmBlock's order and the same
// Reduce16: bit-identical to GemmTile (KernelsTest.GemmRow*).
template <typename V>
inline void GemmPanels(const float* w, int64_t ldw, int in, const float* x,
                       int ldx, int rows, float* y, int ldy, int outs) {
  constexpr int kPanel = 16, kChunk = 512;
  float* acc = ThreadScratch(2, static_cast<size_t>(kPanel) * kPanelAcc);
  const int full = in & ~(kLanes - 1);
  const int tail = in - full;
  for (int r0 = 0; r0 < rows; r0 += kPanel) {
    const int prow = rows - r0 < kPanel ? rows - r0 : kPanel;
    const float* xp = x + static_cast<int64_t>(r0) * ldx;
    for (int i0 = 0; i0 < full || (i0 == 0 && tail > 0); i0 += kChunk) {
      const int i1 = i0 + kChunk < full ? i0 + kChunk : full;
      const int t = i1 == full ? tail : 0;
      const bool first = i0 == 0;
      for (int r = 0; r < prow; r += 4) {
        const int rt = prow - r < 4 ? prow - r : 4;
        const float* xr = xp + static_cast<int64_t>(r) * ldx;
        for (int o = 0; o < outs; o += 4) {
          const float* wo = w + o * ldw;
          float* ar = acc + r * kPanelAcc + o * kLanes;
          switch (outs - o < 4 ? outs - o : 4) {
            case 4:
              PanelBlockRows<V, 4>(rt, wo, ldw, xr, ldx, i0, i1, t, first, ar);
              break;
            case 3:
              PanelBlockRows<V, 3>(rt, wo, ldw, xr, ldx, i0, i1, t, first, ar);
              break;
            case 2:
              PanelBlockRows<V, 2>(rt, wo, ldw, xr, ldx, i0, i1, t, first, ar);
              break;
            default:
              PanelBlockRows<V, 1>(rt, wo, ldw, xr, ldx, i0, i1, t, first, ar);
              break;
          }
        }
      }
    }
    // Each row's (up to) 16 outputs reduced together, as GemmBlock does.
    alignas(64) float out[16];
    for (int r = 0; r < prow; ++r) {
      V a[16];
      for (int u = 0; u < 16; ++u) {
        a[u] = u < outs ? V::Load(acc + r * kPanelAcc + u * kLanes) : V::Zero();
      }
      V::Reduce16(a, out);
      float* yr = y + static_cast<int64_t>(r0 + r) * ldy;
      for (int u = 0; u < outs; ++u) yr[u] = out[u];
    }
  }
}

// Widens rows [0, outs) of a bf16 matrix to fp32 (exact) into
// `out`, prefetching the same amount of the next tile (`pf`) as it goes.
template <typename V, typename W>
inline void WidenRows(const W* w, int64_t ldw, int in, int outs, float* out,
                      const char* pf, int64_t pf_bytes) {
  // One prefetch of 64 bytes per 64 bytes of weights widened.
  constexpr int kPerLine = 64 / (2 * kLanes * static_cast<int>(sizeof(W)));
  int step = 0;
  for (int o = 0; o < outs; ++o) {
    const W* src = w + o * ldw;
    float* dst = out + static_cast<int64_t>(o) * in;
    int i = 0;
    for (; i + 2 * kLanes <= in; i += 2 * kLanes) {
      if (pf_bytes > 0 && ++step >= kPerLine) {
        step = 0;
        __builtin_prefetch(pf, 0, 2);
        pf += 64;
        pf_bytes -= 64;
      }
      LoadFull<V>(src + i).Store(dst + i);
      LoadFull<V>(src + i + kLanes).Store(dst + i + kLanes);
    }
    for (; i + kLanes <= in; i += kLanes) LoadFull<V>(src + i).Store(dst + i);
    if (i < in) LoadW<V>(src + i, in - i).StorePartial(dst + i, in - i);
  }
  Prefetch(pf, pf_bytes);
}

template <typename V, typename W>
void Gemm(const W* w, int in, const float* x, int ldx, int rows, float* y,
          int ldy, int o_begin, int o_end) {
  if (rows <= 0 || o_begin >= o_end) return;
  // Output tiles of 16: a tile of W (16 x in) stays in L1/L2 while every row
  // streams past it, so each weight is read from memory once per call.
  constexpr int kOTile = 16;
  constexpr int kPanelMinIn = 1024;
  // bf16 weights feeding many rows are widened once per tile instead of
  // once per 4-row block (the widening costs two instructions per vector).
  constexpr bool kNarrow = sizeof(W) < 4;
  for (int ot = o_begin; ot < o_end; ot += kOTile) {
    const int outs = ot + kOTile < o_end ? kOTile : o_end - ot;
    const W* wt = w + static_cast<int64_t>(ot) * in;
    // The next tile, fetched while this one is computed (rows > 1 only: a
    // single row is a stream the hardware prefetcher handles).
    const int next = o_end - ot - outs < kOTile ? o_end - ot - outs : kOTile;
    const char* pf = reinterpret_cast<const char*>(wt + outs * in);
    const int64_t pf_bytes =
        rows > 1 ? static_cast<int64_t>(next) * in * sizeof(W) : 0;
    // Wide inputs (see GemmPanels) with many rows walk the input in chunks.
    const bool panels = rows >= 16 && in > kPanelMinIn;
    if constexpr (kNarrow) {
      if (rows >= 16) {
        float* widened = ThreadScratch(0, static_cast<size_t>(kOTile) * in);
        WidenRows<V, W>(wt, in, in, outs, widened, pf, pf_bytes);
        if (panels) {
          GemmPanels<V>(widened, in, in, x, ldx, rows, y + ot, ldy, outs);
        } else {
          GemmTile<V, float>(widened, in, in, x, ldx, rows, y + ot, ldy, outs,
                             nullptr, 0);
        }
        continue;
      }
    } else {
      if (panels) {
        GemmPanels<V>(wt, in, in, x, ldx, rows, y + ot, ldy, outs);
        continue;
      }
    }
    GemmTile<V, W>(wt, in, in, x, ldx, rows, y + ot, ldy, outs, pf,
                   kNarrow ? pf_bytes : 0,
                   w + static_cast<int64_t>(o_end) * in);
  }
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
template <typename V>
void Wkv7Step(float* s, int n, const float* r, const float* w, const float* k,
              const float* v, const float* neg_kk, const float* kka, float* y) {
  alignas(64) float red[16];
  for (int i0 = 0; i0 < n; i0 += 16) {
    const int rows = n - i0 < 16 ? n - i0 : 16;
    V acc[16];
    for (int q = 0; q < 16; ++q) acc[q] = V::Zero();
    for (int q = 0; q < rows; ++q) {
      const float* row = s + static_cast<int64_t>(i0 + q) * n;
      for (int j = 0; j < n; j += kLanes) {
        const int m = n - j;
        acc[q] = V::Fma(LoadW<V>(row + j, m), LoadW<V>(neg_kk + j, m), acc[q]);
      }
    }
    V::Reduce16(acc, red);
    for (int q = 0; q < rows; ++q) {
      const int i = i0 + q;
      float* row = s + static_cast<int64_t>(i) * n;
      const V sa = V::Set1(red[q]);
      const V vi = V::Set1(v[i]);
      V out = V::Zero();
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
    for (int q = rows; q < 16; ++q) acc[q] = V::Zero();
    V::Reduce16(acc, red);
    for (int q = 0; q < rows; ++q) y[i0 + q] = red[q];
  }
}

}  // namespace statestream::engine::kernels_impl

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_
