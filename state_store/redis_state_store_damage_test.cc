// SPDX-License-Identifier: Apache-2.0
// The Redis store on damaged hashes (a bad write by hand, a bug, another
// program): every call on the session is DATA_LOSS / STATE_CORRUPT at
// once, nothing is written, and the shard stays free for other sessions.
#include <sys/resource.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/redis_state_store.h"
#include "state_store/redis_state_store_test_util.h"
#include "state_store/testing/redis_harness.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

int64_t PeakRssKiB() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// What a client is told of `st` (its public message, else its message, and
// the `detail` metadata) names no Redis key: the store's layout is the
// deployment's.
void ExpectNoKeyShown(const absl::Status& st, absl::string_view context) {
  const std::string shown =
      absl::StrCat(GetPublicMessage(st).value_or(std::string(st.message())),
                   " | ", GetErrorMetadata(st, "detail").value_or(""));
  EXPECT_FALSE(absl::StrContains(shown, "ss:{")) << context << ": " << shown;
  EXPECT_FALSE(absl::StrContains(shown, "user_script"))
      << context << ": " << shown;
}

// Every call that reads the session's versions, and what it must answer.
struct SessionCall {
  std::string name;
  std::function<absl::Status()> run;
};

std::vector<SessionCall> CallsOn(StateStore* store, const SessionKey& key,
                                 uint64_t fence) {
  return {
      {"LoadVersion(head)",
       [=] { return store->LoadVersion(key, 0).status(); }},
      {"ListVersions", [=] { return store->ListVersions(key).status(); }},
      {"UpdateSession",
       [=] {
         SessionUpdate u;
         u.ttl = absl::Hours(1);
         return store->UpdateSession(key, u).status();
       }},
      {"Commit",
       [=] {
         CommitRequest r;
         r.key = key;
         r.expected_version = 1;
         r.fence = fence;
         r.state = TestSnapshot(2);
         return store->Commit(r).status();
       }},
      {"AcquireLease",
       [=] {
         return store->AcquireLease(key, "worker-b", absl::Seconds(10), true)
             .status();
       }},
  };
}

