// SPDX-License-Identifier: Apache-2.0
#include "state_store/sqlite_state_store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/internal/sqlite_db.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/ss-sqlite-XXXXXX";
  return mkdtemp(tmpl);
}

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

std::unique_ptr<StoreEnv> NewSqliteEnv() {
  return std::make_unique<SqliteEnv>();
}

INSTANTIATE_TEST_SUITE_P(Sqlite, StateStoreContractTest,
                         ::testing::Values(&NewSqliteEnv));

// Rows of a table in the store's file.
int64_t CountRows(const std::string& path, const char* table) {
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
absl::Status CreateWithTtl(StateStore* store, const std::string& id,
                           absl::Duration ttl) {
  CreateSessionRequest r;
  r.key = {"acme", id};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1, 8);
  r.ttl = ttl;
  return store->CreateSession(r).status();
}

// Commits versions 2..n+1 of a session at version 1, small states.
void CommitSmallVersions(StateStore* store, const SessionKey& key,
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

// Expired sessions nobody touches again leave the file: a create sweeps
// them (at most once a minute), versions included; live ones stay.
TEST(SqliteStateStoreTest, ExpiredSessionsAreSweptFromTheFile) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  auto create = [&](const std::string& id, absl::Duration ttl) {
    const absl::Status st = CreateWithTtl(store->get(), id, ttl);
    EXPECT_TRUE(st.ok()) << st;
  };
  for (int i = 0; i < 50; ++i)
    create(absl::StrCat("short", i), absl::Seconds(1));
  create("long", absl::Hours(1));
  EXPECT_EQ(CountRows(env.path(), "versions"), 51);
  env.Advance(absl::Minutes(2));
  create("next", absl::Hours(1));
  EXPECT_EQ(CountRows(env.path(), "sessions"), 2);
  EXPECT_EQ(CountRows(env.path(), "versions"), 2);
  EXPECT_EQ(CountRows(env.path(), "fences"), 2);
  EXPECT_TRUE((*store)->GetHead({"acme", "long"}).ok());
  // A re-created id gets a fence no incarnation of any id had: 52 were
  // handed out (fences count from 1).
  create("short0", absl::Hours(1));
  auto head = (*store)->GetHead({"acme", "short0"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->fence, 53u);
}

// A sweep deletes at most sweep_bytes of state (one session at least) in
// its transaction, and the creates after it sweep on at once while expired
// sessions are left: 1000 at a time, whatever their size, wrote a log the
// size of all their versions under the store's lock.
TEST(SqliteStateStoreTest, ASweepIsBoundedByBytes) {
  SqliteEnv env;
  SqliteStateStoreOptions o;
  o.path = env.path();
  o.clock = env.clock();
  o.sweep_bytes = 1;  // a session a sweep
  auto store = NewSqliteStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        CreateWithTtl(store->get(), absl::StrCat("short", i), absl::Seconds(1))
            .ok());
  }
  ASSERT_TRUE(CreateWithTtl(store->get(), "long", absl::Hours(1)).ok());
  env.Advance(absl::Minutes(2));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        CreateWithTtl(store->get(), absl::StrCat("next", i), absl::Hours(1))
            .ok());
    EXPECT_EQ(CountRows(env.path(), "sessions"), 4) << i;  // one in, one out
  }
  ASSERT_TRUE(CreateWithTtl(store->get(), "last", absl::Hours(1)).ok());
  EXPECT_EQ(CountRows(env.path(), "sessions"), 5);  // none left to sweep
  EXPECT_EQ(CountRows(env.path(), "versions"), 5);

  o.sweep_bytes = 0;
  EXPECT_EQ(NewSqliteStateStore(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Runs `sql` on the file at `path` from a connection of its own.
absl::Status ExecSql(const std::string& path, const char* sql) {
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

// A worker's registration waits for another process's write (the busy
// timeout), as every other write does: it read first and then wrote, and
// SQLite refuses such a write at once (SQLITE_BUSY, UNAVAILABLE) while
// another connection holds the write lock.
TEST(SqliteStateStoreTest, ARegistrationWaitsForAnotherWriter) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  WorkerInfo w;
  w.worker_id = "w1";
  w.address = "127.0.0.1:1";
  auto first = (*store)->RegisterWorker(w, absl::Seconds(30));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(*first);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(env.path().c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr),
            SQLITE_OK);
  std::thread ends([other] {
    absl::SleepFor(absl::Milliseconds(300));
    sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr);
  });
  auto listed = (*store)->RegisterWorker(w, absl::Seconds(30));  // a renewal
  ends.join();
  sqlite3_close(other);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(*listed);
}

