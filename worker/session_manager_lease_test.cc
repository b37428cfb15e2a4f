// SPDX-License-Identifier: Apache-2.0
// The session manager's leases against a store that lets the test stop a
// renewal midway: a renewal racing a session's eviction never outlives the
// release.
#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "state_store/testing/forwarding_store.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

// Holds the first renewal of `key` at the store's door (after notifying
// renewing) until that key's lease is released or `hold` passes.
class HeldRenewalStore final : public testing::ForwardingStore {
 public:
  HeldRenewalStore(StateStore* s, std::string key, absl::Duration hold)
      : ForwardingStore(s), key_(std::move(key)), hold_(hold) {}

  absl::Notification renewing;
  absl::Notification renewed;
  absl::Notification released;

  absl::StatusOr<Lease> RenewLease(const SessionKey& k, const std::string& o,
                                   uint64_t f, absl::Duration t) override {
    const bool held = k.session_id == key_ && !renewing.HasBeenNotified();
    if (held) {
      renewing.Notify();
      released.WaitForNotificationWithTimeout(hold_);
    }
    auto r = ForwardingStore::RenewLease(k, o, f, t);
    if (held) renewed.Notify();
    return r;
  }
  absl::Status ReleaseLease(const SessionKey& k, const std::string& o,
                            uint64_t f) override {
    auto st = ForwardingStore::ReleaseLease(k, o, f);
    if (k.session_id == key_ && !released.HasBeenNotified()) {
      released.Notify();
    }
    return st;
  }

 private:
  const std::string key_;
  const absl::Duration hold_;
};

class SessionManagerLeaseTest : public SessionManagerTest {
 protected:
  void TearDown() override { manager_.reset(); }  // before held_
  std::unique_ptr<HeldRenewalStore> held_;
};

// A renewal that read the session resident, then met its eviction: the
// release comes after the renewal, so the lease ends free, and another
// worker takes the session without waiting out a revived lease.
TEST_F(SessionManagerLeaseTest, ARenewalRacingAnEvictionDoesNotReviveTheLease) {
  held_ =
      std::make_unique<HeldRenewalStore>(store_.get(), "a", absl::Seconds(2));
  SessionManagerOptions o;
  o.owner = "test-worker";
  o.residency_bytes = 1;  // the next session's load evicts the idle one
  o.lease_ttl = absl::Seconds(3);  // renewals every second
  manager_.reset();
  auto m = SessionManager::Create(o, model_.get(), tokenizer_.get(),
                                  scheduler_.get(), held_.get());
  ASSERT_TRUE(m.ok()) << m.status();
  manager_ = *std::move(m);
  Create("b");
  Create("a");  // resident; "b" evicted
  auto w = Open("a");
  ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  ASSERT_TRUE(
      held_->renewing.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // Loading "b" evicts "a" while its renewal is at the store's door.
  auto b = Open("b");
  ASSERT_TRUE(Append(b, 0, "y", true, true).ok());
  ASSERT_TRUE(Close(b).ok());
  ASSERT_TRUE(held_->renewed.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(manager_->IsResident("t", "a"));  // evicted by b's load
  auto owner = store_->GetOwner({"t", "a"});
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_TRUE(owner->owner.empty()) << "held by " << owner->owner;
  EXPECT_TRUE(
      store_->AcquireLease({"t", "a"}, "other", absl::Seconds(30), false).ok());
}

}  // namespace
}  // namespace statestream::worker
