// SPDX-License-Identifier: Apache-2.0
// Fault tests of the Redis state store against real redis-server processes:
// Redis killed and restarted mid-commit (AOF, appendfsync always), a
// Cluster slot migrated (MOVED/ASK) while a writer commits, and a Cluster
// primary killed and replaced by its replica.
#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/internal/redis_client.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/redis_harness.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
// This binary links the contract suite without instantiating it.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(StateStoreContractTest);
namespace {

constexpr size_t kFloats = 600'000;  // a 2.4 MB state, 3 chunks

// Commits TestSnapshot(v) as version v until `stop`, resynchronising from
// the head after any error (a failed commit may or may not have applied).
void Writer(StateStore* store, const SessionKey& key, uint64_t fence,
            Durability durability, std::atomic<bool>* stop,
            std::atomic<uint64_t>* max_acked, std::atomic<int>* errors) {
  uint64_t head = 1;
  while (!stop->load()) {
    CommitRequest r;
    r.key = key;
    r.expected_version = head;
    r.fence = fence;
    r.state = TestSnapshot(head + 1, kFloats);
    r.durability = durability;
    auto c = store->Commit(r);
    if (c.ok()) {
      head = c->version.version;
      max_acked->store(head);
      continue;
    }
    ++*errors;
    EXPECT_TRUE(c.status().code() == absl::StatusCode::kUnavailable ||
                GetReason(c.status()) == Reason::kVersionMismatch)
        << c.status();
    absl::SleepFor(absl::Milliseconds(20));
    auto h = store->GetHead(key);
    if (h.ok()) head = h->head.version;
  }
}

// Writer() on its own thread from construction until Stop() or destruction
// (also when an assertion returns early).
class BackgroundWriter {
 public:
  BackgroundWriter(StateStore* store, const SessionKey& key, uint64_t fence,
                   Durability durability)
      : thread_(Writer, store, key, fence, durability, &stop_, &max_acked_,
                &errors_) {}
  ~BackgroundWriter() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t max_acked() const { return max_acked_.load(); }
  int errors() const { return errors_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> max_acked_{1};
  std::atomic<int> errors_{0};
  std::thread thread_;  // last: starts once the counters exist
};

// A store on a fresh 6-node Cluster with a session `key` created.
struct ClusterSession {
  std::unique_ptr<RedisCluster> cluster;
  std::unique_ptr<StateStore> store;
  uint64_t fence = 0;
};
absl::StatusOr<ClusterSession> StartClusterSession(
    const SessionKey& key, RedisStateStoreOptions options,
    const std::vector<std::string>& node_args = {}) {
  ClusterSession out;
  SS_ASSIGN_OR_RETURN(out.cluster, RedisCluster::Start(node_args));
  options.addresses = out.cluster->addresses();
  options.cluster = true;
  SS_ASSIGN_OR_RETURN(out.store, NewRedisStateStore(options));
  CreateSessionRequest cr;
  cr.key = key;
  cr.initial_state = TestSnapshot(1);
  SS_ASSIGN_OR_RETURN(CommitResult created, out.store->CreateSession(cr));
  out.fence = created.session.fence;
  return out;
}

// Every kept version is complete and is exactly what was committed.
void ExpectConsistent(StateStore* store, const SessionKey& key) {
  auto versions = store->ListVersions(key);
  ASSERT_TRUE(versions.ok()) << versions.status();
  for (const VersionInfo& v : *versions) {
    auto loaded = store->LoadVersion(key, v.version);
    ASSERT_TRUE(loaded.ok()) << v.version << ": " << loaded.status();
    const StateSnapshot want =
        TestSnapshot(v.version, v.version == 1 ? 1000 : kFloats);
    EXPECT_EQ(loaded->state.position, want.position);
    EXPECT_TRUE(loaded->state.state == want.state) << v.version;
  }
}

TEST(StateStoreFaultTest, RedisKilledMidCommitLosesNoAcknowledgedFsync) {
  auto server = RedisServer::Start(
      {{"--appendonly", "yes", "--appendfsync", "always"}, 0, ""});
  ASSERT_TRUE(server.ok()) << server.status();
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  o.retry_deadline = absl::Seconds(1);
  auto store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  const SessionKey key{"acme", "fault"};
  CreateSessionRequest cr;
  cr.key = key;
  cr.initial_state = TestSnapshot(1);
  cr.durability = Durability::kFsync;
  auto created = (*store)->CreateSession(cr);
  ASSERT_TRUE(created.ok()) << created.status();

  BackgroundWriter writer(store->get(), key, created->session.fence,
                          Durability::kFsync);
  for (int round = 0; round < 4; ++round) {
    absl::SleepFor(absl::Milliseconds(150 + 70 * round));
    const uint64_t acked_before_kill = writer.max_acked();
    (*server)->Kill();
    ASSERT_TRUE((*server)->Restart().ok());
    auto head = (*store)->GetHead(key);
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_GE(head->head.version, acked_before_kill);
  }
  absl::SleepFor(absl::Milliseconds(300));
  writer.Stop();
  auto head = (*store)->GetHead(key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_GE(head->head.version, writer.max_acked());
  EXPECT_GT(writer.max_acked(), 1u);
  ExpectConsistent(store->get(), key);
}

TEST(StateStoreFaultTest, ClusterSlotMigrationDuringCommits) {
  const SessionKey key{"acme", "moving"};
  RedisStateStoreOptions o;
  o.retry_deadline = absl::Seconds(10);
  auto c = StartClusterSession(key, o);
  ASSERT_TRUE(c.ok()) << c.status();
  const int slot = store_internal::KeySlot("ss:{acme/moving}:head");
  BackgroundWriter writer(c->store.get(), key, c->fence, Durability::kMemory);
  for (int i = 0; i < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(200));
    const uint64_t before = writer.max_acked();
    const absl::Status moved = c->cluster->MoveSlot(slot);
    ASSERT_TRUE(moved.ok()) << moved;
    // The writer keeps going at the new owner.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (writer.max_acked() < before + 2 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_GE(writer.max_acked(), before + 2);
  }
  writer.Stop();
  EXPECT_EQ(writer.errors(), 0);
  ExpectConsistent(c->store.get(), key);
}

// Leases renewed in one pipelined call while a slot moved since the
// client last read the slot map: those answered MOVED run again at the new
// owner, and every lease is renewed.
TEST(StateStoreFaultTest, RenewLeasesFollowAMovedSlot) {
  const SessionKey first{"acme", "l0"};
  auto c = StartClusterSession(first, {});
  ASSERT_TRUE(c.ok()) << c.status();
  StateStore* store = c->store.get();
  std::vector<StateStore::LeaseToRenew> leases;
  for (int i = 0; i < 40; ++i) {
    const SessionKey key{"acme", absl::StrCat("l", i)};
    if (i > 0) {
      CreateSessionRequest cr;
      cr.key = key;
      cr.initial_state = TestSnapshot(1);
      ASSERT_TRUE(store->CreateSession(cr).ok());
    }
    auto a = store->AcquireLease(key, "w1", absl::Seconds(60), false);
    ASSERT_TRUE(a.ok()) << a.status();
    leases.push_back({key, a->fence});
  }
  for (int i : {3, 17, 30}) {
    const int slot =
        store_internal::KeySlot(absl::StrCat("ss:{acme/l", i, "}:head"));
    const absl::Status moved = c->cluster->MoveSlot(slot);
    ASSERT_TRUE(moved.ok()) << moved;
  }
  std::vector<absl::StatusOr<Lease>> r =
      store->RenewLeases("w1", leases, absl::Seconds(60));
  ASSERT_EQ(r.size(), leases.size());
  for (size_t i = 0; i < r.size(); ++i) {
    ASSERT_TRUE(r[i].ok()) << i << ": " << r[i].status();
    EXPECT_EQ(r[i]->fence, leases[i].fence);
  }
}

// The scripts declare the head, the fence and the lease only; they also
// touch the versions. With the slot half moved (a version gone ahead, the
// declared keys all still at the source), every call waits for the move and
// then succeeds at the target, and none applies partly: a lease taken
// meanwhile is taken once, and every kept version stays complete.
TEST(StateStoreFaultTest, ScriptsWaitForVersionsTheSlotMovedAhead) {
  const SessionKey key{"acme", "ahead"};
  RedisStateStoreOptions o;
  o.retry_deadline = absl::Seconds(15);
  auto c = StartClusterSession(key, o);
  ASSERT_TRUE(c.ok()) << c.status();
  StateStore* store = c->store.get();
  // A held lease: every declared key exists at the source (a missing one
  // would answer TRYAGAIN before the script runs).
  auto held = store->AcquireLease(key, "w1", absl::Seconds(60), false);
  ASSERT_TRUE(held.ok()) << held.status();
  uint64_t fence = held->fence;
  for (uint64_t v = 1; v < 3; ++v) {
    CommitRequest r;
    r.key = key;
    r.expected_version = v;
    r.fence = fence;
    r.state = TestSnapshot(v + 1, kFloats);
    ASSERT_TRUE(store->Commit(r).ok());
  }
  const int slot = store_internal::KeySlot("ss:{acme/ahead}:head");
  absl::Status head_status, lease_status, update_status;
  uint64_t new_fence = 0;
  std::vector<std::thread> calls;
  const absl::Status moved =
      c->cluster->MoveSlot(slot, {"ss:{acme/ahead}:v2"}, [&] {
        calls.emplace_back([&] { head_status = store->GetHead(key).status(); });
        calls.emplace_back([&] {
          auto l = store->AcquireLease(key, "w2", absl::Seconds(30), true);
          lease_status = l.status();
          if (l.ok()) new_fence = l->fence;
        });
        calls.emplace_back([&] {
          SessionUpdate u;
          u.labels = std::map<std::string, std::string>{{"k", "v"}};
          update_status = store->UpdateSession(key, u).status();
        });
        absl::SleepFor(absl::Milliseconds(500));  // they wait meanwhile
      });
  ASSERT_TRUE(moved.ok()) << moved;
  for (std::thread& t : calls) t.join();
  EXPECT_TRUE(head_status.ok()) << head_status;
  EXPECT_TRUE(lease_status.ok()) << lease_status;
  EXPECT_TRUE(update_status.ok()) << update_status;
  auto head = store->GetHead(key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->owner, "w2");
  EXPECT_EQ(head->fence, new_fence);  // one grant, the one returned
  EXPECT_EQ(head->labels.at("k"), "v");
  ExpectConsistent(store, key);
}

// With the slot migrating and none of its keys moved yet, every key a
// script declared is at the source; a key it deletes or creates mid-script
// is one the source does not have, which the migration refuses. A delete
// and a lease take-over started then wait for the move and apply once: the
// delete is OK (its nonce was stored, not lost after the deletes), and the
// take-over's fence is the session's.
TEST(StateStoreFaultTest, ScriptsWriteNoKeyAMigrationRefuses) {
  RedisStateStoreOptions o;
  o.retry_deadline = absl::Seconds(15);
  const SessionKey gone{"acme", "deleted"};
  auto c = StartClusterSession(gone, o);
  ASSERT_TRUE(c.ok()) << c.status();
  StateStore* store = c->store.get();
  ASSERT_TRUE(store->AcquireLease(gone, "w1", absl::Seconds(60), false).ok());
  absl::Status deleted;
  std::vector<std::thread> calls;
  absl::Status moved = c->cluster->MoveSlot(
      store_internal::KeySlot("ss:{acme/deleted}:head"), {}, [&] {
        calls.emplace_back([&] { deleted = store->DeleteSession(gone); });
        absl::SleepFor(absl::Milliseconds(500));
      });
  ASSERT_TRUE(moved.ok()) << moved;
  for (std::thread& t : calls) t.join();
  EXPECT_TRUE(deleted.ok()) << deleted;
  EXPECT_EQ(GetReason(store->GetHead(gone).status()), Reason::kSessionNotFound);

  const SessionKey taken{"acme", "taken"};
  CreateSessionRequest cr;
  cr.key = taken;
  cr.initial_state = TestSnapshot(1);
  ASSERT_TRUE(store->CreateSession(cr).ok());
  ASSERT_TRUE(store->AcquireLease(taken, "w1", absl::Seconds(60), false).ok());
  absl::StatusOr<Lease> lease = absl::UnknownError("not run");
  calls.clear();
  moved = c->cluster->MoveSlot(
      store_internal::KeySlot("ss:{acme/taken}:head"), {}, [&] {
        calls.emplace_back([&] {
          lease = store->AcquireLease(taken, "w2", absl::Seconds(60), true);
        });
        absl::SleepFor(absl::Milliseconds(500));
      });
  ASSERT_TRUE(moved.ok()) << moved;
  for (std::thread& t : calls) t.join();
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto head = store->GetHead(taken);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->owner, "w2");
  EXPECT_EQ(head->fence, lease->fence);
}

// The keys named `prefix`* on the Cluster's primaries, each with its PTTL
// (-1: none). A replica's copy answers MOVED to PTTL and is left out.
std::map<std::string, int64_t> KeyTtls(RedisCluster* cluster,
                                       const std::string& prefix) {
  std::map<std::string, int64_t> out;
  for (int i = 0; i < cluster->size(); ++i) {
    auto keys = cluster->node(i)->Command({"KEYS", prefix + "*"});
    if (!keys.ok()) continue;
    for (absl::string_view k : absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
      auto ttl = cluster->node(i)->Command({"PTTL", std::string(k)});
      int64_t ms = 0;
      if (ttl.ok() && absl::SimpleAtoi(*ttl, &ms)) out[std::string(k)] = ms;
    }
  }
  return out;
}

// A node importing a slot serves an ASKING client's script once the keys
// it declares (head, fence, lease) have arrived; the script's own reads of
// one key that has not (a version's chunks, older than its hash) then
// answer "no such key", not an error. Scripts run there must wait for the
// move: a delete answered OK and left the session whole (its write of the
// nonce done before its DEL of several keys failed), a pin left the
// chunks their TTL, a listing of versions left out a hash not moved, and
// a load or a durability wait of a kept version not moved called it not
// kept (NOT_FOUND, final for a client).
TEST(StateStoreFaultTest, ScriptsAtAnImportingNodeWaitForKeysNotMovedYet) {
  RedisStateStoreOptions o;
  o.retry_deadline = absl::Seconds(15);
  const SessionKey gone{"acme", "half-moved"};
  auto c = StartClusterSession(gone, o);
  ASSERT_TRUE(c.ok()) << c.status();
  StateStore* store = c->store.get();
  const SessionKey pinned{"acme", "pinned"};
  CreateSessionRequest cr;
  cr.key = pinned;
  cr.initial_state = TestSnapshot(1);
  ASSERT_TRUE(store->CreateSession(cr).ok());
  for (const SessionKey& key : {gone, pinned}) {
    auto held = store->AcquireLease(key, "w1", absl::Seconds(60), false);
    ASSERT_TRUE(held.ok()) << held.status();
    CommitRequest r;
    r.key = key;
    r.expected_version = 1;
    r.fence = held->fence;
    r.state = TestSnapshot(2, kFloats);
    ASSERT_TRUE(store->Commit(r).ok());
  }
  // Every key but the chunks moves first.
  const auto hashes = [](const SessionKey& key) {
    const std::string p =
        absl::StrCat("ss:{", key.tenant, "/", key.session_id, "}:");
    return std::vector<std::string>{p + "head", p + "fence", p + "lease",
                                    p + "v1", p + "v2"};
  };
  absl::Status deleted, pinning;
  absl::StatusOr<std::vector<VersionInfo>> listed;
  absl::StatusOr<LoadedVersion> loaded;
  absl::StatusOr<VersionInfo> awaited;
  std::vector<std::thread> calls;
  absl::Status moved = c->cluster->MoveSlot(
      store_internal::KeySlot("ss:{acme/half-moved}:head"), hashes(gone), [&] {
        calls.emplace_back([&] { deleted = store->DeleteSession(gone); });
        absl::SleepFor(absl::Milliseconds(500));
      });
  ASSERT_TRUE(moved.ok()) << moved;
  for (std::thread& t : calls) t.join();
  EXPECT_TRUE(deleted.ok()) << deleted;
  EXPECT_EQ(GetReason(store->GetHead(gone).status()), Reason::kSessionNotFound);
  for (const auto& [k, ttl] :
       KeyTtls(c->cluster.get(), "ss:{acme/half-moved}:")) {
    EXPECT_TRUE(absl::EndsWith(k, ":fence") || absl::EndsWith(k, ":deleted"))
        << k << " outlived its session's delete";
  }

  calls.clear();
  std::vector<std::string> ahead = hashes(pinned);
  ahead.erase(std::find(ahead.begin(), ahead.end(), "ss:{acme/pinned}:v1"));
  moved = c->cluster->MoveSlot(
      store_internal::KeySlot("ss:{acme/pinned}:head"), ahead, [&] {
        calls.emplace_back([&] {
          SessionUpdate u;
          u.ttl = absl::InfiniteDuration();
          pinning = store->UpdateSession(pinned, u).status();
        });
        calls.emplace_back([&] { listed = store->ListVersions(pinned); });
        // v1 is kept: read, and its durability asked (at MEMORY, which
        // v1 has: answered by the read script), once it has moved.
        calls.emplace_back([&] { loaded = store->LoadVersion(pinned, 1); });
        calls.emplace_back([&] {
          awaited = store->AwaitDurability(pinned, 1, Durability::kMemory);
        });
        absl::SleepFor(absl::Milliseconds(500));
      });
  ASSERT_TRUE(moved.ok()) << moved;
  for (std::thread& t : calls) t.join();
  ASSERT_TRUE(pinning.ok()) << pinning;
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size(), 2u) << "a version not moved yet was left out";
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->version.version, 1u);
  ASSERT_TRUE(awaited.ok()) << awaited.status();
  EXPECT_EQ(awaited->version, 1u);
  const auto ttls = KeyTtls(c->cluster.get(), "ss:{acme/pinned}:");
  EXPECT_GT(ttls.size(), 6u);  // head, fence, lease, 2 versions, chunks
  for (const auto& [k, ttl] : ttls) {
    if (absl::EndsWith(k, ":lease")) continue;  // a lease keeps its own
    EXPECT_EQ(ttl, -1) << k << " was not pinned with its session";
  }
  ExpectConsistent(store, pinned);
}

