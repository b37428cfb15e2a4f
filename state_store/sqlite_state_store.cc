// SPDX-License-Identifier: Apache-2.0
#include "state_store/sqlite_state_store.h"

#include <sqlite3.h>

#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "state_store/internal/store_util.h"

namespace statestream {
namespace {

namespace si = store_internal;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS sessions (
  tenant TEXT NOT NULL, sid TEXT NOT NULL, model_id TEXT, fingerprint TEXT,
  parent_sid TEXT, parent_ver INTEGER, labels BLOB, ttl_ms INTEGER,
  created_ms INTEGER, updated_ms INTEGER, expires_ms INTEGER,
  head INTEGER, oldest INTEGER, lease_owner TEXT, lease_expires_ms INTEGER,
  create_rid TEXT DEFAULT '', create_digest INTEGER DEFAULT 0,
  PRIMARY KEY (tenant, sid));
CREATE TABLE IF NOT EXISTS fences (
  tenant TEXT NOT NULL, sid TEXT NOT NULL, fence INTEGER,
  PRIMARY KEY (tenant, sid));
CREATE TABLE IF NOT EXISTS versions (
  tenant TEXT NOT NULL, sid TEXT NOT NULL, version INTEGER NOT NULL,
  position INTEGER, input_offset INTEGER, tail_bytes INTEGER, fence INTEGER,
  state_bytes INTEGER, crc INTEGER, rolled_back_from INTEGER,
  durability INTEGER, committed_ms INTEGER, data BLOB,
  cause INTEGER DEFAULT 0, rid TEXT DEFAULT '',
  PRIMARY KEY (tenant, sid, version));
CREATE TABLE IF NOT EXISTS workers (
  id TEXT PRIMARY KEY, address TEXT, models TEXT, load REAL,
  expires_ms INTEGER);
)sql";

constexpr int64_t kNever = INT64_MAX;

int64_t Ms(absl::Time t) { return absl::ToUnixMillis(t); }
int64_t ExpiryMs(absl::Time now, int64_t ttl_ms) {
  return ttl_ms < 0 ? kNever : Ms(now) + ttl_ms;
}
int64_t TtlMs(absl::Duration ttl) {
  return ttl == absl::InfiniteDuration()
             ? -1
             : std::max<int64_t>(1, absl::ToInt64Milliseconds(ttl));
}

// One prepared statement; binds by position from 1.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt& Bind(int64_t v) {
    sqlite3_bind_int64(s_, ++n_, v);
    return *this;
  }
  Stmt& Bind(double v) {
    sqlite3_bind_double(s_, ++n_, v);
    return *this;
  }
  Stmt& Bind(const std::string& v) {
    sqlite3_bind_text(s_, ++n_, v.data(), static_cast<int>(v.size()),
                      SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(const std::string& v) {
    sqlite3_bind_blob64(s_, ++n_, v.data(), v.size(), SQLITE_STATIC);
    return *this;
  }
  // True when a row is available; errors end up in status().
  bool Step() {
    if (rc_ != SQLITE_OK && rc_ != SQLITE_ROW && rc_ != SQLITE_DONE) {
      return false;
    }
    rc_ = sqlite3_step(s_);
    return rc_ == SQLITE_ROW;
  }
  absl::Status Run() {
    Step();
    return status();
  }
  absl::Status status() const {
    if (rc_ == SQLITE_OK || rc_ == SQLITE_ROW || rc_ == SQLITE_DONE) {
      return absl::OkStatus();
    }
    return si::Unavailable(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  int64_t Int(int i) const { return sqlite3_column_int64(s_, i); }
  double Real(int i) const { return sqlite3_column_double(s_, i); }
  std::string Text(int i) const {
    const void* p = sqlite3_column_blob(s_, i);
    return p ? std::string(static_cast<const char*>(p),
                           sqlite3_column_bytes(s_, i))
             : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_;
  int n_ = 0;
};

constexpr char kSessionColumns[] =
    "model_id, fingerprint, parent_sid, parent_ver, labels, ttl_ms, "
    "created_ms, updated_ms, expires_ms, head, oldest, lease_owner, "
    "lease_expires_ms, create_rid, create_digest";
constexpr char kVersionColumns[] =
    "version, position, input_offset, tail_bytes, fence, state_bytes, crc, "
    "rolled_back_from, durability, committed_ms, cause, rid";

// SELECT of one kept version's columns (and its data): tenant, sid,
// version, the head's oldest version.
std::string VersionQuery(bool with_data) {
  return absl::StrCat("SELECT ", kVersionColumns, with_data ? ", data" : "",
                      " FROM versions WHERE tenant=? AND sid=? "
                      "AND version=? AND version>=?");
}

// Binds and steps a VersionQuery to `version` of the session whose head is
// `h`: NOT_FOUND/kVersionMismatch when it is not kept.
absl::Status StepToVersion(Stmt& s, const SessionKey& key, uint64_t version,
                           const SessionHead& h) {
  s.Bind(key.tenant)
      .Bind(key.session_id)
      .Bind(static_cast<int64_t>(version))
      .Bind(static_cast<int64_t>(h.oldest_version));
  if (!s.Step()) {
    SS_RETURN_IF_ERROR(s.status());
    return si::VersionNotKept(version, h.head.version, h.oldest_version);
  }
  return absl::OkStatus();
}

VersionInfo ReadVersion(const Stmt& s, int at) {
  VersionInfo v;
  v.version = s.Int(at);
  v.position = s.Int(at + 1);
  v.input_offset = s.Int(at + 2);
  v.tail_bytes = static_cast<uint32_t>(s.Int(at + 3));
  v.fence = s.Int(at + 4);
  v.state_bytes = s.Int(at + 5);
  v.chunk_count = 1;
  v.state_crc32c = static_cast<uint32_t>(s.Int(at + 6));
  v.rolled_back_from = s.Int(at + 7);
  v.durability = static_cast<Durability>(s.Int(at + 8));
  v.committed_at = absl::FromUnixMillis(s.Int(at + 9));
  v.cause = VersionCauseOf(s.Int(at + 10));
  v.request_id = s.Text(at + 11);
  return v;
}

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
    const std::string bytes = EncodeState(r.initial_state);
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    SS_RETURN_IF_ERROR(Begin(r.durability));
    Txn txn(this);
    SS_RETURN_IF_ERROR(SweepExpired(now));
    SS_ASSIGN_OR_RETURN(bool exists, Live(r.key, now));
    if (exists) return si::SessionExists(r.key);
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
    return Install(r.key, v, bytes, r.durability, now, &txn);
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
    return out;
  }

  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override {
    SS_RETURN_IF_ERROR(si::ValidateKey(r.key));
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
    return Install(r.key, v, bytes, r.durability, now, &txn);
  }

  // FSYNC: a synchronous (synchronous=FULL) write transaction marking the
  // version, whose commit fsyncs the log with every earlier commit in it.
  // REPLICATED is never reached.
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
                             .Bind(static_cast<int64_t>(level))
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
    while (s.Step()) {
      SS_ASSIGN_OR_RETURN(SessionHead h, Head({r.tenant, s.Text(0)}, now));
      if (!si::LabelsMatch(h.labels, r.label_filter)) continue;
      if (static_cast<int>(page.sessions.size()) == r.page_size) {
        page.next_page_token =
            si::MakePageToken(page.sessions.back().key.session_id);
        break;
      }
      page.sessions.push_back(std::move(h));
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
    return txn.Commit();
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

  absl::Status RegisterWorker(const WorkerInfo& info,
                              absl::Duration ttl) override {
    SS_RETURN_IF_ERROR(si::ValidateWorkerId(info.worker_id));
    SS_RETURN_IF_ERROR(si::ValidateTtl(ttl, "worker ttl"));
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    return Stmt(db_, "INSERT OR REPLACE INTO workers VALUES (?,?,?,?,?)")
        .Bind(info.worker_id)
        .Bind(info.address)
        .Bind(absl::StrJoin(info.model_fingerprints, "\n"))
        .Bind(info.load)
        .Bind(ttl == absl::InfiniteDuration() ? kNever : Ms(now + ttl))
        .Run();
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
      if (sqlite3_exec(s_->db_, "COMMIT", nullptr, nullptr, nullptr) !=
          SQLITE_OK) {
        const absl::Status st = si::Unavailable(
            absl::StrCat("sqlite commit: ", sqlite3_errmsg(s_->db_)));
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
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
      return si::Unavailable(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
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

  // Deletes sessions whose TTL ran out (and their versions), at most once
  // a minute and 1,000 at a time (on a create, inside its transaction): an
  // expired session nobody touches again would otherwise stay in the file
  // forever. Fences stay (a re-created id must not reuse one).
  absl::Status SweepExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (now - last_sweep_ < absl::Minutes(1)) return absl::OkStatus();
    last_sweep_ = now;
    SS_RETURN_IF_ERROR(Exec(
        "CREATE TEMP TABLE IF NOT EXISTS expired (tenant TEXT, sid TEXT)"));
    SS_RETURN_IF_ERROR(Exec("DELETE FROM temp.expired"));
    SS_RETURN_IF_ERROR(
        Stmt(db_,
             "INSERT INTO temp.expired SELECT tenant, sid FROM sessions "
             "WHERE expires_ms<=? LIMIT 1000")
            .Bind(Ms(now))
            .Run());
    SS_RETURN_IF_ERROR(
        Exec("DELETE FROM versions WHERE (tenant, sid) IN "
             "(SELECT tenant, sid FROM temp.expired)"));
    return Exec(
        "DELETE FROM sessions WHERE (tenant, sid) IN "
        "(SELECT tenant, sid FROM temp.expired)");
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

  absl::StatusOr<uint64_t> BumpFence(const SessionKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SS_RETURN_IF_ERROR(
        Stmt(db_,
             "INSERT INTO fences VALUES (?,?,1) ON CONFLICT(tenant, sid) DO "
             "UPDATE SET fence=fence+1")
            .Bind(key.tenant)
            .Bind(key.session_id)
            .Run());
    Stmt s(db_, "SELECT fence FROM fences WHERE tenant=? AND sid=?");
    s.Bind(key.tenant).Bind(key.session_id);
    if (!s.Step()) return si::Unavailable("fence vanished");
    return static_cast<uint64_t>(s.Int(0));
  }

  absl::Status DropSession(const SessionKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SS_RETURN_IF_ERROR(
        Stmt(db_, "DELETE FROM sessions WHERE tenant=? AND sid=?")
            .Bind(key.tenant)
            .Bind(key.session_id)
            .Run());
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
                           .Bind(static_cast<int64_t>(v.durability))
                           .Bind(Ms(now))
                           .BindBlob(bytes)
                           .Bind(static_cast<int64_t>(v.cause))
                           .Bind(v.request_id)
                           .Run());
    const int64_t oldest = std::max<int64_t>(
        1, static_cast<int64_t>(v.version) - options_.keep_versions + 1);
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
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> NewSqliteStateStore(
    const SqliteStateStoreOptions& options) {
  if (options.path.empty() || options.keep_versions < 1) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "path is required and keep_versions >= 1");
  }
  SS_RETURN_IF_ERROR(si::ValidateTtl(options.default_ttl, "default_ttl"));
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(
          options.path.c_str(), &db,
          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
          nullptr) != SQLITE_OK) {
    const std::string err = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return si::Unavailable(
        absl::StrCat("cannot open ", options.path, ": ", err));
  }
  sqlite3_busy_timeout(
      db, static_cast<int>(absl::ToInt64Milliseconds(options.busy_timeout)));
  auto exec = [db](const char* sql) -> absl::Status {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) == SQLITE_OK) {
      return absl::OkStatus();
    }
    const std::string msg = err ? err : "";
    sqlite3_free(err);
    return si::Unavailable(absl::StrCat("sqlite setup: ", msg));
  };
  absl::Status setup = exec("PRAGMA journal_mode=WAL");
  if (setup.ok()) setup = exec(kSchema);
  // A database from before the sessions recorded their creating request
  // gets the columns (empty for its sessions): each one missing is added,
  // all in one write transaction, so processes opening the file together
  // add them once and a crash leaves all or none.
  if (setup.ok()) setup = exec("BEGIN IMMEDIATE");
  if (setup.ok()) {
    std::set<std::string> have;  // "table.column"
    for (const char* table : {"sessions", "versions"}) {
      Stmt cols(
          db, absl::StrCat("SELECT name FROM pragma_table_info('", table, "')")
                  .c_str());
      while (cols.Step()) have.insert(absl::StrCat(table, ".", cols.Text(0)));
      if (setup.ok()) setup = cols.status();
    }
    for (const auto& [table, column] :
         std::initializer_list<std::pair<const char*, const char*>>{
             {"sessions", "create_rid TEXT DEFAULT ''"},
             {"sessions", "create_digest INTEGER DEFAULT 0"},
             {"versions", "cause INTEGER DEFAULT 0"},
             {"versions", "rid TEXT DEFAULT ''"}}) {
      const std::string name(column, std::strchr(column, ' '));
      if (setup.ok() && have.count(absl::StrCat(table, ".", name)) == 0) {
        setup = exec(absl::StrCat("ALTER TABLE ", table, " ADD COLUMN ", column)
                         .c_str());
      }
    }
    setup = setup.ok() ? exec("COMMIT") : setup;
    if (!setup.ok()) exec("ROLLBACK").IgnoreError();
  }
  if (!setup.ok()) {
    sqlite3_close(db);
    return setup;
  }
  return std::unique_ptr<StateStore>(new SqliteStateStore(options, db));
}

}  // namespace statestream
