// SPDX-License-Identifier: Apache-2.0
#include "common/crc32c.h"

#include <string>

#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(Crc32cTest, KnownValues) {
  EXPECT_EQ(Crc32c(0, "123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c(0, "", 0), 0u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(0, zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720
}

TEST(Crc32cTest, Incremental) {
  std::string s = "The quick brown fox jumps over the lazy dog, twice over.";
  uint32_t whole = Crc32c(0, s.data(), s.size());
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    uint32_t a = Crc32c(0, s.data(), cut);
    EXPECT_EQ(Crc32c(a, s.data() + cut, s.size() - cut), whole) << cut;
  }
}

}  // namespace
}  // namespace statestream