// Counts the scripts loop over (the versions' range, a version's chunks):
// damaged, they are refused before any write, instead of a loop of
// billions of steps that held the shard (and every tenant on it) for
// hours, or a Lua error reported as INTERNAL.
TEST(RedisStateStoreDamageTest, ADamagedCountIsCorruptOnEveryCall) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  const std::vector<std::pair<std::string, std::vector<std::string>>> damage = {
      {"huge chunk count", {"v1", "chunk_count", "4294967295"}},
      {"chunk count not a number", {"v1", "chunk_count", "x"}},
      {"fractional chunk count", {"v1", "chunk_count", "2.5"}},
      {"chunk count beyond the size", {"v1", "chunk_count", "9"}},
      {"size not a number", {"v1", "state_bytes", "big"}},
      {"huge head version", {"head", "version", "9000000000000"}},
      {"version not a number", {"head", "version", "one"}},
      {"oldest after the version", {"head", "oldest", "7"}},
      {"oldest below 1", {"head", "oldest", "-5"}},
      {"no oldest", {"head", "oldest", ""}}};
  int n = 0;
  for (const auto& [what, field] : damage) {
    const std::string id = absl::StrCat("c", n++);
    const SessionKey key{"acme", id};
    auto c = store->CreateSession(NewSession(id, Durability::kMemory));
    ASSERT_TRUE(c.ok()) << c.status();
    const std::string p = absl::StrCat("ss:{acme/", id, "}:");
    ASSERT_TRUE(
        server->Command({"HSET", p + field[0], field[1], field[2]}).ok());
    auto fence_before = server->Command({"GET", p + "fence"});
    ASSERT_TRUE(fence_before.ok());
    for (const SessionCall& call :
         CallsOn(store.get(), key, c->session.fence)) {
      // A listing reads no chunk counts (it reports them).
      if (call.name == "ListVersions" && field[0] == "v1") continue;
      const absl::Status st = call.run();
      EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss)
          << what << ": " << call.name << ": " << st;
      EXPECT_EQ(GetReason(st), Reason::kStateCorrupt)
          << what << ": " << call.name << ": " << st;
      ExpectNoKeyShown(st, absl::StrCat(what, ": ", call.name));
    }
    // Nothing was written: no new fence, no version 2, the head still
    // there.
    EXPECT_EQ(*server->Command({"GET", p + "fence"}), *fence_before) << what;
    EXPECT_EQ(*server->Command({"EXISTS", p + "v2"}), "0") << what;
    EXPECT_EQ(*server->Command({"EXISTS", p + "head"}), "1") << what;
  }
  // The tenant's listing leaves the sessions whose head is damaged out
  // instead of failing (those whose version records counts out of range
  // are listed: the head reads, and a listing loops over no counts; a
  // value that is no number at all is damage to any read), and a limited
  // create counts them all (TENANT_LIMIT, not DATA_LOSS).
  size_t sound_heads = 0;
  for (const auto& [what, field] : damage) {
    uint64_t number;
    sound_heads += field[0] == "v1" && absl::SimpleAtoi(field[2], &number);
  }
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = store->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->sessions.size(), sound_heads);
  CreateSessionRequest limited = NewSession("one-more", Durability::kMemory);
  limited.max_tenant_sessions = n;
  EXPECT_EQ(GetReason(store->CreateSession(limited).status()),
            Reason::kTenantLimit);
  // A delete removes a damaged session all the same.
  for (int i = 0; i < n; ++i) {
    const SessionKey key{"acme", absl::StrCat("c", i)};
    EXPECT_TRUE(store->DeleteSession(key).ok()) << key.session_id;
    EXPECT_EQ(GetReason(store->GetHead(key).status()),
              Reason::kSessionNotFound);
    EXPECT_EQ(
        *server->Command({"EXISTS", absl::StrCat("ss:{acme/c", i, "}:head")}),
        "0");
  }
  EXPECT_TRUE(store->CreateSession(limited).ok());
  // The shard is free: another session works as before.
  auto other = store->CreateSession(NewSession("fine", Durability::kMemory));
  ASSERT_TRUE(other.ok()) << other.status();
  auto loaded = store->LoadVersion({"acme", "fine"}, 0);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(store->DeleteSession({"acme", "fine"}).ok());
}

