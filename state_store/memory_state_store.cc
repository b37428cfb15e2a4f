// SPDX-License-Identifier: Apache-2.0
#include "state_store/memory_state_store.h"

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "state_store/internal/store_util.h"

namespace statestream {
namespace {

using store_internal::SessionNotFound;
using store_internal::ValidateKey;

using Id = std::pair<std::string, std::string>;  // (tenant, session_id)

struct StoredVersion {
  VersionInfo info;
  std::shared_ptr<const std::string> bytes;  // the encoded snapshot
};

struct Session {
  SessionHead head;  // lease fields are filled on read
  std::map<uint64_t, StoredVersion> versions;
  std::string lease_owner;
  absl::Time lease_expires = absl::InfinitePast();
  absl::Time expires_at = absl::InfiniteFuture();
  uint64_t fence = 0;  // from the store's one counter (last_fence_)
};

absl::Time Expiry(absl::Time now, absl::Duration ttl) {
  return ttl == absl::InfiniteDuration() ? absl::InfiniteFuture() : now + ttl;
}

class MemoryStateStore final : public StateStore {
 public:
  explicit MemoryStateStore(const MemoryStateStoreOptions& o)
      : options_(o), clock_(o.clock ? o.clock : Clock::Real()) {}

  absl::StatusOr<CommitResult> CreateSession(
      const CreateSessionRequest& r) override {
    SS_RETURN_IF_ERROR(ValidateKey(r.key));
    const absl::Duration ttl =
        r.ttl == absl::ZeroDuration() ? options_.default_ttl : r.ttl;
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "ttl"));
    SS_RETURN_IF_ERROR(CheckEncodable(r.initial_state));
    auto bytes =
        std::make_shared<const std::string>(EncodeState(r.initial_state));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    SweepExpired(now);
    const Id id{r.key.tenant, r.key.session_id};
    if (Find(r.key, now) != nullptr)
      return store_internal::SessionExists(r.key);
    if (r.max_tenant_sessions > 0 &&
        LiveSessions(r.key.tenant, now) >= r.max_tenant_sessions) {
      return store_internal::TenantSessionLimit(r.max_tenant_sessions);
    }
    Session& s = sessions_[id];
    s = Session();
    const uint64_t fence = s.fence = ++last_fence_;
    s.head.key = r.key;
    s.head.model_id = r.model_id;
    s.head.model_fingerprint = r.initial_state.model_fingerprint;
    s.head.parent_session_id = r.parent_session_id;
    s.head.parent_version = r.parent_version;
    s.head.create_request_id = r.request_id;
    s.head.create_digest = r.request_digest;
    s.head.labels = r.labels;
    s.head.ttl = ttl;
    s.head.created_at = now;
    StoredVersion v{
        store_internal::DescribeVersion(r.initial_state, *bytes, 1, fence, 1),
        bytes};
    store_internal::RecordCause(r, &v.info);
    return Install(&s, std::move(v), r.durability, now);
  }

