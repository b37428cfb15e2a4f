// SPDX-License-Identifier: Apache-2.0
#include "worker/request_memo.h"

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
  entries_[{tenant, request_id}] = {session_id, digest, version, now};
  order_.push_back({{tenant, request_id}, now});
  Prune(now);
}

void RequestMemo::Prune(absl::Time now) {
  while (!order_.empty() &&
         (order_.size() > max_ids_ || now - order_.front().second > window_)) {
    auto it = entries_.find(order_.front().first);
    // Only if not re-recorded since (a newer entry has a newer time).
    if (it != entries_.end() && it->second.at == order_.front().second) {
      entries_.erase(it);
    }
    order_.pop_front();
  }
}

}  // namespace statestream::worker
