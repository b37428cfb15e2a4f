// SPDX-License-Identifier: Apache-2.0
// The contract suite against a real redis-server and a real 6-node Redis
// Cluster, plus Redis-specific behaviour: durability levels, refused
// writes, tenant slots. Credentials, ACLs and the eviction policy:
// redis_state_store_access_test.cc; outages and Interrupt:
// redis_state_store_outage_test.cc.
#include "state_store/redis_state_store.h"

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/internal/redis_scripts.h"
#include "state_store/internal/redis_store.h"
#include "state_store/redis_state_store_test_util.h"
#include "state_store/testing/redis_harness.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

RedisServer* SharedServer() {
  // Destroyed at exit, which stops redis-server and removes its directory.
  static const std::unique_ptr<RedisServer> server = [] {
    auto s = RedisServer::Start({});
    if (!s.ok()) {
      ADD_FAILURE() << s.status();
      return std::unique_ptr<RedisServer>();
    }
    return *std::move(s);
  }();
  return server.get();
}

RedisCluster* SharedCluster() {
  static const std::unique_ptr<RedisCluster> cluster = [] {
    auto c = RedisCluster::Start();
    if (!c.ok()) {
      ADD_FAILURE() << c.status();
      return std::unique_ptr<RedisCluster>();
    }
    return *std::move(c);
  }();
  return cluster.get();
}

class RedisEnv : public StoreEnv {
 public:
  explicit RedisEnv(bool cluster) : cluster_(cluster) {
    for (RedisServer* n : Nodes()) {
      // Replicas refuse FLUSHALL: ignore their errors.
      (void)n->Command({"FLUSHALL"});
    }
  }
  absl::StatusOr<std::unique_ptr<StateStore>> NewStore(
      int keep_versions) override {
    RedisStateStoreOptions o;
    o.addresses = cluster_
                      ? SharedCluster()->addresses()
                      : std::vector<std::string>{SharedServer()->address()};
    o.cluster = cluster_;
    o.keep_versions = keep_versions;
    o.chunk_bytes = 256 << 10;  // several chunks for the larger test states
    o.retry_deadline = absl::Seconds(10);
    return NewRedisStateStore(o);
  }
  void Advance(absl::Duration d) override { absl::SleepFor(d); }
  // Flips a byte in the middle of the version's largest chunk (the state
  // payload; the header and the CRC table are chunks of their own).
  bool CanCorrupt() const override { return true; }
  bool CorruptStoredVersion(const SessionKey& key, uint64_t version) override {
    const std::string pattern = absl::StrCat(
        "ss:{", key.tenant, "/", key.session_id, "}:v", version, ":*:c*");
    for (RedisServer* n : Nodes()) {
      auto keys = n->Command({"KEYS", pattern});
      if (!keys.ok() || keys->empty()) continue;
      std::string largest;
      int64_t largest_len = 0;
      for (absl::string_view k :
           absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
        auto len = n->Command({"STRLEN", std::string(k)});
        int64_t v = 0;
        if (len.ok() && absl::SimpleAtoi(*len, &v) && v > largest_len) {
          largest = std::string(k);
          largest_len = v;
        }
      }
      if (largest_len == 0) return false;
      const std::string at = absl::StrCat(largest_len / 2);
      auto byte = n->Command({"GETRANGE", largest, at, at});
      if (!byte.ok() || byte->size() != 1) return false;
      const std::string flipped(1, static_cast<char>((*byte)[0] ^ 0x20));
      return n->Command({"SETRANGE", largest, at, flipped}).ok();
    }
    return false;
  }

 private:
  std::vector<RedisServer*> Nodes() {
    std::vector<RedisServer*> out;
    if (!cluster_) {
      if (SharedServer()) out.push_back(SharedServer());
    } else if (RedisCluster* c = SharedCluster()) {
      for (int i = 0; i < c->size(); ++i) out.push_back(c->node(i));
    }
    return out;
  }
  bool cluster_;
};

std::unique_ptr<StoreEnv> NewStandaloneEnv() {
  return std::make_unique<RedisEnv>(false);
}
std::unique_ptr<StoreEnv> NewClusterEnv() {
  return std::make_unique<RedisEnv>(true);
}