// In a new file no column follows a version's state: reading one walked
// the state's overflow pages on every head read and listing.
TEST(SqliteStateStoreTest, TheStateIsAVersionsLastColumn) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(CountRows(env.path(),
                      "pragma_table_info('versions') WHERE cid > (SELECT cid "
                      "FROM pragma_table_info('versions') WHERE name='data')"),
            0);
  EXPECT_EQ(CountRows(env.path(),
                      "pragma_table_info('versions') WHERE name IN "
                      "('cause', 'rid')"),
            2);
}

// Raising a version's durability writes a byte, not the row again: its
// stored level keeps the row's size (sqlite_db.h StoredDurability). From
// MEMORY (stored in no bytes) to FSYNC (one) the row grew, and SQLite
// wrote it whole, state included, to the log.
TEST(SqliteStateStoreTest, RaisingADurabilityRewritesNoState) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  CreateSessionRequest r;
  r.key = {"acme", "big"};
  r.initial_state = TestSnapshot(1, 1'000'000);  // 4 MB
  r.durability = Durability::kMemory;
  auto made = (*store)->CreateSession(r);
  ASSERT_TRUE(made.ok()) << made.status();
  ASSERT_TRUE(ExecSql(env.path(), "PRAGMA wal_checkpoint(TRUNCATE)").ok());
  auto raised = (*store)->AwaitDurability(r.key, made->version.version,
                                          Durability::kFsync);
  ASSERT_TRUE(raised.ok()) << raised.status();
  EXPECT_EQ(raised->durability, Durability::kFsync);
  std::error_code ec;
  const auto wal = std::filesystem::file_size(env.path() + "-wal", ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_LT(wal, 1u << 20) << "the raise logged the state again";
  auto versions = (*store)->ListVersions(r.key);
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_EQ(versions->back().durability, Durability::kFsync);
}

// A deleted session leaves no row behind, fence included, however many
// ids a tenant churns through; and a re-created id, in this process or
// the next, never gets a fence it or any other id had.
TEST(SqliteStateStoreTest, DeletedSessionsLeaveNoFenceAndFencesNeverRepeat) {
  SqliteEnv env;
  std::set<uint64_t> fences;
  for (int round = 0; round < 2; ++round) {
    auto store = env.NewStore(8);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int i = 0; i < 20; ++i) {
      const SessionKey key{"acme", absl::StrCat("churn", i % 4)};
      ASSERT_TRUE(
          CreateWithTtl(store->get(), key.session_id, absl::Hours(1)).ok());
      auto head = (*store)->GetHead(key);
      ASSERT_TRUE(head.ok()) << head.status();
      EXPECT_TRUE(fences.insert(head->fence).second) << head->fence;
      auto lease = (*store)->AcquireLease(key, "w1", absl::Seconds(10),
                                          /*takeover=*/false);
      ASSERT_TRUE(lease.ok()) << lease.status();
      EXPECT_TRUE(fences.insert(lease->fence).second) << lease->fence;
      ASSERT_TRUE((*store)->DeleteSession(key).ok());
    }
    EXPECT_EQ(CountRows(env.path(), "sessions"), 0);
    EXPECT_EQ(CountRows(env.path(), "fences"), 0);
    EXPECT_EQ(CountRows(env.path(), "versions"), 0);
  }
}

