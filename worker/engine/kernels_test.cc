// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/kernels.h"

#include <xmmintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/exp.h"
#include "worker/engine/float16.h"
#include "worker/engine/kernels_test_util.h"
#include "worker/engine/ops.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {
namespace {

using testing_util::Random;

uint16_t ToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

float FromBF16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A row-major [out][in] matrix packed in the kernels' panels (kernels.h).
template <typename T>
std::vector<T> Packed(const std::vector<T>& w, int out, int in) {
  std::vector<T> p(PanelPackedElems(out, in, PanelStep(sizeof(T))), T{});
  for (int o = 0; o < out; ++o) {
    PackPanelRow(w.data() + static_cast<size_t>(o) * in, o, in, p.data());
  }
  return p;
}

// gemm_bf16's definition (kernels.h), written out plainly: each activation
// as two bf16 terms (or one, `terms` 1), per term two FMA chains (even and
// odd inputs) per block of 32 inputs, block sums, and the terms' sums; under
// FTZ | DAZ.
float RoundToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    u = (u | 0x00400000u) & 0xffff0000u;
  } else {
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  }
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<float> Bf16Reference(const std::vector<uint16_t>& wb, int out,
                                 int in, const float* x, int ldx, int rows,
                                 int ldy, int terms = 2) {
  const uint32_t mxcsr = _mm_getcsr();
  _mm_setcsr(mxcsr | 0x8040u);
  std::vector<float> y(static_cast<size_t>(rows) * ldy, 0.0f);
  for (int t = 0; t < rows; ++t) {
    std::vector<float> hi(in + 1, 0.0f), lo(in + 1, 0.0f);
    for (int i = 0; i < in; ++i) {
      const float v = x[static_cast<size_t>(t) * ldx + i];
      hi[i] = RoundToBf16(v);
      lo[i] = RoundToBf16(v - hi[i]);
    }
    for (int o = 0; o < out; ++o) {
      auto w = [&](int i) {
        return i < in ? FromBF16(wb[static_cast<size_t>(o) * in + i]) : 0.0f;
      };
      float sum[2];
      for (int term = 0; term < terms; ++term) {
        const std::vector<float>& xt = term == 0 ? hi : lo;
        float c = 0.0f;
        for (int b = 0; b < in; b += 32) {
          float even = 0.0f, odd = 0.0f;
          for (int i = b; i < b + 32 && i < in; i += 2) {
            even = std::fma(w(i), xt[i], even);
            odd = std::fma(w(i + 1), xt[i + 1], odd);
          }
          c = c + (even + odd);
        }
        sum[term] = c;
      }
      y[static_cast<size_t>(t) * ldy + o] =
          terms == 2 ? sum[0] + sum[1] : sum[0];
    }
  }
  _mm_setcsr(mxcsr);
  return y;
}

// Random int8 weights over the quantizer's range [-127, 127] and positive
// per-row scales, with each row's sum.
struct I8Weights {
  std::vector<int8_t> w;       // row-major [out][in]
  std::vector<int8_t> packed;  // the kernels' tiles (kernels.h)
  std::vector<float> scale;
  std::vector<int32_t> sum;
};
I8Weights RandomI8(int out, int in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-127, 127);
  I8Weights r;
  r.w.resize(static_cast<size_t>(out) * in);
  r.sum.assign(out, 0);
  for (int o = 0; o < out; ++o) {
    for (int i = 0; i < in; ++i) {
      r.w[o * in + i] = static_cast<int8_t>(d(rng));
      r.sum[o] += r.w[o * in + i];
    }
  }
  r.packed.assign(I8PackedBytes(out, in), 0);
  for (int o = 0; o < out; ++o) {
    for (int i = 0; i < in; ++i) {
      r.packed[I8PackedOffset(o, i, in)] = r.w[o * in + i];
    }
  }
  r.scale = Random(out, seed + 1);
  for (float& s : r.scale) s = std::fabs(s) / 127;
  return r;
}

// Activations quantized as MatMul does, rows padded to 64 bytes.
struct I8Rows {
  int ldq = 0;
  std::vector<uint8_t> q;
  std::vector<float> scale;
};
// Row-major, or in AMX tile order for a build whose gemm_i8_tiles(rows).
I8Rows Quantize(const float* x, int ldx, int rows, int in, bool tiles = false) {
  I8Rows r;
  r.ldq = (in + 63) & ~63;
  // Junk in the padding, and rows to a multiple of 16, as kernels.h allows.
  r.q.assign(static_cast<size_t>((rows + 15) & ~15) * r.ldq, 0xA5);
  r.scale.resize(rows);
  QuantizeRowRange(x, ldx, 0, rows, in, r.q.data(), r.ldq, r.scale.data(),
                   tiles);
  return r;
}

