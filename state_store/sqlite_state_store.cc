// SPDX-License-Identifier: Apache-2.0
// The SQLite StateStore's calls and its factory (internal/sqlite_store.h).
#include "state_store/sqlite_state_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "state_store/internal/sqlite_db.h"
#include "state_store/internal/sqlite_store.h"
#include "state_store/internal/store_util.h"

namespace statestream {
namespace store_internal {

absl::StatusOr<CommitResult> SqliteStateStore::CreateSession(
    const CreateSessionRequest& r) {
  SS_RETURN_IF_ERROR(ValidateKey(r.key));
  const absl::Duration ttl =
      r.ttl == absl::ZeroDuration() ? options_.default_ttl : r.ttl;
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "ttl"));
  SS_RETURN_IF_ERROR(CheckEncodable(r.initial_state));
  const std::string bytes = EncodeState(r.initial_state);
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  // Housekeeping, committed on its own: a create refused below keeps it,
  // and one that fails (the file busy) fails no create.
  SweepExpired(now).IgnoreError();
  SS_RETURN_IF_ERROR(Begin(r.durability));
  Txn txn(this);
  SS_ASSIGN_OR_RETURN(bool exists, Live(r.key, now));
  if (exists) return SessionExists(r.key);
  if (r.max_tenant_sessions > 0) {
    SS_ASSIGN_OR_RETURN(int64_t n, LiveSessions(r.key.tenant, now));
    if (n >= r.max_tenant_sessions) {
      return TenantSessionLimit(r.max_tenant_sessions);
    }
  }
  SS_RETURN_IF_ERROR(Stmt(db_, "DELETE FROM versions WHERE tenant=? AND sid=?")
                         .Bind(r.key.tenant)
                         .Bind(r.key.session_id)
                         .Run());
  SS_ASSIGN_OR_RETURN(uint64_t fence, BumpFence(r.key));
  const int64_t ttl_ms = TtlMs(ttl);
  SS_RETURN_IF_ERROR(Stmt(db_,
                          "INSERT OR REPLACE INTO sessions (tenant, sid, "
                          "model_id, fingerprint, parent_sid, parent_ver, "
                          "labels, ttl_ms, created_ms, updated_ms, "
                          "expires_ms, head, oldest, lease_owner, "
                          "lease_expires_ms, create_rid, create_digest) "
                          "VALUES (?,?,?,?,?,?,?,?,?,?,?,1,1,'',0,?,?)")
                         .Bind(r.key.tenant)
                         .Bind(r.key.session_id)
                         .Bind(r.model_id)
                         .Bind(r.initial_state.model_fingerprint)
                         .Bind(r.parent_session_id)
                         .Bind(static_cast<int64_t>(r.parent_version))
                         .Bind(EncodeStringMap(r.labels))
                         .Bind(ttl_ms)
                         .Bind(Ms(now))
                         .Bind(Ms(now))
                         .Bind(ExpiryMs(now, ttl_ms))
                         .Bind(r.request_id)
                         .Bind(static_cast<int64_t>(r.request_digest))
                         .Run());
  VersionInfo v = DescribeVersion(r.initial_state, bytes, 1, fence, 1);
  RecordCause(r, &v);
  absl::StatusOr<CommitResult> done =
      Install(r.key, v, bytes, r.durability, now, &txn);
  // A backlog of free pages that deletes left (more than commits churn:
  // each frees at most the version it replaces) shrinks with commits too.
  if (done.ok()) ReleaseFreePages(kFreeSlackBytes + kReleaseMaxBytes);
  return done;
}

absl::StatusOr<SessionHead> SqliteStateStore::GetHead(const SessionKey& key) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  absl::MutexLock lock(&mu_);
  SS_RETURN_IF_ERROR(BeginRead());
  Txn txn(this);  // one snapshot for the session row and its version's
  return Head(key, clock_->Now());
}

absl::StatusOr<LoadedVersion> SqliteStateStore::LoadVersion(
    const SessionKey& key, uint64_t version) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  LoadedVersion out;
  std::string bytes;
  {
    absl::MutexLock lock(&mu_);
    SS_RETURN_IF_ERROR(BeginRead());
    Txn txn(this);  // the head and the version from one snapshot
    SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, clock_->Now()));
    if (version == 0) version = h.head.version;
    Stmt s(db_, VersionQuery(/*with_data=*/true).c_str());
    SS_RETURN_IF_ERROR(StepToVersion(s, key, version, h));
    out.version = ReadVersion(s, 0);
    bytes = s.Text(12);
  }
  if (bytes.size() != out.version.state_bytes ||
      EncodedStateCrc(bytes) != out.version.state_crc32c) {
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("state is corrupt: version ", out.version.version,
                     " does not match its size and CRC"));
  }
  SS_ASSIGN_OR_RETURN(out.state, DecodeState(bytes));
  SS_RETURN_IF_ERROR(CheckVersionMatchesState(out.version, out.state));
  return out;
}

