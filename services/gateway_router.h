// SPDX-License-Identifier: Apache-2.0
// Where a gateway sends a session's calls (DESIGN.md, "The path of a
// token"): to the session's owner — the live lease holder recorded in the
// state store — when that worker is live, else to a live worker serving the
// session's model, chosen by rendezvous hashing of (tenant, session id)
// weighted by load, so a session lands on the same worker from every
// gateway and stays put when other workers come and go. No gRPC in here.
#ifndef STATESTREAM_SERVICES_GATEWAY_ROUTER_H_
#define STATESTREAM_SERVICES_GATEWAY_ROUTER_H_

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/state_store.h"

namespace statestream {

struct GatewayRouterOptions {
  // HOST:PORT of workers to use besides (or, without a store, instead of)
  // the registry. A static worker's id is its address; its load is 0.
  std::vector<std::string> static_workers;
  // The registry is re-read when the cached list is older than this, and
  // after any MarkSuspect.
  absl::Duration registry_refresh = absl::Milliseconds(500);
  // A worker reported unreachable (MarkSuspect) is avoided this long.
  absl::Duration suspect_for = absl::Seconds(5);
  // Time source. Not owned; nullptr = Clock::Real().
  Clock* clock = nullptr;
};

struct Route {
  std::string worker_id;
  std::string address;
  // True when the worker holds the session's live lease.
  bool owner = false;
};

// Thread-safe.
class GatewayRouter {
 public:
  // `store` (registry and leases) may be null when static_workers is not
  // empty; it must outlive the router.
  GatewayRouter(StateStore* store, GatewayRouterOptions options);
  GatewayRouter(const GatewayRouter&) = delete;
  GatewayRouter& operator=(const GatewayRouter&) = delete;

  // The worker for the session. Workers whose id is in `exclude` (tried and
  // failed during this call) are skipped, and so are suspects, unless no
  // other worker is left. UNAVAILABLE when no live worker serves the
  // session's model.
  absl::StatusOr<Route> RouteSession(const SessionKey& key,
                                     const std::set<std::string>& exclude);
  // For calls not bound to an existing session (create, list, models): the
  // rendezvous winner for `hash_key` among live workers serving
  // `fingerprint` ("" = any).
  absl::StatusOr<Route> RouteAny(const std::string& hash_key,
                                 const std::string& fingerprint,
                                 const std::set<std::string>& exclude);

  // The worker failed a call at the transport level (or stalled).
  void MarkSuspect(const std::string& worker_id);

  // Live workers (registry + static), for Models and diagnostics.
  absl::StatusOr<std::vector<WorkerInfo>> Workers();
  // Whether `worker_id` failed a call within suspect_for.
  bool IsSuspect(const std::string& worker_id);

  struct Stats {
    int known = 0;    // in the last registry read (+ static workers)
    int suspect = 0;  // of those, suspect now
  };
  // From the cached list; never reads the store.
  Stats stats();

 private:
  absl::StatusOr<Route> Pick(const std::string& hash_key,
                             const std::string& fingerprint,
                             const std::set<std::string>& exclude);

  StateStore* const store_;
  const GatewayRouterOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::vector<WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  absl::Time workers_read_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // A call is reading the registry (outside mu_): the others route with
  // the list known, or wait for that read when none is known yet.
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t reads_ ABSL_GUARDED_BY(mu_) = 0;      // registry reads finished
  absl::Status last_read_ ABSL_GUARDED_BY(mu_);  // the latest one's outcome
  uint64_t marks_ ABSL_GUARDED_BY(mu_) = 0;      // MarkSuspect calls
  absl::flat_hash_map<std::string, absl::Time> suspects_ ABSL_GUARDED_BY(mu_);
};

// Rendezvous (highest random weight) score of `worker_id` for `hash_key`:
// weight / -ln(u) with u uniform in (0, 1) from a stable 64-bit hash, so
// every gateway computes the same winner. weight = 1 / (1 + load).
double RendezvousScore(const std::string& hash_key,
                       const std::string& worker_id, double load);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_GATEWAY_ROUTER_H_
