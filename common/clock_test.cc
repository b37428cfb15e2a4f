// SPDX-License-Identifier: Apache-2.0
#include "common/clock.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
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

TEST(ClockTest, SteadyClockAdvances) {
  Clock* clock = Clock::Steady();
  const absl::Time t0 = clock->Now();
  clock->SleepFor(absl::Milliseconds(2));
  EXPECT_GE(clock->Now() - t0, absl::Milliseconds(2));
  EXPECT_GE(SteadyNow(), t0);
}

TEST(SteadyWaiterTest, ReturnsAtOnceWhenDone) {
  absl::Mutex mu;
  SteadyWaiter waiter;
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(waiter.Await(
      &mu, [] { return true; }, absl::Hours(1)));
}

TEST(SteadyWaiterTest, TimesOutAfterTheTimeoutNotBefore) {
  absl::Mutex mu;
  SteadyWaiter waiter;
  absl::MutexLock lock(&mu);
  const absl::Time t0 = SteadyNow();
  EXPECT_FALSE(waiter.Await(
      &mu, [] { return false; }, absl::Milliseconds(30)));
  EXPECT_GE(SteadyNow() - t0, absl::Milliseconds(30));
  EXPECT_FALSE(waiter.Await(
      &mu, [] { return false; }, -absl::Seconds(1)));
}

// Woken by Notify after the state changed under the mutex; the mutex is
// held again when Await returns. An infinite timeout waits until then.
TEST(SteadyWaiterTest, NotifyWakesTheWaiter) {
  for (const absl::Duration timeout :
       {absl::Hours(1), absl::InfiniteDuration()}) {
    absl::Mutex mu;
    SteadyWaiter waiter;
    bool set = false;
    std::thread setter([&] {
      absl::SleepFor(absl::Milliseconds(20));
      {
        absl::MutexLock lock(&mu);
        set = true;
      }
      waiter.Notify();
    });
    {
      absl::MutexLock lock(&mu);
      EXPECT_TRUE(waiter.Await(
          &mu, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return set; },
          timeout));
      EXPECT_TRUE(set);
      mu.AssertHeld();
    }
    setter.join();
  }
}

// Run by the clock_step.* tests (cmake/ClockStepTests.cmake) to show
// that libfaketime is in effect: the process's wall clock an hour ahead of
// the kernel's (a file's modification time). Skipped elsewhere.
TEST(ClockStepTest, TheWallClockIsAnHourAheadOfTheKernels) {
  if (std::getenv("FAKETIME") == nullptr) GTEST_SKIP() << "not under faketime";
  char path[] = "/tmp/clock_step_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  close(fd);
  unlink(path);
  const absl::Time kernel = absl::TimeFromTimespec(st.st_mtim);
  EXPECT_GT(absl::Now() - kernel, absl::Minutes(50));
  EXPECT_LT(absl::Now() - kernel, absl::Minutes(70));
}

}  // namespace
}  // namespace statestream
