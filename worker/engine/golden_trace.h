// SPDX-License-Identifier: Apache-2.0
// Test helpers shared by the engine's golden tests (they link the engine;
// golden.h stays engine-free for the CLI tests).
#ifndef STATESTREAM_WORKER_ENGINE_GOLDEN_TRACE_H_
#define STATESTREAM_WORKER_ENGINE_GOLDEN_TRACE_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace statestream::engine::testing {

// The testdata README's tolerance: |got - want| <= 1e-4 + 1e-4 |want| for
// every element; a failure names `what` and the worst element.
void ExpectCloseToGolden(const float* got, const std::vector<float>& want,
                         const std::string& what);

// Loads `model_path` with a trace hook, feeds golden["tokens"][0] and [1]
// one call each from Model::InitState, and expects every vector of
// golden["trace"] to match. Returns the number of vectors compared.
int ExpectTraceMatchesGolden(const std::string& model_path,
                             const nlohmann::json& golden);

}  // namespace statestream::engine::testing

#endif  // STATESTREAM_WORKER_ENGINE_GOLDEN_TRACE_H_
