// SPDX-License-Identifier: Apache-2.0
#include "state_store/memory_state_store.h"

#include <malloc.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status.h"
#include "state_store/testing/forwarding_store.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

class MemoryEnv : public StoreEnv {
 public:
  absl::StatusOr<std::unique_ptr<StateStore>> NewStore(
      int keep_versions) override {
    // Stores of one env share data: hand out views of one store.
    if (store_ == nullptr || keep_versions != keep_) {
      MemoryStateStoreOptions o;
      o.clock = &clock_;
      o.keep_versions = keep_versions;
      SS_ASSIGN_OR_RETURN(store_, NewMemoryStateStore(o));
      keep_ = keep_versions;
    }
    return std::unique_ptr<StateStore>(new ForwardingStore(store_.get()));
  }
  void Advance(absl::Duration d) override { clock_.Advance(d); }

 private:
  FakeClock clock_;
  std::unique_ptr<StateStore> store_;
  int keep_ = 0;
};

std::unique_ptr<StoreEnv> NewMemoryEnv() {
  return std::make_unique<MemoryEnv>();
}

INSTANTIATE_TEST_SUITE_P(Memory, StateStoreContractTest,
                         ::testing::Values(&NewMemoryEnv));

// An update's TTL of 0 is the store's own default_ttl (here not the API's 7
// days), as at creation.
TEST(MemoryStateStoreTest, AnUpdateTtlOfZeroIsThisStoresDefault) {
  MemoryStateStoreOptions o;
  o.default_ttl = absl::Hours(2);
  auto store = NewMemoryStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  CreateSessionRequest r;
  r.key = {"t", "s"};
  r.model_id = "m";
  r.ttl = absl::Hours(1);
  r.initial_state = TestSnapshot(1);
  ASSERT_TRUE((*store)->CreateSession(r).ok());
  SessionUpdate u;
  u.ttl = absl::ZeroDuration();
  auto head = (*store)->UpdateSession(r.key, u);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->ttl, absl::Hours(2));
}

// Nothing stays behind per id once a session is deleted: a `serve` that
// gives each conversation a fresh id kept a fence for every id it ever
// created (~150 bytes each, forever). An id created again still gets a
// fence above its earlier life's.
TEST(MemoryStateStoreTest, ADeletedSessionLeavesNothingBehind) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "mallinfo2 does not see ASan's allocator";
#endif
  auto store = NewMemoryStateStore(MemoryStateStoreOptions{});
  ASSERT_TRUE(store.ok()) << store.status();
  // Creates and deletes ids from..from+n; the fence of each.
  auto churn = [&](int from, int n) {
    std::vector<uint64_t> fences;
    for (int i = from; i < from + n; ++i) {
      CreateSessionRequest r;
      r.key = {"acme", absl::StrCat("conversation-", i)};
      r.model_id = "tiny";
      r.initial_state = TestSnapshot(1);
      auto created = (*store)->CreateSession(r);
      EXPECT_TRUE(created.ok()) << created.status();
      if (!created.ok()) break;
      fences.push_back(created->session.fence);
      EXPECT_TRUE((*store)->DeleteSession(r.key).ok());
    }
    return fences;
  };
  const std::vector<uint64_t> first = churn(0, 1000);  // warms the allocator
  const size_t before = mallinfo2().uordblks;
  churn(1000, 100000);
  const size_t after = mallinfo2().uordblks;
  // The fence map held ~15 MB here.
  EXPECT_LT(after, before + (2u << 20)) << before << " -> " << after;
  // The same id again: a fence above its earlier life's.
  const std::vector<uint64_t> again = churn(0, 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_GT(again[0], first[0]);
}

}  // namespace
}  // namespace statestream::testing
