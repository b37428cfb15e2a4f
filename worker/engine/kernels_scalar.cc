// SPDX-License-Identifier: Apache-2.0
// Portable kernels: the same 16-lane arithmetic as the SIMD builds, one lane
// at a time with std::fma, so results are bit-identical to them. Used on
// CPUs without AVX2 and as the reference in kernel tests.
#include <cmath>
#include <cstring>

#include "worker/engine/kernels.h"
#include "worker/engine/kernels_impl.h"

namespace statestream::engine {
namespace {

struct V {
  float l[16];
  static constexpr int kRows = 4, kPanels = 1;
  static constexpr int kBf16Rows = 1, kBf16Panels = 1, kBf16OneRowPanels = 1;
  static V Zero() { return {}; }
  static V Set1(float f) {
    V r;
    for (float& x : r.l) x = f;
    return r;
  }
  static V Load(const float* p) {
    V r;
    std::memcpy(r.l, p, sizeof(r.l));
    return r;
  }
  static V LoadPartial(const float* p, int n) {
    V r = {};
    for (int i = 0; i < n && i < 16; ++i) r.l[i] = p[i];
    return r;
  }
  static float FromBF16(uint16_t b) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static V LoadStep(const float* p, int) { return Load(p); }
  static V LoadStep(const uint16_t* p, int s) {
    V r;
    for (int n = 0; n < 16; ++n) r.l[n] = FromBF16(p[2 * n + s]);
    return r;
  }
  static V Fma(const V& a, const V& b, const V& c) {
    V r;
    for (int i = 0; i < 16; ++i) r.l[i] = std::fma(a.l[i], b.l[i], c.l[i]);
    return r;
  }
  static V Mul(const V& a, const V& b) {
    V r;
    for (int i = 0; i < 16; ++i) r.l[i] = a.l[i] * b.l[i];
    return r;
  }
  static V Add(const V& a, const V& b) {
    V r;
    for (int i = 0; i < 16; ++i) r.l[i] = a.l[i] + b.l[i];
    return r;
  }
  void Store(float* p) const { std::memcpy(p, l, sizeof(l)); }
  void StorePartial(float* p, int n) const {
    for (int i = 0; i < n && i < 16; ++i) p[i] = l[i];
  }
  static void Reduce16(const V* a, float* out) {
    for (int j = 0; j < 16; ++j) out[j] = a[j].ReduceAdd();
  }
  float ReduceAdd() const {
    float h8[8], h4[4];
    for (int i = 0; i < 8; ++i) h8[i] = l[i] + l[i + 8];
    for (int i = 0; i < 4; ++i) h4[i] = h8[i] + h8[i + 4];
    float h2_0 = h4[0] + h4[2], h2_1 = h4[1] + h4[3];
    return h2_0 + h2_1;
  }
};

}  // namespace

extern const Kernels kKernelsScalar = {
    "scalar",
    &kernels_impl::Gemm<V>,
    &kernels_impl::GemmBf16Terms<V>,
    &Bf16Fp32Copy,
    &kernels_impl::GemmI8Generic<V>,
    &NoI8Tiles,
    &kernels_impl::Wkv7Step<V>,
};

}  // namespace statestream::engine