// The largest relative error of f against the double-precision `exact`
// over 400,001 evenly spaced points of [lo, hi].
template <typename F, typename Exact>
double WorstRelativeError(F f, Exact exact, float lo, float hi) {
  constexpr int kSteps = 400000;
  double worst = 0;
  for (int i = 0; i <= kSteps; ++i) {
    const float x = lo + (hi - lo) * static_cast<float>(i) / kSteps;
    const double want = exact(static_cast<double>(x));
    const double got = f(x);
    worst = std::max(worst,
                     std::fabs(got - want) / std::max(std::fabs(want), 1e-30));
  }
  return worst;
}

// The engine's own exp: within 2 ulp of the double-precision value over
// the whole normal range, and its edges exact.
TEST(KernelsTest, ExpIsAccurateOverTheNormalRange) {
  EXPECT_LT(
      WorstRelativeError([](float x) { return Exp(x); },
                         [](double x) { return std::exp(x); }, -87.0f, 88.0f),
      2.5e-7)
      << "relative error (2 ulp = 2.4e-7)";
  EXPECT_EQ(Exp(0.0f), 1.0f);
  EXPECT_EQ(Exp(-100.0f), 0.0f);
  EXPECT_EQ(Exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(Exp(100.0f), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Exp(std::nanf(""))));
}

// The engine's own tanh: within 3 ulp of the double-precision value (or
// 1e-7 absolute near the 0.625 split) everywhere, odd, and exact at the
// edges.
TEST(KernelsTest, TanhIsAccurateAndOdd) {
  EXPECT_LT(
      WorstRelativeError([](float x) { return Tanh(x); },
                         [](double x) { return std::tanh(x); }, -12.0f, 12.0f),
      3.6e-7)
      << "relative error (3 ulp = 3.6e-7)";
  for (int i = 0; i <= 100000; ++i) {
    const float x = 12.0f * static_cast<float>(i) / 100000.0f;
    ASSERT_EQ(Tanh(-x), -Tanh(x)) << x;
  }
  for (float x : {1e-30f, 1e-8f, 1e-3f, 0.3f, 0.624f, 0.625f, 0.7f}) {
    EXPECT_NEAR(Tanh(x), std::tanh(static_cast<double>(x)),
                3.6e-7 * std::tanh(static_cast<double>(x)))
        << x;
  }
  EXPECT_EQ(Tanh(20.0f), 1.0f);
  EXPECT_EQ(Tanh(-100.0f), -1.0f);
  EXPECT_EQ(Tanh(std::numeric_limits<float>::infinity()), 1.0f);
  EXPECT_EQ(Tanh(-std::numeric_limits<float>::infinity()), -1.0f);
  EXPECT_EQ(Tanh(0.0f), 0.0f);
  EXPECT_TRUE(std::signbit(Tanh(-0.0f)));
  EXPECT_TRUE(std::isnan(Tanh(std::nanf(""))));
}

// relu(x)^2 keeps a NaN a NaN whatever its sign bit, as the reference does:
// x86's default NaN (0xffc00000, from inf - inf or 0 * inf) became 0.
TEST(KernelsTest, ReluSquareKeepsEveryNan) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {-std::nanf(""), std::nanf(""), inf - inf, -1.0f, 2.0f,
                          -inf,           inf,           -0.0f,     0.5f};
  // Past a vector's width too, so a vectorised loop is checked.
  for (int i = 0; i < 40; ++i) x.push_back(i % 2 ? -std::nanf("") : -3.0f);
  std::vector<float> y = x;
  ReluSquare(y.data(), static_cast<int64_t>(y.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(y[i])) << i;
    } else {
      const float r = x[i] > 0 ? x[i] : 0.0f;
      EXPECT_EQ(y[i], r * r) << i;
    }
  }
}

TEST(KernelsTest, QuantizeRowsRoundsToTheRowMaximum) {
  const float x[] = {0.5f, -1.0f, 0.25f, 1.0f / 254, 0.0f, -0.7f};
  uint8_t q[6];
  float scale;
  QuantizeRows(x, 6, 1, 6, q, 6, &scale);
  EXPECT_FLOAT_EQ(scale, 1.0f / 127);
  const int want[] = {64, -127, 32, 0, 0, -89};  // round(x * 127): 0.5 -> 0
  for (int i = 0; i < 6; ++i) EXPECT_EQ(q[i] - 128, want[i]) << i;
  const float zeros[3] = {};
  QuantizeRows(zeros, 3, 1, 3, q, 3, &scale);
  EXPECT_EQ(scale, 0.0f);
  const float bad[2] = {1.0f, std::nanf("")};
  QuantizeRows(bad, 2, 1, 2, q, 2, &scale);
  EXPECT_TRUE(std::isnan(scale));
}