  absl::StatusOr<SessionHead> GetHead(const SessionKey& key) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    Session* s = Find(key, now);
    if (s == nullptr) return SessionNotFound(key);
    return HeadOf(*s, now);
  }

  absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& key,
                                            uint64_t version) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    StoredVersion v;
    {
      absl::MutexLock lock(&mu_);
      Session* s = Find(key, clock_->Now());
      if (s == nullptr) return SessionNotFound(key);
      if (version == 0) version = s->head.head.version;
      auto it = s->versions.find(version);
      if (it == s->versions.end()) {
        return store_internal::VersionNotKept(version, s->head.head.version,
                                              s->head.oldest_version);
      }
      v = it->second;
    }
    LoadedVersion out;
    out.version = v.info;
    SS_ASSIGN_OR_RETURN(out.state, DecodeState(*v.bytes));
    return out;
  }

  // Memory only: FSYNC and REPLICATED are never reached.
  Durability MaxDurability() const override { return Durability::kMemory; }

  absl::StatusOr<VersionInfo> AwaitDurability(const SessionKey& key,
                                              uint64_t version,
                                              Durability wanted) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    Session* s = Find(key, clock_->Now());
    if (s == nullptr) return SessionNotFound(key);
    auto it = s->versions.find(version);
    if (it == s->versions.end()) {
      return store_internal::VersionNotKept(version, s->head.head.version,
                                            s->head.oldest_version);
    }
    if (wanted > it->second.info.durability) {
      return DurabilityNotReached(version, wanted, it->second.info.durability);
    }
    return it->second.info;
  }

  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override {
    SS_RETURN_IF_ERROR(ValidateKey(r.key));
    SS_RETURN_IF_ERROR(CheckEncodable(r.state));
    auto bytes = std::make_shared<const std::string>(EncodeState(r.state));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    Session* s = Find(r.key, now);
    if (s == nullptr) return SessionNotFound(r.key);
    // The fence first: a writer that was taken over learns that it was,
    // even when its expected version is stale too.
    const uint64_t fence = s->fence;
    if (r.fence != fence) return store_internal::Fenced(r.fence, fence);
    const uint64_t head = s->head.head.version;
    if (r.expected_version != head) {
      return store_internal::HeadMismatch(r.expected_version, head);
    }
    if (r.state.model_fingerprint != s->head.model_fingerprint) {
      return store_internal::FingerprintMismatch(s->head.model_fingerprint,
                                                 r.state.model_fingerprint);
    }
    StoredVersion v{
        store_internal::DescribeVersion(r.state, *bytes, head + 1, r.fence, 1),
        bytes};
    store_internal::RecordCause(r, &v.info);
    return Install(s, std::move(v), r.durability, now);
  }

  absl::StatusOr<CommitResult> Rollback(
      const SessionKey& key, uint64_t expected_version, uint64_t fence,
      uint64_t version, Durability durability,
      const std::string& request_id) override {
    return store_internal::RollbackByCommit(*this, key, expected_version, fence,
                                            version, durability, request_id);
  }

  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const SessionKey& key) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    Session* s = Find(key, clock_->Now());
    if (s == nullptr) return SessionNotFound(key);
    std::vector<VersionInfo> out;
    for (const auto& [n, v] : s->versions) out.push_back(v.info);
    return out;
  }

  absl::StatusOr<int64_t> CountSessionsBound(
      const std::string& tenant) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateTenant(tenant));
    absl::MutexLock lock(&mu_);
    return LiveSessions(tenant, clock_->Now());
  }

  absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& r) override {
    SS_ASSIGN_OR_RETURN(std::string after, store_internal::ParseListRequest(r));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    ListSessionsPage page;
    auto it = sessions_.upper_bound({r.tenant, after});
    while (it != sessions_.end() && it->first.first == r.tenant) {
      Session& s = it->second;
      if (now >= s.expires_at) {
        it = sessions_.erase(it);
        continue;
      }
      if (store_internal::ListedBy(r, s.head)) {
        if (!store_internal::AddToPage(r, HeadOf(s, now), &page)) break;
      }
      ++it;
    }
    return page;
  }

  absl::StatusOr<SessionHead> UpdateSession(const SessionKey& key,
                                            const SessionUpdate& u) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    const std::optional<absl::Duration> ttl =
        store_internal::UpdatedTtl(u, options_.default_ttl);
    if (ttl) SS_RETURN_IF_ERROR(store_internal::ValidateTtl(*ttl, "ttl"));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    Session* s = Find(key, now);
    if (s == nullptr) return SessionNotFound(key);
    if (u.labels) s->head.labels = *u.labels;
    if (ttl) s->head.ttl = *ttl;
    s->head.updated_at = now;
    s->expires_at = Expiry(now, s->head.ttl);
    return HeadOf(*s, now);
  }

  absl::Status DeleteSession(const SessionKey& key) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    if (Find(key, clock_->Now()) == nullptr) return SessionNotFound(key);
    sessions_.erase({key.tenant, key.session_id});
    return absl::OkStatus();
  }

  absl::StatusOr<Lease> AcquireLease(const SessionKey& key,
                                     const std::string& owner,
                                     absl::Duration ttl,
                                     bool takeover) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    SS_RETURN_IF_ERROR(store_internal::ValidateOwner(owner));
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "lease ttl"));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    Session* s = Find(key, now);
    if (s == nullptr) return SessionNotFound(key);
    if (!takeover && now < s->lease_expires && s->lease_owner != owner) {
      return store_internal::LeaseBusy(s->lease_owner);
    }
    const uint64_t fence = s->fence = ++last_fence_;
    s->lease_owner = owner;
    s->lease_expires = now + ttl;
    s->expires_at = Expiry(now, s->head.ttl);
    return Lease{owner, fence, s->lease_expires};
  }

  absl::StatusOr<Lease> RenewLease(const SessionKey& key,
                                   const std::string& owner, uint64_t fence,
                                   absl::Duration ttl) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "lease ttl"));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    Session* s = Find(key, now);
    if (s == nullptr) return SessionNotFound(key);
    const uint64_t current = s->fence;
    const bool live = now < s->lease_expires;
    if (fence != current || (live && s->lease_owner != owner)) {
      return store_internal::Fenced(fence, current);
    }
    s->lease_owner = owner;
    s->lease_expires = now + ttl;
    return Lease{owner, fence, s->lease_expires};
  }

  absl::Status ReleaseLease(const SessionKey& key, const std::string& owner,
                            uint64_t fence) override {
    SS_RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    Session* s = Find(key, clock_->Now());
    if (s == nullptr) return absl::OkStatus();
    if (s->lease_owner == owner && s->fence == fence) {
      s->lease_owner.clear();
      s->lease_expires = absl::InfinitePast();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Lease> GetOwner(const SessionKey& key) override {
    SS_ASSIGN_OR_RETURN(SessionHead h, GetHead(key));
    return Lease{h.owner, h.fence, h.lease_expires_at};
  }

  absl::StatusOr<bool> RegisterWorker(const WorkerInfo& info,
                                      absl::Duration ttl) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateWorkerId(info.worker_id));
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "worker ttl"));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    auto it = workers_.find(info.worker_id);
    const bool listed = it != workers_.end() && it->second.expires_at > now;
    WorkerInfo& w = workers_[info.worker_id];
    w = info;
    w.expires_at = now + ttl;
    return listed;
  }

  absl::Status UnregisterWorker(const std::string& worker_id) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateWorkerId(worker_id));
    absl::MutexLock lock(&mu_);
    workers_.erase(worker_id);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    std::vector<WorkerInfo> out;
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (now >= it->second.expires_at) {
        it = workers_.erase(it);
      } else {
        out.push_back(it->second);
        ++it;
      }
    }
    return out;
  }

 private:
  // Frees the sessions whose TTL ran out, at most once a minute (on a
  // create): one nobody touches again would otherwise keep its versions in
  // memory for the life of the process. Fences stay (a re-created id must
  // not reuse one).
  void SweepExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (now - last_sweep_ < absl::Minutes(1)) return;
    last_sweep_ = now;
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      it = now >= it->second.expires_at ? sessions_.erase(it) : std::next(it);
    }
  }

  // The live session, or nullptr (an expired one is dropped).
  Session* Find(const SessionKey& key, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = sessions_.find({key.tenant, key.session_id});
    if (it == sessions_.end()) return nullptr;
    if (now >= it->second.expires_at) {
      sessions_.erase(it);
      return nullptr;
    }
    return &it->second;
  }

  SessionHead HeadOf(const Session& s, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SessionHead h = s.head;
    h.fence = s.fence;
    if (now < s.lease_expires) {
      h.owner = s.lease_owner;
      h.lease_expires_at = s.lease_expires;
    }
    return h;
  }

  // Makes `v` the head of `s`, drops versions beyond keep_versions, and
  // reports the durability reached (memory only).
  absl::StatusOr<CommitResult> Install(Session* s, StoredVersion v,
                                       Durability wanted, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v.info.durability = Durability::kMemory;
    v.info.committed_at = now;
    s->head.head = v.info;
    s->head.updated_at = now;
    s->expires_at = Expiry(now, s->head.ttl);
    s->versions[v.info.version] = std::move(v);
    while (static_cast<int>(s->versions.size()) > options_.keep_versions) {
      s->versions.erase(s->versions.begin());
    }
    s->head.oldest_version = s->versions.begin()->first;
    if (wanted != Durability::kMemory) {
      return DurabilityNotReached(s->head.head.version, wanted,
                                  Durability::kMemory);
    }
    return CommitResult{s->head.head, HeadOf(*s, now)};
  }

  const MemoryStateStoreOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  int64_t LiveSessions(const std::string& tenant, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t n = 0;
    for (auto it = sessions_.lower_bound({tenant, ""});
         it != sessions_.end() && it->first.first == tenant; ++it) {
      n += now < it->second.expires_at ? 1 : 0;
    }
    return n;
  }

  std::map<Id, Session> sessions_ ABSL_GUARDED_BY(mu_);
  // The last fence handed out, to any session: one counter for all of them,
  // so an id created again never meets a fence its earlier life gave out,
  // and nothing is kept per id after a session goes (a map of every id
  // ever created grew without bound in a long-running `serve`).
  uint64_t last_fence_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<std::string, WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> NewMemoryStateStore(
    const MemoryStateStoreOptions& options) {
  if (options.keep_versions < 1) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "keep_versions must be at least 1");
  }
  SS_RETURN_IF_ERROR(
      store_internal::ValidateTtl(options.default_ttl, "default_ttl"));
  return std::unique_ptr<StateStore>(new MemoryStateStore(options));
}

}  // namespace statestream
