// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the kernel tests.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_TEST_UTIL_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace statestream::engine::testing_util {

// n values uniform in [-1, 1), the same for the same seed.
inline std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace statestream::engine::testing_util

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_TEST_UTIL_H_