INSTANTIATE_TEST_SUITE_P(RedisStandalone, StateStoreContractTest,
                         ::testing::Values(&NewStandaloneEnv));
INSTANTIATE_TEST_SUITE_P(RedisCluster, StateStoreContractTest,
                         ::testing::Values(&NewClusterEnv));

// A commit of version 2 of acme/`id` at MEMORY under `fence`.
CommitRequest SecondVersion(const std::string& id, uint64_t fence) {
  CommitRequest r;
  r.key = {"acme", id};
  r.expected_version = 1;
  r.fence = fence;
  r.state = TestSnapshot(2);
  r.durability = Durability::kMemory;
  return r;
}

TEST(RedisStateStoreTest, DurabilityIsReportedHonestly) {
  // A server without AOF: MEMORY only; FSYNC and REPLICATED (no replica)
  // are not reached, and the version exists nonetheless.
  auto plain = RedisServer::Start({});
  ASSERT_TRUE(plain.ok()) << plain.status();
  RedisStateStoreOptions o;
  o.addresses = {(*plain)->address()};
  o.durability_timeout = absl::Milliseconds(100);
  auto store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  auto c = (*store)->CreateSession(NewSession("a", Durability::kMemory));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->version.durability, Durability::kMemory);
  CommitRequest r;
  r.key = {"acme", "a"};
  r.expected_version = 1;
  r.fence = c->session.fence;
  r.state = TestSnapshot(2);
  r.durability = Durability::kFsync;
  auto f = (*store)->Commit(r);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetReason(f.status()), Reason::kStoreUnavailable);
  EXPECT_EQ(GetErrorMetadata(f.status(), "durability_reached"), "MEMORY");
  EXPECT_EQ(GetErrorMetadata(f.status(), "version"), "2");
  r.expected_version = 2;
  r.durability = Durability::kReplicated;
  EXPECT_EQ(GetReason((*store)->Commit(r).status()), Reason::kStoreUnavailable);
  auto head = (*store)->GetHead(r.key);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->head.version, 3u);

  // appendfsync always: every acknowledged write is fsynced (Redis 7.0 has
  // no WAITAOF), so FSYNC is reached.
  auto aof = RedisServer::Start(
      {{"--appendonly", "yes", "--appendfsync", "always"}, 0, ""});
  ASSERT_TRUE(aof.ok()) << aof.status();
  o.addresses = {(*aof)->address()};
  store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  c = (*store)->CreateSession(NewSession("b", Durability::kFsync));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->version.durability, Durability::kFsync);

  // A replica: REPLICATED through WAIT.
  auto replica = RedisServer::Start(
      {{"--replicaof", "127.0.0.1", absl::StrCat((*aof)->port())}, 0, ""});
  ASSERT_TRUE(replica.ok()) << replica.status();
  o.durability_timeout = absl::Seconds(10);
  store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  c = (*store)->CreateSession(NewSession("c", Durability::kReplicated));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->version.durability, Durability::kReplicated);
  CommitRequest next;
  next.key = {"acme", "c"};
  next.expected_version = 1;
  next.fence = c->session.fence;
  next.state = TestSnapshot(2);
  next.durability = Durability::kReplicated;
  auto committed = (*store)->Commit(next);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->version.durability, Durability::kReplicated);
  // A version written at MEMORY, raised in place to REPLICATED (the wait
  // follows a write on the version, so it covers the version too).
  auto low = (*store)->CreateSession(NewSession("low", Durability::kMemory));
  ASSERT_TRUE(low.ok()) << low.status();
  auto raised =
      (*store)->AwaitDurability({"acme", "low"}, 1, Durability::kReplicated);
  ASSERT_TRUE(raised.ok()) << raised.status();
  EXPECT_EQ(raised->durability, Durability::kReplicated);
  auto low_versions = (*store)->ListVersions({"acme", "low"});
  ASSERT_TRUE(low_versions.ok()) << low_versions.status();
  ASSERT_EQ(low_versions->size(), 1u);
  EXPECT_EQ(low_versions->front().durability, Durability::kReplicated);

  // The levels nest: a replica's copy of a write the primary never fsynced
  // (no AOF) is not REPLICATED (a primary restarted empty would resync its
  // replicas to nothing), and it never answers a wait for FSYNC.
  auto bare = RedisServer::Start({});
  ASSERT_TRUE(bare.ok()) << bare.status();
  auto bare_replica = RedisServer::Start(
      {{"--replicaof", "127.0.0.1", absl::StrCat((*bare)->port())}, 0, ""});
  ASSERT_TRUE(bare_replica.ok()) << bare_replica.status();
  RedisStateStoreOptions bo = o;
  bo.addresses = {(*bare)->address()};
  bo.durability_timeout = absl::Seconds(2);
  auto bare_store = NewRedisStateStore(bo);
  ASSERT_TRUE(bare_store.ok()) << bare_store.status();
  bool online = false;
  for (int i = 0; i < 200 && !online; ++i) {  // until the replica is in sync
    auto info = (*bare)->Command({"INFO", "replication"});
    online = info.ok() && absl::StrContains(*info, "state=online");
    if (!online) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(online) << "the replica never synced: the check below would "
                         "pass for the wrong reason";
  auto replicated =
      (*bare_store)->CreateSession(NewSession("r", Durability::kReplicated));
  EXPECT_EQ(DurabilityReachedOf(replicated.status()), Durability::kMemory)
      << replicated.status();
  EXPECT_EQ(
      GetReason((*bare_store)
                    ->AwaitDurability({"acme", "r"}, 1, Durability::kFsync)
                    .status()),
      Reason::kStoreUnavailable);
  auto r_versions = (*bare_store)->ListVersions({"acme", "r"});
  ASSERT_TRUE(r_versions.ok()) << r_versions.status();
  EXPECT_EQ(r_versions->front().durability, Durability::kMemory);

  // The levels reached after the commit scripts ran (the fsync that
  // `appendfsync always` implies, WAIT's replica) are what later reads
  // report, not the level known when the version was written.
  for (const auto& [id, level] :
       {std::pair<std::string, Durability>{"b", Durability::kFsync},
        {"c", Durability::kReplicated}}) {
    auto versions = (*store)->ListVersions({"acme", id});
    ASSERT_TRUE(versions.ok()) << versions.status();
    ASSERT_FALSE(versions->empty());
    for (const VersionInfo& v : *versions) {
      EXPECT_EQ(v.durability, level) << id << " v" << v.version;
    }
    auto h = (*store)->GetHead({"acme", id});
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->head.durability, level) << id;
  }

  // The configuration is read again (at most once a second): after
  // CONFIG SET appendfsync everysec, FSYNC is no longer claimed without a
  // wait that proves it; set back, it is again.
  // (Redis 7.2+ has WAITAOF, which reaches FSYNC under everysec too.)
  auto waitaof = (*aof)->Command({"COMMAND", "INFO", "WAITAOF"});
  if (!waitaof.ok() ||
      absl::StrContains(absl::AsciiStrToLower(*waitaof), "waitaof")) {
    return;
  }
  for (const auto& [policy, id, reached] :
       {std::tuple<std::string, std::string, bool>{"everysec", "d", false},
        {"always", "e", true}}) {
    ASSERT_TRUE((*aof)->Command({"CONFIG", "SET", "appendfsync", policy}).ok());
    absl::SleepFor(absl::Milliseconds(1100));
    auto made = (*store)->CreateSession(NewSession(id, Durability::kFsync));
    if (reached) {
      ASSERT_TRUE(made.ok()) << made.status();
      EXPECT_EQ(made->version.durability, Durability::kFsync);
    } else {
      EXPECT_EQ(DurabilityReachedOf(made.status()), Durability::kMemory)
          << made.status();
    }
  }
}

