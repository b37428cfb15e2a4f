// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the tokenizer tests: the test data and hex strings.
#ifndef STATESTREAM_WORKER_ENGINE_TOKENIZER_TEST_UTIL_H_
#define STATESTREAM_WORKER_ENGINE_TOKENIZER_TEST_UTIL_H_

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace statestream::engine::testing_util {

// ../shared/testdata (the golden files).
inline const std::string kTestdata =
    std::string(STATESTREAM_SHARED_DIR) + "/testdata";

// The file's bytes in *out; false if it cannot be read.
inline bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream s;
  s << in.rdbuf();
  *out = s.str();
  return true;
}

// "e282ac" -> "\xe2\x82\xac".
inline std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// "\xe2\x82\xac" -> "e282ac".
inline std::string ToHex(absl::string_view bytes) {
  std::string out;
  for (char c : bytes) {
    absl::StrAppend(&out, absl::Hex(static_cast<uint8_t>(c), absl::kZeroPad2));
  }
  return out;
}

}  // namespace statestream::engine::testing_util

#endif  // STATESTREAM_WORKER_ENGINE_TOKENIZER_TEST_UTIL_H_