// A row whose max |x| is so small that 127 / max overflows counts as zeros
// (its zeros came out -127 on AVX-512 and undefined elsewhere); one just
// above that quantizes as usual.
TEST(KernelsTest, QuantizeRowsTakesATinyRowForZeros) {
  const float tiny[] = {1e-37f, 0.0f, -0.0f, 5e-39f, -2e-38f};
  uint8_t q[5];
  float scale = -1;
  QuantizeRows(tiny, 5, 1, 5, q, 5, &scale);
  EXPECT_EQ(scale, 0.0f);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(q[i], 128) << i;
  const float small[] = {1e-36f, 0.0f, -4e-37f};
  QuantizeRows(small, 3, 1, 3, q, 3, &scale);
  EXPECT_EQ(scale, 1e-36f / 127.0f);
  EXPECT_EQ(q[0] - 128, 127);
  EXPECT_EQ(q[1] - 128, 0);
  EXPECT_EQ(q[2] - 128, -51);  // -50.8
}

// Every length (vector body and masked tail) and values at rounding ties:
// the same bytes as the definition, scale = max|x| / 127 and
// q = round-half-even(x * (127 / max|x|)).
TEST(KernelsTest, QuantizeRowsMatchesTheDefinitionAtEveryLength) {
  for (int n = 1; n <= 80; ++n) {
    auto x = Random(static_cast<size_t>(n), n);
    for (int i = 0; i < n; i += 3) x[i] *= 1000.0f;  // mixed magnitudes
    if (n > 4) x[4] = -x[4];
    std::vector<uint8_t> q(n + 64, 0xA5);
    float scale = -1;
    QuantizeRows(x.data(), n, 1, n, q.data(), n, &scale);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    ASSERT_EQ(scale, amax / 127.0f) << n;
    const float inv = 127.0f / amax;
    for (int i = 0; i < n; ++i) {
      const float want = std::nearbyint(x[i] * inv);  // FE_TONEAREST
      ASSERT_EQ(q[i] - 128, static_cast<int>(want)) << n << " " << i;
    }
    EXPECT_EQ(q[n], 0xA5) << "wrote past the row, n = " << n;
  }
  // Exact halves round to even: x * 127 / 127 = 2.5 -> 2, 3.5 -> 4.
  const float ties[] = {2.5f, 3.5f, -2.5f, 127.0f};
  uint8_t q[4];
  float scale;
  QuantizeRows(ties, 4, 1, 4, q, 4, &scale);
  EXPECT_EQ(q[0] - 128, 2);
  EXPECT_EQ(q[1] - 128, 4);
  EXPECT_EQ(q[2] - 128, -2);
  EXPECT_EQ(q[3] - 128, 127);
}

// LayerNorm at every length (8-lane body and tail): within a few float ulp
// of the two-pass definition in long double, in place or not.
TEST(KernelsTest, LayerNormMatchesTheDefinitionAtEveryLength) {
  for (int n = 1; n <= 70; ++n) {
    auto x = Random(static_cast<size_t>(n), 300 + n);
    for (float& v : x) v = v * 3 + 0.5f;  // a mean away from zero
    auto w = Random(static_cast<size_t>(n), 400 + n);
    auto b = Random(static_cast<size_t>(n), 500 + n);
    std::vector<float> out(n);
    LayerNorm(x.data(), n, w.data(), b.data(), 1e-5f, out.data());
    long double mean = 0, var = 0;
    for (float v : x) mean += v;
    mean /= n;
    for (float v : x) var += (v - mean) * (v - mean);
    var /= n;
    for (int i = 0; i < n; ++i) {
      const long double want =
          (x[i] - mean) / std::sqrt(var + 1e-5L) * w[i] + b[i];
      EXPECT_NEAR(out[i], static_cast<double>(want), 4e-6) << n << " " << i;
    }
    std::vector<float> same = x;  // out may alias x
    LayerNorm(same.data(), n, w.data(), b.data(), 1e-5f, same.data());
    EXPECT_EQ(same, out) << n;
  }
}

