// SPDX-License-Identifier: Apache-2.0
#include "common/clock.h"

#include <algorithm>
#include <chrono>

#include "absl/time/clock.h"

namespace statestream {
namespace {

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  void SleepFor(absl::Duration d) override { absl::SleepFor(d); }
};

class SteadyClock final : public Clock {
 public:
  absl::Time Now() const override { return SteadyNow(); }
  // nanosleep: a relative sleep, on the monotonic clock.
  void SleepFor(absl::Duration d) override { absl::SleepFor(d); }
};

// absl::Mutex as the BasicLockable std::condition_variable_any takes.
class Lockable {
 public:
  explicit Lockable(absl::Mutex* mu) : mu_(mu) {}
  void lock() ABSL_NO_THREAD_SAFETY_ANALYSIS { mu_->Lock(); }
  void unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS { mu_->Unlock(); }

 private:
  absl::Mutex* const mu_;
};

}  // namespace

Clock* Clock::Real() {
  static Clock* clock = new RealClock();
  return clock;
}

Clock* Clock::Steady() {
  static Clock* clock = new SteadyClock();
  return clock;
}

absl::Time SteadyNow() {
  return absl::UnixEpoch() +
         absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

bool SteadyWaiter::Await(absl::Mutex* mu, absl::FunctionRef<bool()> done,
                         absl::Duration timeout) {
  return AwaitOn(&cv_, mu, done, timeout);
}

bool SteadyWaiter::AwaitOn(std::condition_variable_any* cv, absl::Mutex* mu,
                           absl::FunctionRef<bool()> done,
                           absl::Duration timeout) {
  Lockable lock(mu);
  const auto ready = [&done] { return done(); };
  // Beyond a year: until done (steady_clock's now() plus the timeout must
  // not overflow).
  if (timeout > absl::Hours(24 * 365)) {
    cv->wait(lock, ready);
    return true;
  }
  // libstdc++ waits for a steady_clock deadline with
  // pthread_cond_clockwait(CLOCK_MONOTONIC).
  return cv->wait_for(
      lock, absl::ToChronoNanoseconds(std::max(timeout, absl::ZeroDuration())),
      ready);
}

absl::Time FakeClock::Now() const {
  absl::MutexLock lock(&mu_);
  return now_;
}

void FakeClock::Advance(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  now_ += d;
}

}  // namespace statestream