absl::StatusOr<CommitResult> SqliteStateStore::Commit(const CommitRequest& r) {
  SS_RETURN_IF_ERROR(ValidateKey(r.key));
  SS_RETURN_IF_ERROR(CheckEncodable(r.state));
  const std::string bytes = EncodeState(r.state);
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  SS_RETURN_IF_ERROR(Begin(r.durability));
  Txn txn(this);
  SS_ASSIGN_OR_RETURN(SessionHead h, Head(r.key, now));
  // The fence first: a writer that was taken over learns that it was,
  // even when its expected version is stale too.
  if (r.fence != h.fence) return Fenced(r.fence, h.fence);
  if (r.expected_version != h.head.version) {
    return HeadMismatch(r.expected_version, h.head.version);
  }
  if (r.state.model_fingerprint != h.model_fingerprint) {
    return FingerprintMismatch(h.model_fingerprint, r.state.model_fingerprint);
  }
  VersionInfo v =
      DescribeVersion(r.state, bytes, h.head.version + 1, r.fence, 1);
  RecordCause(r, &v);
  absl::StatusOr<CommitResult> done =
      Install(r.key, v, bytes, r.durability, now, &txn);
  // A backlog of free pages that deletes left (more than commits churn:
  // each frees at most the version it replaces) shrinks with commits too.
  if (done.ok()) ReleaseFreePages(kFreeSlackBytes + kReleaseMaxBytes);
  return done;
}

absl::StatusOr<VersionInfo> SqliteStateStore::AwaitDurability(
    const SessionKey& key, uint64_t version, Durability wanted) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  const Durability level = std::min(wanted, Durability::kFsync);
  SS_RETURN_IF_ERROR(Begin(level));
  Txn txn(this);
  SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
  Stmt s(db_, VersionQuery(/*with_data=*/false).c_str());
  SS_RETURN_IF_ERROR(StepToVersion(s, key, version, h));
  VersionInfo v = ReadVersion(s, 0);
  if (v.durability < level) {
    SS_RETURN_IF_ERROR(Stmt(db_,
                            "UPDATE versions SET durability=? WHERE "
                            "tenant=? AND sid=? AND version=?")
                           .Bind(StoredDurability(level))
                           .Bind(key.tenant)
                           .Bind(key.session_id)
                           .Bind(static_cast<int64_t>(version))
                           .Run());
    v.durability = level;
  }
  SS_RETURN_IF_ERROR(txn.Commit());
  if (wanted > v.durability) {
    return DurabilityNotReached(version, wanted, v.durability);
  }
  return v;
}

absl::StatusOr<CommitResult> SqliteStateStore::Rollback(
    const SessionKey& key, uint64_t expected_version, uint64_t fence,
    uint64_t version, Durability durability, const std::string& request_id) {
  return store_internal::RollbackByCommit(*this, key, expected_version, fence,
                                          version, durability, request_id);
}

absl::StatusOr<std::vector<VersionInfo>> SqliteStateStore::ListVersions(
    const SessionKey& key) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  absl::MutexLock lock(&mu_);
  SS_RETURN_IF_ERROR(BeginRead());
  Txn txn(this);  // the head and the versions from one snapshot
  SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, clock_->Now()));
  Stmt s(db_, absl::StrCat("SELECT ", kVersionColumns,
                           " FROM versions WHERE tenant=? AND sid=? AND "
                           "version>=? ORDER BY version")
                  .c_str());
  s.Bind(key.tenant)
      .Bind(key.session_id)
      .Bind(static_cast<int64_t>(h.oldest_version));
  std::vector<VersionInfo> out;
  while (s.Step()) out.push_back(ReadVersion(s, 0));
  SS_RETURN_IF_ERROR(s.status());
  return out;
}

absl::StatusOr<int64_t> SqliteStateStore::CountSessionsBound(
    const std::string& tenant) {
  SS_RETURN_IF_ERROR(ValidateTenant(tenant));
  absl::MutexLock lock(&mu_);
  return LiveSessions(tenant, clock_->Now());
}

