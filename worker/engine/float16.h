// SPDX-License-Identifier: Apache-2.0
// Scalar conversions between fp32 and the 16-bit float formats of
// checkpoints: bf16 (the upper half of an fp32) and IEEE fp16.
#ifndef STATESTREAM_WORKER_ENGINE_FLOAT16_H_
#define STATESTREAM_WORKER_ENGINE_FLOAT16_H_

#include <cstdint>

namespace statestream::engine {

float BF16ToF32(uint16_t bits);  // exact
float F16ToF32(uint16_t bits);   // exact, incl. subnormals, infinities, NaN
// Round-to-nearest-even; NaN stays a (quiet) NaN, infinities stay infinite.
uint16_t F32ToBF16(float value);
// Round-to-nearest-even with fp16 subnormals; overflow becomes infinity.
uint16_t F32ToF16(float value);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_FLOAT16_H_
