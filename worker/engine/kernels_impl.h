// SPDX-License-Identifier: Apache-2.0
// Kernel bodies written once over a 16-lane vector type V, included by
// kernels_{avx512,avx2,scalar}.cc with their own V. Internal to the engine.
//
// V must provide: Zero(), Load(const float*), LoadPartial(const float*, n),
// LoadBF16(const uint16_t*), LoadBF16Partial(const uint16_t*, n), Set1(float),
// Fma(a, b, c) = a*b+c (fused), Mul, Store(float*), StorePartial(float*, n)
// and ReduceAdd() with the fixed tree: 16 -> 8 (lane j + lane j+8) -> 4 -> 2
// -> 1. Partial loads fill missing lanes with +0.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_

#include <cstdint>

namespace statestream::engine::kernels_impl {

inline constexpr int kLanes = 16;

template <typename V>
inline V LoadW(const float* w, int n) {
  return n >= kLanes ? V::Load(w) : V::LoadPartial(w, n);
}
template <typename V>
inline V LoadW(const uint16_t* w, int n) {
  return n >= kLanes ? V::LoadBF16(w) : V::LoadBF16Partial(w, n);
}

// A block of RT rows x OT outputs; each of the RT*OT accumulators sees the
// same operation sequence as a 1x1 block would.
template <typename V, typename W, int RT, int OT>
inline void GemmBlock(const W* w, int in, const float* x, int ldx, float* y,
                      int ldy, int o) {
  V acc[RT][OT];
  for (int t = 0; t < RT; ++t)
    for (int u = 0; u < OT; ++u) acc[t][u] = V::Zero();
  for (int i = 0; i < in; i += kLanes) {
    const int n = in - i;
    V wv[OT];
    for (int u = 0; u < OT; ++u)
      wv[u] = LoadW<V>(w + static_cast<int64_t>(o + u) * in + i, n);
    for (int t = 0; t < RT; ++t) {
      const float* xr = x + static_cast<int64_t>(t) * ldx + i;
      V xv = n >= kLanes ? V::Load(xr) : V::LoadPartial(xr, n);
      for (int u = 0; u < OT; ++u) acc[t][u] = V::Fma(wv[u], xv, acc[t][u]);
    }
  }
  for (int t = 0; t < RT; ++t)
    for (int u = 0; u < OT; ++u)
      y[static_cast<int64_t>(t) * ldy + o + u] = acc[t][u].ReduceAdd();
}

template <typename V, typename W, int RT>
inline void GemmRows(const W* w, int in, const float* x, int ldx, float* y,
                     int ldy, int o_begin, int o_end) {
  int o = o_begin;
  for (; o + 4 <= o_end; o += 4)
    GemmBlock<V, W, RT, 4>(w, in, x, ldx, y, ldy, o);
  for (; o < o_end; ++o) GemmBlock<V, W, RT, 1>(w, in, x, ldx, y, ldy, o);
}

template <typename V, typename W>
void Gemm(const W* w, int in, const float* x, int ldx, int rows, float* y,
          int ldy, int o_begin, int o_end) {
  // Outputs in tiles of 64 so a tile of W stays in L1/L2 while all rows
  // stream past it; rows in blocks of 4.
  constexpr int kOTile = 64;
  for (int ot = o_begin; ot < o_end; ot += kOTile) {
    const int oe = ot + kOTile < o_end ? ot + kOTile : o_end;
    int t = 0;
    for (; t + 4 <= rows; t += 4)
      GemmRows<V, W, 4>(w, in, x + static_cast<int64_t>(t) * ldx, ldx,
                        y + static_cast<int64_t>(t) * ldy, ldy, ot, oe);
    for (; t < rows; ++t)
      GemmRows<V, W, 1>(w, in, x + static_cast<int64_t>(t) * ldx, ldx,
                        y + static_cast<int64_t>(t) * ldy, ldy, ot, oe);
  }
}

template <typename V>
void Wkv7Step(float* s, int n, const float* r, const float* w, const float* k,
              const float* v, const float* neg_kk, const float* kka, float* y) {
  for (int i = 0; i < n; ++i) {
    float* row = s + static_cast<int64_t>(i) * n;
    V acc = V::Zero();
    for (int j = 0; j < n; j += kLanes) {
      const int m = n - j;
      acc = V::Fma(LoadW<V>(row + j, m), LoadW<V>(neg_kk + j, m), acc);
    }
    const V sa = V::Set1(acc.ReduceAdd());
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
    y[i] = out.ReduceAdd();
  }
}

}  // namespace statestream::engine::kernels_impl

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_IMPL_H_
