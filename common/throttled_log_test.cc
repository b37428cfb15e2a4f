// SPDX-License-Identifier: Apache-2.0
#include "common/throttled_log.h"

#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(ThrottledLogTest, SaysALinePerIntervalAndCountsTheRest) {
  ThrottledLog log("prefix: ", absl::Milliseconds(100));
  ::testing::internal::CaptureStderr();
  EXPECT_TRUE(log.Say("first"));
  EXPECT_FALSE(log.Say("second"));
  EXPECT_FALSE(log.Say("third"));
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_TRUE(log.Say("fourth"));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "prefix: first\n"
            "prefix: fourth; 2 more since the last such line\n");
}

}  // namespace
}  // namespace statestream