// A commit waiting for a durability it will not reach (no replica), while
// another writer takes the session over and commits after it with
// keep_versions 1: the first commit's version is gone before its reply is
// built, but it was written, and the store says so (the durability error
// with its version), not that the version does not exist.
TEST(RedisStateStoreTest, ACommitDroppedByANewerOneIsStillReported) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  o.keep_versions = 1;
  // Long enough for the takeover below to commit inside the wait even on a
  // loaded machine (the test takes this long: no replica ever answers).
  o.durability_timeout = absl::Seconds(5);
  auto store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  auto c = (*store)->CreateSession(NewSession("a", Durability::kMemory));
  ASSERT_TRUE(c.ok()) << c.status();
  CommitRequest slow;
  slow.key = {"acme", "a"};
  slow.expected_version = 1;
  slow.fence = c->session.fence;
  slow.state = TestSnapshot(2);
  slow.durability = Durability::kReplicated;
  absl::StatusOr<CommitResult> waited = absl::UnknownError("not run");
  std::thread first([&] { waited = (*store)->Commit(slow); });
  // Until the first commit's script has run and it waits for a replica.
  absl::StatusOr<SessionHead> head;
  for (int i = 0; i < 600; ++i) {
    head = (*store)->GetHead(slow.key);
    if (head.ok() && head->head.version == 2) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_TRUE(head.ok()) << head.status();
  ASSERT_EQ(head->head.version, 2u);
  auto lease =
      (*store)->AcquireLease(slow.key, "other", absl::Seconds(10), true);
  ASSERT_TRUE(lease.ok()) << lease.status();
  CommitRequest next = slow;
  next.expected_version = 2;
  next.fence = lease->fence;
  next.state = TestSnapshot(3);
  next.durability = Durability::kMemory;
  auto newer = (*store)->Commit(next);
  ASSERT_TRUE(newer.ok()) << newer.status();
  first.join();
  EXPECT_EQ(waited.status().code(), absl::StatusCode::kUnavailable)
      << waited.status();
  EXPECT_EQ(GetReason(waited.status()), Reason::kStoreUnavailable);
  EXPECT_EQ(GetErrorMetadata(waited.status(), "version"), "2");
  EXPECT_EQ(GetErrorMetadata(waited.status(), "durability_reached"), "MEMORY");
}

