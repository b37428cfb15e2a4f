// SPDX-License-Identifier: Apache-2.0
// Injected time. Leases, TTLs and deadlines read a Clock so tests can move
// time instead of sleeping; SteadyWaiter waits on the steady clock.
#ifndef STATESTREAM_COMMON_CLOCK_H_
#define STATESTREAM_COMMON_CLOCK_H_

#include <condition_variable>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace statestream {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Blocks the caller for `d` of this clock's time.
  virtual void SleepFor(absl::Duration d) = 0;

  // The process-wide wall clock; never null, never destroyed. For times
  // other processes read (TTLs, timestamps kept in the store).
  static Clock* Real();
  // The process-wide steady clock: never stepped (NTP, a VM resumed), so
  // intervals and deadlines within this process hold across wall-clock
  // steps; its Now() is not the time of day (SteadyNow). Never null, never
  // destroyed.
  static Clock* Steady();
};

// The steady clock as an absl::Time: UnixEpoch() plus the time since an
// arbitrary start (boot). Only differences with other SteadyNow()s mean
// anything.
absl::Time SteadyNow();

// Timed waits on an absl::Mutex measured on the steady clock.
//
// Abseil 20220623 (Debian 12's) turns every timeout of its own waits
// (Mutex::AwaitWithTimeout, CondVar::WaitWithTimeout) into a wall-clock
// deadline: a clock stepped back an hour makes a 100 ms wait last an hour.
// Loops that keep something alive elsewhere (lease renewals, heartbeats,
// stall watchdogs) wait with this instead. Unlike an absl::Condition,
// which the mutex re-evaluates on every unlock, whoever changes what a
// waiter waits for must call Notify. Thread-safe.
class SteadyWaiter {
 public:
  // With `*mu` held: waits until `done()` (called with `*mu` held) is true
  // or `timeout` has passed on the steady clock, and returns done().
  bool Await(absl::Mutex* mu, absl::FunctionRef<bool()> done,
             absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Wakes every Await to look at `done` again: after changing what it
  // reads, with the mutex held or not.
  void Notify() { cv_.notify_all(); }

  // Await on a condition variable of the caller's (where this header
  // cannot be included, as in the C++ SDK's public headers); whoever
  // changes what `done` reads calls cv->notify_all().
  static bool AwaitOn(std::condition_variable_any* cv, absl::Mutex* mu,
                      absl::FunctionRef<bool()> done, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

 private:
  std::condition_variable_any cv_;
};

// A clock that only moves when told to. SleepFor advances it, so code that
// sleeps in a loop makes progress in tests without real waiting.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24))
      : now_(start) {}
  absl::Time Now() const override;
  void SleepFor(absl::Duration d) override { Advance(d); }
  void Advance(absl::Duration d);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace statestream

#endif  // STATESTREAM_COMMON_CLOCK_H_