absl::StatusOr<ListSessionsPage> SqliteStateStore::ListSessions(
    const ListSessionsRequest& r) {
  SS_ASSIGN_OR_RETURN(std::string after, ParseListRequest(r));
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  Stmt s(db_,
         "SELECT sid FROM sessions WHERE tenant=? AND sid>? AND "
         "expires_ms>? ORDER BY sid");
  s.Bind(r.tenant).Bind(after).Bind(Ms(now));
  ListSessionsPage page;
  int scanned = 0;
  while (s.Step()) {
    const std::string sid = s.Text(0);
    if (scanned++ == std::max(options_.max_list_scan, 1)) {
      // Read enough for one call: the rest from after the last read.
      page.next_page_token = MakePageToken(after);
      return page;
    }
    after = sid;
    absl::StatusOr<SessionHead> h = Head({r.tenant, sid}, now);
    // A damaged session is left out, as the Redis store does (a delete
    // by id removes it): one bad row must not fail the tenant's every
    // listing, nor every create once the tenant is at its limit. A
    // damaged file is reported, not hidden as an empty listing.
    if (!h.ok() && ((GetReason(h.status()) == Reason::kStateCorrupt &&
                     GetErrorMetadata(h.status(), "database") != "damaged") ||
                    GetReason(h.status()) == Reason::kSessionNotFound)) {
      continue;
    }
    SS_RETURN_IF_ERROR(h.status());
    if (!ListedBy(r, *h)) continue;
    if (!AddToPage(r, *std::move(h), &page)) break;
  }
  SS_RETURN_IF_ERROR(s.status());
  return page;
}

absl::StatusOr<SessionHead> SqliteStateStore::UpdateSession(
    const SessionKey& key, const SessionUpdate& u) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  const std::optional<absl::Duration> ttl =
      store_internal::UpdatedTtl(u, options_.default_ttl);
  if (ttl) SS_RETURN_IF_ERROR(ValidateTtl(*ttl, "ttl"));
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
  Txn txn(this);
  SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
  const int64_t ttl_ms = TtlMs(ttl ? *ttl : h.ttl);
  SS_RETURN_IF_ERROR(
      Stmt(db_,
           "UPDATE sessions SET labels=?, ttl_ms=?, updated_ms=?, "
           "expires_ms=? WHERE tenant=? AND sid=?")
          .Bind(EncodeStringMap(u.labels ? *u.labels : h.labels))
          .Bind(ttl_ms)
          .Bind(Ms(now))
          .Bind(ExpiryMs(now, ttl_ms))
          .Bind(key.tenant)
          .Bind(key.session_id)
          .Run());
  SS_RETURN_IF_ERROR(txn.Commit());
  return Head(key, now);
}

absl::Status SqliteStateStore::DeleteSession(const SessionKey& key) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  absl::MutexLock lock(&mu_);
  SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
  Txn txn(this);
  SS_ASSIGN_OR_RETURN(bool exists, Live(key, clock_->Now()));
  if (!exists) return SessionNotFound(key);
  SS_RETURN_IF_ERROR(DropSession(key));
  SS_RETURN_IF_ERROR(txn.Commit());
  ReleaseFreePages(kFreeSlackBytes);
  return absl::OkStatus();
}

absl::StatusOr<Lease> SqliteStateStore::AcquireLease(const SessionKey& key,
                                                     const std::string& owner,
                                                     absl::Duration ttl,
                                                     bool takeover) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  SS_RETURN_IF_ERROR(ValidateOwner(owner));
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "lease ttl"));
  if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
  Txn txn(this);
  SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
  if (!takeover && !h.owner.empty() && h.owner != owner) {
    return LeaseBusy(h.owner);
  }
  SS_ASSIGN_OR_RETURN(uint64_t fence, BumpFence(key));
  const int64_t ttl_ms = TtlMs(h.ttl);
  SS_RETURN_IF_ERROR(
      Stmt(db_,
           "UPDATE sessions SET lease_owner=?, lease_expires_ms=?, "
           "expires_ms=? WHERE tenant=? AND sid=?")
          .Bind(owner)
          .Bind(Ms(now + ttl))
          .Bind(ExpiryMs(now, ttl_ms))
          .Bind(key.tenant)
          .Bind(key.session_id)
          .Run());
  SS_RETURN_IF_ERROR(txn.Commit());
  return Lease{owner, fence, now + ttl};
}

absl::StatusOr<Lease> SqliteStateStore::RenewLease(const SessionKey& key,
                                                   const std::string& owner,
                                                   uint64_t fence,
                                                   absl::Duration ttl) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "lease ttl"));
  if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
  Txn txn(this);
  SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
  if (fence != h.fence || (!h.owner.empty() && h.owner != owner)) {
    return Fenced(fence, h.fence);
  }
  SS_RETURN_IF_ERROR(Stmt(db_,
                          "UPDATE sessions SET lease_owner=?, "
                          "lease_expires_ms=? WHERE tenant=? AND sid=?")
                         .Bind(owner)
                         .Bind(Ms(now + ttl))
                         .Bind(key.tenant)
                         .Bind(key.session_id)
                         .Run());
  SS_RETURN_IF_ERROR(txn.Commit());
  return Lease{owner, fence, now + ttl};
}

