// SPDX-License-Identifier: Apache-2.0
// The SQLite StateStore's transactions, expiry sweep, space release,
// fences and session and version rows (internal/sqlite_store.h).
#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "state_store/internal/sqlite_db.h"
#include "state_store/internal/sqlite_store.h"
#include "state_store/internal/store_util.h"

namespace statestream::store_internal {

absl::StatusOr<int64_t> SqliteStateStore::LiveSessions(
    const std::string& tenant, absl::Time now) {
  Stmt s(db_, "SELECT COUNT(*) FROM sessions WHERE tenant=? AND expires_ms>?");
  s.Bind(tenant).Bind(Ms(now));
  int64_t n = 0;
  if (s.Step()) n = s.Int(0);
  SS_RETURN_IF_ERROR(s.status());
  return n;
}

absl::Status SqliteStateStore::Exec(const char* sql) {
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    return SqliteError(rc, absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  return absl::OkStatus();
}

absl::Status SqliteStateStore::Begin(Durability durability) {
  SS_RETURN_IF_ERROR(Exec(durability == Durability::kMemory
                              ? "PRAGMA synchronous=NORMAL"
                              : "PRAGMA synchronous=FULL"));
  return Exec("BEGIN IMMEDIATE");
}

absl::Status SqliteStateStore::BeginRead() { return Exec("BEGIN"); }

absl::Status SqliteStateStore::SweepExpired(absl::Time now) {
  if (now - last_sweep_ < absl::Minutes(1)) return absl::OkStatus();
  // Set first: a sweep that fails (the file locked by another process
  // past the busy timeout) is not tried again by every create.
  last_sweep_ = now;
  SS_RETURN_IF_ERROR(Begin(Durability::kMemory));
  Txn txn(this);
  SS_RETURN_IF_ERROR(
      Exec("CREATE TEMP TABLE IF NOT EXISTS expired (tenant TEXT, sid TEXT)"));
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
  if (swept > 0) ReleaseFreePages(kFreeSlackBytes);
  return absl::OkStatus();
}

void SqliteStateStore::ReleaseFreePages(int64_t keep_bytes) {
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
                                   kReleaseMaxBytes / page_bytes_);
  if (release <= 0) return;
  Exec(absl::StrCat("PRAGMA incremental_vacuum(", release, ")").c_str())
      .IgnoreError();
}

absl::StatusOr<bool> SqliteStateStore::Live(const SessionKey& key,
                                            absl::Time now) {
  Stmt s(db_, "SELECT expires_ms FROM sessions WHERE tenant=? AND sid=?");
  s.Bind(key.tenant).Bind(key.session_id);
  if (!s.Step()) {
    SS_RETURN_IF_ERROR(s.status());
    return false;
  }
  return s.Int(0) > Ms(now);
}

absl::StatusOr<uint64_t> SqliteStateStore::BumpFence(const SessionKey& key) {
  Stmt next(db_,
            "UPDATE fence_counter SET value=MAX(value, COALESCE((SELECT "
            "fence FROM fences WHERE tenant=?1 AND sid=?2), 0))+1 WHERE "
            "id=0 RETURNING value");
  next.Bind(key.tenant).Bind(key.session_id);
  if (!next.Step()) {
    SS_RETURN_IF_ERROR(next.status());
    return SqliteError(SQLITE_CORRUPT, "the fence counter is missing");
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

absl::Status SqliteStateStore::DropSession(const SessionKey& key) {
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

absl::StatusOr<SessionHead> SqliteStateStore::Head(const SessionKey& key,
                                                   absl::Time now) {
  Stmt s(db_, absl::StrCat("SELECT ", kSessionColumns,
                           ", f.fence FROM sessions LEFT JOIN fences f "
                           "USING (tenant, sid) WHERE tenant=? AND sid=?")
                  .c_str());
  s.Bind(key.tenant).Bind(key.session_id);
  if (!s.Step()) {
    SS_RETURN_IF_ERROR(s.status());
    return SessionNotFound(key);
  }
  if (s.Int(8) <= Ms(now)) return SessionNotFound(key);
  SessionHead h;
  h.key = key;
  h.model_id = s.Text(0);
  h.model_fingerprint = s.Text(1);
  h.parent_session_id = s.Text(2);
  h.parent_version = s.Int(3);
  if (!DecodeStringMap(s.Text(4), &h.labels)) {
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
  // Every session row has its fence row (written together): a session
  // without one is damaged, not missing (a create of its id would be
  // refused as taken).
  if (s.Null(15)) {
    return DataLossError(Reason::kStateCorrupt, "session fence is missing");
  }
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

absl::StatusOr<CommitResult> SqliteStateStore::Install(
    const SessionKey& key, VersionInfo v, const std::string& bytes,
    Durability wanted, absl::Time now, Txn* txn) {
  v.committed_at = now;
  v.durability =
      wanted == Durability::kMemory ? Durability::kMemory : Durability::kFsync;
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
                         .Bind(StoredDurability(v.durability))
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
    Stmt recorded(db_, "SELECT oldest FROM sessions WHERE tenant=? AND sid=?");
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
  // The head as this transaction wrote it, so read before the commit:
  // read after it, another connection on the file (another store, another
  // process) could have taken the lease in between, and a create would
  // hand its caller that holder's fence (two writers on one fence).
  SS_ASSIGN_OR_RETURN(SessionHead h, Head(key, now));
  SS_RETURN_IF_ERROR(txn->Commit());
  if (wanted == Durability::kReplicated) {
    return DurabilityNotReached(v.version, wanted, Durability::kFsync);
  }
  return CommitResult{v, std::move(h)};
}

}  // namespace statestream::store_internal
