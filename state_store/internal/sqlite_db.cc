// SPDX-License-Identifier: Apache-2.0
#include "state_store/internal/sqlite_db.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status.h"

namespace statestream::store_internal {
namespace {

// The tables; kAddedColumns holds every column added since the first
// release, so an old file ends up with the same columns as a new one. In
// a new file the state (`data`) is the versions' last column: SQLite reads
// a column after a blob by walking the blob's overflow pages, which every
// head read and listing did for `cause` and `rid` (added at the end of
// an old file's rows: 8 ms a read of a 16 MB state's row with auto_vacuum
// off, 0.2 ms with it).
constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS sessions (
  tenant TEXT NOT NULL, sid TEXT NOT NULL, model_id TEXT, fingerprint TEXT,
  parent_sid TEXT, parent_ver INTEGER, labels BLOB, ttl_ms INTEGER,
  created_ms INTEGER, updated_ms INTEGER, expires_ms INTEGER,
  head INTEGER, oldest INTEGER, lease_owner TEXT, lease_expires_ms INTEGER,
  PRIMARY KEY (tenant, sid));
CREATE TABLE IF NOT EXISTS fences (
  tenant TEXT NOT NULL, sid TEXT NOT NULL, fence INTEGER,
  PRIMARY KEY (tenant, sid));
CREATE TABLE IF NOT EXISTS versions (
  tenant TEXT NOT NULL, sid TEXT NOT NULL, version INTEGER NOT NULL,
  position INTEGER, input_offset INTEGER, tail_bytes INTEGER, fence INTEGER,
  state_bytes INTEGER, crc INTEGER, rolled_back_from INTEGER,
  durability INTEGER, committed_ms INTEGER, cause INTEGER DEFAULT 0,
  rid TEXT DEFAULT '', data BLOB,
  PRIMARY KEY (tenant, sid, version));
CREATE TABLE IF NOT EXISTS workers (
  id TEXT PRIMARY KEY, address TEXT, models TEXT, load REAL,
  expires_ms INTEGER);
)sql";

// Fences come from one counter for the whole file (fence_counter), so a
// deleted session's `fences` row can go with it and a re-created id still
// never reuses a fence. A file from before the counter kept a row per id
// ever created: the table is made with its counter above all of them and
// the rows of sessions that are gone are dropped, in one transaction (a
// scan of both tables, once: a file with millions of ids takes a while,
// and other processes wait for it). Later opens read no table page, so a
// file damaged in places opens and answers DATA_LOSS for what it lost.
constexpr char kAddFenceCounter[] = R"sql(
CREATE TABLE fence_counter (
  id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
INSERT INTO fence_counter SELECT 0, COALESCE(MAX(fence), 0) FROM fences;
DELETE FROM fences WHERE NOT EXISTS (SELECT 1 FROM sessions s
  WHERE s.tenant = fences.tenant AND s.sid = fences.sid);
)sql";

// Columns added after the first release, with their defaults for old rows:
// the sessions' creating request, the versions' cause and request id.
constexpr std::pair<const char*, const char*> kAddedColumns[] = {
    {"sessions", "create_rid TEXT DEFAULT ''"},
    {"sessions", "create_digest INTEGER DEFAULT 0"},
    {"versions", "cause INTEGER DEFAULT 0"},
    {"versions", "rid TEXT DEFAULT ''"}};

}  // namespace

absl::Status SqliteError(int rc, absl::string_view what) {
  const int primary = rc & 0xff;
  if (primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB) {
    return MakeError(
        absl::StatusCode::kDataLoss, Reason::kStateCorrupt,
        absl::StrCat(what, " (the database file is damaged)"),
        {{"database", "damaged"}, {"detail", "the database file is damaged"}});
  }
  switch (primary) {
    // The store's own statement or value was wrong (a constraint it broke,
    // a value past SQLite's limits, an API misuse): a bug, which a retry
    // would only repeat.
    case SQLITE_CONSTRAINT:
    case SQLITE_ERROR:
    case SQLITE_MISMATCH:
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
    case SQLITE_TOOBIG:
      return WithPublicMessage(
          MakeError(absl::StatusCode::kInternal, Reason::kInternal,
                    absl::StrCat("state store failed: ", what)),
          "the state store failed (logged on the server)");
    default:
      // Busy, locked, out of disk or memory, an I/O error, a file that
      // cannot be opened or written: the store's condition, not the
      // request's, and it may pass.
      return Unavailable(what);
  }
}