// Loads while the session's slot migrates: keys move one at a time, and a
// pipeline of chunk reads that meets ASK for some of them is resent whole
// to the target, where the chunks not moved yet read as nil. A load must
// see that as the move in progress (and read again), never as corruption.
TEST(StateStoreFaultTest, ClusterSlotMigrationDuringLoads) {
  const SessionKey key{"acme", "reading"};
  RedisStateStoreOptions o;
  o.retry_deadline = absl::Seconds(10);
  o.chunk_bytes = 64 << 10;  // a 2.4 MB state in 37 chunks
  auto c = StartClusterSession(key, o);
  ASSERT_TRUE(c.ok()) << c.status();
  CommitRequest r;
  r.key = key;
  r.expected_version = 1;
  r.fence = c->fence;
  r.state = TestSnapshot(2, kFloats);
  ASSERT_TRUE(c->store->Commit(r).ok());
  const int slot = store_internal::KeySlot("ss:{acme/reading}:head");
  std::atomic<bool> stop{false};
  std::atomic<int> loads{0}, errors{0};
  std::string first_error;
  std::thread reader([&] {
    while (!stop.load()) {
      auto loaded = c->store->LoadVersion(key, 0);
      if (!loaded.ok() || loaded->state.state != r.state.state) {
        if (errors.fetch_add(1) == 0) {
          first_error =
              loaded.ok() ? "wrong state" : loaded.status().ToString();
        }
      }
      ++loads;
    }
  });
  for (int i = 0; i < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    const absl::Status moved = c->cluster->MoveSlot(slot);
    ASSERT_TRUE(moved.ok()) << moved;
  }
  stop = true;
  reader.join();
  EXPECT_GT(loads.load(), 3);
  EXPECT_EQ(errors.load(), 0) << first_error;
}

