// SPDX-License-Identifier: Apache-2.0
// The Redis store's tenant index (ss:{t:<tenant>}:sessions) on a real
// redis-server: limited creates' reservations and in-flight marks, the
// pruning of entries whose session is gone, and what a create at the
// tenant's limit reads.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/internal/redis_scripts.h"
#include "state_store/internal/redis_store.h"
#include "state_store/redis_state_store.h"
#include "state_store/redis_state_store_test_util.h"
#include "state_store/testing/redis_harness.h"

namespace statestream::testing {
namespace {

// Sends `commands` to `server`, each `times` times (a pipeline resent
// after a lost reply).
void SendEach(RedisServer* server,
              const std::vector<store_internal::Command>& commands,
              int times = 1) {
  for (const store_internal::Command& c : commands) {
    for (int i = 0; i < times; ++i) {
      ASSERT_TRUE(
          server->Command(std::vector<std::string>(c.begin(), c.end())).ok());
    }
  }
}

// A limited create marks itself in flight: a listing that meets its
// reservation before its head (another create at the limit lists) keeps
// it, so that create cannot take its place; once the mark is gone (the
// create ended or its creator died), the entry without a head is pruned.
// An older build's mark (a count, "creating") keeps it too.
TEST(RedisStateStoreTest, AListingKeepsTheReservationOfACreateInFlight) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  ASSERT_TRUE(server->Command({"ZADD", "ss:{t:acme}:sessions", "0", "x"}).ok());
  const std::string marks = "ss:{acme/x}:creates";
  SendEach(server.get(), store_internal::CreateMark(marks, "n1", "60000"));
  ASSERT_TRUE(
      server->Command({"SET", "ss:{acme/x}:creating", "1", "PX", "60000"})
          .ok());
  ListSessionsRequest list;
  list.tenant = "acme";
  CreateSessionRequest full = NewSession("y", Durability::kMemory);
  full.max_tenant_sessions = 1;
  for (int marked = 2; marked > 0; --marked) {
    auto page = store->ListSessions(list);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_TRUE(page->sessions.empty());
    EXPECT_EQ(store->CountSessionsBound("acme").value_or(-1), 1) << marked;
    EXPECT_EQ(GetReason(store->CreateSession(full).status()),
              Reason::kTenantLimit);
    if (marked == 2) {
      SendEach(server.get(), {store_internal::CreateUnmark(marks, "n1")});
      EXPECT_EQ(*server->Command({"EXISTS", marks}), "0");
    } else {
      ASSERT_TRUE(server->Command({"DEL", "ss:{acme/x}:creating"}).ok());
    }
  }
  ASSERT_TRUE(store->CreateSession(full).ok());  // pruned "x", then room
  EXPECT_EQ(store->CountSessionsBound("acme").value_or(-1), 1);
}

// A create's mark and unmark, each sent twice (the client resends a
// pipeline whose reply it lost), leave what one send leaves: a count
// added twice kept the reservation of a create that had ended for a
// minute, and one taken back twice unmarked another create of the id in
// flight, whose reservation a listing could then prune. A limited create
// that ends leaves no mark.
TEST(RedisStateStoreTest, ACreateMarkSentTwiceIsMarkedOnce) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  CreateSessionRequest limited = NewSession("m", Durability::kMemory);
  limited.max_tenant_sessions = 10;
  ASSERT_TRUE(store->CreateSession(limited).ok());
  EXPECT_EQ(*server->Command({"EXISTS", "ss:{acme/m}:creates"}), "0");

  const std::string marks = "ss:{acme/gone}:creates";
  ASSERT_TRUE(
      server->Command({"ZADD", "ss:{t:acme}:sessions", "0", "gone"}).ok());
  SendEach(server.get(), store_internal::CreateMark(marks, "first", "60000"),
           2);
  SendEach(server.get(), {store_internal::CreateUnmark(marks, "first")});
  EXPECT_EQ(*server->Command({"EXISTS", marks}), "0");

  SendEach(server.get(), store_internal::CreateMark(marks, "first", "60000"));
  SendEach(server.get(), store_internal::CreateMark(marks, "second", "60000"));
  SendEach(server.get(), {store_internal::CreateUnmark(marks, "first")}, 2);
  auto ttl = server->Command({"PTTL", marks});
  int64_t ms = -1;
  EXPECT_TRUE(absl::SimpleAtoi(*ttl, &ms) && ms > 0) << *ttl;
  ListSessionsRequest list;
  list.tenant = "acme";
  ASSERT_TRUE(store->ListSessions(list).ok());
  EXPECT_EQ(store->CountSessionsBound("acme").value_or(-1), 2)
      << "the second create's reservation was pruned";
  SendEach(server.get(), {store_internal::CreateUnmark(marks, "second")});
  EXPECT_EQ(*server->Command({"EXISTS", marks}), "0");
  ASSERT_TRUE(store->ListSessions(list).ok());
  EXPECT_EQ(store->CountSessionsBound("acme").value_or(-1), 1);
}

