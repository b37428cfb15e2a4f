// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/golden.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace statestream::engine::testing {

std::string SharedPath(const std::string& relative) {
  const char* env = std::getenv("STATESTREAM_SHARED_DIR");
  std::string base = env != nullptr ? env : STATESTREAM_SHARED_DIR;
  return base + "/" + relative;
}

bool SharedDataAvailable() {
  struct stat st;
  return stat(SharedPath("testdata/rwkv7-tiny.golden.json").c_str(), &st) == 0;
}

nlohmann::json LoadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded()) {
    std::fprintf(stderr, "cannot parse %s\n", path.c_str());
    std::abort();
  }
  return j;
}

std::vector<int32_t> Ints(const nlohmann::json& j) {
  std::vector<int32_t> out;
  for (const auto& v : j) out.push_back(v.get<int32_t>());
  return out;
}

static void Flatten(const nlohmann::json& j, std::vector<float>* out) {
  if (j.is_array()) {
    for (const auto& v : j) Flatten(v, out);
  } else {
    out->push_back(static_cast<float>(j.get<double>()));
  }
}

std::vector<float> Floats(const nlohmann::json& j) {
  std::vector<float> out;
  Flatten(j, &out);
  return out;
}

std::vector<float> StateFromGolden(const nlohmann::json& layers) {
  std::vector<float> out;
  for (const auto& layer : layers) {
    Flatten(layer["att_x_prev"], &out);
    Flatten(layer["wkv"], &out);
    Flatten(layer["ffn_x_prev"], &out);
  }
  return out;
}

std::vector<float> StateFromGolden(const nlohmann::json& layers,
                                   const std::string& arch) {
  if (arch != "v4") return StateFromGolden(layers);
  std::vector<float> out;
  for (const auto& layer : layers) {
    for (const char* f : {"att_x_prev", "aa", "bb", "pp", "ffn_x_prev"}) {
      Flatten(layer[f], &out);
    }
  }
  return out;
}

double ToleranceExcess(const float* got, const std::vector<float>& want,
                       double abs_tol, double rel_tol, size_t* where) {
  double worst = -1e30;
  for (size_t i = 0; i < want.size(); ++i) {
    double excess = std::fabs(static_cast<double>(got[i]) - want[i]) -
                    (abs_tol + rel_tol * std::fabs(want[i]));
    if (std::isnan(got[i])) excess = 1e30;
    if (excess > worst) {
      worst = excess;
      if (where != nullptr) *where = i;
    }
  }
  return worst;
}

}  // namespace statestream::engine::testing
