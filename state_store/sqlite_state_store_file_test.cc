// SPDX-License-Identifier: Apache-2.0
// The SQLite store's file: its layout, upgrades of older files, the
// space it gives back, its permissions and damaged rows.
#include <sqlite3.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/internal/sqlite_db.h"
#include "state_store/sqlite_state_store.h"
#include "state_store/sqlite_state_store_test_util.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

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
      ExecSql(env.path(), "UPDATE sessions SET labels='x' WHERE sid='b'").ok());
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

// A session whose fence row is gone (written with it in one transaction)
// is damaged: STATE_CORRUPT, as a missing head version is, not NOT_FOUND
// for a session whose id a create is then refused as taken.
TEST(SqliteStateStoreTest, ASessionWithoutItsFenceIsCorruptNotMissing) {
  SqliteEnv env;
  auto store = env.NewStore(8);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateSession(Creating("nofence")).ok());
  ASSERT_TRUE(
      ExecSql(env.path(), "DELETE FROM fences WHERE sid='nofence'").ok());
  const absl::Status st = (*store)->GetHead({"acme", "nofence"}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(GetReason(st), Reason::kStateCorrupt);
  EXPECT_TRUE((*store)->DeleteSession({"acme", "nofence"}).ok());
  EXPECT_TRUE((*store)->CreateSession(Creating("nofence")).ok());
  EXPECT_TRUE((*store)->GetHead({"acme", "nofence"}).ok());
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
      ExecSql(env.path(), "UPDATE versions SET position=5 WHERE sid='moved'")
          .ok());
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
    ASSERT_TRUE(ExecSql(env.path(),
                        absl::StrCat("UPDATE versions SET durability=", value,
                                     " WHERE sid='odd'")
                            .c_str())
                    .ok());
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