// Sessions Redis expired leave the tenant's index even if nobody lists or
// deletes them: after each create the stale entries among a few drawn are
// dropped,
// so the index stays near the live sessions instead of growing forever
// (and ZCARD, the session limit's bound, with it).
TEST(RedisStateStoreTest, CreatesPruneTheIndexOfExpiredSessions) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  for (int i = 0; i < 60; ++i) {
    ASSERT_TRUE(store
                    ->CreateSession(
                        NewSession(absl::StrCat("old", i), Durability::kMemory))
                    .ok());
  }
  // As Redis expires them: every key of the session goes.
  for (int i = 0; i < 60; ++i) {
    const std::string p = absl::StrCat("ss:{acme/old", i, "}:");
    auto keys = server->Command({"KEYS", p + "*"});
    ASSERT_TRUE(keys.ok()) << keys.status();
    for (absl::string_view k : absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
      ASSERT_TRUE(server->Command({"DEL", std::string(k)}).ok());
    }
  }
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(store
                    ->CreateSession(
                        NewSession(absl::StrCat("new", i), Durability::kMemory))
                    .ok());
  }
  // Each stale entry is drawn about 2.5 times on average: ~5 of 60 left,
  // once the pruner (a thread of the store's: no create waits for it) has
  // caught up.
  absl::StatusOr<int64_t> count;
  for (int i = 0; i < 600; ++i) {
    count = store->CountSessionsBound("acme");
    ASSERT_TRUE(count.ok()) << count.status();
    if (*count <= 300 + 30) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_LE(*count, 300 + 30);
  EXPECT_GE(*count, 300);  // no live session was dropped
  ListSessionsRequest list;
  list.tenant = "acme";
  list.page_size = 1000;
  auto page = store->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->sessions.size(), 300u);
}

// A create at its tenant's limit frees the place of a session that is gone
// (found by a sample, else by a listing of the whole tenant), but a tenant
// retrying creates at its limit does not have its every session read each
// time: the whole tenant at most once a kFullIndexPruneInterval. (Each
// refused create listed the tenant: 150 head reads a retry here.)
TEST(RedisStateStoreTest, ACreateAtTheLimitListsTheTenantAtMostOnceAWhile) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  constexpr int kLimit = 150;
  auto create = [&](const std::string& id) {
    CreateSessionRequest r = NewSession(id, Durability::kMemory);
    r.max_tenant_sessions = kLimit;
    return store->CreateSession(r).status();
  };
  for (int i = 0; i < kLimit; ++i) {
    ASSERT_TRUE(create(absl::StrCat("s", i)).ok());
  }
  EXPECT_EQ(GetReason(create("x")), Reason::kTenantLimit);
  // s7 gone as if Redis expired it (its index entry stays): its place is
  // free to the next create, whether the sample draws it or not.
  ASSERT_TRUE(server->Command({"DEL", "ss:{acme/s7}:head"}).ok());
  ASSERT_TRUE(
      server->Command({"SET", "ss:{t:acme}:pruned", "1", "PX", "60000"}).ok())
      << "a listing of the whole tenant just ran";
  for (int tries = 0; create("x").ok() == false; ++tries) {
    // The sample (64 of 150) missed s7 and a listing waits for the mark:
    // the create is refused until a sample draws it.
    ASSERT_LT(tries, 40) << "64 of 150 drawn each time never met s7";
  }
  ASSERT_TRUE(server->Command({"DEL", "ss:{acme/s8}:head"}).ok());
  ASSERT_TRUE(server->Command({"DEL", "ss:{t:acme}:pruned"}).ok());
  EXPECT_TRUE(create("y").ok());  // by the sample, or else the listing
  auto reads = [&]() -> int64_t {
    auto info = server->Command({"INFO", "commandstats"});
    EXPECT_TRUE(info.ok()) << info.status();
    const std::string& text = info.ok() ? *info : "";
    const std::string kCalls = "cmdstat_evalsha:calls=";
    const size_t at = text.find(kCalls);
    int64_t n = -1;
    if (at != std::string::npos) {
      const size_t from = at + kCalls.size();
      (void)absl::SimpleAtoi(text.substr(from, text.find(',', from) - from),
                             &n);
    }
    return n;
  };
  ASSERT_TRUE(
      server->Command({"SET", "ss:{t:acme}:pruned", "1", "PX", "60000"}).ok());
  const int64_t before = reads();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(GetReason(create(absl::StrCat("z", i))), Reason::kTenantLimit);
  }
  // A reservation and an unmark each: a handful of scripts, not a listing.
  EXPECT_LT(reads() - before, 5 * 10);
  ASSERT_TRUE(server->Command({"DEL", "ss:{t:acme}:pruned"}).ok());
  EXPECT_EQ(GetReason(create("z")), Reason::kTenantLimit);  // lists it all
  EXPECT_EQ(*server->Command({"EXISTS", "ss:{t:acme}:pruned"}), "1");
}

}  // namespace
}  // namespace statestream::testing
