// SPDX-License-Identifier: Apache-2.0
// Model options for the engine's tests.
#ifndef STATESTREAM_WORKER_ENGINE_MODEL_TEST_UTIL_H_
#define STATESTREAM_WORKER_ENGINE_MODEL_TEST_UTIL_H_

#include "worker/engine/model.h"

namespace statestream::engine::testing {

// `threads` (0: one per CPU), `kernels` ("": the best build here) and
// `precision`; the rest at their defaults.
inline ModelOptions Opts(
    int threads, const char* kernels,
    WeightPrecision precision = WeightPrecision::kAsStored) {
  ModelOptions o;
  o.threads = threads;
  o.kernels = kernels;
  o.precision = precision;
  return o;
}

}  // namespace statestream::engine::testing

#endif  // STATESTREAM_WORKER_ENGINE_MODEL_TEST_UTIL_H_
