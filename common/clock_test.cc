// SPDX-License-Identifier: Apache-2.0
#include "common/clock.h"

#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(ClockTest, FakeClockMovesOnlyWhenTold) {
  FakeClock clock;
  absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now() - t0, absl::Seconds(5));
  clock.SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(clock.Now() - t0, absl::Milliseconds(5010));
}

TEST(ClockTest, RealClockAdvances) {
  Clock* clock = Clock::Real();
  absl::Time t0 = clock->Now();
  clock->SleepFor(absl::Milliseconds(2));
  EXPECT_GE(clock->Now() - t0, absl::Milliseconds(2));
}

}  // namespace
}  // namespace statestream
