// SPDX-License-Identifier: Apache-2.0
// The Redis store against a command sent twice: the client resends a
// pipeline whose reply it lost, and a copy of the first send can still
// reach Redis after the second (bytes the kernel held after a timeout).
// Neither may change what the other committed.
#include <memory>
#include <regex>
#include <string>
#include <vector>

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

// The delete script sent twice with the same nonce (the client resends a
// pipeline whose reply it lost) answers OK both times; another call after
// the deletion still gets NOTFOUND.
TEST(RedisStateStoreTest, ADeleteResentAfterALostReplyIsOk) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  ASSERT_TRUE(store->CreateSession(NewSession("d", Durability::kMemory)).ok());
  const std::string p = "ss:{acme/d}:";
  const std::string src =
      absl::StrCat(store_internal::kLuaPrelude, store_internal::kLuaDelete);
  auto run = [&](const std::string& nonce) {
    return server->Command({"EVAL", src, "3", p + "head", p + "fence",
                            p + "lease", p, "60000", "0", nonce, "60000"});
  };
  auto first = run("n1");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, "OK");
  auto resent = run("n1");
  ASSERT_TRUE(resent.ok()) << resent.status();
  EXPECT_EQ(*resent, "OK");
  auto other = run("n2");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(*other, "NOTFOUND");
  EXPECT_EQ(GetReason(store->DeleteSession({"acme", "d"})),
            Reason::kSessionNotFound);
  // A copy of the first send that reaches Redis late, after the id was
  // created again, deletes nothing (it deleted the new session).
  ASSERT_TRUE(store->CreateSession(NewSession("d", Durability::kMemory)).ok());
  auto late = run("n1");
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ(*late, "OK");
  EXPECT_TRUE(store->GetHead({"acme", "d"}).ok());
}

// A worker's registration sent twice (a resent pipeline whose reply was
// lost) answers as its first copy did: the entry had expired, so both say
// "not listed" and the worker resyncs. The resend answered "listed" (it
// found the entry its first copy wrote). Another call after it does find
// it.
TEST(RedisStateStoreTest, ARegistrationResentAfterALostReplyAnswersAsItsFirst) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  const std::string src = absl::StrCat(store_internal::kLuaPrelude,
                                       store_internal::kLuaRegisterWorker);
  auto run = [&](const std::string& nonce) {
    return server->Command({"EVAL", src, "1", "ss:{workers}:index",
                            "ss:{workers}:w:", "0", "0", "w1", "", "60000",
                            nonce});
  };
  for (const char* nonce : {"n1", "n1"}) {
    auto r = run(nonce);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, "OK\n0") << nonce;
  }
  auto next = run("n2");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, "OK\n1");
  // Through the store: listed now; gone after an unregistration.
  WorkerInfo info;
  info.worker_id = "w1";
  info.address = "127.0.0.1:1";
  auto listed = store->RegisterWorker(info, absl::Seconds(60));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(*listed);
  ASSERT_TRUE(store->UnregisterWorker("w1").ok());
  listed = store->RegisterWorker(info, absl::Seconds(60));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_FALSE(*listed);
}

// A lease acquisition sent twice (a resent pipeline; or its first copy
// reaching Redis after the second) grants one fence: the second send used
// to bump it again, so the caller held a fence already stale and its
// every commit was FENCED. Another call of the same owner still bumps it.
TEST(RedisStateStoreTest, AnAcquireResentAfterALostReplyGrantsOneFence) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  ASSERT_TRUE(store->CreateSession(NewSession("a", Durability::kMemory)).ok());
  const std::string p = "ss:{acme/a}:";
  const std::string src =
      absl::StrCat(store_internal::kLuaPrelude, store_internal::kLuaAcquire);
  auto run = [&](const std::string& nonce) {
    return server->Command({"EVAL", src, "3", p + "head", p + "fence",
                            p + "lease", p, "60000", "0", "w1", "30000", "1",
                            "7", nonce});
  };
  auto first = run("n1");
  ASSERT_TRUE(first.ok()) << first.status();
  auto resent = run("n1");
  ASSERT_TRUE(resent.ok()) << resent.status();
  EXPECT_EQ(*resent, *first);
  auto head = store->GetHead({"acme", "a"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(absl::StrCat("OK\n", head->fence), *first);
  auto again = run("n2");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(*again, *first);
}

// A chunk write that reaches Redis after its version was committed (the
// first send of a pipeline the client resent after a timeout, held up in
// the network) leaves the committed chunk as it is: it used to put the
// pending TTL back on it, and the head was lost when that ran out. The
// store's own commands are read back from SLOWLOG (every command logged):
// each chunk SET carries NX.
TEST(RedisStateStoreTest, ALateChunkWriteLeavesACommittedVersionAlone) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  ASSERT_TRUE(
      server->Command({"CONFIG", "SET", "slowlog-log-slower-than", "0"}).ok());
  ASSERT_TRUE(
      server->Command({"CONFIG", "SET", "slowlog-max-len", "100000"}).ok());
  ASSERT_TRUE(server->Command({"SLOWLOG", "RESET"}).ok());
  ASSERT_TRUE(store->CreateSession(NewSession("c", Durability::kMemory)).ok());
  auto log = server->Command({"SLOWLOG", "GET", "100000"});
  ASSERT_TRUE(log.ok()) << log.status();
  // Each entry's arguments, one a line: the chunk SETs are those of a
  // chunk key (scripts' own SETs, of the fence say, are logged too).
  const std::vector<absl::string_view> lines = absl::StrSplit(*log, '\n');
  const std::regex chunk_key(R"(ss:\{acme/c\}:v1:[0-9a-f]{32}:c[0-9]+)");
  int sets = 0, nx = 0;
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    if (lines[i] != "SET" ||
        !std::regex_match(std::string(lines[i + 1]), chunk_key)) {
      continue;
    }
    ++sets;
    // The value (128 bytes at most in the log) may hold newlines.
    size_t px = i + 3;
    while (px + 2 < lines.size() && px < i + 40 && lines[px] != "PX") ++px;
    nx += px + 2 < lines.size() && lines[px] == "PX" && lines[px + 2] == "NX";
  }
  EXPECT_GT(sets, 0);
  EXPECT_EQ(nx, sets);

  auto keys = server->Command({"KEYS", "ss:{acme/c}:v1:*:c*"});
  ASSERT_TRUE(keys.ok()) << keys.status();
  const std::vector<std::string> chunks =
      absl::StrSplit(*keys, '\n', absl::SkipEmpty());
  ASSERT_FALSE(chunks.empty());
  for (const std::string& k : chunks) {
    auto value = server->Command({"GET", k});
    ASSERT_TRUE(value.ok()) << value.status();
    for (const store_internal::Command& late :
         {store_internal::PendingChunkWrite(k, *value, "300"),
          store_internal::PendingChunkRenewal(k, "300")}) {
      ASSERT_TRUE(
          server->Command(std::vector<std::string>(late.begin(), late.end()))
              .ok());
    }
  }
  absl::SleepFor(absl::Milliseconds(500));
  auto loaded = store->LoadVersion({"acme", "c"}, 0);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
}

}  // namespace
}  // namespace statestream::testing