// The node id and port of the primary serving `slot` and of its replica,
// from CLUSTER NODES ("<id> <ip:port@cport> <flags> <primary id> ... <slots>").
struct SlotOwners {
  int primary_port = 0, replica_port = 0;
};
absl::StatusOr<SlotOwners> FindSlotOwners(RedisCluster* cluster, int slot) {
  SS_ASSIGN_OR_RETURN(std::string nodes,
                      cluster->node(0)->Command({"CLUSTER", "NODES"}));
  struct Node {
    std::string id, primary;
    int port = 0;
    bool is_primary = false, serves = false;
  };
  std::vector<Node> all;
  for (absl::string_view line :
       absl::StrSplit(nodes, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 8) continue;
    Node n;
    n.id = f[0];
    n.primary = f[3];
    const std::string addr = f[1].substr(0, f[1].find('@'));
    if (!absl::SimpleAtoi(addr.substr(addr.rfind(':') + 1), &n.port)) continue;
    n.is_primary = absl::StrContains(f[2], "master");
    for (size_t i = 8; i < f.size(); ++i) {
      std::vector<std::string> range = absl::StrSplit(f[i], '-');
      int lo = 0, hi = 0;
      if (!absl::SimpleAtoi(range[0], &lo)) continue;
      hi = lo;
      if (range.size() == 2 && !absl::SimpleAtoi(range[1], &hi)) continue;
      if (lo <= slot && slot <= hi) n.serves = true;
    }
    all.push_back(n);
  }
  SlotOwners out;
  for (const Node& p : all) {
    if (!p.is_primary || !p.serves) continue;
    out.primary_port = p.port;
    for (const Node& r : all) {
      if (!r.is_primary && r.primary == p.id) out.replica_port = r.port;
    }
  }
  if (out.primary_port == 0 || out.replica_port == 0) {
    return absl::InternalError("no primary with a replica serves the slot:\n" +
                               nodes);
  }
  return out;
}

