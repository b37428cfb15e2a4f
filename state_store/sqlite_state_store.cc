// SPDX-License-Identifier: Apache-2.0
#include "state_store/sqlite_state_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "state_store/internal/sqlite_db.h"
#include "state_store/internal/store_util.h"

namespace statestream {
namespace {

namespace si = store_internal;
using si::ExpiryMs;
using si::kNever;
using si::kSessionColumns;
using si::kVersionColumns;
using si::Ms;
using si::ReadVersion;
using si::StepToVersion;
using si::Stmt;
using si::TtlMs;
using si::VersionQuery;

class SqliteStateStore final : public StateStore {
 public:
  SqliteStateStore(const SqliteStateStoreOptions& o, sqlite3* db)
      : options_(o), clock_(o.clock ? o.clock : Clock::Real()), db_(db) {}
  ~SqliteStateStore() override { sqlite3_close(db_); }

  absl::StatusOr<CommitResult> CreateSession(
      const CreateSessionRequest& r) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(r.key));
    const absl::Duration ttl =
        r.ttl == absl::ZeroDuration() ? options_.default_ttl : r.ttl;
    SS_RETURN_IF_ERROR(si::ValidateTtl(ttl, "ttl"));
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
    if (exists) return si::SessionExists(r.key);
    if (r.max_tenant_sessions > 0) {
      SS_ASSIGN_OR_RETURN(int64_t n, LiveSessions(r.key.tenant, now));
      if (n >= r.max_tenant_sessions) {
        return si::TenantSessionLimit(r.max_tenant_sessions);
      }
    }
    SS_RETURN_IF_ERROR(
        Stmt(db_, "DELETE FROM versions WHERE tenant=? AND sid=?")
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
                           .Bind(si::EncodeStringMap(r.labels))
                           .Bind(ttl_ms)
                           .Bind(Ms(now))
                           .Bind(Ms(now))
                           .Bind(ExpiryMs(now, ttl_ms))
                           .Bind(r.request_id)
                           .Bind(static_cast<int64_t>(r.request_digest))
                           .Run());
    VersionInfo v = si::DescribeVersion(r.initial_state, bytes, 1, fence, 1);
    si::RecordCause(r, &v);
    absl::StatusOr<CommitResult> done =
        Install(r.key, v, bytes, r.durability, now, &txn);
    // A backlog of free pages that deletes left (more than commits churn:
    // each frees at most the version it replaces) shrinks with commits too.
    if (done.ok()) ReleaseFreePages(si::kFreeSlackBytes + si::kReleaseMaxBytes);
    return done;
  }

