// SPDX-License-Identifier: Apache-2.0
// Helpers the SQLite store's tests share.
#ifndef STATESTREAM_STATE_STORE_SQLITE_STATE_STORE_TEST_UTIL_H_
#define STATESTREAM_STATE_STORE_SQLITE_STATE_STORE_TEST_UTIL_H_

#include <sqlite3.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "state_store/sqlite_state_store.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {

// A fresh directory under /tmp.
inline std::string TempDir() {
  char tmpl[] = "/tmp/ss-sqlite-XXXXXX";
  return mkdtemp(tmpl);
}

// A store file in a directory of its own (removed with it), on a fake
// clock.
class SqliteEnv : public StoreEnv {
 public:
  SqliteEnv() : dir_(TempDir()) {}
  ~SqliteEnv() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  absl::StatusOr<std::unique_ptr<StateStore>> NewStore(
      int keep_versions) override {
    SqliteStateStoreOptions o;
    o.path = path();
    o.clock = &clock_;
    o.keep_versions = keep_versions;
    return NewSqliteStateStore(o);
  }
  void Advance(absl::Duration d) override { clock_.Advance(d); }
  bool CanCorrupt() const override { return true; }
  bool CorruptStoredVersion(const SessionKey& key, uint64_t version) override {
    sqlite3* db = nullptr;
    if (sqlite3_open(path().c_str(), &db) != SQLITE_OK) return false;
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt* s = nullptr;
    std::string blob;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT data FROM versions WHERE tenant=? "
                                 "AND sid=? AND version=?",
                                 -1, &s, nullptr) == SQLITE_OK;
    if (ok) {
      sqlite3_bind_text(s, 1, key.tenant.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(s, 2, key.session_id.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(s, 3, static_cast<int64_t>(version));
      ok = sqlite3_step(s) == SQLITE_ROW;
      if (ok) {
        blob.assign(static_cast<const char*>(sqlite3_column_blob(s, 0)),
                    sqlite3_column_bytes(s, 0));
      }
    }
    sqlite3_finalize(s);
    s = nullptr;
    ok = ok && blob.size() > 100;
    if (ok) {
      blob[100] ^= 0x01;
      ok = sqlite3_prepare_v2(db,
                              "UPDATE versions SET data=? WHERE tenant=? AND "
                              "sid=? AND version=?",
                              -1, &s, nullptr) == SQLITE_OK;
    }
    if (ok) {
      sqlite3_bind_blob(s, 1, blob.data(), static_cast<int>(blob.size()),
                        SQLITE_TRANSIENT);
      sqlite3_bind_text(s, 2, key.tenant.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(s, 3, key.session_id.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(s, 4, static_cast<int64_t>(version));
      ok = sqlite3_step(s) == SQLITE_DONE && sqlite3_changes(db) == 1;
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return ok;
  }
  std::string path() const { return dir_ + "/state.db"; }
  FakeClock* clock() { return &clock_; }
  FakeClock clock_;

 private:
  std::string dir_;
};

// Rows of a table in the store's file.
inline int64_t CountRows(const std::string& path, const char* table) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) return -1;
  sqlite3_busy_timeout(db, 10000);
  sqlite3_stmt* s = nullptr;
  int64_t n = -1;
  const std::string sql = std::string("SELECT count(*) FROM ") + table;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    n = sqlite3_column_int64(s, 0);
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return n;
}

// Creates acme/`id` with `ttl` (a small state).
inline absl::Status CreateWithTtl(StateStore* store, const std::string& id,
                                  absl::Duration ttl) {
  CreateSessionRequest r;
  r.key = {"acme", id};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1, 8);
  r.ttl = ttl;
  return store->CreateSession(r).status();
}

// Commits versions 2..n+1 of a session at version 1, small states.
inline void CommitSmallVersions(StateStore* store, const SessionKey& key,
                                uint64_t fence, int n) {
  for (uint64_t v = 1; v <= static_cast<uint64_t>(n); ++v) {
    CommitRequest c;
    c.key = key;
    c.expected_version = v;
    c.fence = fence;
    c.state = TestSnapshot(v + 2, 1000);
    ASSERT_TRUE(store->Commit(c).ok());
  }
}

// Runs `sql` on the file at `path` from a connection of its own.
inline absl::Status ExecSql(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    sqlite3_close(db);
    return absl::UnavailableError("open");
  }
  sqlite3_busy_timeout(db, 10000);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
  const std::string msg = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  return rc == SQLITE_OK ? absl::OkStatus() : absl::InternalError(msg);
}

// Session acme/`id` of model "tiny" with a 1000-float state.
inline CreateSessionRequest Creating(const std::string& id) {
  CreateSessionRequest r;
  r.key = {"acme", id};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1, 1000);
  return r;
}

}  // namespace statestream::testing

#endif  // STATESTREAM_STATE_STORE_SQLITE_STATE_STORE_TEST_UTIL_H_
