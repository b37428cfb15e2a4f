// SPDX-License-Identifier: Apache-2.0
// What mutating calls did, by (tenant, request_id), so a retry with the same
// id gets the first outcome instead of a second mutation.
#ifndef STATESTREAM_WORKER_REQUEST_MEMO_H_
#define STATESTREAM_WORKER_REQUEST_MEMO_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace statestream::worker {

// INVALID_ARGUMENT/DUPLICATE_REQUEST: `request_id` was used for other
// content within the window.
absl::Status DuplicateRequest(const std::string& request_id);

// For each (tenant, request_id): the session the call touched and a digest
// of the call's content, kept for `window`, at most `max_ids` in all. Past
// that the oldest id of the tenant holding the most goes first, so one
// tenant's burst of calls does not push out the ids of the others' calls
// (their retries would be applied again). One per process, shared by the
// session managers of its models, so a retry finds its id whichever
// model's manager serves it (a deleted session's retry lands on the
// default one). Thread-safe.
class RequestMemo {
 public:
  RequestMemo(absl::Duration window, int max_ids, Clock* clock);

  // True if the id was recorded with this `digest` (a retry; *session_id is
  // what the first call touched, *version the version it committed or 0),
  // DUPLICATE_REQUEST if with another one, false if not recorded (or
  // `request_id` is empty).
  absl::StatusOr<bool> Seen(const std::string& tenant,
                            const std::string& request_id, uint64_t digest,
                            std::string* session_id = nullptr,
                            uint64_t* version = nullptr);
  // Records a call's outcome (nothing for an empty `request_id`): the
  // session it touched and, for calls that commit one, the version (a retry
  // of a call kept below the durability it asked raises that version).
  void Remember(const std::string& tenant, const std::string& request_id,
                const std::string& session_id, uint64_t digest,
                uint64_t version = 0);

  // A call under way with (tenant, request_id), from construction to
  // destruction: a second one with the same id waits for the first to end
  // (and then finds what it Remembered), instead of racing it. For calls
  // whose retry could otherwise see the first's effect without its record
  // (a retried delete finding the session gone). Nothing for an empty id.
  // `cancelled` (optional), asked every 50 ms while it waits, gives up the
  // wait: the caller went away (its client cancelled or its deadline
  // passed), so a burst of retries does not hold threads for as long as
  // the first call runs. It is called under the memo's lock: it must be
  // quick and must not call into the memo.
  class InFlight {
   public:
    InFlight(RequestMemo* memo, const std::string& tenant,
             const std::string& request_id,
             const std::function<bool()>& cancelled = nullptr);
    ~InFlight();
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;

    // False when `cancelled` ended the wait: the call must not run.
    bool entered() const { return entered_; }

   private:
    RequestMemo* memo_;  // null: no id, or gave up
    bool entered_ = true;
    const std::pair<std::string, std::string> key_;
  };

 private:
  using Key = std::pair<std::string, std::string>;  // tenant, request id
  struct Entry {
    std::string session_id;
    uint64_t digest = 0;
    uint64_t version = 0;
    absl::Time at;
  };
  // A record of Remember: the entry it made, while entries_ holds it with
  // this time (an id remembered again has a newer one).
  using Record = std::pair<Key, absl::Time>;
  bool Live(const Record& r) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Erases `r`'s entry if live, keeping the counts.
  void Drop(const Record& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps only `records`' live ones once they are over twice `live` (+64).
  void Compact(std::deque<Record>* records, size_t live)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Prune(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const absl::Duration window_;
  const size_t max_ids_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  // Every record by time (for the window), and each tenant's (for the
  // count); records no longer live are skipped, and compacted away once
  // they outnumber the live ones.
  std::deque<Record> order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::deque<Record>> by_tenant_ ABSL_GUARDED_BY(mu_);
  // Live entries per tenant, and the tenants by that count (most last).
  std::map<std::string, size_t> held_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<size_t, std::string>> by_held_ ABSL_GUARDED_BY(mu_);
  // InFlight calls, and their ends.
  absl::Mutex in_flight_mu_;
  std::set<Key> in_flight_ ABSL_GUARDED_BY(in_flight_mu_);
  SteadyWaiter call_ended_;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_REQUEST_MEMO_H_