// A file from before the one counter (a fences row per id ever created,
// no fence_counter table) opens with its counter above every fence it
// holds, the rows of deleted ids dropped and the live ones kept.
TEST(SqliteStateStoreTest, AFileWithFencesPerIdIsUpgraded) {
  SqliteEnv env;
  {
    auto store = env.NewStore(8);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE(CreateWithTtl(store->get(), "live", absl::Hours(1)).ok());
  }
  ASSERT_TRUE(ExecSql(env.path(),
                      "DROP TABLE fence_counter;"
                      "UPDATE fences SET fence=7;"
                      "INSERT INTO fences VALUES ('acme','gone',500);")
                  .ok());
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(CountRows(env.path(), "fences"), 1);
  auto live = (*store)->GetHead({"acme", "live"});
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(live->fence, 7u);
  ASSERT_TRUE(CreateWithTtl(store->get(), "gone", absl::Hours(1)).ok());
  auto gone = (*store)->GetHead({"acme", "gone"});
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->fence, 501u);
  // Opening again starts nothing over.
  store->reset();
  store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  auto lease = (*store)->AcquireLease({"acme", "live"}, "w", absl::Seconds(5),
                                      /*takeover=*/false);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->fence, 502u);
  EXPECT_EQ(CountRows(env.path(), "fences"), 2);
  // A process of an older build on the same file bumps the id's own row
  // past the counter: the next fence is still above it.
  ASSERT_TRUE(
      ExecSql(env.path(), "UPDATE fences SET fence=600 WHERE sid='live'").ok());
  auto after = (*store)->AcquireLease({"acme", "live"}, "w2", absl::Seconds(5),
                                      /*takeover=*/true);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->fence, 601u);
  // A counter whose row is gone is a damaged file, not an outage.
  ASSERT_TRUE(ExecSql(env.path(), "DELETE FROM fence_counter").ok());
  auto damaged = (*store)->AcquireLease({"acme", "live"}, "w3",
                                        absl::Seconds(5), /*takeover=*/true);
  EXPECT_EQ(GetReason(damaged.status()), Reason::kStateCorrupt)
      << damaged.status();
}

// The sweep is its own transaction: a create refused (the id taken) still
// sweeps. And while a full batch (1,000) shows more expired, every create
// sweeps again instead of waiting a minute, so a backlog drains.
TEST(SqliteStateStoreTest, TheSweepSurvivesARefusedCreateAndDrainsABacklog) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  auto create = [&](const std::string& id, absl::Duration ttl) {
    return CreateWithTtl(store->get(), id, ttl);
  };
  ASSERT_TRUE(create("long", absl::Hours(1)).ok());
  for (int i = 0; i < 2100; ++i) {
    ASSERT_TRUE(create(absl::StrCat("short", i), absl::Seconds(1)).ok());
  }
  env.Advance(absl::Minutes(2));
  EXPECT_EQ(GetReason(create("long", absl::Hours(1))), Reason::kSessionExists);
  EXPECT_EQ(CountRows(env.path(), "sessions"), 1 + 2100 - 1000);
  EXPECT_EQ(GetReason(create("long", absl::Hours(1))), Reason::kSessionExists);
  EXPECT_EQ(CountRows(env.path(), "sessions"), 1 + 100);
  ASSERT_TRUE(create("next", absl::Hours(1)).ok());
  EXPECT_EQ(CountRows(env.path(), "sessions"), 2);
  EXPECT_EQ(CountRows(env.path(), "versions"), 2);
  // Caught up: the next sweep waits its minute again.
  ASSERT_TRUE(create("brief", absl::Seconds(1)).ok());
  env.Advance(absl::Seconds(2));
  ASSERT_TRUE(create("after", absl::Hours(1)).ok());
  EXPECT_EQ(CountRows(env.path(), "sessions"), 4);
}

// Runs `sql` on the store's file through a connection of its own.
bool ExecOn(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) return false;
  sqlite3_busy_timeout(db, 10000);
  const bool ok = sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK;
  sqlite3_close(db);
  return ok;
}

