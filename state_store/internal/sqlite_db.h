// SPDX-License-Identifier: Apache-2.0
// The SQLite store's database: opening (schema and migrations), prepared
// statements, and the version rows (sqlite_state_store.cc). Not part of the
// public interface.
#ifndef STATESTREAM_STATE_STORE_INTERNAL_SQLITE_DB_H_
#define STATESTREAM_STATE_STORE_INTERNAL_SQLITE_DB_H_

#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "state_store/internal/store_util.h"
#include "state_store/state_store.h"

namespace statestream::store_internal {

// Opens (creating, mode 0600) the database at `path` in WAL mode with
// `busy_timeout`, creates the tables and adds the columns later versions
// added. DATA_LOSS/kStateCorrupt for a file that is not a sound database.
absl::StatusOr<sqlite3*> OpenDatabase(const std::string& path,
                                      absl::Duration busy_timeout);

// The status of a failed SQLite call that returned `rc`: DATA_LOSS/
// kStateCorrupt with metadata database=damaged when the file is damaged
// (SQLITE_CORRUPT, SQLITE_NOTADB: retrying cannot help); INTERNAL/
// kInternal when the store's own statement was wrong (CONSTRAINT, ERROR,
// MISMATCH, MISUSE, RANGE, TOOBIG: a retry repeats it); else
// UNAVAILABLE/kStoreUnavailable (busy, I/O, full, read-only: it may pass).
absl::Status SqliteError(int rc, absl::string_view what);

constexpr int64_t kNever = INT64_MAX;

inline int64_t Ms(absl::Time t) { return absl::ToUnixMillis(t); }
inline int64_t ExpiryMs(absl::Time now, int64_t ttl_ms) {
  return ttl_ms < 0 ? kNever : Ms(now) + ttl_ms;
}
// A TTL in ms as stored: -1 for none, at least 1 otherwise.
inline int64_t TtlMs(absl::Duration ttl) {
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
  // A bind that fails (a value over SQLite's length limit: SQLITE_TOOBIG;
  // out of memory) fails the statement: SQLite would leave the parameter
  // NULL and run it anyway, storing a row without the value.
  Stmt& Bind(int64_t v) { return Keep(sqlite3_bind_int64(s_, ++n_, v)); }
  Stmt& Bind(double v) { return Keep(sqlite3_bind_double(s_, ++n_, v)); }
  Stmt& Bind(const std::string& v) {
    return Keep(sqlite3_bind_text(
        s_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  Stmt& BindBlob(const std::string& v) {
    return Keep(
        sqlite3_bind_blob64(s_, ++n_, v.data(), v.size(), SQLITE_STATIC));
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
    return SqliteError(rc_, absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  int64_t Int(int i) const { return sqlite3_column_int64(s_, i); }
  bool Null(int i) const { return sqlite3_column_type(s_, i) == SQLITE_NULL; }
  double Real(int i) const { return sqlite3_column_double(s_, i); }
  std::string Text(int i) const {
    const void* p = sqlite3_column_blob(s_, i);
    return p ? std::string(static_cast<const char*>(p),
                           sqlite3_column_bytes(s_, i))
             : std::string();
  }

 private:
  Stmt& Keep(int bind_rc) {
    if (bind_rc != SQLITE_OK && rc_ == SQLITE_OK) rc_ = bind_rc;
    return *this;
  }

  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_;
  int n_ = 0;
};

// What the write-ahead log is truncated to when SQLite restarts it
// (OpenDatabase): 16 MiB.
inline constexpr int64_t kJournalSizeLimitBytes = int64_t{16} << 20;
// Free pages a file keeps for later commits after a delete; past that they
// are given back to the file system, at most kReleaseMaxBytes a write
// (each page moved is written to the log, under the store's lock). After
// a create or commit only what exceeds kFreeSlackBytes + kReleaseMaxBytes
// is (the backlog of a large sweep, not a commit's own churn).
inline constexpr int64_t kFreeSlackBytes = int64_t{16} << 20;
inline constexpr int64_t kReleaseMaxBytes = int64_t{64} << 20;

// versions.durability holds 10 + the level: 11..13 take one byte each in a
// row, so raising a version's level (AwaitDurability) keeps the row's size
// and SQLite overwrites that byte's page in place. 1 (MEMORY) is stored in
// no bytes and 2 in one: the row grew, and SQLite wrote it again whole,
// its state included (a 34 MB state's raise logged ~68 MB under the
// store's lock). 1..3, an older build's, read as they are.
inline constexpr int64_t StoredDurability(Durability d) {
  return 10 + static_cast<int64_t>(d);
}
// The level a stored value names. An unknown one (a damaged or foreign
// row) claims the least, as the Redis store's does.
inline constexpr Durability DurabilityFromStored(int64_t stored) {
  return RecordedDurability(stored > 10 ? stored - 10 : stored);
}

constexpr char kSessionColumns[] =
    "model_id, fingerprint, parent_sid, parent_ver, labels, ttl_ms, "
    "created_ms, updated_ms, expires_ms, head, oldest, lease_owner, "
    "lease_expires_ms, create_rid, create_digest";
constexpr char kVersionColumns[] =
    "version, position, input_offset, tail_bytes, fence, state_bytes, crc, "
    "rolled_back_from, durability, committed_ms, cause, rid";

// SELECT of one kept version's columns (and its data): tenant, sid,
// version, the head's oldest version.
std::string VersionQuery(bool with_data);

// Binds and steps a VersionQuery to `version` of the session whose head is
// `h`: NOT_FOUND/kVersionMismatch when it is not kept.
absl::Status StepToVersion(Stmt& s, const SessionKey& key, uint64_t version,
                           const SessionHead& h);

// The version whose kVersionColumns start at column `at` of `s`'s row.
VersionInfo ReadVersion(const Stmt& s, int at);

}  // namespace statestream::store_internal

#endif  // STATESTREAM_STATE_STORE_INTERNAL_SQLITE_DB_H_
