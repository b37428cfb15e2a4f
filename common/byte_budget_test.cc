// SPDX-License-Identifier: Apache-2.0
#include "common/byte_budget.h"

#include "common/status.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(ByteBudgetTest, OneAlwaysFitsAloneAndTheRestWaitForRoom) {
  ByteBudget budget(100, "--max-test-bytes");
  // Larger than the whole budget, but alone: admitted.
  auto big = budget.Acquire(250);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_TRUE(budget.over());
  auto refused = budget.Acquire(1);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetReason(refused.status()), Reason::kOverloaded);
  EXPECT_EQ(GetErrorMetadata(refused.status(), "retry_after_ms"), "500");
  EXPECT_NE(refused.status().message().find("--max-test-bytes"),
            std::string::npos);
  big->Release();
  EXPECT_EQ(budget.held(), 0);
  auto a = budget.Acquire(60);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(budget.Acquire(41).ok());
  auto b = budget.Acquire(40);  // exactly full
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(budget.over());
  // A hold gives its bytes back when it goes, moved or not.
  {
    ByteBudget::Hold moved = *std::move(a);
    EXPECT_EQ(moved.bytes(), 60);
    EXPECT_EQ(budget.held(), 100);
  }
  EXPECT_EQ(budget.held(), 40);
}

TEST(ByteBudgetTest, AHoldGrowsByAcquiresRule) {
  ByteBudget budget(100, "--max-test-bytes");
  auto a = budget.Acquire(30);
  ASSERT_TRUE(a.ok());
  // Alone, a hold may grow past the budget; with another held, only within.
  EXPECT_TRUE(budget.Grow(&*a, 90).ok());
  EXPECT_EQ(a->bytes(), 120);
  a->Release();
  auto b = budget.Acquire(50);
  auto c = budget.Acquire(20);
  ASSERT_TRUE(b.ok() && c.ok());
  const absl::Status refused = budget.Grow(&*c, 31);
  EXPECT_EQ(GetReason(refused), Reason::kOverloaded) << refused;
  EXPECT_TRUE(budget.Grow(&*c, 30).ok());
  EXPECT_EQ(budget.held(), 100);
  b->Release();
  c->Release();
  EXPECT_EQ(budget.held(), 0);
}

TEST(ByteBudgetTest, TakenBytesCountWhetherOrNotTheyFit) {
  ByteBudget budget(10, "--max-test-bytes");
  budget.Take(8);
  EXPECT_FALSE(budget.over());
  budget.Take(8);
  EXPECT_TRUE(budget.over());
  EXPECT_EQ(budget.held(), 16);
  EXPECT_FALSE(budget.Acquire(1).ok());
  budget.Give(16);
  EXPECT_FALSE(budget.over());
  EXPECT_TRUE(budget.Acquire(10).ok());
}

}  // namespace
}  // namespace statestream
