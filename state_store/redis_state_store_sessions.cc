// SPDX-License-Identifier: Apache-2.0
// The Redis StateStore's sessions: heads, listings, updates, deletes,
// leases and the worker registry (internal/redis_store.h).
#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "state_store/internal/redis_client.h"
#include "state_store/internal/redis_store.h"
#include "state_store/internal/store_util.h"

namespace statestream::store_internal {

absl::StatusOr<SessionHead> RedisStateStore::GetHead(const SessionKey& key) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  SS_ASSIGN_OR_RETURN(auto read, Read(key, -1));
  return read.first;
}

absl::StatusOr<int64_t> RedisStateStore::CountSessionsBound(
    const std::string& tenant) {
  SS_RETURN_IF_ERROR(ValidateTenant(tenant));
  const std::string index = IndexKey(tenant);
  SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                      client_->Run(index, {{"ZCARD", index}}));
  if (r[0]->type != REDIS_REPLY_INTEGER) return BadReply(r[0].get());
  return static_cast<int64_t>(r[0]->integer);
}

std::vector<absl::StatusOr<SessionHead>> RedisStateStore::GetHeads(
    const std::vector<SessionKey>& keys) {
  std::vector<absl::StatusOr<Reply>> replies =
      EvalEach(kRead, keys,
               std::vector<std::vector<std::string>>(
                   keys.size(), std::vector<std::string>{"-1"}));
  std::vector<absl::StatusOr<SessionHead>> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    absl::StatusOr<std::pair<SessionHead, Fields>> read =
        replies[i].ok() ? ParseRead(keys[i], -1, replies[i]->get())
                        : absl::StatusOr<std::pair<SessionHead, Fields>>(
                              replies[i].status());
    if (!read.ok() &&
        absl::StrContains(read.status().message(), "no hash for its head")) {
      read = Read(keys[i], -1);  // mid slot move
    }
    if (read.ok()) {
      out.push_back(std::move(read->first));
    } else {
      out.push_back(read.status());
    }
  }
  return out;
}

absl::StatusOr<ListSessionsPage> RedisStateStore::ListSessions(
    const ListSessionsRequest& req) {
  SS_ASSIGN_OR_RETURN(std::string after, ParseListRequest(req));
  const std::string index = IndexKey(req.tenant);
  const bool filtered = !req.model_filter.empty() || !req.label_filter.empty();
  ListSessionsPage page;
  std::string last = after;  // the last id read: the listing goes on after it
  int budget = std::clamp(options_.max_list_scan, 1, 1 << 20);
  while (true) {
    // Ids a batch at a time, each batch's heads read in one pipeline, then
    // taken in index order. Unfiltered, a batch is what can still fill the
    // page (and one more, to know if it is the last): no head read for
    // nothing. The page's end is then known by AddToPage refusing one.
    const int room = static_cast<int>(req.page_size - page.sessions.size()) + 1;
    const int batch =
        std::min(filtered ? 100 : std::clamp(room, 1, 100), budget + 1);
    SS_ASSIGN_OR_RETURN(
        std::vector<Reply> r,
        client_->Run(index, {{"ZRANGEBYLEX", index,
                              last.empty() ? "-" : absl::StrCat("(", last), "+",
                              "LIMIT", "0", absl::StrCat(batch)}}));
    const redisReply* ids = r[0].get();
    if (ids->type != REDIS_REPLY_ARRAY) return BadReply(ids);
    // Past the scan budget: enough read for one call, the rest from after
    // the last id read.
    const bool budget_spent = static_cast<int>(ids->elements) > budget;
    const size_t n = budget_spent ? budget : ids->elements;
    budget -= static_cast<int>(n);
    std::vector<SessionKey> keys;
    std::vector<std::string> ids_read;
    for (size_t i = 0; i < n; ++i) {
      SessionKey key{req.tenant, Str(ids->element[i])};
      ids_read.push_back(key.session_id);
      if (!ValidateKey(key).ok()) {
        // No session can have this id (a foreign or damaged entry): it
        // is dropped, not a listing failed for the tenant's every call.
        client_->Run(index, {{"ZREM", index, key.session_id}})
            .status()
            .IgnoreError();
        continue;
      }
      keys.push_back(std::move(key));
    }
    std::vector<absl::StatusOr<SessionHead>> heads = GetHeads(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      absl::StatusOr<SessionHead>& head = heads[i];
      if (!head.ok()) {
        // A damaged session is left out (it stays indexed, counted toward
        // the tenant's limit, and a delete by id removes it): one bad hash
        // must not fail the tenant's every listing.
        if (GetReason(head.status()) == Reason::kStateCorrupt) continue;
        if (GetReason(head.status()) != Reason::kSessionNotFound) {
          return head.status();
        }
        SS_RETURN_IF_ERROR(DropFromIndex(keys[i]));
        continue;
      }
      if (!ListedBy(req, *head)) continue;
      if (!AddToPage(req, *std::move(head), &page)) return page;
    }
    if (!ids_read.empty()) last = ids_read.back();
    if (budget_spent) {
      page.next_page_token = MakePageToken(last);
      return page;
    }
    if (ids->elements < static_cast<size_t>(batch)) return page;
  }
}

