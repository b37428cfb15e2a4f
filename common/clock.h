// SPDX-License-Identifier: Apache-2.0
// Injected time. Leases, TTLs and deadlines read a Clock so tests can move
// time instead of sleeping.
#ifndef STATESTREAM_COMMON_CLOCK_H_
#define STATESTREAM_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
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

  // The process-wide wall clock; never null, never destroyed.
  static Clock* Real();
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
