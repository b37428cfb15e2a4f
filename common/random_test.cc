// SPDX-License-Identifier: Apache-2.0
#include "common/random.h"

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace statestream {
namespace {

// 32 lowercase hex digits, and no two alike across threads (each thread's
// generator is seeded on its own).
TEST(RandomTest, Hex128IsThirtyTwoHexDigitsAndUnique) {
  std::vector<std::string> ids(64);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < ids.size(); ++i) {
    threads.emplace_back([&ids, i] { ids[i] = RandomHex128(); });
  }
  for (auto& t : threads) t.join();
  for (const std::string& id : ids) {
    ASSERT_EQ(id.size(), 32u) << id;
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos)
        << id;
  }
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());
}

}  // namespace
}  // namespace statestream