// The real clock, running `hook` (set before any reading, never changed)
// first at each reading while armed.
class HookedClock : public Clock {
 public:
  explicit HookedClock(std::function<void()> hook) : hook_(std::move(hook)) {}
  absl::Time Now() const override {
    if (armed.load()) hook_();
    return absl::Now();
  }
  void SleepFor(absl::Duration d) override { absl::SleepFor(d); }
  std::atomic<bool> armed{true};

 private:
  const std::function<void()> hook_;
};

// A store on `server` that reads `clock` (whose hook acts), and one that
// does not (for the hook to act through).
void HookedAndPlain(const RedisServer& server, Clock* clock,
                    std::unique_ptr<StateStore>* hooked,
                    std::unique_ptr<StateStore>* plain) {
  RedisStateStoreOptions o;
  o.addresses = {server.address()};
  o.clock = clock;
  auto a = NewRedisStateStore(o);
  ASSERT_TRUE(a.ok()) << a.status();
  o.clock = nullptr;
  auto b = NewRedisStateStore(o);
  ASSERT_TRUE(b.ok()) << b.status();
  *hooked = *std::move(a);
  *plain = *std::move(b);
}

// The fence a create returns is the one it granted, usable until someone
// acquires the lease: a takeover between the create's script and its
// reading back of the head does not hand the creator the new holder's
// fence (two writers on one fence). The clock's hook makes the takeover
// at the first reading after the head exists.
TEST(RedisStateStoreTest, ACreateReturnsTheFenceItGranted) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  const SessionKey key{"acme", "f"};
  absl::Mutex mu;
  std::optional<absl::StatusOr<Lease>> taken;
  std::unique_ptr<StateStore> other;  // set before the hook can run
  HookedClock clock([&] {
    absl::MutexLock lock(&mu);
    if (taken.has_value()) return;
    auto head = (*server)->Command({"EXISTS", "ss:{acme/f}:head"});
    if (head.ok() && *head == "1") {
      taken = other->AcquireLease(key, "thief", absl::Seconds(60), true);
    }
  });
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(HookedAndPlain(**server, &clock, &store, &other));
  auto created = store->CreateSession(NewSession("f", Durability::kMemory));
  ASSERT_TRUE(created.ok()) << created.status();
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(taken.has_value()) << "the hook never ran after the create";
    ASSERT_TRUE(taken->ok()) << taken->status();
  }
  clock.armed = false;
  auto v1 = other->ListVersions(key);
  ASSERT_TRUE(v1.ok()) << v1.status();
  ASSERT_FALSE(v1->empty());
  EXPECT_EQ(created->session.fence, v1->front().fence);
  EXPECT_LT(created->session.fence, (*taken)->fence);
  // The creator's fence is stale now, as the contract says: its commit is
  // refused, the holder's goes through.
  CommitRequest commit;
  commit.key = key;
  commit.expected_version = 1;
  commit.fence = created->session.fence;
  commit.state = TestSnapshot(2);
  EXPECT_EQ(GetReason(store->Commit(commit).status()), Reason::kFenced);
  commit.fence = (*taken)->fence;
  EXPECT_TRUE(store->Commit(commit).ok());
}

