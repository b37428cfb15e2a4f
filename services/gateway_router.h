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
#include <functional>
#include <set>
#include <string>
#include <thread>
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
  // The model fingerprints of a worker whose entry names none (a static
  // worker), as learned otherwise (the gateway's ListModels cache); empty:
  // not known, so it may serve any. Called without the router's lock.
  std::function<std::vector<std::string>(const WorkerInfo&)> fingerprints_of;
  // The registry is re-read when the cached list is older than this, and
  // after any MarkSuspect.
  absl::Duration registry_refresh = absl::Milliseconds(500);
  // A worker reported unreachable (MarkSuspect) is avoided this long.
  absl::Duration suspect_for = absl::Seconds(5);
  // After a session lookup finds the store unreachable (UNAVAILABLE: down,
  // or hung past its command timeout), calls for sessions whose owner was
  // seen route at once to it (when it is live) instead of each first
  // waiting out the store; others still ask the store. From this long
  // after the failure, a background lookup (one at a time, no call waits
  // for it) tries the store again; its first success resumes lookups.
  absl::Duration lookup_pause = absl::Seconds(1);
  // Owners remembered for that (the whole memory is dropped beyond it).
  size_t max_remembered_owners = 100000;
  // A model some worker served within this long is one whose workers may
  // be restarting: a call for it that finds none is UNAVAILABLE (retried),
  // while one never served (or not for this long) is MODEL_MISMATCH.
  absl::Duration served_memory = absl::Minutes(10);
  // Time source. Not owned; nullptr = Clock::Steady() (every time the
  // router keeps is an interval within the process).
  Clock* clock = nullptr;
};

struct Route {
  std::string worker_id;
  std::string address;
  // True when the worker holds the session's live lease.
  bool owner = false;
  // With `owner`: the owner last seen, the store being unreachable now.
  bool remembered = false;
};

// Thread-safe.
class GatewayRouter {
 public:
  // `store` (registry and leases) may be null when static_workers is not
  // empty; it must outlive the router.
  GatewayRouter(StateStore* store, GatewayRouterOptions options);
  ~GatewayRouter();  // waits for background reads (a store timeout each)
  GatewayRouter(const GatewayRouter&) = delete;
  GatewayRouter& operator=(const GatewayRouter&) = delete;

  // The worker for the session. Workers whose id is in `exclude` (tried and
  // failed during this call) are skipped, and so are suspects, unless no
  // other worker is left. UNAVAILABLE when no live worker serves the
  // session's model, unless `any_model` (a call that does not run the
  // model: reads, update, delete, export): then any live worker, by the
  // session's hash. `fingerprint_hint` (an import's state) stands in for
  // the model of a session the store does not know: among the workers
  // serving it, FAILED_PRECONDITION/MODEL_MISMATCH when none does (as
  // RouteAny), so a worker of another model does not answer instead.
  absl::StatusOr<Route> RouteSession(const SessionKey& key,
                                     const std::set<std::string>& exclude,
                                     bool any_model = false,
                                     const std::string& fingerprint_hint = "");
  // For calls not bound to an existing session (create, list, models): the
  // rendezvous winner for `hash_key` among live workers serving
  // `fingerprint` ("" = any). FAILED_PRECONDITION/MODEL_MISMATCH when no
  // live worker serves `fingerprint` and none did within served_memory (a
  // state of another model; metadata expected_fingerprint, the ones
  // served, and actual_fingerprint), decided on a list the registry gave
  // within registry_refresh (else read first); UNAVAILABLE when those that
  // serve it are excluded, or none is live but one was lately
  // (restarting), or the registry cannot be read. An existing session's
  // model is UNAVAILABLE either way.
  absl::StatusOr<Route> RouteAny(const std::string& hash_key,
                                 const std::string& fingerprint,
                                 const std::set<std::string>& exclude);

  // UNAVAILABLE/OVERLOADED with `message` and retry_after_ms of one
  // registry refresh: the answer when no live worker can take a call.
  // Workers restarting or being replaced come back within a few
  // heartbeats; the gateway's ListModels answers the same.
  absl::Status NoWorker(absl::string_view message) const;

  // The worker failed a call at the transport level (or stalled).
  void MarkSuspect(const std::string& worker_id);

  // Live workers (registry + static), for Models and diagnostics.
  absl::StatusOr<std::vector<WorkerInfo>> Workers();
  // Makes the list Workers gives one the registry gave within a refresh
  // period: at once when it is, else after a read (shared with the calls
  // waiting for one). For an answer that must not rest on a list an idle
  // gateway kept (a model no worker serves: the list may predate its
  // workers). OK with static workers only; the read's error if it failed.
  absl::Status RefreshNow();
  // Whether `worker_id` failed a call within suspect_for.
  bool IsSuspect(const std::string& worker_id);

  struct Stats {
    int known = 0;    // in the last registry read (+ static workers)
    int suspect = 0;  // of those, suspect now
  };
  // From the cached list; never reads the store.
  Stats stats();

  // Waits until the background reads started so far have finished (for
  // tests; the destructor does the same).
  void AwaitBackgroundReads();

