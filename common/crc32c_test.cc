// SPDX-License-Identifier: Apache-2.0
#include "common/crc32c.h"

#include <cstdint>
#include <string>
#include <vector>

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

// Bit by bit, straight from the definition (reflected 0x82F63B78).
uint32_t Reference(const uint8_t* p, size_t n) {
  uint32_t c = ~0u;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0);
  }
  return ~c;
}

// Long inputs take the three-stream path (blocks of 3 x 4 KiB); every
// length around the block boundaries, any alignment and any split of the
// input must agree with the definition.
TEST(Crc32cTest, LongInputsMatchTheDefinition) {
  std::vector<uint8_t> data(100'003);
  uint32_t x = 12345;
  for (uint8_t& b : data) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 23);
  }
  for (size_t n : {size_t{12287}, size_t{12288}, size_t{12289}, size_t{24576},
                   size_t{24583}, size_t{36864}, size_t{99'999}}) {
    for (size_t offset : {size_t{0}, size_t{1}, size_t{3}}) {
      const uint8_t* p = data.data() + offset;
      const uint32_t want = Reference(p, n);
      EXPECT_EQ(Crc32c(0, p, n), want) << n << " at +" << offset;
      const size_t cut = n / 3 + 5;
      EXPECT_EQ(Crc32c(Crc32c(0, p, cut), p + cut, n - cut), want) << n;
    }
  }
}

}  // namespace
}  // namespace statestream
