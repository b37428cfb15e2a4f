// SPDX-License-Identifier: Apache-2.0
// Fault tests of the Redis state store against real redis-server processes:
// Redis killed and restarted mid-commit (AOF, appendfsync always), and a
// Cluster slot migrated (MOVED/ASK) while a writer commits.
#include <atomic>
#include <thread>

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

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> max_acked{1};
  std::atomic<int> errors{0};
  std::thread writer(Writer, store->get(), key, created->session.fence,
                     Durability::kFsync, &stop, &max_acked, &errors);
  for (int round = 0; round < 4; ++round) {
    absl::SleepFor(absl::Milliseconds(150 + 70 * round));
    const uint64_t acked_before_kill = max_acked.load();
    (*server)->Kill();
    ASSERT_TRUE((*server)->Restart().ok());
    auto head = (*store)->GetHead(key);
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_GE(head->head.version, acked_before_kill);
  }
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  writer.join();
  auto head = (*store)->GetHead(key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_GE(head->head.version, max_acked.load());
  EXPECT_GT(max_acked.load(), 1u);
  ExpectConsistent(store->get(), key);
}

TEST(StateStoreFaultTest, ClusterSlotMigrationDuringCommits) {
  auto cluster = RedisCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  RedisStateStoreOptions o;
  o.addresses = (*cluster)->addresses();
  o.cluster = true;
  o.retry_deadline = absl::Seconds(10);
  auto store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  const SessionKey key{"acme", "moving"};
  CreateSessionRequest cr;
  cr.key = key;
  cr.initial_state = TestSnapshot(1);
  auto created = (*store)->CreateSession(cr);
  ASSERT_TRUE(created.ok()) << created.status();
  const int slot = store_internal::KeySlot("ss:{acme/moving}:head");

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> max_acked{1};
  std::atomic<int> errors{0};
  std::thread writer(Writer, store->get(), key, created->session.fence,
                     Durability::kMemory, &stop, &max_acked, &errors);
  struct Join {
    std::atomic<bool>* stop;
    std::thread* t;
    ~Join() {
      *stop = true;
      if (t->joinable()) t->join();
    }
  } join{&stop, &writer};
  for (int i = 0; i < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(200));
    const uint64_t before = max_acked.load();
    const absl::Status moved = (*cluster)->MoveSlot(slot);
    ASSERT_TRUE(moved.ok()) << moved;
    // The writer keeps going at the new owner.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (max_acked.load() < before + 2 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_GE(max_acked.load(), before + 2);
  }
  stop = true;
  writer.join();
  EXPECT_EQ(errors.load(), 0);
  ExpectConsistent(store->get(), key);
}

}  // namespace
}  // namespace statestream::testing