// A sweep that fails (here a trigger refuses it; in life the file locked by
// another process past the busy timeout) fails no create, and is not tried
// again by every create: it waits its minute like one that ran.
TEST(SqliteStateStoreTest, AFailedSweepFailsNoCreateAndWaitsItsMinute) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  auto create = [&](const std::string& id, absl::Duration ttl) {
    return CreateWithTtl(store->get(), id, ttl);
  };
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(create(absl::StrCat("short", i), absl::Seconds(1)).ok());
  }
  env.Advance(absl::Minutes(2));
  ASSERT_TRUE(ExecOn(env.path(),
                     "CREATE TRIGGER refuse BEFORE DELETE ON versions "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END"));
  EXPECT_TRUE(create("a", absl::Hours(1)).ok());  // its sweep failed
  EXPECT_EQ(CountRows(env.path(), "sessions"), 6);
  ASSERT_TRUE(ExecOn(env.path(), "DROP TRIGGER refuse"));
  EXPECT_TRUE(create("b", absl::Hours(1)).ok());  // within the minute
  EXPECT_EQ(CountRows(env.path(), "sessions"), 7);
  env.Advance(absl::Minutes(1));
  EXPECT_TRUE(create("c", absl::Hours(1)).ok());
  EXPECT_EQ(CountRows(env.path(), "sessions"), 3);
}

// Two processes on one file keeping different numbers of versions: the
// oldest version kept never moves back (a version one of them dropped is
// not reported as kept), and every version from the oldest to the head
// loads.
TEST(SqliteStateStoreTest, TheOldestKeptNeverMovesBackBetweenProcesses) {
  SqliteEnv env;
  auto few = env.NewStore(2);
  auto many = env.NewStore(8);
  ASSERT_TRUE(few.ok()) << few.status();
  ASSERT_TRUE(many.ok()) << many.status();
  CreateSessionRequest r;
  r.key = {"acme", "shared"};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1);
  auto c = (*many)->CreateSession(r);
  ASSERT_TRUE(c.ok()) << c.status();
  uint64_t oldest_seen = 1;
  for (uint64_t v = 1; v < 12; ++v) {
    StateStore* by = (v % 3 == 0 ? few : many)->get();
    CommitRequest next;
    next.key = r.key;
    next.expected_version = v;
    next.fence = c->session.fence;
    next.state = TestSnapshot(v + 1);
    auto done = by->Commit(next);
    ASSERT_TRUE(done.ok()) << done.status();
    for (StateStore* reader : {few->get(), many->get()}) {
      auto head = reader->GetHead(r.key);
      ASSERT_TRUE(head.ok()) << head.status();
      EXPECT_GE(head->oldest_version, oldest_seen) << "after version " << v + 1;
      oldest_seen = head->oldest_version;
      for (uint64_t k = head->oldest_version; k <= v + 1; ++k) {
        auto loaded = reader->LoadVersion(r.key, k);
        EXPECT_TRUE(loaded.ok())
            << "version " << k << " of " << v + 1 << ": " << loaded.status();
      }
    }
  }
}

TEST(SqliteStateStoreTest, SessionsSurviveReopeningAndDurabilityIsHonest) {
  SqliteEnv env;
  CreateSessionRequest r;
  r.key = {"acme", "s1"};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1, 300'000);
  r.durability = Durability::kFsync;
  uint64_t fence = 0;
  {
    auto store = env.NewStore(8);
    ASSERT_TRUE(store.ok()) << store.status();
    auto c = (*store)->CreateSession(r);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->version.durability, Durability::kFsync);
    fence = c->session.fence;
    CommitRequest cr;
    cr.key = r.key;
    cr.expected_version = 1;
    cr.fence = fence;
    cr.state = TestSnapshot(2, 300'000);
    cr.durability = Durability::kReplicated;
    auto rep = (*store)->Commit(cr);
    EXPECT_EQ(GetReason(rep.status()), Reason::kStoreUnavailable);
    EXPECT_EQ(GetErrorMetadata(rep.status(), "durability_reached"), "FSYNC");
  }
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  auto loaded = (*store)->LoadVersion(r.key, 0);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->version.version, 2u);
  EXPECT_EQ(loaded->state.state, TestSnapshot(2, 300'000).state);
  auto head = (*store)->GetHead(r.key);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->fence, fence);
}