// The definition of gemm_f32: per output, one chain of fused multiply-adds
// in input order from +0 — bit for bit in every build, at every input
// count, for ragged output ranges and any number of rows. And of gemm_bf16
// (kernels.h: two bf16 terms, TDPBF16PS's chains): the same in every build,
// AMX included, at input counts around the 32-input blocks.
TEST(KernelsTest, GemmIsItsDefinitionInEveryBuild) {
  for (int in : {1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 64, 100, 767, 768}) {
    // Odd counts and 4, 6, 7, 14: every remainder of the vdpbf16ps
    // kernel's blocks of 8 term rows, with one term a row and with two.
    for (int rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 16, 17, 33}) {
      const int out = 53;
      auto w = Random(static_cast<size_t>(out) * in, in);
      std::vector<uint16_t> wb(w.size());
      for (size_t i = 0; i < w.size(); ++i) {
        wb[i] = ToBF16(w[i]);
        if (i % 7 == 0) w[i] = FromBF16(wb[i]);  // some exact bf16 values
      }
      const auto pw = Packed(w, out, in);
      const auto pb = Packed(wb, out, in);
      auto x = Random(static_cast<size_t>(rows) * in, rows + 200);
      std::vector<float> want_f32(static_cast<size_t>(rows) * out);
      for (int t = 0; t < rows; ++t) {
        for (int o = 0; o < out; ++o) {
          float acc = 0.0f;
          for (int i = 0; i < in; ++i) {
            acc = std::fma(w[static_cast<size_t>(o) * in + i],
                           x[static_cast<size_t>(t) * in + i], acc);
          }
          want_f32[static_cast<size_t>(t) * out + o] = acc;
        }
      }
      const std::vector<float> want_bf16[2] = {
          Bf16Reference(wb, out, in, x.data(), in, rows, out, 1),
          Bf16Reference(wb, out, in, x.data(), in, rows, out, 2)};
      const Bf16Terms terms[2] = {Bf16Terms(x.data(), in, rows, in, 1),
                                  Bf16Terms(x.data(), in, rows, in, 2)};
      for (const char* name : {"scalar", "avx2", "avx512", "avx512vnni",
                               "avx512bf16", "avx512amx"}) {
        const Kernels* k = GetKernelsByName(name);
        if (k == nullptr) continue;
        std::vector<float> y(want_f32.size(), -1.0f);
        k->gemm_f32(pw.data(), in, x.data(), in, rows, y.data(), out, 0, 16);
        k->gemm_f32(pw.data(), in, x.data(), in, rows, y.data(), out, 16, out);
        EXPECT_EQ(0, std::memcmp(y.data(), want_f32.data(), y.size() * 4))
            << name << " f32 in=" << in << " rows=" << rows;
        for (const Bf16Terms& t : terms) {
          y.assign(y.size(), -1.0f);
          k->gemm_bf16(pb.data(), in, t.xs.data(), t.bf16(*k), t.terms, rows,
                       y.data(), out, 0, 32);
          k->gemm_bf16(pb.data(), in, t.xs.data(), t.bf16(*k), t.terms, rows,
                       y.data(), out, 32, out);
          EXPECT_EQ(0, std::memcmp(y.data(), want_bf16[t.terms - 1].data(),
                                   y.size() * 4))
              << name << " bf16 terms=" << t.terms << " in=" << in
              << " rows=" << rows;
        }
      }
    }
  }
}

// Denormal weights, activations, terms and results are flushed to zero as
// TDPBF16PS flushes them, in every build; and the second term keeps what
// the first drops (16 significant bits of the activations).
TEST(KernelsTest, Bf16ProductFlushesDenormalsAndKeepsSixteenBits) {
  const int in = 64, out = 32;
  for (const int scale : {-60, -75, -100, -126}) {
    for (const int rows : {1, 4, 16}) {
      std::vector<uint16_t> wb(static_cast<size_t>(out) * in);
      auto wf = Random(wb.size(), 3 - scale);
      for (size_t i = 0; i < wb.size(); ++i) {
        wb[i] = ToBF16(std::ldexp(wf[i], scale / 2 - static_cast<int>(i % 9)));
      }
      auto x = Random(static_cast<size_t>(rows) * in, 9 - scale);
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] = std::ldexp(x[i], scale / 2 - static_cast<int>(i % 11));
      }
      const auto pb = Packed(wb, out, in);
      for (int n : {1, 2}) {
        const std::vector<float> want =
            Bf16Reference(wb, out, in, x.data(), in, rows, out, n);
        const Bf16Terms terms(x.data(), in, rows, in, n);
        for (const char* name :
             {"scalar", "avx2", "avx512", "avx512bf16", "avx512amx"}) {
          const Kernels* k = GetKernelsByName(name);
          if (k == nullptr) continue;
          std::vector<float> y(want.size(), -1.0f);
          k->gemm_bf16(pb.data(), in, terms.xs.data(), terms.bf16(*k), n, rows,
                       y.data(), out, 0, out);
          EXPECT_EQ(0, std::memcmp(y.data(), want.data(), y.size() * 4))
              << name << " scale 2^" << scale << " rows=" << rows
              << " terms=" << n;
        }
      }
    }
  }
  // x = 1 + 2^-12: bf16 keeps 1, the second term 2^-12.
  const float x = 1.0f + std::ldexp(1.0f, -12);
  const Bf16Terms terms(&x, 1, 1, 1);
  EXPECT_EQ(terms.xs[0], 1.0f);
  EXPECT_EQ(terms.xs[Bf16TermsStride(1)], std::ldexp(1.0f, -12));
  EXPECT_EQ(terms.xb[0], 0x3f80);
  // A NaN stays a NaN (one with only low mantissa bits would round to
  // infinity), an infinity stays one.
  const uint32_t low_nan = 0x7f800001u;
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            std::bit_cast<float>(low_nan),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  const Bf16Terms s(specials, 4, 1, 4);
  EXPECT_TRUE(std::isnan(s.xs[0]));
  EXPECT_TRUE(std::isnan(s.xs[1]));
  EXPECT_EQ(s.xs[2], std::numeric_limits<float>::infinity());
  EXPECT_EQ(s.xs[3], -std::numeric_limits<float>::infinity());
}

