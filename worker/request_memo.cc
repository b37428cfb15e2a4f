// SPDX-License-Identifier: Apache-2.0
#include "worker/request_memo.h"

#include <iterator>
#include <utility>

#include "common/status.h"

namespace statestream::worker {

absl::Status DuplicateRequest(const std::string& request_id) {
  return MakeError(absl::StatusCode::kInvalidArgument,
                   Reason::kDuplicateRequest,
                   "request_id was already used for a request with different "
                   "content",
                   {{"request_id", request_id}, {"field", "request_id"}});
}

RequestMemo::RequestMemo(absl::Duration window, int max_ids, Clock* clock)
    : window_(window),
      max_ids_(max_ids > 0 ? static_cast<size_t>(max_ids) : 0),
      clock_(clock != nullptr ? clock : Clock::Real()) {}

absl::StatusOr<bool> RequestMemo::Seen(const std::string& tenant,
                                       const std::string& request_id,
                                       uint64_t digest, std::string* session_id,
                                       uint64_t* version) {
  if (request_id.empty()) return false;
  absl::MutexLock lock(&mu_);
  Prune(clock_->Now());
  auto it = entries_.find({tenant, request_id});
  if (it == entries_.end()) return false;
  if (it->second.digest != digest) return DuplicateRequest(request_id);
  if (session_id != nullptr) *session_id = it->second.session_id;
  if (version != nullptr) *version = it->second.version;
  return true;
}

void RequestMemo::Remember(const std::string& tenant,
                           const std::string& request_id,
                           const std::string& session_id, uint64_t digest,
                           uint64_t version) {
  if (request_id.empty()) return;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  const Key key{tenant, request_id};
  const bool fresh =
      entries_.insert_or_assign(key, Entry{session_id, digest, version, now})
          .second;
  if (fresh) {
    size_t& held = held_[tenant];
    if (held > 0) by_held_.erase({held, tenant});
    by_held_.insert({++held, tenant});
  }
  order_.push_back({key, now});
  std::deque<Record>& mine = by_tenant_[tenant];
  mine.push_back({key, now});
  Compact(&mine, held_[tenant]);
  Prune(now);
}

RequestMemo::InFlight::InFlight(RequestMemo* memo, const std::string& tenant,
                                const std::string& request_id,
                                const std::function<bool()>& cancelled)
    : memo_(request_id.empty() ? nullptr : memo), key_(tenant, request_id) {
  if (memo_ == nullptr) return;
  absl::MutexLock lock(&memo->in_flight_mu_);  // memo_ == memo here
  const auto ended = [memo, this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(memo->in_flight_mu_) {
                           return memo->in_flight_.count(key_) == 0;
                         };
  while (!ended()) {
    if (cancelled == nullptr) {
      memo->call_ended_.Await(&memo->in_flight_mu_, ended,
                              absl::InfiniteDuration());
    } else if (cancelled()) {
      memo_ = nullptr;
      entered_ = false;
      return;
    } else {
      // Polls `cancelled` on the steady clock: a wall clock stepped back
      // must not hold a call its client left.
      memo->call_ended_.Await(&memo->in_flight_mu_, ended,
                              absl::Milliseconds(50));
    }
  }
  memo->in_flight_.insert(key_);
}

RequestMemo::InFlight::~InFlight() {
  if (memo_ == nullptr) return;
  absl::MutexLock lock(&memo_->in_flight_mu_);
  memo_->in_flight_.erase(key_);
  memo_->call_ended_.Notify();
}

bool RequestMemo::Live(const Record& r) const {
  auto it = entries_.find(r.first);
  // Not if remembered again since (a newer entry has a newer time).
  return it != entries_.end() && it->second.at == r.second;
}

void RequestMemo::Drop(const Record& r) {
  if (!Live(r)) return;
  entries_.erase(r.first);
  const std::string tenant = r.first.first;
  auto held = held_.find(tenant);
  by_held_.erase({held->second, tenant});
  if (--held->second > 0) {
    by_held_.insert({held->second, tenant});
    return;
  }
  held_.erase(held);
  by_tenant_.erase(tenant);  // what it still holds is not live
}

void RequestMemo::Compact(std::deque<Record>* records, size_t live) {
  // Amortized: after a compaction the next one is `live + 64` records away.
  if (records->size() <= 2 * live + 64) return;
  std::deque<Record> kept;
  for (Record& r : *records) {
    if (Live(r)) kept.push_back(std::move(r));
  }
  records->swap(kept);
}

void RequestMemo::Prune(absl::Time now) {
  while (!order_.empty() && now - order_.front().second > window_) {
    const Record r = std::move(order_.front());
    order_.pop_front();
    Drop(r);
  }
  while (entries_.size() > max_ids_ && !by_held_.empty()) {
    // The oldest live id of the tenant that holds the most.
    const std::string tenant = std::prev(by_held_.end())->second;
    std::deque<Record>& records = by_tenant_[tenant];
    while (!records.empty() && !Live(records.front())) records.pop_front();
    if (records.empty()) break;  // held_ counts its live ones: not reached
    const Record r = std::move(records.front());
    records.pop_front();
    Drop(r);  // may erase `records`
  }
  Compact(&order_, entries_.size());
}

}  // namespace statestream::worker
