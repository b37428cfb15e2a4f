// SPDX-License-Identifier: Apache-2.0
#include "common/random.h"

#include "absl/strings/str_cat.h"

namespace statestream {

std::mt19937_64& ThreadRng() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seed);
  }();
  return rng;
}

std::string RandomHex128() {
  std::mt19937_64& rng = ThreadRng();
  const uint64_t hi = rng();
  const uint64_t lo = rng();
  return absl::StrCat(absl::Hex(hi, absl::kZeroPad16),
                      absl::Hex(lo, absl::kZeroPad16));
}

}  // namespace statestream