// The primary serving a session is killed and its replica promoted
// (CLUSTER FAILOVER TAKEOVER, as an operator would, or the cluster itself
// after cluster-node-timeout): no commit acknowledged at REPLICATED is
// lost, every kept version stays complete, and commits go on at the new
// primary.
TEST(StateStoreFaultTest, ClusterPrimaryKilledReplicaPromoted) {
  const SessionKey key{"acme", "failover"};
  RedisStateStoreOptions o;
  o.retry_deadline = absl::Seconds(15);
  o.durability_timeout = absl::Seconds(1);
  // REPLICATED includes FSYNC: every node fsyncs each write (Redis 7.0 has
  // no WAITAOF).
  auto c = StartClusterSession(key, o,
                               {"--appendonly", "yes", "--appendfsync",
                                "always", "--no-appendfsync-on-rewrite", "no"});
  ASSERT_TRUE(c.ok()) << c.status();
  StateStore* store = c->store.get();
  // Right after creation the replicas may not have joined yet.
  absl::StatusOr<SlotOwners> owners;
  for (const absl::Time until = absl::Now() + absl::Seconds(20);;) {
    owners = FindSlotOwners(c->cluster.get(),
                            store_internal::KeySlot("ss:{acme/failover}:"));
    if (owners.ok() || absl::Now() > until) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(owners.ok()) << owners.status();
  RedisServer* primary = nullptr;
  RedisServer* replica = nullptr;
  for (int i = 0; i < c->cluster->size(); ++i) {
    RedisServer* n = c->cluster->node(i);
    if (n->port() == owners->primary_port) primary = n;
    if (n->port() == owners->replica_port) replica = n;
  }
  ASSERT_NE(primary, nullptr);
  ASSERT_NE(replica, nullptr);

  BackgroundWriter writer(store, key, c->fence, Durability::kReplicated);
  // Replicas may still be in their first sync: wait for REPLICATED commits.
  const absl::Time warmup = absl::Now() + absl::Seconds(20);
  while (writer.max_acked() < 4 && absl::Now() < warmup) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GE(writer.max_acked(), 4u);
  primary->Kill();
  const uint64_t acked_before_kill = writer.max_acked();
  ASSERT_TRUE(replica->Command({"CLUSTER", "FAILOVER", "TAKEOVER"}).ok());
  // Without a replica left, REPLICATED can no longer be reached; the writer
  // keeps committing (and resynchronising) at the new primary meanwhile.
  absl::SleepFor(absl::Seconds(2));
  writer.Stop();

  auto head = store->GetHead(key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_GE(head->head.version, acked_before_kill);
  ExpectConsistent(store, key);
  // Readiness: the promoted replica answers for the dead primary's slots.
  EXPECT_TRUE(store->Ping().ok()) << store->Ping();
  CommitRequest r;
  r.key = key;
  r.expected_version = head->head.version;
  r.fence = c->fence;
  r.state = TestSnapshot(head->head.version + 1, kFloats);
  auto committed = store->Commit(r);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->version.version, head->head.version + 1);
  ExpectConsistent(store, key);
}

}  // namespace
}  // namespace statestream::testing