  absl::StatusOr<SessionHead> GetHead(const SessionKey& key) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
    absl::MutexLock lock(&mu_);
    SS_RETURN_IF_ERROR(BeginRead());
    Txn txn(this);  // one snapshot for the session row and its version's
    return Head(key, clock_->Now());
  }

  absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& key,
                                            uint64_t version) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
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
    SS_RETURN_IF_ERROR(si::CheckVersionMatchesState(out.version, out.state));
    return out;
  }

  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(r.key));
    SS_RETURN_IF_ERROR(CheckEncodable(r.state));
    const std::string bytes = EncodeState(r.state);
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    SS_RETURN_IF_ERROR(Begin(r.durability));
    Txn txn(this);
    SS_ASSIGN_OR_RETURN(SessionHead h, Head(r.key, now));
    // The fence first: a writer that was taken over learns that it was,
    // even when its expected version is stale too.
    if (r.fence != h.fence) return si::Fenced(r.fence, h.fence);
    if (r.expected_version != h.head.version) {
      return si::HeadMismatch(r.expected_version, h.head.version);
    }
    if (r.state.model_fingerprint != h.model_fingerprint) {
      return si::FingerprintMismatch(h.model_fingerprint,
                                     r.state.model_fingerprint);
    }
    VersionInfo v =
        si::DescribeVersion(r.state, bytes, h.head.version + 1, r.fence, 1);
    si::RecordCause(r, &v);
    absl::StatusOr<CommitResult> done =
        Install(r.key, v, bytes, r.durability, now, &txn);
    // A backlog of free pages that deletes left (more than commits churn:
    // each frees at most the version it replaces) shrinks with commits too.
    if (done.ok()) ReleaseFreePages(si::kFreeSlackBytes + si::kReleaseMaxBytes);
    return done;
  }

  // One file on one host: REPLICATED is never reached.
  Durability MaxDurability() const override { return Durability::kFsync; }

  // FSYNC: a synchronous (synchronous=FULL) write transaction marking the
  // version, whose commit fsyncs the log with every earlier commit in it.
  absl::StatusOr<VersionInfo> AwaitDurability(const SessionKey& key,
                                              uint64_t version,
                                              Durability wanted) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
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
                             .Bind(si::StoredDurability(level))
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

  absl::StatusOr<CommitResult> Rollback(
      const SessionKey& key, uint64_t expected_version, uint64_t fence,
      uint64_t version, Durability durability,
      const std::string& request_id) override {
    return store_internal::RollbackByCommit(*this, key, expected_version, fence,
                                            version, durability, request_id);
  }

  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const SessionKey& key) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
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

  absl::StatusOr<int64_t> CountSessionsBound(
      const std::string& tenant) override {
    SS_RETURN_IF_ERROR(si::ValidateTenant(tenant));
    absl::MutexLock lock(&mu_);
    return LiveSessions(tenant, clock_->Now());
  }

  absl::StatusOr<int64_t> LiveSessions(const std::string& tenant,
                                       absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt s(db_,
           "SELECT COUNT(*) FROM sessions WHERE tenant=? AND expires_ms>?");
    s.Bind(tenant).Bind(Ms(now));
    int64_t n = 0;
    if (s.Step()) n = s.Int(0);
    SS_RETURN_IF_ERROR(s.status());
    return n;
  }

  absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& r) override {
    SS_ASSIGN_OR_RETURN(std::string after, si::ParseListRequest(r));
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
        page.next_page_token = si::MakePageToken(after);
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
      if (!si::ListedBy(r, *h)) continue;
      if (!si::AddToPage(r, *std::move(h), &page)) break;
    }
    SS_RETURN_IF_ERROR(s.status());
    return page;
  }

  absl::StatusOr<SessionHead> UpdateSession(const SessionKey& key,
                                            const SessionUpdate& u) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
    if (u.ttl) SS_RETURN_IF_ERROR(si::ValidateTtl(*u.ttl, "ttl"));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
    Txn txn(this);
    SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
    const int64_t ttl_ms = TtlMs(u.ttl ? *u.ttl : h.ttl);
    SS_RETURN_IF_ERROR(
        Stmt(db_,
             "UPDATE sessions SET labels=?, ttl_ms=?, updated_ms=?, "
             "expires_ms=? WHERE tenant=? AND sid=?")
            .Bind(si::EncodeStringMap(u.labels ? *u.labels : h.labels))
            .Bind(ttl_ms)
            .Bind(Ms(now))
            .Bind(ExpiryMs(now, ttl_ms))
            .Bind(key.tenant)
            .Bind(key.session_id)
            .Run());
    SS_RETURN_IF_ERROR(txn.Commit());
    return Head(key, now);
  }

  absl::Status DeleteSession(const SessionKey& key) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
    absl::MutexLock lock(&mu_);
    SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
    Txn txn(this);
    SS_ASSIGN_OR_RETURN(bool exists, Live(key, clock_->Now()));
    if (!exists) return si::SessionNotFound(key);
    SS_RETURN_IF_ERROR(DropSession(key));
    SS_RETURN_IF_ERROR(txn.Commit());
    ReleaseFreePages(si::kFreeSlackBytes);
    return absl::OkStatus();
  }

  absl::StatusOr<Lease> AcquireLease(const SessionKey& key,
                                     const std::string& owner,
                                     absl::Duration ttl,
                                     bool takeover) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
    SS_RETURN_IF_ERROR(si::ValidateOwner(owner));
    SS_RETURN_IF_ERROR(si::ValidateTtl(ttl, "lease ttl"));
    if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
    Txn txn(this);
    SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
    if (!takeover && !h.owner.empty() && h.owner != owner) {
      return si::LeaseBusy(h.owner);
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

  absl::StatusOr<Lease> RenewLease(const SessionKey& key,
                                   const std::string& owner, uint64_t fence,
                                   absl::Duration ttl) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
    SS_RETURN_IF_ERROR(si::ValidateTtl(ttl, "lease ttl"));
    if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
    Txn txn(this);
    SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
    if (fence != h.fence || (!h.owner.empty() && h.owner != owner)) {
      return si::Fenced(fence, h.fence);
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

  absl::Status ReleaseLease(const SessionKey& key, const std::string& owner,
                            uint64_t fence) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(key));
    absl::MutexLock lock(&mu_);
    SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
    Txn txn(this);
    auto h = Head(key, clock_->Now());
    if (!h.ok()) {
      return GetReason(h.status()) == Reason::kSessionNotFound
                 ? absl::OkStatus()
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

  absl::StatusOr<Lease> GetOwner(const SessionKey& key) override {
    SS_ASSIGN_OR_RETURN(SessionHead h, GetHead(key));
    return Lease{h.owner, h.fence, h.lease_expires_at};
  }

  absl::StatusOr<bool> RegisterWorker(const WorkerInfo& info,
                                      absl::Duration ttl) override {
    SS_RETURN_IF_ERROR(si::ValidateWorkerId(info.worker_id));
    SS_RETURN_IF_ERROR(si::ValidateTtl(ttl, "worker ttl"));
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

  absl::Status UnregisterWorker(const std::string& worker_id) override {
    SS_RETURN_IF_ERROR(si::ValidateWorkerId(worker_id));
    absl::MutexLock lock(&mu_);
    return Stmt(db_, "DELETE FROM workers WHERE id=?").Bind(worker_id).Run();
  }

  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override {
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

 private:
  // Rolls back unless Commit() was called.
  class Txn {
   public:
    explicit Txn(SqliteStateStore* s) : s_(s) {}
    ~Txn() {
      if (!done_) sqlite3_exec(s_->db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    absl::Status Commit() {
      done_ = true;
      const int rc = sqlite3_exec(s_->db_, "COMMIT", nullptr, nullptr, nullptr);
      if (rc != SQLITE_OK) {
        const absl::Status st = si::SqliteError(
            rc, absl::StrCat("sqlite commit: ", sqlite3_errmsg(s_->db_)));
        sqlite3_exec(s_->db_, "ROLLBACK", nullptr, nullptr, nullptr);
        return st;
      }
      return absl::OkStatus();
    }

   private:
    SqliteStateStore* s_;
    bool done_ = false;
  };

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      return si::SqliteError(rc, absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
    }
    return absl::OkStatus();
  }

  // Sets the sync level for `durability` and opens a write transaction.
  absl::Status Begin(Durability durability) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SS_RETURN_IF_ERROR(Exec(durability == Durability::kMemory
                                ? "PRAGMA synchronous=NORMAL"
                                : "PRAGMA synchronous=FULL"));
    return Exec("BEGIN IMMEDIATE");
  }
  // A read-only transaction (ended by a Txn's rollback): reads that take
  // several statements see one snapshot even while another process on the
  // same file commits between them.
  absl::Status BeginRead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return Exec("BEGIN");
  }

  // Deletes sessions whose TTL ran out (and their versions), on a create,
  // in a transaction of its own, kSweepBatch at a time and no more than
  // options_.sweep_bytes of state (the first session whatever its size):
  // an expired session nobody touches again would otherwise stay in the
  // file forever. Once a minute, and on every create while more are
  // waiting, so the sweep keeps up with any rate of expiry below a batch a
  // create. Their fences go too: the file's one counter keeps a re-created
  // id from reusing one.
  static constexpr int kSweepBatch = 1000;
  absl::Status SweepExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (now - last_sweep_ < absl::Minutes(1)) return absl::OkStatus();
    // Set first: a sweep that fails (the file locked by another process
    // past the busy timeout) is not tried again by every create.
    last_sweep_ = now;
    SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
    Txn txn(this);
    SS_RETURN_IF_ERROR(Exec(
        "CREATE TEMP TABLE IF NOT EXISTS expired (tenant TEXT, sid TEXT)"));
    SS_RETURN_IF_ERROR(Exec("DELETE FROM temp.expired"));
    // Each candidate with the bytes of the candidates before it (state_bytes
    // precedes the blob in a row: read without its pages).
    SS_RETURN_IF_ERROR(
        Stmt(db_,
             "INSERT INTO temp.expired SELECT tenant, sid FROM ("
             " SELECT tenant, sid, SUM(bytes) OVER (ORDER BY rn ROWS BETWEEN"
             "  UNBOUNDED PRECEDING AND 1 PRECEDING) AS before FROM ("
             "  SELECT s.tenant, s.sid, s.rowid AS rn, (SELECT"
             "   COALESCE(SUM(v.state_bytes), 0) FROM versions v"
             "   WHERE v.tenant=s.tenant AND v.sid=s.sid) AS bytes"
             "  FROM sessions s WHERE s.expires_ms<=? LIMIT ?))"
             " WHERE COALESCE(before, 0) < ?")
            .Bind(Ms(now))
            .Bind(int64_t{kSweepBatch})
            .Bind(options_.sweep_bytes)
            .Run());
    const int swept = sqlite3_changes(db_);
    SS_RETURN_IF_ERROR(
        Exec("DELETE FROM versions WHERE (tenant, sid) IN "
             "(SELECT tenant, sid FROM temp.expired)"));
    SS_RETURN_IF_ERROR(
        Exec("DELETE FROM sessions WHERE (tenant, sid) IN "
             "(SELECT tenant, sid FROM temp.expired)"));
    SS_RETURN_IF_ERROR(
        Exec("DELETE FROM fences WHERE (tenant, sid) IN "
             "(SELECT tenant, sid FROM temp.expired)"));
    bool more = false;
    {
      Stmt left(db_, "SELECT 1 FROM sessions WHERE expires_ms<=? LIMIT 1");
      left.Bind(Ms(now));
      more = left.Step();
    }
    SS_RETURN_IF_ERROR(txn.Commit());
    if (more) last_sweep_ = absl::InfinitePast();
    if (swept > 0) ReleaseFreePages(si::kFreeSlackBytes);
    return absl::OkStatus();
  }

  // After a write: gives the file's free pages past `keep_bytes` back to
  // the file system, at most si::kReleaseMaxBytes of them (SQLite moves
  // pages from the file's end into free ones, then cuts the end; the file
  // shrinks when the log is next checkpointed). A no-op in a file an older
  // build created (auto_vacuum off). Best effort: what is not released
  // now is at a later write, and commits reuse free pages anyway.
  void ReleaseFreePages(int64_t keep_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto pragma = [this](const char* sql) -> int64_t {
      Stmt s(db_, sql);
      return s.Step() ? s.Int(0) : -1;
    };
    if (page_bytes_ == 0) {  // first call: the file's mode and page size
      page_bytes_ = pragma("PRAGMA auto_vacuum") == 2  // 2: INCREMENTAL
                        ? pragma("PRAGMA page_size")
                        : -1;
    }
    if (page_bytes_ <= 0) return;
    const int64_t free_pages = pragma("PRAGMA freelist_count");
    const int64_t release = std::min(free_pages - keep_bytes / page_bytes_,
                                     si::kReleaseMaxBytes / page_bytes_);
    if (release <= 0) return;
    Exec(absl::StrCat("PRAGMA incremental_vacuum(", release, ")").c_str())
        .IgnoreError();
  }

  // Whether the session exists and is live; drops it if it expired.
  absl::StatusOr<bool> Live(const SessionKey& key, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt s(db_, "SELECT expires_ms FROM sessions WHERE tenant=? AND sid=?");
    s.Bind(key.tenant).Bind(key.session_id);
    if (!s.Step()) {
      SS_RETURN_IF_ERROR(s.status());
      return false;
    }
    return s.Int(0) > Ms(now);
  }

  // The next fence of the file's one counter, recorded as `key`'s. Above
  // the id's own fence too: one bumped per id (by a build before the
  // counter, on the same file) still never comes back.
  absl::StatusOr<uint64_t> BumpFence(const SessionKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt next(db_,
              "UPDATE fence_counter SET value=MAX(value, COALESCE((SELECT "
              "fence FROM fences WHERE tenant=?1 AND sid=?2), 0))+1 WHERE "
              "id=0 RETURNING value");
    next.Bind(key.tenant).Bind(key.session_id);
    if (!next.Step()) {
      SS_RETURN_IF_ERROR(next.status());
      return si::SqliteError(SQLITE_CORRUPT, "the fence counter is missing");
    }
    const int64_t fence = next.Int(0);
    SS_RETURN_IF_ERROR(next.Run());  // to SQLITE_DONE
    SS_RETURN_IF_ERROR(
        Stmt(db_,
             "INSERT INTO fences VALUES (?,?,?) ON CONFLICT(tenant, sid) DO "
             "UPDATE SET fence=excluded.fence")
            .Bind(key.tenant)
            .Bind(key.session_id)
            .Bind(fence)
            .Run());
    return static_cast<uint64_t>(fence);
  }

  absl::Status DropSession(const SessionKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const char* table : {"sessions", "fences"}) {
      SS_RETURN_IF_ERROR(Stmt(db_, absl::StrCat("DELETE FROM ", table,
                                                " WHERE tenant=? AND sid=?")
                                       .c_str())
                             .Bind(key.tenant)
                             .Bind(key.session_id)
                             .Run());
    }
    return Stmt(db_, "DELETE FROM versions WHERE tenant=? AND sid=?")
        .Bind(key.tenant)
        .Bind(key.session_id)
        .Run();
  }

  absl::StatusOr<SessionHead> Head(const SessionKey& key, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt s(db_, absl::StrCat("SELECT ", kSessionColumns,
                             ", f.fence FROM sessions JOIN fences f USING "
                             "(tenant, sid) WHERE tenant=? AND sid=?")
                    .c_str());
    s.Bind(key.tenant).Bind(key.session_id);
    if (!s.Step()) {
      SS_RETURN_IF_ERROR(s.status());
      return si::SessionNotFound(key);
    }
    if (s.Int(8) <= Ms(now)) return si::SessionNotFound(key);
    SessionHead h;
    h.key = key;
    h.model_id = s.Text(0);
    h.model_fingerprint = s.Text(1);
    h.parent_session_id = s.Text(2);
    h.parent_version = s.Int(3);
    if (!si::DecodeStringMap(s.Text(4), &h.labels)) {
      return DataLossError(Reason::kStateCorrupt, "session labels are corrupt");
    }
    h.ttl =
        s.Int(5) < 0 ? absl::InfiniteDuration() : absl::Milliseconds(s.Int(5));
    h.created_at = absl::FromUnixMillis(s.Int(6));
    h.updated_at = absl::FromUnixMillis(s.Int(7));
    const int64_t head = s.Int(9);
    h.oldest_version = s.Int(10);
    if (s.Int(12) > Ms(now)) {
      h.owner = s.Text(11);
      h.lease_expires_at = absl::FromUnixMillis(s.Int(12));
    }
    h.create_request_id = s.Text(13);
    h.create_digest = static_cast<uint64_t>(s.Int(14));
    h.fence = s.Int(15);
    Stmt v(db_, absl::StrCat("SELECT ", kVersionColumns,
                             " FROM versions WHERE tenant=? AND sid=? AND "
                             "version=?")
                    .c_str());
    v.Bind(key.tenant).Bind(key.session_id).Bind(head);
    if (!v.Step()) {
      SS_RETURN_IF_ERROR(v.status());
      return DataLossError(Reason::kStateCorrupt,
                           "state is corrupt: the head version is missing");
    }
    h.head = ReadVersion(v, 0);
    return h;
  }

  // Inserts `v`, makes it the head, drops old versions, commits `txn`.
  absl::StatusOr<CommitResult> Install(const SessionKey& key, VersionInfo v,
                                       const std::string& bytes,
                                       Durability wanted, absl::Time now,
                                       Txn* txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v.committed_at = now;
    v.durability = wanted == Durability::kMemory ? Durability::kMemory
                                                 : Durability::kFsync;
    SS_RETURN_IF_ERROR(Stmt(db_,
                            "INSERT OR REPLACE INTO versions (tenant, sid, "
                            "version, position, input_offset, tail_bytes, "
                            "fence, state_bytes, crc, rolled_back_from, "
                            "durability, committed_ms, data, cause, rid) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
                           .Bind(key.tenant)
                           .Bind(key.session_id)
                           .Bind(static_cast<int64_t>(v.version))
                           .Bind(static_cast<int64_t>(v.position))
                           .Bind(static_cast<int64_t>(v.input_offset))
                           .Bind(static_cast<int64_t>(v.tail_bytes))
                           .Bind(static_cast<int64_t>(v.fence))
                           .Bind(static_cast<int64_t>(v.state_bytes))
                           .Bind(static_cast<int64_t>(v.state_crc32c))
                           .Bind(static_cast<int64_t>(v.rolled_back_from))
                           .Bind(si::StoredDurability(v.durability))
                           .Bind(Ms(now))
                           .BindBlob(bytes)
                           .Bind(static_cast<int64_t>(v.cause))
                           .Bind(v.request_id)
                           .Run());
    // Never below the oldest recorded: another process on the file may
    // keep fewer versions, and what it dropped stays dropped.
    int64_t oldest = std::max<int64_t>(
        1, static_cast<int64_t>(v.version) - options_.keep_versions + 1);
    {
      Stmt recorded(db_,
                    "SELECT oldest FROM sessions WHERE tenant=? AND sid=?");
      recorded.Bind(key.tenant).Bind(key.session_id);
      if (recorded.Step()) {
        oldest = std::max(
            oldest, std::min(recorded.Int(0), static_cast<int64_t>(v.version)));
      } else {
        SS_RETURN_IF_ERROR(recorded.status());
      }
    }
    SS_RETURN_IF_ERROR(
        Stmt(db_, "DELETE FROM versions WHERE tenant=? AND sid=? AND version<?")
            .Bind(key.tenant)
            .Bind(key.session_id)
            .Bind(oldest)
            .Run());
    SS_RETURN_IF_ERROR(
        Stmt(db_,
             "UPDATE sessions SET head=?, oldest=?, updated_ms=?, "
             "expires_ms=CASE WHEN ttl_ms<0 THEN ? ELSE ?+ttl_ms END "
             "WHERE tenant=? AND sid=?")
            .Bind(static_cast<int64_t>(v.version))
            .Bind(oldest)
            .Bind(Ms(now))
            .Bind(kNever)
            .Bind(Ms(now))
            .Bind(key.tenant)
            .Bind(key.session_id)
            .Run());
    SS_RETURN_IF_ERROR(txn->Commit());
    if (wanted == Durability::kReplicated) {
      return DurabilityNotReached(v.version, wanted, Durability::kFsync);
    }
    SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
    return CommitResult{v, std::move(h)};
  }

  const SqliteStateStoreOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  absl::Time last_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // ReleaseFreePages': the page size of a file with auto_vacuum=INCREMENTAL,
  // -1 for another file (nothing to release), 0 until it looked.
  int64_t page_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> NewSqliteStateStore(
    const SqliteStateStoreOptions& options) {
  if (options.path.empty() || options.keep_versions < 1 ||
      options.sweep_bytes < 1) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        "path is required, and keep_versions and sweep_bytes >= 1");
  }
  SS_RETURN_IF_ERROR(si::ValidateTtl(options.default_ttl, "default_ttl"));
  SS_ASSIGN_OR_RETURN(sqlite3 * db,
                      si::OpenDatabase(options.path, options.busy_timeout));
  return std::unique_ptr<StateStore>(new SqliteStateStore(options, db));
}

}  // namespace statestream