// Keys of the wrong type, and numbers that are none, where the scripts and
// the store read them: STATE_CORRUPT (or a call that does not read them
// goes through), never INTERNAL (a Lua error or WRONGTYPE relayed); the
// tenant's listing leaves the sessions out whose head cannot be read, and a
// delete removes each. A head of the wrong type failed every listing of
// the tenant and could not be deleted.
TEST(RedisStateStoreDamageTest, KeysOfTheWrongTypeAreCorruptNotInternal) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  struct Damage {
    std::string what;
    std::vector<std::vector<std::string>> commands;  // on the key's suffix
    bool head_readable;  // listed: GetHead does not read the damage
    // The calls that write (an update, a commit, a lease) are refused, with
    // nothing written.
    bool writes_refused;
  };
  const std::vector<Damage> damage = {
      {"head a string",
       {{"DEL", "head"}, {"SET", "head", "junk"}},
       false,
       true},
      {"head a list", {{"DEL", "head"}, {"RPUSH", "head", "a"}}, false, true},
      {"head without a version", {{"HDEL", "head", "version"}}, false, true},
      {"head version hash a string",
       {{"DEL", "v1"}, {"SET", "v1", "junk"}},
       false,
       true},
      {"lease a string", {{"SET", "lease", "junk"}}, false, false},
      {"fence a hash",
       {{"DEL", "fence"}, {"HSET", "fence", "a", "b"}},
       false,
       true},
      {"fence not a number", {{"SET", "fence", "abc"}}, false, true},
      {"ttl_ms not a number", {{"HSET", "head", "ttl_ms", "zz"}}, false, true},
      // PEXPIRE 0 at the next write deleted the session.
      {"ttl_ms zero", {{"HSET", "head", "ttl_ms", "0"}}, false, true},
      {"ttl_ms below -1", {{"HSET", "head", "ttl_ms", "-5"}}, false, true},
      {"deletion mark a hash", {{"HSET", "deleted", "a", "b"}}, true, false},
  };
  int n = 0;
  std::vector<uint64_t> fences;
  for (const Damage& d : damage) {
    const std::string id = absl::StrCat("w", n++);
    auto c = store->CreateSession(NewSession(id, Durability::kMemory));
    ASSERT_TRUE(c.ok()) << c.status();
    fences.push_back(c->session.fence);
    const std::string p = absl::StrCat("ss:{acme/", id, "}:");
    for (std::vector<std::string> cmd : d.commands) {
      cmd[1] = p + cmd[1];
      ASSERT_TRUE(server->Command(cmd).ok()) << d.what;
    }
  }
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = store->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  size_t readable = 0;
  for (const Damage& d : damage) readable += d.head_readable;
  EXPECT_EQ(page->sessions.size(), readable);
  for (int i = 0; i < n; ++i) {
    const SessionKey key{"acme", absl::StrCat("w", i)};
    std::vector<SessionCall> calls = {
        {"GetHead", [&] { return store->GetHead(key).status(); }},
        {"RenewLease", [&] {
           return store
               ->RenewLease(key, "worker-a", fences[i], absl::Seconds(10))
               .status();
         }}};
    for (SessionCall& call : CallsOn(store.get(), key, fences[i])) {
      calls.push_back(std::move(call));
    }
    const std::string p = absl::StrCat("ss:{acme/w", i, "}:");
    const auto fence_before = server->Command({"GET", p + "fence"});
    for (const SessionCall& call : calls) {
      const absl::Status st = call.run();
      const bool writes = call.name == "UpdateSession" ||
                          call.name == "Commit" || call.name == "AcquireLease";
      if (damage[i].writes_refused && writes) {
        EXPECT_EQ(GetReason(st), Reason::kStateCorrupt)
            << damage[i].what << ": " << call.name << ": " << st;
      } else {
        EXPECT_TRUE(st.ok() || GetReason(st) == Reason::kStateCorrupt)
            << damage[i].what << ": " << call.name << ": " << st;
      }
      ExpectNoKeyShown(st, absl::StrCat(damage[i].what, ": ", call.name));
    }
    if (damage[i].writes_refused) {
      const auto fence_after = server->Command({"GET", p + "fence"});
      EXPECT_EQ(fence_after.ok(), fence_before.ok()) << damage[i].what;
      if (fence_after.ok() && fence_before.ok()) {
        EXPECT_EQ(*fence_after, *fence_before) << damage[i].what;
      }
      EXPECT_EQ(*server->Command({"EXISTS", p + "v2"}), "0") << damage[i].what;
    }
  }
  for (int i = 0; i < n; ++i) {
    const SessionKey key{"acme", absl::StrCat("w", i)};
    const absl::Status deleted = store->DeleteSession(key);
    EXPECT_TRUE(deleted.ok()) << damage[i].what << ": " << deleted;
    EXPECT_EQ(GetReason(store->GetHead(key).status()), Reason::kSessionNotFound)
        << damage[i].what;
  }
  auto other = store->CreateSession(NewSession("fine", Durability::kMemory));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(store->LoadVersion({"acme", "fine"}, 0).ok());
}

// A version hash whose numbers are none, or that disagrees with its state
// (the position and input offset GetHead reports): STATE_CORRUPT, not a
// 0 read for "xyz" nor a session that reports one place and resumes at
// another.
TEST(RedisStateStoreDamageTest,
     AVersionHashThatDisagreesWithItsStateIsCorrupt) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  for (const char* id : {"xyz", "moved", "kept"}) {
    ASSERT_TRUE(store->CreateSession(NewSession(id, Durability::kMemory)).ok());
  }
  ASSERT_TRUE(
      server->Command({"HSET", "ss:{acme/xyz}:v1", "position", "xyz"}).ok());
  ASSERT_TRUE(server
                  ->Command({"HSET", "ss:{acme/moved}:v1", "position", "5",
                             "input_offset", "5"})
                  .ok());
  const absl::Status head = store->GetHead({"acme", "xyz"}).status();
  EXPECT_EQ(GetReason(head), Reason::kStateCorrupt) << head;
  const absl::Status versions = store->ListVersions({"acme", "xyz"}).status();
  EXPECT_EQ(GetReason(versions), Reason::kStateCorrupt) << versions;
  const absl::Status load = store->LoadVersion({"acme", "moved"}, 0).status();
  EXPECT_EQ(GetReason(load), Reason::kStateCorrupt) << load;
  EXPECT_TRUE(store->LoadVersion({"acme", "kept"}, 0).ok());
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = store->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->sessions.size(), 2u);  // "xyz" left out
}

