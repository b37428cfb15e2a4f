// SPDX-License-Identifier: Apache-2.0
#include "common/session_ids.h"

#include "absl/strings/str_cat.h"

namespace statestream {

uint64_t Fnv1a(uint64_t h, absl::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string DerivedSessionId(absl::string_view tenant,
                             absl::string_view request_id) {
  const std::string key =
      absl::StrCat(tenant.size(), ":", tenant, "/", request_id);
  uint64_t h[2] = {Fnv1a(kFnvBasis, key),
                   Fnv1a(kFnvBasis ^ 0x9e3779b97f4a7c15ULL, key)};
  std::string id(kGeneratedSessionIdLength, '0');
  for (int i = 0; i < kGeneratedSessionIdLength; ++i) {
    uint64_t& w = h[i < 13 ? 0 : 1];
    id[i] = kSessionIdAlphabet[w & 31];
    w >>= 5;
  }
  return id;
}

}  // namespace statestream