// A load that reads a version whose session is deleted and created again
// before its chunks are read (the chunks go with the delete) loads the
// session as it is now; it reported the healthy session's state corrupt
// (DATA_LOSS, which clients do not retry). The clock's hook deletes and
// creates the session again at the load's n-th reading of the clock, for
// each n from the first (before anything is read) past the chunks'.
TEST(RedisStateStoreTest, ALoadRacingARecreateLoadsTheNewSession) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  const SessionKey key{"acme", "r"};
  std::unique_ptr<StateStore> other;  // set before the hook can run
  std::atomic<int> countdown{0};
  uint64_t seed = 1;
  absl::Status recreated;
  HookedClock clock([&] {
    if (countdown.load() <= 0 || --countdown > 0) return;
    CreateSessionRequest again = NewSession("r", Durability::kMemory);
    again.initial_state = TestSnapshot(++seed);
    recreated = other->DeleteSession(key);
    if (recreated.ok()) recreated = other->CreateSession(again).status();
    // A live lease: the load reads the clock between the version and
    // its chunks.
    if (recreated.ok()) {
      recreated =
          other->AcquireLease(key, "w", absl::Seconds(60), false).status();
    }
  });
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(HookedAndPlain(**server, &clock, &store, &other));
  ASSERT_TRUE(other->CreateSession(NewSession("r", Durability::kMemory)).ok());
  ASSERT_TRUE(other->AcquireLease(key, "w", absl::Seconds(60), false).ok());
  for (int n = 1; n <= 6; ++n) {
    for (uint64_t asked : {uint64_t{0}, uint64_t{1}}) {
      SCOPED_TRACE(
          absl::StrCat("at reading ", n, " of the clock, version ", asked));
      recreated = absl::UnknownError("the hook did not run");
      countdown = n;
      auto loaded = store->LoadVersion(key, asked);
      countdown = 0;
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      if (recreated.ok()) {
        EXPECT_EQ(loaded->state.position, TestSnapshot(seed).position);
      }
    }
  }
}

// A server that refuses writes (here: out of memory under noeviction) is
// the store being unavailable, a retryable error naming the refusal; once
// it has room again the same calls succeed.
TEST(RedisStateStoreTest, RefusedWritesAreUnavailable) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  auto c = store->CreateSession(NewSession("a", Durability::kMemory));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(
      server->Command({"CONFIG", "SET", "maxmemory-policy", "noeviction"})
          .ok());
  ASSERT_TRUE(server->Command({"CONFIG", "SET", "maxmemory", "1"}).ok());
  CommitRequest r;
  r.key = {"acme", "a"};
  r.expected_version = c->version.version;
  r.fence = c->session.fence;
  r.state = TestSnapshot(2);
  r.durability = Durability::kMemory;
  auto refused = store->Commit(r);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable)
      << refused.status();
  EXPECT_EQ(GetReason(refused.status()), Reason::kStoreUnavailable);
  EXPECT_EQ(GetErrorMetadata(refused.status(), "redis_error"), "OOM");
  auto created = store->CreateSession(NewSession("b", Durability::kMemory));
  EXPECT_EQ(created.status().code(), absl::StatusCode::kUnavailable)
      << created.status();
  // Nothing was lost: the head is still the last version written.
  auto head = store->GetHead({"acme", "a"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.version, c->version.version);
  ASSERT_TRUE(server->Command({"CONFIG", "SET", "maxmemory", "0"}).ok());
  auto committed = store->Commit(r);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->version.version, c->version.version + 1);
}

