// SPDX-License-Identifier: Apache-2.0
#include "services/worker_registration.h"

#include <iostream>
#include <utility>

#include "common/status.h"

namespace statestream {

absl::StatusOr<std::unique_ptr<WorkerRegistration>> WorkerRegistration::Start(
    StateStore* store, WorkerRegistrationOptions options) {
  if (options.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat_interval must be positive");
  }
  if (options.clock == nullptr) {
    return absl::InvalidArgumentError("clock must not be null");
  }
  if (options.load_fn) options.info.load = options.load_fn();
  const absl::Time sent = options.clock->Now();
  absl::StatusOr<bool> registered =
      store->RegisterWorker(options.info, 3 * options.heartbeat_interval);
  const absl::Status& st = registered.status();
  // Not a refusal: Redis answering an error (NOPERM, OOM, READONLY: a
  // redis_error) would refuse every retry as well, the worker never
  // listed while its health said SERVING.
  const bool unreachable =
      (absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st)) &&
      !GetErrorMetadata(st, "redis_error").has_value();
  if (!st.ok() && !unreachable) return st;
  if (unreachable) {
    std::cerr << "worker " << options.info.worker_id
              << ": registry write failed (retrying): " << st << "\n";
  }
  std::unique_ptr<WorkerRegistration> r(
      new WorkerRegistration(store, std::move(options)));
  r->thread_ = std::thread(
      [p = r.get(), sent, unreachable] { p->Loop(sent, unreachable); });
  return r;
}

WorkerRegistration::WorkerRegistration(StateStore* store,
                                       WorkerRegistrationOptions options)
    : store_(store), options_(std::move(options)) {}

WorkerRegistration::~WorkerRegistration() { Stop(); }

void WorkerRegistration::Loop(absl::Time answered_sent, bool failing) {
  Clock* const clock = options_.clock;
  const absl::Duration entry_ttl = 3 * options_.heartbeat_interval;
  absl::Time failing_since = failing ? answered_sent : absl::InfinitePast();
  WorkerInfo info = options_.info;
  absl::MutexLock lock(&mu_);
  while (true) {
    auto stop = [this]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    // On the steady clock: a wall clock stepped back must not hold the
    // heartbeats (the entry would lapse, and gateways drop the worker).
    if (wake_.Await(&mu_, stop, options_.heartbeat_interval)) return;
    mu_.Unlock();
    if (options_.load_fn) info.load = options_.load_fn();
    const absl::Time sent = clock->Now();
    absl::StatusOr<bool> listed = store_->RegisterWorker(info, entry_ttl);
    const absl::Status& st = listed.status();
    if (!st.ok() && !failing) {
      failing_since = clock->Now();
      std::cerr << "worker " << info.worker_id
                << ": registry heartbeat failed (retrying): " << st << "\n";
    } else if (st.ok() && failing) {
      std::cerr << "worker " << info.worker_id << ": registry heartbeat ok\n";
    }
    // Only a lost entry says the worker was away long enough to have
    // missed something (three periods: other workers may have taken its
    // sessions over, or the store lost them). A heartbeat or two that
    // failed while the entry lived says nothing about the leases, and
    // renewing everything after each would multiply renewals exactly while
    // the store struggles.
    //
    // `listed` alone misses one lapse: a failed heartbeat the store applied
    // (its reply lost) may have re-created an expired entry, and the next
    // one finds it listed. So after failures, an entry-lifetime since the
    // last answered heartbeat was sent counts as lost too.
    bool lost = false;
    bool long_failure = false;
    if (st.ok()) {
      const absl::Time now = clock->Now();
      lost = !*listed || (failing && now - answered_sent >= entry_ttl);
      long_failure =
          failing && now - failing_since >= options_.resync_after_failing;
      answered_sent = sent;
    }
    if (lost || long_failure) {
      std::cerr << "worker " << info.worker_id
                << (lost ? ": registry entry had expired or was lost"
                         : ": registry unreachable for a while")
                << "; re-checking sessions\n";
      if (options_.resync) options_.resync();
    }
    failing = !st.ok();
    mu_.Lock();
  }
}

void WorkerRegistration::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_ = true;
  }
  wake_.Notify();
  if (thread_.joinable()) thread_.join();
  absl::Status st = store_->UnregisterWorker(options_.info.worker_id);
  if (!st.ok()) {
    std::cerr << "worker " << options_.info.worker_id
              << ": unregister failed (the entry expires by itself): " << st
              << "\n";
  }
}

}  // namespace statestream