// A transaction larger than the log's limit (a 32 MB state here; a sweep
// of many sessions in production) grows the write-ahead log, which shrinks
// back to the limit once SQLite restarts it instead of keeping its peak.
TEST(SqliteStateStoreTest, TheWriteAheadLogShrinksAfterALargeTransaction) {
  SqliteEnv env;
  auto store = env.NewStore(1);
  ASSERT_TRUE(store.ok()) << store.status();
  CreateSessionRequest r;
  r.key = {"acme", "big"};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1, 8'000'000);  // 32 MB
  auto c = (*store)->CreateSession(r);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string wal = env.path() + "-wal";
  EXPECT_GT(std::filesystem::file_size(wal),
            uint64_t{store_internal::kJournalSizeLimitBytes});
  // Small commits: the first checkpoints the log, a later one restarts it.
  CreateSessionRequest small = r;
  small.key.session_id = "small";
  small.initial_state = TestSnapshot(2, 1000);
  auto s = (*store)->CreateSession(small);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_NO_FATAL_FAILURE(
      CommitSmallVersions(store->get(), small.key, s->session.fence, 4));
  EXPECT_LE(std::filesystem::file_size(wal),
            uint64_t{store_internal::kJournalSizeLimitBytes});
  auto loaded = (*store)->LoadVersion(r.key, 0);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->state.state.size(), 8'000'000u);
}

// Deleted sessions give their space back: a file this build creates has
// auto_vacuum=INCREMENTAL, and each delete releases the free pages past
// the slack, so the file shrinks at the log's next checkpoint instead of
// keeping its largest size. The store goes on working in the smaller file.
// A sweep's larger backlog keeps shrinking with the commits after it.
TEST(SqliteStateStoreTest, DeletedSessionsGiveTheirSpaceBack) {
  SqliteEnv env;
  auto store = env.NewStore(1);
  ASSERT_TRUE(store.ok()) << store.status();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(env.path().c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 10000);
  // The file's size once the log is copied into it and emptied.
  auto checkpointed_size = [&] {
    EXPECT_EQ(sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_TRUNCATE,
                                        nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(db);
    return static_cast<int64_t>(std::filesystem::file_size(env.path()));
  };
  sqlite3_stmt* mode = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA auto_vacuum", -1, &mode, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(mode), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(mode, 0), 2);  // INCREMENTAL
  sqlite3_finalize(mode);

  constexpr int kSessions = 3;
  constexpr int64_t kStateBytes = 16'000'000;  // 4 M floats
  for (int i = 0; i < kSessions; ++i) {
    CreateSessionRequest r;
    r.key = {"acme", absl::StrCat("big-", i)};
    r.model_id = "tiny";
    r.initial_state = TestSnapshot(i + 1, kStateBytes / 4);
    auto c = (*store)->CreateSession(r);
    ASSERT_TRUE(c.ok()) << c.status();
  }
  const int64_t full = checkpointed_size();
  EXPECT_GT(full, kSessions * kStateBytes);
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(
        (*store)->DeleteSession({"acme", absl::StrCat("big-", i)}).ok());
  }
  const int64_t emptied = checkpointed_size();
  // What is left: the slack kept for later commits, and the tables.
  EXPECT_LT(emptied, store_internal::kFreeSlackBytes + (4 << 20))
      << "from " << full;
  CreateSessionRequest r;
  r.key = {"acme", "after"};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(9, kStateBytes / 4);
  auto after = (*store)->CreateSession(r);
  ASSERT_TRUE(after.ok()) << after.status();
  auto loaded = (*store)->LoadVersion(r.key, 0);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->state.state.size(), static_cast<size_t>(kStateBytes / 4));

  // A sweep of 14 expired sessions frees 224 MB at once: it releases 64
  // MiB, and each write after it (the create that swept, then commits)
  // up to 64 MiB more while more than 80 MiB is free (a commit's own
  // churn stays below that).
  constexpr int kExpiring = 14;
  for (int i = 0; i < kExpiring; ++i) {
    CreateSessionRequest big;
    big.key = {"acme", absl::StrCat("expiring-", i)};
    big.model_id = "tiny";
    big.initial_state = TestSnapshot(i + 1, kStateBytes / 4);
    big.ttl = absl::Seconds(1);
    ASSERT_TRUE((*store)->CreateSession(big).ok());
  }
  const int64_t backlog = checkpointed_size();
  EXPECT_GT(backlog, kExpiring * kStateBytes);
  env.Advance(absl::Minutes(2));
  ASSERT_TRUE(CreateWithTtl(store->get(), "sweeper", absl::Hours(1)).ok());
  const int64_t swept = checkpointed_size();
  EXPECT_LT(swept, backlog - (120 << 20));
  EXPECT_GT(swept, backlog - (136 << 20));  // the rest waits for commits
  ASSERT_NO_FATAL_FAILURE(
      CommitSmallVersions(store->get(), r.key, after->session.fence, 3));
  EXPECT_LT(checkpointed_size(), kStateBytes + store_internal::kFreeSlackBytes +
                                     store_internal::kReleaseMaxBytes +
                                     (4 << 20))
      << "from " << swept;
  sqlite3_close(db);
}

