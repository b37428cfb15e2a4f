// SPDX-License-Identifier: Apache-2.0
// wkv7_step, the RWKV-7 state step (kernels.h): bit for bit its scalar
// definition in every build, and close to the exact arithmetic.
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/kernels.h"
#include "worker/engine/kernels_test_util.h"

namespace statestream::engine {
namespace {

using testing_util::Random;

// The ReduceAdd tree of kernels_impl.h: 16 -> 8 (lane j + lane j+8) -> 4
// -> 2 -> 1.
float TreeSum16(const float* l) {
  float h8[8], h4[4];
  for (int i = 0; i < 8; ++i) h8[i] = l[i] + l[i + 8];
  for (int i = 0; i < 4; ++i) h4[i] = h8[i] + h8[i + 4];
  return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

// wkv7_step's exact operations in scalar code: per row, 16 lanes of fused
// multiply-adds in j order (lanes past n see +0 operands), then the tree.
void Wkv7Reference(float* s, int n, const float* r, const float* w,
                   const float* k, const float* v, const float* neg_kk,
                   const float* kka, float* y) {
  auto at = [n](const float* p, int j) { return j < n ? p[j] : 0.0f; };
  for (int i = 0; i < n; ++i) {
    float* row = s + static_cast<size_t>(i) * n;
    float acc[16] = {};
    for (int j0 = 0; j0 < n; j0 += 16) {
      for (int l = 0; l < 16; ++l) {
        acc[l] = std::fmaf(at(row, j0 + l), at(neg_kk, j0 + l), acc[l]);
      }
    }
    const float sa = TreeSum16(acc);
    float out[16] = {};
    for (int j0 = 0; j0 < n; j0 += 16) {
      for (int l = 0; l < 16; ++l) {
        const int j = j0 + l;
        volatile float product = at(row, j) * at(w, j);  // not contracted
        float sv = product;
        sv = std::fmaf(sa, at(kka, j), sv);
        sv = std::fmaf(v[i], at(k, j), sv);
        if (j < n) row[j] = sv;
        out[l] = std::fmaf(sv, at(r, j), out[l]);
      }
    }
    y[i] = TreeSum16(out);
  }
}

// One head's inputs for wkv7_step (Random with seeds seed..seed+6).
struct Wkv7Case {
  Wkv7Case(int n, uint32_t seed)
      : n(n),
        s0(Random(static_cast<size_t>(n) * n, seed)),
        r(Random(n, seed + 1)),
        w(Random(n, seed + 2)),
        k(Random(n, seed + 3)),
        v(Random(n, seed + 4)),
        nkk(Random(n, seed + 5)),
        kka(Random(n, seed + 6)) {}
  // One step of `kern` from s0 into s and y.
  void Step(const Kernels& kern, std::vector<float>& s, std::vector<float>& y,
            const float* next) const {
    s = s0;
    y.assign(n, 0.0f);
    kern.wkv7_step(s.data(), n, r.data(), w.data(), k.data(), v.data(),
                   nkk.data(), kka.data(), y.data(), next);
  }
  int n;
  std::vector<float> s0, r, w, k, v, nkk, kka;
};

TEST(KernelsTest, Wkv7StepIsItsDefinitionBitForBit) {
  // 64 is every released RWKV-7's head size and has its own compiled path;
  // the others take the general one.
  for (int n : {64, 8, 16, 24, 40, 128}) {
    const Wkv7Case c(n, 11);
    std::vector<float> want_s = c.s0, want_y(n);
    Wkv7Reference(want_s.data(), n, c.r.data(), c.w.data(), c.k.data(),
                  c.v.data(), c.nkk.data(), c.kka.data(), want_y.data());
    for (const char* name : {"scalar", "avx2", "avx512"}) {
      const Kernels* kern = GetKernelsByName(name);
      if (kern == nullptr) continue;
      std::vector<float> s, y;
      c.Step(*kern, s, y, nullptr);
      for (int i = 0; i < n * n; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(s[i]),
                  std::bit_cast<uint32_t>(want_s[i]))
            << name << " n=" << n << " state " << i;
      }
      for (int i = 0; i < n; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(y[i]),
                  std::bit_cast<uint32_t>(want_y[i]))
            << name << " n=" << n << " y " << i;
      }
    }
  }
}

TEST(KernelsTest, Wkv7StepMatchesDefinition) {
  for (int n : {8, 16, 64, 40, 128, 24}) {
    const Wkv7Case c(n, 1);
    std::vector<double> want(static_cast<size_t>(n) * n), want_y(n);
    for (int i = 0; i < n; ++i) {
      double sa = 0;
      for (int m = 0; m < n; ++m) sa += double(c.s0[i * n + m]) * c.nkk[m];
      for (int j = 0; j < n; ++j) {
        want[i * n + j] = double(c.s0[i * n + j]) * c.w[j] + sa * c.kka[j] +
                          double(c.v[i]) * c.k[j];
      }
      for (int j = 0; j < n; ++j) want_y[i] += want[i * n + j] * c.r[j];
    }
    std::vector<float> ref_s;
    std::vector<float> ref_y;
    for (const char* name : {"scalar", "avx2", "avx512"}) {
      const Kernels* kern = GetKernelsByName(name);
      if (kern == nullptr) continue;
      std::vector<float> s, y;
      c.Step(*kern, s, y, nullptr);
      for (int i = 0; i < n * n; ++i) EXPECT_NEAR(s[i], want[i], 1e-5);
      for (int i = 0; i < n; ++i) EXPECT_NEAR(y[i], want_y[i], 1e-4);
      // The next state is a hint only: the same bits, and it is left alone.
      const std::vector<float> next0 = Random(static_cast<size_t>(n) * n, 8);
      std::vector<float> s2, y2, next = next0;
      c.Step(*kern, s2, y2, next.data());
      EXPECT_EQ(s2, s) << name;
      EXPECT_EQ(y2, y) << name;
      EXPECT_EQ(next, next0) << name;
      if (ref_s.empty()) {
        ref_s = s;
        ref_y = y;
      } else {
        EXPECT_EQ(s, ref_s) << name;
        EXPECT_EQ(y, ref_y) << name;
      }
    }
  }
}

}  // namespace
}  // namespace statestream::engine