// A product reads one copy of the terms (gemm_bf16_copy). Each copy holds
// the same values where its order puts them, with two terms a row or one,
// whether the rows are split at once or in blocks (as MatMuls' threads do), and
// writing one touches nothing else.
TEST(KernelsTest, SplitBf16TermsWritesOnlyTheCopyAskedFor) {
  for (int terms : {2, 1}) {
    for (int in : {1, 16, 17, 31, 32, 33, 48, 49, 768}) {
      const int rows = 37, ldx = in + 5;  // three bands of 16 term rows
      auto x = Random(static_cast<size_t>(rows) * ldx, in);
      x[0] = std::numeric_limits<float>::quiet_NaN();
      x[1 % in] = std::numeric_limits<float>::infinity();
      x[ldx] = std::ldexp(1.0f, -130);  // denormal
      // A normal value whose lo term is denormal: 2^-120 (1 + 2^-10).
      if (in > 1) x[3 * ldx + 1] = std::ldexp(1.0f + 0x1p-10f, -120);
      // Signalling and negative NaNs, the largest float (rounds to
      // infinity), -0 and a tie (1 + 2^-8 rounds to even: 1).
      const uint32_t specials[] = {0x7f800001u, 0xffc00001u, 0x7f7fffffu,
                                   0x80000000u, 0x3f808000u, 0xbf818000u};
      for (size_t i = 0; i < std::size(specials); ++i) {
        x[2 * ldx + i % in + (i / in) * ldx] =
            std::bit_cast<float>(specials[i]);
      }
      const int64_t n = Bf16TermsSize(rows, in, terms);
      std::vector<float> xs(n, 7.0f);
      std::vector<uint16_t> xb(n, 7), xp(n, 7);
      SplitBf16Terms(x.data(), ldx, 0, rows, in, terms, Bf16Copy::kFp32,
                     xs.data(), nullptr);
      EXPECT_EQ(xb, std::vector<uint16_t>(n, 7));
      SplitBf16Terms(x.data(), ldx, 0, rows, in, terms, Bf16Copy::kTiles,
                     nullptr, xb.data());
      SplitBf16Terms(x.data(), ldx, 0, rows, in, terms, Bf16Copy::kPairedTiles,
                     nullptr, xp.data());
      // hi and lo (or hi) as bf16 (in either order) are the fp32 copy's
      // values, exactly, and +0 past `in`; one term a row is the hi of two.
      const int stride = Bf16TermsStride(in);
      for (int r = 0; r < terms * rows; ++r) {
        for (int i = 0; i < stride; ++i) {
          const float want = xs[static_cast<int64_t>(r) * stride + i];
          if (i >= in) {
            EXPECT_EQ(std::bit_cast<uint32_t>(want), 0u);
          }
          for (const float got : {BF16ToF32(xb[Bf16TileIndex(r, i, in)]),
                                  BF16ToF32(xp[Bf16PairIndex(r, i, in)])}) {
            if (std::isnan(want)) {
              EXPECT_TRUE(std::isnan(got)) << in << " " << r << " " << i;
            } else {
              EXPECT_EQ(std::bit_cast<uint32_t>(want),
                        std::bit_cast<uint32_t>(got))
                  << in << " " << r << " " << i;
            }
          }
        }
      }
      if (terms == 1) {
        std::vector<float> two(Bf16TermsSize(rows, in, 2));
        SplitBf16Terms(x.data(), ldx, 0, rows, in, 2, Bf16Copy::kFp32,
                       two.data(), nullptr);
        for (int t = 0; t < rows; ++t) {
          EXPECT_EQ(0, std::memcmp(&xs[int64_t{t} * stride],
                                   &two[int64_t{2 * t} * stride],
                                   stride * sizeof(float)))
              << in << " " << t;
        }
      }
      // The paired order is each 4 inputs as x2, x0, x3, x1.
      EXPECT_EQ(xp[0], xb[2]);
      EXPECT_EQ(xp[1], xb[0]);
      EXPECT_EQ(xp[2], xb[3]);
      EXPECT_EQ(xp[3], xb[1]);
      // Split in blocks of rows, the same copies.
      std::vector<float> xs_blocks(n, 7.0f);
      std::vector<uint16_t> xb_blocks(n, 7), xp_blocks(n, 7);
      for (int b = 0; b < rows; ++b) {
        SplitBf16Terms(x.data(), ldx, b, b + 1, in, terms, Bf16Copy::kFp32,
                       xs_blocks.data(), nullptr);
        SplitBf16Terms(x.data(), ldx, b, b + 1, in, terms, Bf16Copy::kTiles,
                       nullptr, xb_blocks.data());
        SplitBf16Terms(x.data(), ldx, b, b + 1, in, terms,
                       Bf16Copy::kPairedTiles, nullptr, xp_blocks.data());
      }
      EXPECT_EQ(0, std::memcmp(xs.data(), xs_blocks.data(), n * sizeof(float)));
      EXPECT_EQ(xb, xb_blocks) << in;
      EXPECT_EQ(xp, xp_blocks) << in;
      // The plain loop (CPUs without AVX-512) writes the same bits.
      std::vector<float> xs_plain(n, 7.0f);
      std::vector<uint16_t> xb_plain(n, 7), xp_plain(n, 7);
      SplitBf16TermsPortable(x.data(), ldx, 0, rows, in, terms, Bf16Copy::kFp32,
                             xs_plain.data(), nullptr);
      SplitBf16TermsPortable(x.data(), ldx, 0, rows, in, terms,
                             Bf16Copy::kTiles, nullptr, xb_plain.data());
      SplitBf16TermsPortable(x.data(), ldx, 0, rows, in, terms,
                             Bf16Copy::kPairedTiles, nullptr, xp_plain.data());
      EXPECT_EQ(0, std::memcmp(xs.data(), xs_plain.data(), n * sizeof(float)));
      EXPECT_EQ(xb, xb_plain) << in;
      EXPECT_EQ(xp, xp_plain) << in;
    }
  }
  // The FMA builds read the fp32 copy; AMX and vdpbf16ps their own from 2
  // rows of whole 32-input blocks.
  for (const char* name : {"scalar", "avx2", "avx512", "avx512vnni"}) {
    const Kernels* k = GetKernelsByName(name);
    if (k == nullptr) continue;
    EXPECT_EQ(k->gemm_bf16_copy(32, 768), Bf16Copy::kFp32) << name;
  }
  if (const Kernels* k = GetKernelsByName("avx512bf16")) {
    EXPECT_EQ(k->gemm_bf16_copy(1, 768), Bf16Copy::kFp32);
    EXPECT_EQ(k->gemm_bf16_copy(32, 100), Bf16Copy::kFp32);
    EXPECT_EQ(k->gemm_bf16_copy(2, 768), Bf16Copy::kPairedTiles);
  }
  if (const Kernels* k = GetKernelsByName("avx512amx")) {
    EXPECT_EQ(k->gemm_bf16_copy(1, 768), Bf16Copy::kFp32);
    EXPECT_EQ(k->gemm_bf16_copy(32, 100), Bf16Copy::kFp32);
    if (k->gemm_bf16 != GetKernelsByName("avx512")->gemm_bf16) {  // AMX-BF16
      EXPECT_EQ(k->gemm_bf16_copy(2, 768), Bf16Copy::kTiles);
    }
  }
}