absl::StatusOr<sqlite3*> OpenDatabase(const std::string& path,
                                      absl::Duration busy_timeout) {
  // The file holds every tenant's state and pending input: created
  // private (0600) whatever the umask; SQLite gives its -wal and -shm
  // files the database file's mode. A file an older build left readable
  // to others (0644) is made private too, with its -wal/-shm, when this
  // process owns it. By path only: closing a descriptor of the file would
  // drop the POSIX locks another connection of this process holds on it.
  const int created =
      open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (created >= 0) {
    close(created);  // new: no connection can hold it yet
    // Its name made durable: SQLite's fsyncs cover the file's contents
    // (and its -wal's name), not the main file's entry in the directory.
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    if (absl::Status synced = SyncDirectory(dir.string()); !synced.ok()) {
      return Unavailable(synced.message());
    }
  }
  for (const std::string& p : {path, path + "-wal", path + "-shm"}) {
    struct stat st;
    if (lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        st.st_uid == geteuid() && (st.st_mode & 077) != 0) {
      chmod(p.c_str(), st.st_mode & 0700);
    }
  }
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(
          path.c_str(), &db,
          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
          nullptr) != SQLITE_OK) {
    const std::string err = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Unavailable(absl::StrCat("cannot open ", path, ": ", err));
  }
  // In ms, an int: a longer wait (past ~24 days) would overflow to a
  // negative one, which turns the wait off.
  sqlite3_busy_timeout(
      db, static_cast<int>(std::clamp<int64_t>(
              absl::ToInt64Milliseconds(busy_timeout), 0, INT_MAX)));
  auto exec = [db](const char* sql) -> absl::Status {
    char* err = nullptr;
    const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
    if (rc == SQLITE_OK) return absl::OkStatus();
    const std::string msg = err ? err : "";
    sqlite3_free(err);
    return SqliteError(rc, absl::StrCat("sqlite setup: ", msg));
  };
  // Pages freed by deletes can be given back to the file system
  // (SqliteStateStore releases them): set only while the file has no
  // table yet, so a file an older build created keeps auto_vacuum off
  // (docs/state-store.md says how to convert it).
  absl::Status setup = exec("PRAGMA auto_vacuum=INCREMENTAL");
  if (setup.ok()) {
    // The pragma answers the mode it left: a file system without the
    // shared memory WAL needs (a network mount) keeps the rollback
    // journal, where readers wait on writers and SQLite's locking is not
    // to be trusted. Refused rather than run that way unnoticed.
    std::string mode;
    char* err = nullptr;
    const int rc = sqlite3_exec(
        db, "PRAGMA journal_mode=WAL",
        [](void* out, int n, char** values, char**) {
          if (n > 0 && values[0] != nullptr) {
            *static_cast<std::string*>(out) = values[0];
          }
          return 0;
        },
        &mode, &err);
    const std::string msg = err ? err : "";
    sqlite3_free(err);
    if (rc != SQLITE_OK) {
      setup = SqliteError(rc, absl::StrCat("sqlite setup: ", msg));
    } else if (absl::AsciiStrToLower(mode) != "wal") {
      setup = Unavailable(
          absl::StrCat("cannot open ", path, " in WAL mode (journal mode '",
                       mode, "'): put --data-dir on a local file system"));
    }
  }
  // The write-ahead log grows to the largest transaction between
  // checkpoints (a 34 MB state, a sweep of many sessions) and SQLite
  // reuses the file at that size; this makes it truncate the file back
  // whenever it restarts the log.
  if (setup.ok()) {
    setup =
        exec(absl::StrCat("PRAGMA journal_size_limit=", kJournalSizeLimitBytes)
                 .c_str());
  }
  if (setup.ok()) setup = exec(kSchema);
  // Each column of kAddedColumns the file lacks is added (empty for the
  // rows it has), all in one write transaction, so processes opening the
  // file together add them once and a crash leaves all or none.
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
    for (const auto& [table, column] : kAddedColumns) {
      const std::string name(column, std::strchr(column, ' '));
      if (setup.ok() && have.count(absl::StrCat(table, ".", name)) == 0) {
        setup = exec(absl::StrCat("ALTER TABLE ", table, " ADD COLUMN ", column)
                         .c_str());
      }
    }
    if (setup.ok()) {
      Stmt counter(db,
                   "SELECT 1 FROM sqlite_master WHERE type='table' AND "
                   "name='fence_counter'");
      const bool have_counter = counter.Step();
      setup = counter.status();
      if (setup.ok() && !have_counter) setup = exec(kAddFenceCounter);
    }
    setup = setup.ok() ? exec("COMMIT") : setup;
    if (!setup.ok()) exec("ROLLBACK").IgnoreError();
  }
  if (!setup.ok()) {
    sqlite3_close(db);
    return setup;
  }
  return db;
}

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
    return VersionNotKept(version, h.head.version, h.oldest_version);
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
  v.durability = DurabilityFromStored(s.Int(at + 8));
  v.committed_at = absl::FromUnixMillis(s.Int(at + 9));
  v.cause = VersionCauseOf(s.Int(at + 10));
  v.request_id = s.Text(at + 11);
  return v;
}

}  // namespace statestream::store_internal