absl::Status SqliteStateStore::ReleaseLease(const SessionKey& key,
                                            const std::string& owner,
                                            uint64_t fence) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  absl::MutexLock lock(&mu_);
  SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
  Txn txn(this);
  auto h = Head(key, clock_->Now());
  if (!h.ok()) {
    return GetReason(h.status()) == Reason::kSessionNotFound ? absl::OkStatus()
                                                             : h.status();
  }
  if (h->owner == owner && h->fence == fence) {
    SS_RETURN_IF_ERROR(Stmt(db_,
                            "UPDATE sessions SET lease_owner='', "
                            "lease_expires_ms=0 WHERE tenant=? AND sid=?")
                           .Bind(key.tenant)
                           .Bind(key.session_id)
                           .Run());
  }
  return txn.Commit();
}

absl::StatusOr<Lease> SqliteStateStore::GetOwner(const SessionKey& key) {
  SS_ASSIGN_OR_RETURN(SessionHead h, GetHead(key));
  return Lease{h.owner, h.fence, h.lease_expires_at};
}

absl::StatusOr<bool> SqliteStateStore::RegisterWorker(const WorkerInfo& info,
                                                      absl::Duration ttl) {
  SS_RETURN_IF_ERROR(ValidateWorkerId(info.worker_id));
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "worker ttl"));
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  // A write transaction first: a read that then writes cannot wait for
  // another connection's write lock (SQLite answers SQLITE_BUSY at once,
  // without the busy timeout, where a write started as one waits).
  SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
  Txn txn(this);
  bool listed = false;
  {
    Stmt live(db_, "SELECT 1 FROM workers WHERE id=? AND expires_ms>?");
    live.Bind(info.worker_id).Bind(Ms(now));
    listed = live.Step();
    SS_RETURN_IF_ERROR(live.status());
  }
  SS_RETURN_IF_ERROR(
      Stmt(db_, "INSERT OR REPLACE INTO workers VALUES (?,?,?,?,?)")
          .Bind(info.worker_id)
          .Bind(info.address)
          .Bind(absl::StrJoin(info.model_fingerprints, "\n"))
          .Bind(info.load)
          .Bind(ttl == absl::InfiniteDuration() ? kNever : Ms(now + ttl))
          .Run());
  SS_RETURN_IF_ERROR(txn.Commit());
  return listed;
}

absl::Status SqliteStateStore::UnregisterWorker(const std::string& worker_id) {
  SS_RETURN_IF_ERROR(ValidateWorkerId(worker_id));
  absl::MutexLock lock(&mu_);
  return Stmt(db_, "DELETE FROM workers WHERE id=?").Bind(worker_id).Run();
}

absl::StatusOr<std::vector<WorkerInfo>> SqliteStateStore::ListWorkers() {
  absl::MutexLock lock(&mu_);
  const int64_t now = Ms(clock_->Now());
  SS_RETURN_IF_ERROR(
      Stmt(db_, "DELETE FROM workers WHERE expires_ms<=?").Bind(now).Run());
  Stmt s(db_,
         "SELECT id, address, models, load, expires_ms FROM workers "
         "ORDER BY id");
  std::vector<WorkerInfo> out;
  while (s.Step()) {
    WorkerInfo w;
    w.worker_id = s.Text(0);
    w.address = s.Text(1);
    const std::string models = s.Text(2);
    if (!models.empty()) w.model_fingerprints = absl::StrSplit(models, '\n');
    w.load = s.Real(3);
    w.expires_at = absl::FromUnixMillis(s.Int(4));
    out.push_back(std::move(w));
  }
  SS_RETURN_IF_ERROR(s.status());
  return out;
}

}  // namespace store_internal

absl::StatusOr<std::unique_ptr<StateStore>> NewSqliteStateStore(
    const SqliteStateStoreOptions& options) {
  if (options.path.empty() || options.keep_versions < 1 ||
      options.sweep_bytes < 1) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        "path is required, and keep_versions and sweep_bytes >= 1");
  }
  SS_RETURN_IF_ERROR(
      store_internal::ValidateTtl(options.default_ttl, "default_ttl"));
  SS_ASSIGN_OR_RETURN(sqlite3 * db, store_internal::OpenDatabase(
                                        options.path, options.busy_timeout));
  return std::unique_ptr<StateStore>(
      new store_internal::SqliteStateStore(options, db));
}

}  // namespace statestream