CreateSessionRequest Creating(const std::string& id) {
  CreateSessionRequest r;
  r.key = {"acme", id};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1, 1000);
  return r;
}

// The file holds every tenant's state: private whatever the umask.
TEST(SqliteStateStoreTest, TheFilesArePrivate) {
  SqliteEnv env;
  const mode_t before = umask(022);
  auto store = env.NewStore(8);
  umask(before);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateSession(Creating("s")).ok());
  for (const std::string& path : {env.path(), env.path() + "-wal"}) {
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_mode & 077, 0u)
        << path << " mode " << std::oct << (st.st_mode & 0777);
  }
  // A file an older build left 0644 is made private when opened.
  (*store).reset();
  ASSERT_EQ(chmod(env.path().c_str(), 0644), 0);
  auto reopened = env.NewStore(8);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  struct stat st;
  ASSERT_EQ(stat(env.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << std::oct << (st.st_mode & 0777);
}

// A label filter that matches little reads at most max_list_scan heads a
// call (under the store's lock): short pages with a token, until the
// listing ends, and the matches on either side of each page boundary are
// each found once.
TEST(SqliteStateStoreTest, AFilteredListingReadsBoundedPages) {
  SqliteEnv env;
  SqliteStateStoreOptions o;
  o.path = env.path();
  o.max_list_scan = 10;
  auto store = NewSqliteStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  ExpectBoundedFilteredListing(store->get());
}

// One damaged session is left out of listings (as in the Redis store), not
// a DATA_LOSS for the tenant's every listing.
TEST(SqliteStateStoreTest, ADamagedSessionIsLeftOutOfListings) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE((*store)->CreateSession(Creating(id)).ok()) << id;
  }
  ASSERT_TRUE(
      ExecOn(env.path(), "UPDATE sessions SET labels='x' WHERE sid='b'"));
  EXPECT_EQ(GetReason((*store)->GetHead({"acme", "b"}).status()),
            Reason::kStateCorrupt);
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = (*store)->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->sessions.size(), 2u);
  EXPECT_EQ(page->sessions[0].key.session_id, "a");
  EXPECT_EQ(page->sessions[1].key.session_id, "c");
  EXPECT_TRUE((*store)->DeleteSession({"acme", "b"}).ok());
}

// A version's record edited apart from its state (the position GetHead
// reports) is STATE_CORRUPT at the load, not a session that reports one
// place and resumes at another.
TEST(SqliteStateStoreTest, AVersionRecordThatDisagreesWithItsStateIsCorrupt) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateSession(Creating("moved")).ok());
  ASSERT_TRUE((*store)->CreateSession(Creating("kept")).ok());
  ASSERT_TRUE(
      ExecOn(env.path(), "UPDATE versions SET position=5 WHERE sid='moved'"));
  const absl::Status st = (*store)->LoadVersion({"acme", "moved"}, 0).status();
  EXPECT_EQ(GetReason(st), Reason::kStateCorrupt) << st;
  EXPECT_TRUE((*store)->LoadVersion({"acme", "kept"}, 0).ok());
}