// Tile order holds every row's bytes where row-major order has them
// (I8TileIndex), whether the rows are quantized at once or in blocks (as
// MatMuls' threads do); the builds without AMX never use it.
TEST(KernelsTest, QuantizeRowRangeInTileOrderHoldsTheSameBytes) {
  for (int in : {1, 63, 64, 65, 768}) {
    const int rows = 37, ldx = in + 3;
    auto x = Random(static_cast<size_t>(rows) * ldx, in + 7);
    std::fill_n(x.begin() + 5 * ldx, in, 0.0f);  // a row of zeros
    const I8Rows flat = Quantize(x.data(), ldx, rows, in, false);
    const I8Rows tiled = Quantize(x.data(), ldx, rows, in, true);
    EXPECT_EQ(flat.scale, tiled.scale) << in;
    I8Rows blocks = tiled;
    std::fill(blocks.q.begin(), blocks.q.end(), 0xA5);
    for (int b = 0; b < rows; b += 5) {
      QuantizeRowRange(x.data(), ldx, b, std::min(rows, b + 5), in,
                       blocks.q.data(), blocks.ldq, blocks.scale.data(), true);
    }
    EXPECT_EQ(tiled.q, blocks.q) << in;
    std::vector<bool> slot(tiled.q.size(), false);
    for (int t = 0; t < rows; ++t) {
      for (int i = 0; i < in; ++i) {
        slot[I8TileIndex(t, i, tiled.ldq)] = true;
        ASSERT_EQ(flat.q[static_cast<size_t>(t) * flat.ldq + i],
                  tiled.q[I8TileIndex(t, i, tiled.ldq)])
            << in << " " << t << " " << i;
      }
    }
    // Nothing written outside the rows' own bytes.
    for (size_t b = 0; b < slot.size(); ++b) {
      if (!slot[b]) {
        ASSERT_EQ(tiled.q[b], 0xA5) << in << " byte " << b;
      }
    }
  }
  for (const char* name : {"scalar", "avx2", "avx512", "avx512vnni"}) {
    const Kernels* k = GetKernelsByName(name);
    if (k != nullptr) {
      EXPECT_FALSE(k->gemm_i8_tiles(32)) << name;
    }
  }
  if (const Kernels* k = GetKernelsByName("avx512amx")) {
    EXPECT_FALSE(k->gemm_i8_tiles(15));
    EXPECT_TRUE(k->gemm_i8_tiles(16));
  }
}