absl::StatusOr<SessionHead> RedisStateStore::UpdateSession(
    const SessionKey& key, const SessionUpdate& u) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  const std::optional<absl::Duration> ttl =
      store_internal::UpdatedTtl(u, options_.default_ttl);
  if (ttl) SS_RETURN_IF_ERROR(ValidateTtl(*ttl, "ttl"));
  SS_ASSIGN_OR_RETURN(
      Reply r,
      Eval(key, kUpdate,
           {u.labels ? "1" : "0", u.labels ? EncodeStringMap(*u.labels) : "",
            ttl ? "1" : "0", ttl ? absl::StrCat(TtlMs(*ttl)) : ""}));
  if (Str(r->element[0]) == "NOTFOUND") {
    return SessionNotFound(key);
  }
  return GetHead(key);
}

absl::Status RedisStateStore::DeleteSession(const SessionKey& key) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  // The nonce makes the call idempotent across the client's own resends
  // (a reply lost, the pipeline sent again): see kLuaDelete. It is kept
  // longer than the client retries one call (and a first send can reach
  // Redis late), at least a minute.
  const absl::Duration kept =
      std::max(absl::Minutes(1),
               2 * (options_.retry_deadline + options_.command_timeout));
  SS_ASSIGN_OR_RETURN(Reply r,
                      Eval(key, kDelete, {NewNonce(), absl::StrCat(Ms(kept))}));
  if (Str(r->element[0]) == "NOTFOUND") {
    return SessionNotFound(key);
  }
  // The session is gone: the delete succeeded. Its index entry (on the
  // tenant's shard, maybe another) is tidied as well as can be; one left
  // behind (that shard failing over) is dropped by the next listing or
  // index sample, never reported as a delete that failed.
  DropFromIndex(key).IgnoreError();
  return absl::OkStatus();
}

absl::StatusOr<Lease> RedisStateStore::AcquireLease(const SessionKey& key,
                                                    const std::string& owner,
                                                    absl::Duration ttl,
                                                    bool takeover) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  SS_RETURN_IF_ERROR(ValidateOwner(owner));
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "lease ttl"));
  if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
  const absl::Time start = clock_->Now();
  SS_ASSIGN_OR_RETURN(
      Reply r, Eval(key, kAcquire,
                    {owner, absl::StrCat(TtlMs(ttl)), takeover ? "1" : "0",
                     FenceSalt(), NewNonce()}));
  const std::string outcome = Str(r->element[0]);
  if (outcome == "NOTFOUND") return SessionNotFound(key);
  if (outcome == "BUSY") return LeaseBusy(Str(r->element[1]));
  uint64_t fence = 0;
  if (outcome != "OK" || !absl::SimpleAtoi(Str(r->element[1]), &fence)) {
    return Unexpected(outcome);
  }
  return Lease{owner, fence, start + ttl};
}

