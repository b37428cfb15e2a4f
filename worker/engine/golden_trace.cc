// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/golden_trace.h"

#include <map>
#include <utility>

#include "gtest/gtest.h"
#include "worker/engine/golden.h"
#include "worker/engine/model.h"

namespace statestream::engine::testing {

void ExpectCloseToGolden(const float* got, const std::vector<float>& want,
                         const std::string& what) {
  constexpr double kTol = 1e-4;  // absolute and relative
  size_t where = 0;
  const double excess = ToleranceExcess(got, want, kTol, kTol, &where);
  EXPECT_LE(excess, 0) << what << ": worst element " << where << " got "
                       << got[where] << " want " << want[where];
}

int ExpectTraceMatchesGolden(const std::string& model_path,
                             const nlohmann::json& golden) {
  std::map<std::pair<int, std::string>, std::vector<float>> seen;
  ModelOptions opts;
  opts.trace = [&](int layer, const char* name, const float* v, int n) {
    seen[{layer, name}].assign(v, v + n);
  };
  auto model = LoadModel(model_path, opts);
  EXPECT_TRUE(model.ok()) << model_path << ": " << model.status();
  if (!model.ok()) return 0;
  std::vector<float> state((*model)->info().state_floats);
  (*model)->InitState(state.data());
  const std::vector<int32_t> tokens = Ints(golden["tokens"]);
  int checked = 0;
  for (int p = 0; p < 2; ++p) {
    seen.clear();
    SequenceWork w{
        absl::MakeConstSpan(&tokens[p], 1), state.data(), {}, nullptr};
    EXPECT_TRUE((*model)->Forward({&w, 1}).ok());
    const nlohmann::json& tr = golden["trace"]["positions"][std::to_string(p)];
    ExpectCloseToGolden(seen[{-1, "x_after_ln0"}].data(),
                        Floats(tr["x_after_ln0"]), "x_after_ln0");
    for (size_t l = 0; l < tr["layers"].size(); ++l) {
      for (const auto& [name, values] : tr["layers"][l].items()) {
        auto it = seen.find({static_cast<int>(l), name});
        EXPECT_NE(it, seen.end()) << "no trace of " << name;
        if (it == seen.end()) continue;
        ExpectCloseToGolden(it->second.data(), Floats(values),
                            "position " + std::to_string(p) + " layer " +
                                std::to_string(l) + " " + name);
        ++checked;
      }
    }
  }
  return checked;
}

}  // namespace statestream::engine::testing