// A label filter that matches little reads at most max_list_scan heads a
// call: short pages with a token, until the listing ends, and the matches
// on either side of each page boundary are each found once.
TEST(RedisStateStoreTest, AFilteredListingReadsBoundedPages) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  o.max_list_scan = 10;
  auto store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  ExpectBoundedFilteredListing(store->get());
}

// A commit the script refuses (here FENCED) leaves none of its chunks
// behind: a writer retrying against a newer owner must not fill Redis.
TEST(RedisStateStoreTest, ARefusedCommitLeavesNoChunks) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  const SessionKey key{"acme", "a"};
  auto c = store->CreateSession(NewSession("a", Durability::kMemory));
  ASSERT_TRUE(c.ok()) << c.status();
  auto b = store->AcquireLease(key, "worker-b", absl::Seconds(60), true);
  ASSERT_TRUE(b.ok()) << b.status();
  CommitRequest r = SecondVersion("a", c->session.fence);
  EXPECT_EQ(GetReason(store->Commit(r).status()), Reason::kFenced);
  auto chunks = server->Command({"KEYS", "ss:{acme/a}:v2:*"});
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  EXPECT_EQ(*chunks, "");
  r.fence = b->fence;
  ASSERT_TRUE(store->Commit(r).ok());
  chunks = server->Command({"KEYS", "ss:{acme/a}:v2:*"});
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  EXPECT_NE(*chunks, "");
}

// A refusal deletes the refused write's chunks, except those of a version
// that holds them: a commit resent after a lost reply whose first send was
// committed is refused (the head moved on since), and its chunks are that
// version's.
TEST(RedisStateStoreTest, ARefusalKeepsTheChunksOfACommittedVersion) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  auto c = store->CreateSession(NewSession("k", Durability::kMemory));
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string p = "ss:{acme/k}:";
  auto keys = server->Command({"KEYS", p + "v1:*"});
  ASSERT_TRUE(keys.ok()) << keys.status();
  std::vector<std::string> chunks =
      absl::StrSplit(*keys, '\n', absl::SkipEmpty());
  ASSERT_FALSE(chunks.empty());
  auto nonce = server->Command({"HGET", p + "v1", "nonce"});
  ASSERT_TRUE(nonce.ok()) << nonce.status();
  const std::string src = absl::StrCat(store_internal::kLuaPrelude,
                                       "drop_chunks(ARGV[4]) return 1");
  auto drop = [&](const std::string& with) {
    std::vector<std::string> argv = {
        "EVAL",     src,         absl::StrCat(3 + chunks.size()),
        p + "head", p + "fence", p + "v1"};
    argv.insert(argv.end(), chunks.begin(), chunks.end());
    for (const std::string& a : {p, std::string("0"), std::string("0"), with}) {
      argv.push_back(a);
    }
    return server->Command(argv);
  };
  ASSERT_TRUE(drop(*nonce).ok());
  EXPECT_EQ(*server->Command({"EXISTS", chunks[0]}), "1");
  ASSERT_TRUE(store->LoadVersion({"acme", "k"}, 1).ok());
  ASSERT_TRUE(drop("another-nonce").ok());
  EXPECT_EQ(*server->Command({"EXISTS", chunks[0]}), "0");
}