absl::StatusOr<Lease> RedisStateStore::RenewLease(const SessionKey& key,
                                                  const std::string& owner,
                                                  uint64_t fence,
                                                  absl::Duration ttl) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "lease ttl"));
  if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
  const absl::Time start = clock_->Now();
  SS_ASSIGN_OR_RETURN(
      Reply r, Eval(key, kRenew,
                    {owner, absl::StrCat(fence), absl::StrCat(TtlMs(ttl))}));
  return RenewedLease(key, r.get(), owner, fence, start, ttl);
}

absl::StatusOr<Lease> RedisStateStore::RenewedLease(
    const SessionKey& key, const redisReply* r, const std::string& owner,
    uint64_t fence, absl::Time start, absl::Duration ttl) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) return BadReply(r);
  const std::string outcome = Str(r->element[0]);
  if (outcome == "NOTFOUND") return SessionNotFound(key);
  uint64_t current = 0;
  if (outcome == "FENCED" && r->elements > 1 &&
      absl::SimpleAtoi(Str(r->element[1]), &current)) {
    return Fenced(fence, current);
  }
  if (outcome != "OK") return Unexpected(outcome);
  return Lease{owner, fence, start + ttl};
}

std::vector<absl::StatusOr<Lease>> RedisStateStore::RenewLeases(
    const std::string& owner, const std::vector<LeaseToRenew>& leases,
    absl::Duration ttl) {
  std::vector<absl::StatusOr<Lease>> out(leases.size(),
                                         absl::UnknownError("not run"));
  const absl::Status bad_ttl = ValidateTtl(ttl, "lease ttl");
  if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
  const absl::Time start = clock_->Now();
  std::vector<SessionKey> keys;
  std::vector<std::vector<std::string>> args;
  std::vector<size_t> index;  // call -> lease
  const std::string ttl_ms = absl::StrCat(TtlMs(ttl));
  for (size_t i = 0; i < leases.size(); ++i) {
    const absl::Status valid =
        bad_ttl.ok() ? ValidateKey(leases[i].key) : bad_ttl;
    if (!valid.ok()) {
      out[i] = valid;
      continue;
    }
    keys.push_back(leases[i].key);
    args.push_back({owner, absl::StrCat(leases[i].fence), ttl_ms});
    index.push_back(i);
  }
  std::vector<absl::StatusOr<Reply>> replies = EvalEach(kRenew, keys, args);
  for (size_t c = 0; c < replies.size(); ++c) {
    const size_t i = index[c];
    if (!replies[c].ok()) {
      out[i] = replies[c].status();
    } else {
      out[i] = RenewedLease(leases[i].key, replies[c]->get(), owner,
                            leases[i].fence, start, ttl);
    }
  }
  return out;
}

absl::Status RedisStateStore::ReleaseLease(const SessionKey& key,
                                           const std::string& owner,
                                           uint64_t fence) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  return Eval(key, kRelease, {owner, absl::StrCat(fence)}).status();
}

absl::StatusOr<Lease> RedisStateStore::GetOwner(const SessionKey& key) {
  SS_ASSIGN_OR_RETURN(SessionHead h, GetHead(key));
  return Lease{h.owner, h.fence, h.lease_expires_at};
}

absl::StatusOr<bool> RedisStateStore::RegisterWorker(const WorkerInfo& info,
                                                     absl::Duration ttl) {
  SS_RETURN_IF_ERROR(ValidateWorkerId(info.worker_id));
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "worker ttl"));
  if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
  const std::string payload =
      EncodeStringMap({{"address", info.address},
                       {"models", absl::StrJoin(info.model_fingerprints, "\n")},
                       {"load", absl::StrCat(info.load)}});
  SS_ASSIGN_OR_RETURN(
      Reply r,
      EvalWorkers(kRegisterWorker, {info.worker_id, payload,
                                    absl::StrCat(TtlMs(ttl)), NewNonce()}));
  return r->elements > 1 && r->element[1]->type == REDIS_REPLY_INTEGER &&
         r->element[1]->integer == 1;
}

