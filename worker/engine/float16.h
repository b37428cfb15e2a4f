// SPDX-License-Identifier: Apache-2.0
// Scalar conversions between fp32 and the 16-bit float formats of
// checkpoints: bf16 (the upper half of an fp32) and IEEE fp16.
#ifndef STATESTREAM_WORKER_ENGINE_FLOAT16_H_
#define STATESTREAM_WORKER_ENGINE_FLOAT16_H_

#include <bit>
#include <cstdint>

namespace statestream::engine {

inline float BF16ToF32(uint16_t bits) {  // exact
  return std::bit_cast<float>(uint32_t{bits} << 16);
}
float F16ToF32(uint16_t bits);  // exact, incl. subnormals, infinities, NaN
// Round-to-nearest-even; NaN stays a (quiet) NaN, infinities stay infinite.
// Inline and branch-free (the NaN case a select), so loops over it
// vectorise (SplitBf16Terms).
inline uint16_t F32ToBF16(float value) {
  const uint32_t u = std::bit_cast<uint32_t>(value);
  const uint32_t nan = (u >> 16) | 0x0040u;  // keep the sign, force quiet
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}
// Round-to-nearest-even with fp16 subnormals; overflow becomes infinity.
uint16_t F32ToF16(float value);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_FLOAT16_H_