// A restart that loses the tail of the log (appendfsync everysec) can take
// the fence counter back to an earlier value. The next owner still gets a
// fence nobody had: a lost owner's fence is never handed out again.
TEST(RedisStateStoreTest, AFenceIsNotHandedOutTwiceAfterTheCounterWentBack) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  const SessionKey key{"acme", "a"};
  auto c = store->CreateSession(NewSession("a", Durability::kMemory));
  ASSERT_TRUE(c.ok()) << c.status();
  auto fence = server->Command({"GET", "ss:{acme/a}:fence"});
  ASSERT_TRUE(fence.ok()) << fence.status();
  auto b = store->AcquireLease(key, "worker-b", absl::Seconds(60), true);
  ASSERT_TRUE(b.ok()) << b.status();
  // Lost: worker-b's lease and the counter's step.
  ASSERT_TRUE(server->Command({"SET", "ss:{acme/a}:fence", *fence}).ok());
  ASSERT_TRUE(server->Command({"DEL", "ss:{acme/a}:lease"}).ok());
  absl::SleepFor(absl::Milliseconds(2));
  auto d = store->AcquireLease(key, "worker-d", absl::Seconds(60), false);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GT(d->fence, b->fence);
  CommitRequest r = SecondVersion("a", b->fence);
  EXPECT_EQ(GetReason(store->Commit(r).status()), Reason::kFenced);
  r.fence = d->fence;
  auto committed = store->Commit(r);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->version.fence, d->fence);
}

// ListSessions drops index entries whose session is gone. One whose
// create is still uploading its chunks is not gone: listed mid-create, the
// session is still listed once the create is done.
TEST(RedisStateStoreTest, AListingDuringACreateKeepsTheSession) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> store;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &store));
  for (int round = 0; round < 3; ++round) {
    const std::string id = absl::StrCat("big", round);
    CreateSessionRequest big = NewSession(id, Durability::kMemory);
    big.initial_state = TestSnapshot(1, 16 << 20);  // 64 MB to upload
    std::thread create([&] {
      auto c = store->CreateSession(big);
      EXPECT_TRUE(c.ok()) << c.status();
    });
    // As soon as the index names it (before its head exists), list.
    for (int i = 0; i < 100000; ++i) {
      auto score = server->Command({"ZSCORE", "ss:{t:acme}:sessions", id});
      if (score.ok() && !score->empty()) break;
    }
    ListSessionsRequest list;
    list.tenant = "acme";
    ASSERT_TRUE(store->ListSessions(list).ok());
    create.join();
    auto after = store->ListSessions(list);
    ASSERT_TRUE(after.ok()) << after.status();
    bool listed = false;
    for (const SessionHead& h : after->sessions) {
      listed = listed || h.key.session_id == id;
    }
    EXPECT_TRUE(listed) << id << " dropped from the index";
  }
}