// A version hash whose durability is no level (written by hand or another
// program) claims the least: a wait for REPLICATED on a server without
// replicas is not reached. It was read as the number itself, 7 >= REPLICATED.
TEST(RedisStateStoreDamageTest, AnUnknownDurabilityIsNoLevelReached) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  ASSERT_TRUE(
      store->CreateSession(NewSession("odd", Durability::kMemory)).ok());
  ASSERT_TRUE(
      server->Command({"HSET", "ss:{acme/odd}:v1", "durability", "7"}).ok());
  auto head = store->GetHead({"acme", "odd"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.durability, Durability::kMemory);
  const absl::Status waited =
      store->AwaitDurability({"acme", "odd"}, 1, Durability::kReplicated)
          .status();
  EXPECT_EQ(waited.code(), absl::StatusCode::kUnavailable) << waited;
  EXPECT_EQ(GetReason(waited), Reason::kStoreUnavailable) << waited;
}

// A head whose own version hash is gone (evicted, or deleted by hand) is
// damage: STATE_CORRUPT on a read, left out of the tenant's listing, and
// deleted by id. It was NOT_FOUND/VERSION_MISMATCH for "version
// 18446744073709551615", which failed the tenant's every listing.
TEST(RedisStateStoreDamageTest, AHeadWithoutItsVersionHashIsCorrupt) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  ASSERT_TRUE(
      store->CreateSession(NewSession("lost", Durability::kMemory)).ok());
  ASSERT_TRUE(
      store->CreateSession(NewSession("kept", Durability::kMemory)).ok());
  ASSERT_TRUE(server->Command({"DEL", "ss:{acme/lost}:v1"}).ok());
  const SessionKey key{"acme", "lost"};
  auto head = store->GetHead(key);
  EXPECT_EQ(head.status().code(), absl::StatusCode::kDataLoss) << head.status();
  EXPECT_EQ(GetReason(head.status()), Reason::kStateCorrupt);
  ExpectNoKeyShown(head.status(), "GetHead");
  const absl::Status load = store->LoadVersion(key, 0).status();
  EXPECT_EQ(GetReason(load), Reason::kStateCorrupt);
  ExpectNoKeyShown(load, "LoadVersion");
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = store->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->sessions.size(), 1u);
  EXPECT_EQ(page->sessions[0].key.session_id, "kept");
  EXPECT_TRUE(store->DeleteSession(key).ok());
  EXPECT_EQ(GetReason(store->GetHead(key).status()), Reason::kSessionNotFound);
}

// An index entry no session can have (an id that is no id, put there by
// hand or another program) is dropped by the listing, not an
// INVALID_ARGUMENT for the tenant's every listing (and so every create
// at its session limit).
TEST(RedisStateStoreDamageTest, AForeignIndexEntryIsDroppedFromListings) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  ASSERT_TRUE(
      store->CreateSession(NewSession("kept", Durability::kMemory)).ok());
  const std::string index = "ss:{t:acme}:sessions";
  ASSERT_TRUE(server->Command({"ZADD", index, "0", "bad}id"}).ok());
  ASSERT_TRUE(server->Command({"ZADD", index, "0", ""}).ok());
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = store->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->sessions.size(), 1u);
  EXPECT_EQ(page->sessions[0].key.session_id, "kept");
  EXPECT_EQ(*server->Command({"ZCARD", index}), "1");
}

