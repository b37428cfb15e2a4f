// SPDX-License-Identifier: Apache-2.0
#include "services/worker_registration.h"

#include <iostream>
#include <utility>

#include "absl/time/clock.h"

namespace statestream {

absl::StatusOr<std::unique_ptr<WorkerRegistration>> WorkerRegistration::Start(
    StateStore* store, WorkerRegistrationOptions options) {
  if (options.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat_interval must be positive");
  }
  if (options.load_fn) options.info.load = options.load_fn();
  absl::StatusOr<bool> registered =
      store->RegisterWorker(options.info, 3 * options.heartbeat_interval);
  if (!registered.ok()) return registered.status();
  std::unique_ptr<WorkerRegistration> r(
      new WorkerRegistration(store, std::move(options)));
  r->thread_ = std::thread([p = r.get()] { p->Loop(); });
  return r;
}

WorkerRegistration::WorkerRegistration(StateStore* store,
                                       WorkerRegistrationOptions options)
    : store_(store), options_(std::move(options)) {}

WorkerRegistration::~WorkerRegistration() { Stop(); }

void WorkerRegistration::Loop() {
  bool failing = false;
  absl::Time failing_since = absl::InfinitePast();
  WorkerInfo info = options_.info;
  absl::MutexLock lock(&mu_);
  while (true) {
    auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stop),
                             options_.heartbeat_interval)) {
      return;
    }
    mu_.Unlock();
    if (options_.load_fn) info.load = options_.load_fn();
    absl::StatusOr<bool> listed =
        store_->RegisterWorker(info, 3 * options_.heartbeat_interval);
    const absl::Status& st = listed.status();
    if (!st.ok() && !failing) {
      failing_since = absl::Now();
      std::cerr << "worker " << info.worker_id
                << ": registry heartbeat failed (retrying): " << st << "\n";
    } else if (st.ok() && failing) {
      std::cerr << "worker " << info.worker_id << ": registry heartbeat ok\n";
    }
    const bool long_failure =
        st.ok() && failing &&
        absl::Now() - failing_since >= options_.resync_after_failing;
    if (st.ok() && (!*listed || long_failure)) {
      std::cerr << "worker " << info.worker_id
                << (!*listed ? ": registry entry had expired or was lost"
                             : ": registry unreachable for a while")
                << "; re-checking sessions\n";
    }
    // Only a lost entry says the worker was away long enough to have
    // missed something (three periods: other workers may have taken its
    // sessions over, or the store lost them). A heartbeat or two that
    // failed while the entry lived says nothing about the leases, and
    // renewing everything after each would multiply renewals exactly while
    // the store struggles.
    if (st.ok() && (!*listed || long_failure) && options_.resync) {
      options_.resync();
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
  if (thread_.joinable()) thread_.join();
  absl::Status st = store_->UnregisterWorker(options_.info.worker_id);
  if (!st.ok()) {
    std::cerr << "worker " << options_.info.worker_id
              << ": unregister failed (the entry expires by itself): " << st
              << "\n";
  }
}

}  // namespace statestream