absl::Status RedisStateStore::UnregisterWorker(const std::string& worker_id) {
  SS_RETURN_IF_ERROR(ValidateWorkerId(worker_id));
  return EvalWorkers(kUnregisterWorker, {worker_id}).status();
}

absl::StatusOr<std::vector<WorkerInfo>> RedisStateStore::ListWorkers() {
  const absl::Time now = clock_->Now();
  SS_ASSIGN_OR_RETURN(Reply r, EvalWorkers(kListWorkers, {}));
  std::vector<WorkerInfo> out;
  for (size_t i = 1; i + 2 < r->elements; i += 3) {
    WorkerInfo w;
    w.worker_id = Str(r->element[i]);
    std::map<std::string, std::string> f;
    if (!DecodeStringMap(Str(r->element[i + 1]), &f)) {
      continue;
    }
    w.address = f["address"];
    if (!f["models"].empty()) {
      w.model_fingerprints = absl::StrSplit(f["models"], '\n');
    }
    if (!absl::SimpleAtod(f["load"], &w.load)) w.load = 0;
    w.expires_at = now + absl::Milliseconds(r->element[i + 2]->integer);
    out.push_back(std::move(w));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.worker_id < b.worker_id;
  });
  return out;
}

absl::Status RedisStateStore::AddToIndex(const SessionKey& key) {
  const std::string index = IndexKey(key.tenant);
  SS_ASSIGN_OR_RETURN(
      std::vector<Reply> r,
      client_->Run(index, {{"ZADD", index, "0", key.session_id}}));
  if (r[0]->type != REDIS_REPLY_INTEGER) return BadReply(r[0].get());
  return absl::OkStatus();
}

absl::Status RedisStateStore::ReserveInIndex(const SessionKey& key,
                                             int64_t max) {
  const std::string index = IndexKey(key.tenant);
  const std::string max_text = absl::StrCat(max);
  auto reserve = [&]() -> absl::StatusOr<bool> {
    SS_ASSIGN_OR_RETURN(
        std::vector<Reply> r,
        RunScript(index, kReserveInIndex, {index},
                  {index, "0", "0", key.session_id, max_text}, {}));
    return Str(r[0]->element[0]) == "OK";
  };
  SS_ASSIGN_OR_RETURN(bool reserved, reserve());
  if (reserved) return absl::OkStatus();
  // Full, perhaps of sessions gone: a sample of entries first (the whole
  // index when it is small), then the whole tenant, read by a listing
  // that prunes as it goes, but not more often than the interval.
  if (PruneIndexSample(key.tenant, kFullIndexSamples)) {
    SS_ASSIGN_OR_RETURN(reserved, reserve());
    if (reserved) return absl::OkStatus();
  }
  const std::string pruned =
      absl::StrCat(options_.key_prefix, ":{t:", key.tenant, "}:pruned");
  // The mark holds this call's nonce, and GET returns what was there: the
  // client resending the SET after a lost reply finds its own mark and
  // lists, where another call's mark means a listing ran just now.
  const std::string nonce = NewNonce();
  SS_ASSIGN_OR_RETURN(
      std::vector<Reply> mark,
      client_->Run(pruned, {{"SET", pruned, nonce, "NX", "GET", "PX",
                             absl::StrCat(Ms(kFullIndexPruneInterval))}}));
  if (mark[0]->type == REDIS_REPLY_STRING) {
    if (Str(mark[0].get()) != nonce) return TenantSessionLimit(max);
  } else if (mark[0]->type != REDIS_REPLY_NIL) {
    return BadReply(mark[0].get());
  }
  ListSessionsRequest list;
  list.tenant = key.tenant;
  list.page_size = 1000;
  do {
    SS_ASSIGN_OR_RETURN(ListSessionsPage page, ListSessions(list));
    list.page_token = page.next_page_token;
  } while (!list.page_token.empty());
  SS_ASSIGN_OR_RETURN(reserved, reserve());
  if (reserved) return absl::OkStatus();
  return TenantSessionLimit(max);
}