// A durability the store does not know (a damaged or foreign row) reads
// as the least, MEMORY, as in the Redis store: never an enum value out of
// range, never more than is known.
TEST(SqliteStateStoreTest, AnUnknownDurabilityReadsAsTheLeast) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateSession(Creating("odd")).ok());
  for (const char* value : {"0", "7", "-1", "NULL"}) {
    ASSERT_TRUE(ExecOn(env.path(),
                       absl::StrCat("UPDATE versions SET durability=", value,
                                    " WHERE sid='odd'")
                           .c_str()));
    auto loaded = (*store)->LoadVersion({"acme", "odd"}, 0);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->version.durability, Durability::kMemory) << value;
  }
}

// A damaged file is DATA_LOSS/kStateCorrupt (retrying cannot help), not
// UNAVAILABLE as for a store that cannot be reached.
TEST(SqliteStateStoreTest, ADamagedFileIsStateCorrupt) {
  SqliteEnv env;
  {
    auto store = env.NewStore(8);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE((*store)->CreateSession(Creating(absl::StrCat("s", i))).ok());
    }
  }
  // Every page after the first (the schema) overwritten.
  {
    std::fstream f(env.path(), std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    ASSERT_GT(size, 8192);
    f.seekp(4096);
    const std::string junk(size - 4096, '\xA5');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  auto head = (*store)->GetHead({"acme", "s7"});
  EXPECT_EQ(head.status().code(), absl::StatusCode::kDataLoss) << head.status();
  EXPECT_EQ(GetReason(head.status()), Reason::kStateCorrupt) << head.status();
  // A listing reports the damaged file, not an empty page.
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = (*store)->ListSessions(list);
  EXPECT_EQ(GetReason(page.status()), Reason::kStateCorrupt)
      << (page.ok() ? "a page of " + std::to_string(page->sessions.size())
                    : page.status().ToString());
  (*store).reset();
  // A file that is no database at all.
  {
    std::ofstream f(env.path(), std::ios::trunc | std::ios::binary);
    f << std::string(8192, 'x');
  }
  auto other = env.NewStore(8);
  EXPECT_EQ(GetReason(other.status()), Reason::kStateCorrupt) << other.status();
}

// A database written before sessions recorded their creating request (no
// create_rid/create_digest columns) opens: its sessions read with none,
// and new ones record theirs.
TEST(SqliteStateStoreTest, ADatabaseWithoutTheRequestColumnsIsUpgraded) {
  SqliteEnv env;
  CreateSessionRequest r;
  r.key = {"acme", "old"};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1);
  r.request_id = "create-old";
  {
    auto store = env.NewStore(8);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->CreateSession(r).ok());
  }
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(env.path().c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    const int rc =
        sqlite3_exec(db,
                     "ALTER TABLE sessions DROP COLUMN create_rid;"
                     "ALTER TABLE sessions DROP COLUMN create_digest;"
                     "ALTER TABLE versions DROP COLUMN cause;"
                     "ALTER TABLE versions DROP COLUMN rid;",
                     nullptr, nullptr, &err);
    const std::string msg = err ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << msg;
  }
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  auto old = (*store)->GetHead(r.key);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->create_request_id, "");
  EXPECT_EQ(old->model_id, "tiny");
  EXPECT_EQ(old->head.cause, VersionCause::kUnspecified);
  EXPECT_EQ(old->head.request_id, "");
  auto loaded = (*store)->LoadVersion(r.key, 1);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->state.state, TestSnapshot(1).state);
  CreateSessionRequest next = r;
  next.key.session_id = "new";
  next.request_id = "create-new";
  next.request_digest = 42;
  ASSERT_TRUE((*store)->CreateSession(next).ok());
  auto head = (*store)->GetHead(next.key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->create_request_id, "create-new");
  EXPECT_EQ(head->create_digest, 42u);
  EXPECT_EQ(head->head.cause, VersionCause::kCreate);
  EXPECT_EQ(head->head.request_id, "create-new");
}

}  // namespace
}  // namespace statestream::testing