// Tenant slots (a tenant's streams across gateways): two stores on one
// server, as two gateways, share each tenant's limit; a retried acquire
// renews; a release frees; slots expire unless renewed, and a renewal
// brings back one that expired; tenants are apart; bad input is refused.
TEST(RedisStateStoreTest, TenantSlotsHoldALimitAcrossStores) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  auto a = NewRedisStateStore(o);
  auto b = NewRedisStateStore(o);
  ASSERT_TRUE(a.ok() && b.ok());
  StateStore& ga = **a;
  StateStore& gb = **b;
  EXPECT_TRUE(ga.CountsTenantSlots());
  const absl::Duration ttl = absl::Minutes(1);
  auto take = [&](StateStore& s, const std::string& tenant,
                  const std::string& slot, int max,
                  absl::Duration t = absl::Minutes(1)) {
    absl::StatusOr<bool> got = s.AcquireTenantSlot(tenant, slot, max, t);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.value_or(false);
  };
  auto count = [](StateStore& s, const std::string& tenant) {
    absl::StatusOr<int64_t> n = s.CountTenantSlots(tenant);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(-1);
  };
  EXPECT_TRUE(take(ga, "acme", "a:1", 2));
  EXPECT_TRUE(take(gb, "acme", "b:1", 2));
  EXPECT_FALSE(take(ga, "acme", "a:2", 2));
  EXPECT_TRUE(take(ga, "acme", "a:1", 2));  // held already: a retry
  EXPECT_EQ(count(gb, "acme"), 2);
  EXPECT_TRUE(take(gb, "other", "b:2", 1));  // another tenant's own limit
  ASSERT_TRUE(gb.ReleaseTenantSlot("acme", "b:1").ok());
  ASSERT_TRUE(gb.ReleaseTenantSlot("acme", "b:1").ok());  // not held: OK
  EXPECT_TRUE(take(ga, "acme", "a:2", 2));
  EXPECT_FALSE(take(gb, "acme", "b:3", 2));

  // A holder that died: its slot frees itself after the ttl.
  EXPECT_TRUE(take(ga, "short", "x:1", 1, absl::Seconds(2)));
  EXPECT_FALSE(take(gb, "short", "x:2", 1, absl::Seconds(2)));
  absl::SleepFor(absl::Milliseconds(2500));
  EXPECT_EQ(count(gb, "short"), 0);
  EXPECT_TRUE(take(gb, "short", "x:2", 1, absl::Seconds(2)));

  // A renewed slot stays; a renewal re-adds one that expired. (Margins a
  // stalled machine keeps: each check can only come later than planned.)
  EXPECT_TRUE(take(ga, "renewed", "r:1", 5, absl::Seconds(5)));
  EXPECT_TRUE(take(ga, "renewed", "r:2", 5, absl::Seconds(1)));
  absl::SleepFor(absl::Milliseconds(1500));
  EXPECT_EQ(count(ga, "renewed"), 1);  // r:2 expired
  ASSERT_TRUE(
      ga.RenewTenantSlots("renewed", {"r:1", "r:2"}, absl::Seconds(60)).ok());
  absl::SleepFor(absl::Seconds(4));  // r:1 past its first ttl
  EXPECT_EQ(count(gb, "renewed"), 2);

  for (const absl::Status& bad :
       {ga.AcquireTenantSlot("acme", "", 2, ttl).status(),
        ga.AcquireTenantSlot("Not A Tenant", "a:9", 2, ttl).status(),
        ga.AcquireTenantSlot("acme", "a:9", 0, ttl).status(),
        ga.AcquireTenantSlot("acme", "a:9", 2, absl::ZeroDuration()).status(),
        ga.AcquireTenantSlot("acme", std::string(257, 's'), 2, ttl).status(),
        ga.RenewTenantSlots("acme", {""}, ttl),
        ga.ReleaseTenantSlot("acme", "")}) {
    EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(count(ga, "acme"), 2);  // nothing taken by the bad calls
}

// Options no store could run with are refused before it connects: an
// infinite fence retention failed every TTL refresh after the head had
// moved (PEXPIRE of an overflowing time), so a commit's chunks kept their
// pending TTL and vanished with the version still named by the head.
TEST(RedisStateStoreTest, OptionsNoStoreCouldRunWithAreRefused) {
  using Set = void (*)(RedisStateStoreOptions&);
  const std::pair<const char*, Set> bad[] = {
      {"fence_retention",
       [](RedisStateStoreOptions& o) {
         o.fence_retention = absl::InfiniteDuration();
       }},
      {"pending_chunk_ttl",
       [](RedisStateStoreOptions& o) {
         o.pending_chunk_ttl = absl::ZeroDuration();
       }},
      {"dropped_version_grace",
       [](RedisStateStoreOptions& o) {
         o.dropped_version_grace = -absl::Seconds(1);
       }},
      {"retry_deadline",
       [](RedisStateStoreOptions& o) {
         o.retry_deadline = absl::InfiniteDuration();
       }},
      {"command_timeout", [](RedisStateStoreOptions& o) {
         o.command_timeout = absl::ZeroDuration();
       }}};
  for (const auto& [name, set] : bad) {
    RedisStateStoreOptions o;
    o.addresses = {"127.0.0.1:1"};  // never dialled
    set(o);
    auto made = NewRedisStateStore(o);
    EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument)
        << name << ": " << made.status();
    EXPECT_TRUE(absl::StrContains(made.status().message(), name))
        << made.status();
  }
}

}  // namespace
}  // namespace statestream::testing