// The definition: the exact integer dot product, then two multiplications.
// 101 outputs: from 16 rows the VNNI kernel takes two groups of 16 at a
// time, so ranges of 5 and 6 groups and a partial one cover its pairs, its
// single last group and its masked stores; rows 16-22 and 31-33 cover its
// last 0-7 rows after blocks of 8.
TEST(KernelsTest, GemmI8IsExactIntegerProductInEveryBuild) {
  for (int in : {1, 15, 16, 17, 63, 64, 65, 100, 768})
    for (int out : {37, 101})
      for (int split : {0, 16}) {
        for (int rows : {1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 19, 20, 21, 22, 31,
                         32, 33, 48, 50}) {
          const I8Weights w = RandomI8(out, in, in);
          auto x = Random(static_cast<size_t>(rows) * in, rows + 100);
          const I8Rows xq = Quantize(x.data(), in, rows, in);
          std::vector<float> ref(static_cast<size_t>(rows) * out);
          for (int t = 0; t < rows; ++t) {
            for (int o = 0; o < out; ++o) {
              int64_t dot = 0;
              for (int i = 0; i < in; ++i) {
                dot += int64_t{w.w[o * in + i]} * (xq.q[t * xq.ldq + i] - 128);
              }
              ref[t * out + o] =
                  static_cast<float>(dot) * xq.scale[t] * w.scale[o];
            }
          }
          for (const char* name : {"scalar", "avx2", "avx512", "avx512vnni",
                                   "avx512bf16", "avx512amx"}) {
            const Kernels* k = GetKernelsByName(name);
            if (k == nullptr) continue;
            std::vector<float> y(ref.size(), -1.0f);
            const I8Rows q =
                Quantize(x.data(), in, rows, in, k->gemm_i8_tiles(rows));
            // Whole, or split at a group boundary as MatMul's tiles are.
            if (split > 0) {
              k->gemm_i8(w.packed.data(), w.scale.data(), w.sum.data(), in,
                         q.q.data(), q.scale.data(), q.ldq, rows, y.data(), out,
                         0, split);
            }
            k->gemm_i8(w.packed.data(), w.scale.data(), w.sum.data(), in,
                       q.q.data(), q.scale.data(), q.ldq, rows, y.data(), out,
                       split, out);
            EXPECT_EQ(0, std::memcmp(y.data(), ref.data(), y.size() * 4))
                << name << " in=" << in << " out=" << out << " split=" << split
                << " rows=" << rows;
          }
        }
      }
}

// A row's result must not depend on how many rows share the call, where it
// sits among them, or how the outputs are split: the blocked paths (row
// blocks and their remainders, panel groups and single panels, the row
// chunks of wide inputs, int8's AMX tiles from 16 rows up, bf16's from 2
// rows of whole 32-input blocks) must all equal the one-row product bit for
// bit. in = 100, 300: short and long rows; 256: whole blocks, so bf16 runs
// on AMX tiles too; 7001: rows too wide for more than one 8-row block per
// chunk, and an odd input count.
class GemmRowTest : public ::testing::TestWithParam<int> {};

