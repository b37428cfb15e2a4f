// SPDX-License-Identifier: Apache-2.0
// The SQLite store: the contract suite, expiry sweeps, fences and
// several processes on one file. File-level behaviour (layout, upgrades,
// space, damage) is in sqlite_state_store_file_test.cc.
#include "state_store/sqlite_state_store.h"

#include <sqlite3.h>

#include <functional>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/sqlite_state_store_test_util.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

std::unique_ptr<StoreEnv> NewSqliteEnv() {
  return std::make_unique<SqliteEnv>();
}

INSTANTIATE_TEST_SUITE_P(Sqlite, StateStoreContractTest,
                         ::testing::Values(&NewSqliteEnv));

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

// Runs `action` after each commit (its write lock released) of the
// connections opened while installed, until it returns true. The WAL hook
// is set at the first commit: the open sets its own after extensions.
struct AfterCommit {
  static inline std::function<bool()> action;
  static int Hook(void*, sqlite3*, const char*, int) {
    if (action && action()) action = nullptr;
    return SQLITE_OK;
  }
  static int OnCommit(void* db) {
    sqlite3_wal_hook(static_cast<sqlite3*>(db), &Hook, nullptr);
    return 0;  // the commit goes on
  }
  static int Install(sqlite3* db, char**, const sqlite3_api_routines*) {
    sqlite3_commit_hook(db, &OnCommit, db);
    return SQLITE_OK;
  }
};

// Another connection on the file that takes the lease between a create's
// commit and the create's answer does not hand the creator the new
// holder's fence (two writers on one fence): the create returns the fence
// it granted, and a commit under it is refused.
TEST(SqliteStateStoreTest, ACreateReturnsTheFenceItGranted) {
  SqliteEnv env;
  // Only the creator's connection gets the hook.
  sqlite3_auto_extension(reinterpret_cast<void (*)()>(&AfterCommit::Install));
  auto creator = env.NewStore(8);
  sqlite3_reset_auto_extension();
  ASSERT_TRUE(creator.ok()) << creator.status();
  auto thief = env.NewStore(8);
  ASSERT_TRUE(thief.ok()) << thief.status();
  const SessionKey key{"acme", "f"};
  std::optional<absl::StatusOr<Lease>> taken;
  AfterCommit::action = [&] {
    if (!(*thief)->GetHead(key).ok()) return false;  // the sweep's commit
    taken = (*thief)->AcquireLease(key, "thief", absl::Seconds(60), true);
    return true;
  };
  CreateSessionRequest r;
  r.key = key;
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1);
  auto created = (*creator)->CreateSession(r);
  AfterCommit::action = nullptr;
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(taken.has_value()) << "the hook never ran after the create";
  ASSERT_TRUE(taken->ok()) << taken->status();
  EXPECT_LT(created->session.fence, (*taken)->fence);
  EXPECT_EQ(created->session.fence, created->version.fence);
  CommitRequest commit;
  commit.key = key;
  commit.expected_version = 1;
  commit.fence = created->session.fence;
  commit.state = TestSnapshot(2);
  EXPECT_EQ(GetReason((*creator)->Commit(commit).status()), Reason::kFenced);
  commit.fence = (*taken)->fence;
  EXPECT_TRUE((*thief)->Commit(commit).ok());
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
  ASSERT_TRUE(ExecSql(env.path(),
                      "CREATE TRIGGER refuse BEFORE DELETE ON versions "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END")
                  .ok());
  EXPECT_TRUE(create("a", absl::Hours(1)).ok());  // its sweep failed
  EXPECT_EQ(CountRows(env.path(), "sessions"), 6);
  ASSERT_TRUE(ExecSql(env.path(), "DROP TRIGGER refuse").ok());
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

}  // namespace
}  // namespace statestream::testing
