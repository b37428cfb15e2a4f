// SPDX-License-Identifier: Apache-2.0
// The engine's and the sampler's exp. Header-only and free of dependencies
// so both libraries share one definition; compiled with -ffp-contract=off
// everywhere it is used (ss_engine, ss_text). Include it only from code
// built for the baseline instruction set or from target_clones functions:
// a translation unit compiled wholly with -mavx512f could provide the one
// out-of-line copy the linker keeps.
#ifndef STATESTREAM_WORKER_ENGINE_EXP_H_
#define STATESTREAM_WORKER_ENGINE_EXP_H_

#include <cstdint>
#include <cstring>
#include <limits>

namespace statestream::engine {

// exp(x) in plain float arithmetic: Cody–Waite reduction by ln 2 and
// Cephes' degree-6 polynomial (~1 ulp of libm's). The same bits on every
// machine, where libm's expf differs between glibc versions and CPU
// variants, and loops of it vectorise (no call). 0 below -87.3 (no
// subnormals), +inf above 88, NaN stays NaN.
inline float Exp(float x) {
  // Edges by selection rather than early returns, so loops of Exp have no
  // control flow and vectorise; the polynomial runs on a clamped input
  // (0 for NaN, which would make the integer conversion undefined). The
  // comparisons are the quiet ones, which cannot trap: GCC only turns
  // branches on comparisons that cannot trap into selects.
  const bool nan = __builtin_isunordered(x, x);
  const bool high = __builtin_isgreater(x, 88.0f);
  const bool low = __builtin_isless(x, -87.3f);
  const float xc = nan ? 0.0f : (high ? 88.0f : (low ? -87.3f : x));
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: round to nearest
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;  // [-126, 127]
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127)
                        << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float e = y * scale;
  e = high ? std::numeric_limits<float>::infinity() : e;
  e = low ? 0.0f : e;
  return nan ? x : e;
}

// tanh(x) in plain float arithmetic, for the same reasons as Exp (libm's
// tanhf is not the same function on every glibc): an odd polynomial below
// |x| = 0.625, 1 - 2 / (Exp(2|x|) + 1) with x's sign above (the split and
// the polynomial are Cephes' tanhf). Within 3 ulp of the exact value
// (KernelsTest.TanhIsAccurateAndOdd); +-1 from |x| ~ 9, +-0 and NaN kept.
// Branch-free, so loops vectorise.
inline float Tanh(float x) {
  const float a = __builtin_fabsf(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float large_abs = 1.0f - 2.0f / (Exp(a + a) + 1.0f);
  const float large = __builtin_copysignf(large_abs, x);
  const float t = __builtin_isgreaterequal(a, 0.625f) ? large : small;
  return x == 0.0f ? x : t;  // keeps -0
}

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_EXP_H_