TEST_P(GemmRowTest, RowIsIndependentOfBatchAndSplit) {
  const int in = GetParam(), out = 45;  // ragged tiles
  auto w = Random(static_cast<size_t>(out) * in, 5);
  std::vector<uint16_t> wb(w.size());
  for (size_t i = 0; i < w.size(); ++i) wb[i] = ToBF16(w[i]);
  const auto pw = Packed(w, out, in);
  const auto pb = Packed(wb, out, in);
  const int max_rows = 40;
  const int ldx = in + 3, ldy = out + 5;  // strides wider than the rows
  const I8Weights wi = RandomI8(out, in, 7);
  auto x = Random(static_cast<size_t>(max_rows) * ldx, 6);
  for (const char* name :
       {"scalar", "avx2", "avx512", "avx512vnni", "avx512bf16", "avx512amx"}) {
    const Kernels* k = GetKernelsByName(name);
    if (k == nullptr) continue;
    for (const char* type : {"f32", "bf16", "bf16-round", "i8"}) {
      auto run = [&](const float* xs, int rows, float* y, int ob, int oe) {
        if (type[0] == 'b') {
          const int n = type[4] == '-' ? 1 : 2;  // activations rounded: 1
          const Bf16Terms terms(xs, ldx, rows, in, n);
          k->gemm_bf16(pb.data(), in, terms.xs.data(), terms.bf16(*k), n, rows,
                       y, ldy, ob, oe);
        } else if (type[0] == 'i') {
          const I8Rows q = Quantize(xs, ldx, rows, in, k->gemm_i8_tiles(rows));
          k->gemm_i8(wi.packed.data(), wi.scale.data(), wi.sum.data(), in,
                     q.q.data(), q.scale.data(), q.ldq, rows, y, ldy, ob, oe);
        } else {
          k->gemm_f32(pw.data(), in, xs, ldx, rows, y, ldy, ob, oe);
        }
      };
      // One row at a time: the reference.
      std::vector<float> single(static_cast<size_t>(max_rows) * ldy);
      for (int t = 0; t < max_rows; ++t) {
        run(&x[static_cast<size_t>(t) * ldx], 1, &single[t * ldy], 0, out);
      }
      for (int rows : {2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 40}) {
        for (int first : {0, 3}) {
          if (first + rows > max_rows) continue;
          std::vector<float> y(static_cast<size_t>(rows) * ldy, -1.0f);
          const float* xs = &x[static_cast<size_t>(first) * ldx];
          // Split the outputs unevenly (ranges start at a panel).
          run(xs, rows, y.data(), 0, 16);
          run(xs, rows, y.data(), 16, out);
          for (int t = 0; t < rows; ++t) {
            ASSERT_EQ(0, std::memcmp(&y[t * ldy], &single[(first + t) * ldy],
                                     out * sizeof(float)))
                << name << " " << type << " rows=" << rows << " first=" << first
                << " row " << t;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Widths, GemmRowTest,
                         ::testing::Values(100, 256, 300, 7001));

// MatMuls runs several products (int8, fp32 and bf16 matrices of different
// shapes; rows on both sides of the AMX and pool-quantization thresholds;
// one-row products long enough for the short last ranges of PlanOutputs)
// in one hand-off on 2 and 3 threads: each output is exactly MatMul's for
// that product, alone, on one thread.
TEST(KernelsTest, MatMulsEqualsSeparateMatMuls) {
  const Kernels& k = GetKernels();
  constexpr int kProducts = 6;
  std::vector<Matrix> ms(kProducts);
  const int shapes[kProducts][2] = {{48, 768},  {4100, 64},  {37, 100},
                                    {64, 3072}, {2500, 256}, {1700, 96}};
  for (int j = 0; j < kProducts; ++j) {
    Matrix& m = ms[j];
    m.rows = shapes[j][0];
    m.cols = shapes[j][1];
    if (j == 2 || j == 5) {  // fp32
      m.f32_storage = Packed(Random(static_cast<size_t>(m.rows) * m.cols, j),
                             m.rows, m.cols);
      m.f32 = m.f32_storage.data();
      m.panels = true;
    } else if (j == 3 || j == 4) {  // bf16
      std::vector<uint16_t> wb;
      for (float f : Random(static_cast<size_t>(m.rows) * m.cols, j)) {
        wb.push_back(ToBF16(f));
      }
      m.bf16_storage = Packed(wb, m.rows, m.cols);
      m.bf16 = m.bf16_storage.data();
      m.panels = true;
      if (j == 4) m.bf16_terms = 1;  // activations rounded, beside two terms
    } else {
      I8Weights w = RandomI8(m.rows, m.cols, j);
      m.i8_storage = std::move(w.packed);
      m.i8 = m.i8_storage.data();
      m.scale = std::move(w.scale);
      m.wsum = std::move(w.sum);
    }
  }
  ThreadPool one(1), two(2), three(3);
  for (int rows : {1, 15, 16, 33, 64}) {
    std::vector<std::vector<float>> x(kProducts), want(kProducts),
        got(kProducts);
    std::vector<MatMulJob> jobs;
    for (int j = 0; j < kProducts; ++j) {
      const Matrix& m = ms[j];
      const int ldx = m.cols + 3, ldy = m.rows + 5;
      x[j] = Random(static_cast<size_t>(rows) * ldx, 10 * rows + j);
      want[j].assign(static_cast<size_t>(rows) * ldy, -1);
      got[j].assign(static_cast<size_t>(rows) * ldy, -1);
      MatMul(k, one, m, x[j].data(), ldx, rows, want[j].data(), ldy);
      jobs.push_back({&m, x[j].data(), ldx, got[j].data(), ldy});
    }
    for (ThreadPool* pool : {&two, &three}) {
      for (auto& g : got) std::fill(g.begin(), g.end(), -1.0f);
      MatMuls(k, *pool, jobs, rows);
      for (int j = 0; j < kProducts; ++j) {
        ASSERT_EQ(0, std::memcmp(want[j].data(), got[j].data(),
                                 want[j].size() * sizeof(float)))
            << "rows " << rows << " product " << j << " threads "
            << pool->size();
      }
    }
  }
}

}  // namespace
}  // namespace statestream::engine
