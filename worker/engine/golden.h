// SPDX-License-Identifier: Apache-2.0
// Test helpers: the golden vectors in ../shared/testdata (see its README).
#ifndef STATESTREAM_WORKER_ENGINE_GOLDEN_H_
#define STATESTREAM_WORKER_ENGINE_GOLDEN_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace statestream::engine::testing {

// Absolute path of a file under the shared folder, e.g. "testdata/x.pth".
std::string SharedPath(const std::string& relative);

// True when the shared test data is present. When it is absent, tests skip
// with a message — except under CI (environment variable CI set), where
// missing data is a failure.
bool SharedDataAvailable();

// Parses a golden JSON file; aborts the test binary on a parse error (the
// files are trusted fixtures).
nlohmann::json LoadJson(const std::string& path);

std::vector<int32_t> Ints(const nlohmann::json& j);
std::vector<float> Floats(const nlohmann::json& j);  // flattens nested arrays

// Flattens golden final_state.layers into the canonical x070 state layout:
// per layer att_x_prev[C], wkv[H][N][N], ffn_x_prev[C].
std::vector<float> StateFromGolden(const nlohmann::json& layers);
// The same for architecture `arch` ("v4": att_x_prev, aa, bb, pp,
// ffn_x_prev; the others as x070's; docs/architectures.md).
std::vector<float> StateFromGolden(const nlohmann::json& layers,
                                   const std::string& arch);

// Max of |got - want| - (abs_tol + rel_tol * |want|) over all elements;
// <= 0 means within tolerance. Sets *where to the worst index.
double ToleranceExcess(const float* got, const std::vector<float>& want,
                       double abs_tol, double rel_tol, size_t* where);

}  // namespace statestream::engine::testing

// Skips (or, under CI, fails) a test when ../shared/testdata is missing.
#define SS_REQUIRE_SHARED_DATA()                                             \
  do {                                                                       \
    if (!::statestream::engine::testing::SharedDataAvailable()) {            \
      if (std::getenv("CI") != nullptr) {                                    \
        FAIL() << "shared test data missing under CI";                       \
      }                                                                      \
      GTEST_SKIP() << "shared test data not found next to the checkout ("    \
                   << ::statestream::engine::testing::SharedPath("testdata") \
                   << ")";                                                   \
    }                                                                        \
  } while (0)

#endif  // STATESTREAM_WORKER_ENGINE_GOLDEN_H_