RedisStateStore::~RedisStateStore() {
  std::thread pruner;
  {
    absl::MutexLock lock(&prune_mu_);
    prune_stop_ = true;
    pruner = std::move(pruner_);
  }
  if (pruner.joinable()) pruner.join();
}

void RedisStateStore::QueueIndexPrune(const std::string& tenant) {
  absl::MutexLock lock(&prune_mu_);
  if (prune_stop_ || prune_queue_.size() >= kMaxPruneQueue) return;
  prune_queue_.push_back(tenant);
  if (!pruner_.joinable()) {
    try {
      pruner_ = std::thread([this] { PruneLoop(); });
    } catch (...) {  // no thread: the entries wait for a listing
      prune_queue_.clear();
    }
  }
}

void RedisStateStore::PruneLoop() {
  for (;;) {
    std::string tenant;
    {
      absl::MutexLock lock(&prune_mu_);
      prune_mu_.Await(absl::Condition(
          +[](RedisStateStore* s) {
            s->prune_mu_.AssertHeld();
            return s->prune_stop_ || !s->prune_queue_.empty();
          },
          this));
      if (prune_stop_) return;
      tenant = std::move(prune_queue_.front());
      prune_queue_.pop_front();
    }
    PruneIndexSample(tenant);
  }
}

bool RedisStateStore::PruneIndexSample(const std::string& tenant, int samples) {
  const std::string index = IndexKey(tenant);
  auto drawn =
      client_->Run(index, {{"ZRANDMEMBER", index, absl::StrCat(samples)}});
  if (!drawn.ok() || (*drawn)[0]->type != REDIS_REPLY_ARRAY) return false;
  const redisReply* ids = (*drawn)[0].get();
  std::vector<SessionKey> keys;
  std::vector<std::string> heads;
  for (size_t i = 0; i < ids->elements; ++i) {
    SessionKey k{tenant, Str(ids->element[i])};
    if (!ValidateKey(k).ok()) continue;
    heads.push_back(HeadKey(k));
    keys.push_back(std::move(k));
  }
  std::vector<RedisClient::Keyed> exists;
  for (const std::string& h : heads) exists.push_back({h, {"EXISTS", h}});
  const std::vector<absl::StatusOr<Reply>> found = client_->RunEach(exists);
  bool gone = false;
  for (size_t i = 0; i < found.size() && i < keys.size(); ++i) {
    if (found[i].ok() && (*found[i])->type == REDIS_REPLY_INTEGER &&
        (*found[i])->integer == 0) {
      DropFromIndex(keys[i]).IgnoreError();
      gone = true;
    }
  }
  return gone;
}

absl::Status RedisStateStore::DropFromIndex(const SessionKey& key) {
  const std::string index = IndexKey(key.tenant);
  // A limited create in flight: its reservation stays (CreateMark; an
  // older build's counter, "creating", is gone at zero).
  const std::string marks = Prefix(key) + "creates";
  const std::string counter = Prefix(key) + "creating";
  SS_ASSIGN_OR_RETURN(std::vector<Reply> marked,
                      client_->Run(marks, {{"EXISTS", marks, counter}}));
  int64_t in_flight = 0;
  if (absl::SimpleAtoi(Str(marked[0].get()), &in_flight) && in_flight > 0) {
    return absl::OkStatus();
  }
  // A session whose create ended since the caller read no head has one
  // now: it stays. (Removing first and adding back left a moment in which
  // the index counted one session less, and a create racing through
  // another gateway took the place: the tenant passed its limit.)
  auto head = GetHead(key);
  if (head.ok()) return absl::OkStatus();
  if (GetReason(head.status()) != Reason::kSessionNotFound) {
    return head.status();
  }
  SS_RETURN_IF_ERROR(
      client_->Run(index, {{"ZREM", index, key.session_id}}).status());
  head = GetHead(key);
  if (head.ok()) return AddToIndex(key);
  if (GetReason(head.status()) == Reason::kSessionNotFound) {
    return absl::OkStatus();
  }
  return head.status();
}