 private:
  // `unserved_is_mismatch`: a fingerprint no live worker serves is
  // MODEL_MISMATCH (RouteAny), not UNAVAILABLE.
  absl::StatusOr<Route> Pick(const std::string& hash_key,
                             const std::string& fingerprint,
                             const std::set<std::string>& exclude,
                             bool unserved_is_mismatch);
  // Whether the worker list was read within a registry refresh.
  bool WorkersFresh() ABSL_LOCKS_EXCLUDED(mu_);
  // Whether `w` serves `fingerprint` as far as this gateway knows: the
  // fingerprints it advertises, else those learned (fingerprints_of); true
  // when either side is unknown (empty).
  bool Serves(const WorkerInfo& w, const std::string& fingerprint) const;
  // The best of `workers` for `hash_key`: healthy before suspect; nullptr
  // when every one is excluded or serves another model.
  const WorkerInfo* Best(const std::vector<WorkerInfo>& workers,
                         const std::string& hash_key,
                         const std::string& fingerprint,
                         const std::set<std::string>& exclude);
  // The workers as listed by a registry read that began after read
  // number `began` (read_starts_): the last one if it did, else the one
  // out if it did, else one made now. The last read's error at once when
  // it failed (the registry is down: Workers routes on without it).
  absl::StatusOr<std::vector<WorkerInfo>> ReadWorkersSince(uint64_t began)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Requires mu_: a registry read begins (reading_, numbered).
  void BeginRead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits while a registry read is out; true if one ended meanwhile.
  bool AwaitReadOut() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Called with mu_ held, returns with it released: reads the registry
  // (reading_ set meanwhile) and finishes the read.
  absl::StatusOr<std::vector<WorkerInfo>> ReadRegistry()
      ABSL_UNLOCK_FUNCTION(mu_);
  // Requires mu_: the end of a registry read (reading_ was set for it)
  // that `listed` the workers; `marks`: marks_ when it began.
  absl::StatusOr<std::vector<WorkerInfo>> FinishRead(
      absl::StatusOr<std::vector<WorkerInfo>> listed, uint64_t marks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AppendStatic(std::vector<WorkerInfo>* workers) const;
  // Runs `fn` on the thread `slot` (after joining its previous one; `fn`
  // runs here when no thread can be made). Not with mu_ held.
  void InBackground(std::thread* slot, std::function<void()> fn)
      ABSL_LOCKS_EXCLUDED(mu_);
  // How this call learns the session's owner (see lookup_pause).
  // kRead: read the store now. kRemembered: use *seen. kProbe: use *seen
  // and start the background lookup.
  enum class Lookup { kRead, kRemembered, kProbe };
  struct Seen {
    std::string owner;
    std::string fingerprint;
  };
  Lookup HowToLookUp(const std::string& hash_key, Seen* seen);
  // After a lookup (`probe`: the background one): its outcome, and what it
  // said of `hash_key`.
  void Looked(const std::string& hash_key,
              const absl::StatusOr<SessionHead>& head, bool probe);

  StateStore* const store_;
  const GatewayRouterOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::vector<WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  absl::Time workers_read_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // A call is reading the registry (outside mu_): the others route with
  // the list known, or wait for that read when none is known yet.
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t reads_ ABSL_GUARDED_BY(mu_) = 0;  // registry reads finished
  // Registry reads begun, numbered (the last one is the one out while
  // reading_), and the number of the one that listed workers_.
  uint64_t read_starts_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t listed_by_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status last_read_ ABSL_GUARDED_BY(mu_);  // the latest one's outcome
  uint64_t marks_ ABSL_GUARDED_BY(mu_) = 0;      // MarkSuspect calls
  absl::flat_hash_map<std::string, absl::Time> suspects_ ABSL_GUARDED_BY(mu_);
  // Session lookups: paused until this time after a failure (InfinitePast:
  // healthy); `probing_` while the background lookup is out.
  absl::Time lookups_resume_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool probing_ ABSL_GUARDED_BY(mu_) = false;
  // The background lookup and registry read (one each at a time).
  absl::Mutex threads_mu_;
  std::thread prober_ ABSL_GUARDED_BY(threads_mu_);
  std::thread refresher_ ABSL_GUARDED_BY(threads_mu_);
  // "tenant/session" -> its owner and model as last looked up.
  absl::flat_hash_map<std::string, Seen> seen_ ABSL_GUARDED_BY(mu_);
  // When the registry last listed workers (a failed read does not count;
  // InfinitePast when a worker was marked suspect during that read).
  absl::Time listed_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Model fingerprint -> when a registry read last listed a worker of it
  // (entries older than served_memory are dropped at each read).
  absl::flat_hash_map<std::string, absl::Time> served_ ABSL_GUARDED_BY(mu_);
};

// Rendezvous (highest random weight) score of `worker_id` for `hash_key`:
// weight / -ln(u) with u uniform in (0, 1) from a stable 64-bit hash, so
// every gateway computes the same winner. weight = 1 / (1 + load).
double RendezvousScore(const std::string& hash_key,
                       const std::string& worker_id, double load);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_GATEWAY_ROUTER_H_
