// SPDX-License-Identifier: Apache-2.0
// The last levels of the kernels' fixed reduction tree (8 -> 4 -> 2 -> 1),
// shared by the AVX2 and AVX-512 vector types so that both builds reduce
// with the same operations. Include it only from files compiled with AVX
// or wider: it is TU-local (anonymous namespace), so no out-of-line copy can
// leak into code built for another instruction set. Internal to the engine.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_REDUCE8_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_REDUCE8_H_

#include <immintrin.h>

namespace statestream::engine {
namespace {

// lane j + lane j+4, then j + j+2, then j + j+1.
inline float ReduceAdd8(__m256 h8) {
  const __m128 h4 =
      _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
  const __m128 h1 = _mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1));
  return _mm_cvtss_f32(h1);
}

}  // namespace
}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_REDUCE8_H_