std::string RedisStateStore::SlotsKey(const std::string& tenant) const {
  return absl::StrCat(options_.key_prefix, ":{t:", tenant, "}:streams");
}

absl::StatusOr<Reply> RedisStateStore::EvalSlots(
    const std::string& tenant, Script script, absl::Duration ttl,
    const std::vector<std::string>& args) {
  SS_RETURN_IF_ERROR(ValidateTenant(tenant));
  if (ttl <= absl::ZeroDuration() || ttl == absl::InfiniteDuration()) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "a tenant slot's ttl must be finite and "
                                "positive");
  }
  const std::string key = SlotsKey(tenant);
  const std::string ttl_ms = absl::StrCat(std::max<int64_t>(Ms(ttl), 1));
  std::vector<absl::string_view> argv = {key, "0", "0", ttl_ms};
  for (const std::string& a : args) argv.push_back(a);
  SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                      RunScript(key, script, {key}, argv, {}));
  const redisReply* reply = r[0].get();
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
      (Str(reply->element[0]) != "OK" && Str(reply->element[0]) != "FULL")) {
    return BadReply(reply);
  }
  return std::move(r[0]);
}

namespace {

absl::Status ValidateSlot(const std::string& slot) {
  if (slot.empty() || slot.size() > 256) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "a tenant slot's name must be 1-256 bytes");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<bool> RedisStateStore::AcquireTenantSlot(
    const std::string& tenant, const std::string& slot, int max,
    absl::Duration ttl) {
  SS_RETURN_IF_ERROR(ValidateSlot(slot));
  if (max < 1) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "a tenant slot limit must be at least 1");
  }
  SS_ASSIGN_OR_RETURN(
      Reply r, EvalSlots(tenant, kAcquireSlot, ttl, {slot, absl::StrCat(max)}));
  return Str(r->element[0]) == "OK";
}

absl::Status RedisStateStore::RenewTenantSlots(
    const std::string& tenant, const std::vector<std::string>& slots,
    absl::Duration ttl) {
  if (slots.empty()) return absl::OkStatus();
  for (const std::string& slot : slots) SS_RETURN_IF_ERROR(ValidateSlot(slot));
  return EvalSlots(tenant, kRenewSlots, ttl, slots).status();
}

absl::Status RedisStateStore::ReleaseTenantSlot(const std::string& tenant,
                                                const std::string& slot) {
  SS_RETURN_IF_ERROR(ValidateTenant(tenant));
  SS_RETURN_IF_ERROR(ValidateSlot(slot));
  const std::string key = SlotsKey(tenant);
  SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                      client_->Run(key, {{"ZREM", key, slot}}));
  if (r[0]->type != REDIS_REPLY_INTEGER) return BadReply(r[0].get());
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RedisStateStore::CountTenantSlots(
    const std::string& tenant) {
  SS_ASSIGN_OR_RETURN(Reply r,
                      EvalSlots(tenant, kCountSlots, absl::Seconds(1), {}));
  if (r->elements < 2 || r->element[1]->type != REDIS_REPLY_INTEGER) {
    return BadReply(r.get());
  }
  return r->element[1]->integer;
}

absl::StatusOr<Reply> RedisStateStore::EvalWorkers(
    Script script, std::vector<std::string> args) {
  const std::string prefix = absl::StrCat(options_.key_prefix, ":{workers}:w:");
  std::vector<absl::string_view> argv = {prefix, "0", "0"};
  for (const std::string& a : args) argv.push_back(a);
  SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                      RunScript(prefix, script, {WorkersKey()}, argv, {}));
  return std::move(r[0]);
}

}  // namespace statestream::store_internal
