// SPDX-License-Identifier: Apache-2.0
// A worker's entry in the cluster registry (StateStore::RegisterWorker):
// announced at start, refreshed by a heartbeat thread, removed on drain.
// Gateways route sessions without a live owner to the workers listed there
// (services/gateway_router.h).
#ifndef STATESTREAM_SERVICES_WORKER_REGISTRATION_H_
#define STATESTREAM_SERVICES_WORKER_REGISTRATION_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/state_store.h"

namespace statestream {

struct WorkerRegistrationOptions {
  // The entry; expires_at is ignored (the store sets it). `load` is replaced
  // at every heartbeat by load_fn() when load_fn is set.
  WorkerInfo info;
  // Heartbeat period; the entry lives three periods, so a worker that
  // stops heartbeating (killed, paused, partitioned) leaves the registry
  // within 3 * heartbeat_interval.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // Current load (e.g. resident sessions); called on the heartbeat thread.
  std::function<double()> load_fn;
  // Called on the heartbeat thread after a heartbeat that found the entry
  // no longer listed: it expired (the worker was paused, or its heartbeats
  // failed, for three periods) or the store lost it (a restart without
  // persistence). Either way the worker may have missed changes to its
  // sessions (taken over meanwhile, or gone with the store's data), so it
  // re-checks them now instead of at its next lease renewal
  // (SessionManager::RenewLeasesNow).
  std::function<void()> resync;
  // Also resync once heartbeats that failed for this long work again,
  // even if the entry lived (a heartbeat interval long against the lease
  // TTL keeps the entry past the leases): the worker passes lease_ttl / 3.
  absl::Duration resync_after_failing = absl::InfiniteDuration();
  // Measures the failures above and the time since the last answered
  // heartbeat; the heartbeat period itself is real (steady) time. Never
  // null.
  Clock* clock = Clock::Steady();
};

// Thread-safe. Destruction unregisters (see Stop).
class WorkerRegistration {
 public:
  // Registers, then heartbeats in the background. A store that refuses
  // the entry (an invalid id, a Redis error such as NOPERM or READONLY) is
  // the error returned; one that cannot be reached now (UNAVAILABLE or
  // DEADLINE_EXCEEDED without a redis_error) is not: the heartbeat
  // retries it, as it does later failures (logged to stderr once per
  // outage), so a Redis blip while a worker starts does not cost it its
  // model load (its readiness says NOT_SERVING meanwhile).
  // `store` must outlive the registration.
  static absl::StatusOr<std::unique_ptr<WorkerRegistration>> Start(
      StateStore* store, WorkerRegistrationOptions options);
  ~WorkerRegistration();
  WorkerRegistration(const WorkerRegistration&) = delete;
  WorkerRegistration& operator=(const WorkerRegistration&) = delete;

  // Stops the heartbeat and removes the entry, so gateways stop routing new
  // sessions here. Idempotent.
  void Stop();

 private:
  WorkerRegistration(StateStore* store, WorkerRegistrationOptions options);
  // `answered_sent`: when the registration's answered call was sent;
  // `failing`: it was not answered (then `answered_sent` is when it was).
  void Loop(absl::Time answered_sent, bool failing);

  StateStore* const store_;
  const WorkerRegistrationOptions options_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  SteadyWaiter wake_;  // told when stopping_ is set
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_WORKER_REGISTRATION_H_