// A listing reads each batch's heads in one pipeline (after NOSCRIPT, one
// read loads the script and the rest are pipelined again). Across pages of
// 3, with the script
// cache flushed (every pipelined read answers NOSCRIPT), a damaged session
// and an index entry whose session is gone in the middle, the listing is
// the sound sessions in order, each once.
TEST(RedisStateStoreDamageTest, APipelinedListingReadsAroundDamage) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  std::vector<std::string> sound;
  for (int i = 0; i < 10; ++i) {
    const std::string id = absl::StrCat("s", i);
    ASSERT_TRUE(store->CreateSession(NewSession(id, Durability::kMemory)).ok());
    if (i != 4 && i != 7) sound.push_back(id);
  }
  ASSERT_TRUE(
      server->Command({"HSET", "ss:{acme/s4}:head", "version", "x"}).ok());
  ASSERT_TRUE(server->Command({"DEL", "ss:{acme/s7}:head"}).ok());
  ASSERT_TRUE(server->Command({"SCRIPT", "FLUSH"}).ok());
  std::vector<std::string> listed;
  ListSessionsRequest list;
  list.tenant = "acme";
  list.page_size = 3;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = store->ListSessions(list);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_LE(page->sessions.size(), 3u);
    for (const SessionHead& h : page->sessions) {
      listed.push_back(h.key.session_id);
    }
    if (page->next_page_token.empty()) break;
    list.page_token = page->next_page_token;
  }
  EXPECT_EQ(listed, sound);
  // The gone session's entry was dropped; the damaged one stays indexed.
  EXPECT_EQ(*server->Command({"ZCARD", "ss:{t:acme}:sessions"}), "9");
}

// A recorded size and count a load cannot trust: the chunks are asked for
// a round at a time and memory is committed only as they arrive, so a
// damaged hash claiming a gigabyte in 65,536 chunks (four exist) costs
// neither the gigabyte nor a pipeline of all of them.
TEST(RedisStateStoreDamageTest, ALoadOfADamagedSizeCommitsNoMemoryForIt) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  const SessionKey key{"acme", "big"};
  auto c = store->CreateSession(NewSession("big", Durability::kMemory));
  ASSERT_TRUE(c.ok()) << c.status();
  // Past the most chunks the store writes: refused as it stands.
  ASSERT_TRUE(server
                  ->Command({"HSET", "ss:{acme/big}:v1", "state_bytes",
                             "8589934592", "chunk_count", "65537"})
                  .ok());
  EXPECT_EQ(GetReason(store->LoadVersion(key, 1).status()),
            Reason::kStateCorrupt);
  // Within the bounds, chunk 4 on missing.
  ASSERT_TRUE(server
                  ->Command({"HSET", "ss:{acme/big}:v1", "state_bytes",
                             "1073741824", "chunk_count", "65536"})
                  .ok());
  const int64_t before = PeakRssKiB();
  const absl::Status st = store->LoadVersion(key, 1).status();
  EXPECT_EQ(GetReason(st), Reason::kStateCorrupt) << st;
  EXPECT_NE(st.message().find("is missing"), std::string::npos) << st;
#ifndef __SANITIZE_ADDRESS__  // ASan maps shadow memory for the buffer
  EXPECT_LT(PeakRssKiB() - before, 64 << 10) << "KiB of peak RSS";
#else
  (void)before;
#endif
}

// A state the store would cut into more chunks than it ever reads back is
// refused at the write (MESSAGE_TOO_LARGE), nothing indexed or written.
TEST(RedisStateStoreDamageTest, AStateOfTooManyChunksIsRefused) {
  auto started = RedisServer::Start({});
  ASSERT_TRUE(started.ok()) << started.status();
  RedisStateStoreOptions o;
  o.addresses = {(*started)->address()};
  o.chunk_bytes = 1024;
  auto made = NewRedisStateStore(o);
  ASSERT_TRUE(made.ok()) << made.status();
  CreateSessionRequest r = NewSession("huge", Durability::kMemory);
  r.initial_state = TestSnapshot(1, (64 << 20) / 4 + 1);  // > 64 MiB
  const absl::Status st = (*made)->CreateSession(r).status();
  EXPECT_EQ(GetReason(st), Reason::kMessageTooLarge) << st;
  EXPECT_EQ(*(*started)->Command({"DBSIZE"}), "0");
  // And keep_versions is bounded like the counts the scripts accept.
  o.keep_versions = 65537;
  EXPECT_EQ(NewRedisStateStore(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace statestream::testing
