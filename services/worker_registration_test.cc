// SPDX-License-Identifier: Apache-2.0
// The registry heartbeat: a worker whose entry vanished (expired, or lost
// by the store) re-checks its sessions once the next heartbeat lists it
// again (WorkerRegistrationOptions::resync); brief failures do not.
#include "services/worker_registration.h"

#include <atomic>
#include <memory>

#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/memory_state_store.h"
#include "state_store/testing/forwarding_store.h"

namespace statestream {
namespace {

// Fails every RegisterWorker with UNAVAILABLE while `down` is set; with
// `lose_next_reply`, applies the next one and fails it all the same (its
// reply lost on the way back).
class FlakyRegistry final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<bool> down{false};
  std::atomic<bool> lose_next_reply{false};
  std::atomic<bool> refuse{false};  // as Redis does a user without rights
  std::atomic<int> calls{0};
  absl::StatusOr<bool> RegisterWorker(const WorkerInfo& w,
                                      absl::Duration t) override {
    ++calls;
    if (down) return absl::UnavailableError("registry down");
    if (refuse) {
      return MakeError(absl::StatusCode::kUnavailable,
                       Reason::kStoreUnavailable, "NOPERM",
                       {{"redis_error", "NOPERM"}});
    }
    absl::StatusOr<bool> listed = ForwardingStore::RegisterWorker(w, t);
    if (lose_next_reply.exchange(false)) {
      return absl::UnavailableError("reply lost");
    }
    return listed;
  }
};

bool Listed(StateStore* store, const std::string& id) {
  auto workers = store->ListWorkers();
  if (!workers.ok()) return false;
  for (const WorkerInfo& w : *workers) {
    if (w.worker_id == id) return true;
  }
  return false;
}

// Waits up to 10 s for `done`.
template <typename F>
bool WaitFor(F done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

class WorkerRegistrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Entries expire only when the test moves this clock, however late a
    // loaded machine runs the heartbeat thread.
    MemoryStateStoreOptions so;
    so.clock = &clock_;
    auto s = NewMemoryStateStore(so);
    ASSERT_TRUE(s.ok()) << s.status();
    memory_ = *std::move(s);
    flaky_ = std::make_unique<FlakyRegistry>(memory_.get());
    WorkerRegistrationOptions o;
    o.info.worker_id = "w1";
    o.info.address = "127.0.0.1:1";
    o.heartbeat_interval = absl::Milliseconds(20);
    o.resync = [this] { ++resyncs_; };
    o.clock = &clock_;
    auto r = WorkerRegistration::Start(flaky_.get(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    registration_ = *std::move(r);
  }
  void TearDown() override { registration_.reset(); }

  FakeClock clock_;
  std::unique_ptr<StateStore> memory_;
  std::unique_ptr<FlakyRegistry> flaky_;
  std::atomic<int> resyncs_{0};
  std::unique_ptr<WorkerRegistration> registration_;
};

TEST_F(WorkerRegistrationTest, SteadyHeartbeatsDoNotResync) {
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= 10; }));
  EXPECT_TRUE(Listed(memory_.get(), "w1"));
  EXPECT_EQ(resyncs_, 0);
}

TEST_F(WorkerRegistrationTest, AnEntryTheStoreLostIsListedAgainAndResyncs) {
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= 3; }));
  ASSERT_EQ(resyncs_, 0);
  ASSERT_TRUE(memory_->UnregisterWorker("w1").ok());  // as a wiped store
  ASSERT_TRUE(WaitFor([&] { return resyncs_ >= 1; }));
  EXPECT_TRUE(Listed(memory_.get(), "w1"));
  // Once: the next heartbeats find it listed.
  const int calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 5; }));
  EXPECT_EQ(resyncs_, 1);
}

// Failed heartbeats while the entry lives say nothing about the leases:
// no resync (it would renew everything exactly while the store struggles).
// Failures that outlast the entry do resync once the heartbeat works.
TEST_F(WorkerRegistrationTest, OnlyFailuresThatOutlastTheEntryResync) {
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= 3; }));
  flaky_->down = true;
  int calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 3; }));
  flaky_->down = false;
  calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 5; }));
  EXPECT_EQ(resyncs_, 0);
  flaky_->down = true;
  calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 2; }));
  clock_.Advance(absl::Seconds(1));  // past the entry's 3 periods
  EXPECT_FALSE(Listed(memory_.get(), "w1"));
  flaky_->down = false;
  ASSERT_TRUE(WaitFor([&] { return resyncs_ >= 1; }));
  const int after = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= after + 5; }));
  EXPECT_EQ(resyncs_, 1);
  EXPECT_TRUE(Listed(memory_.get(), "w1"));
}

// A heartbeat the store applied after the entry expired re-creates it; if
// its reply is lost, the next heartbeat finds the entry listed. The worker
// was away for longer than the entry lives all the same: resync.
TEST_F(WorkerRegistrationTest, AnExpiryHiddenByALostReplyStillResyncs) {
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= 3; }));
  flaky_->down = true;
  int calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 2; }));
  clock_.Advance(absl::Seconds(1));  // past the entry's 3 periods
  ASSERT_FALSE(Listed(memory_.get(), "w1"));
  flaky_->lose_next_reply = true;
  flaky_->down = false;
  ASSERT_TRUE(WaitFor([&] { return !flaky_->lose_next_reply; }));
  calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 5; }));
  EXPECT_EQ(resyncs_, 1);
  EXPECT_TRUE(Listed(memory_.get(), "w1"));
}

// With resync_after_failing, failures that lasted that long resync once the
// heartbeat works again, though the entry lived (a heartbeat interval long
// against the leases' TTL).
TEST_F(WorkerRegistrationTest, LongFailuresResyncWhenAskedTo) {
  registration_.reset();
  WorkerRegistrationOptions o;
  o.info.worker_id = "w2";
  o.info.address = "127.0.0.1:2";
  o.heartbeat_interval = absl::Milliseconds(20);
  o.resync = [this] { ++resyncs_; };
  o.resync_after_failing = absl::Milliseconds(30);
  o.clock = &clock_;
  auto r = WorkerRegistration::Start(flaky_.get(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  flaky_->down = true;
  const int calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 2; }));
  clock_.Advance(absl::Milliseconds(40));  // the entry lives 60 ms
  EXPECT_TRUE(Listed(memory_.get(), "w2"));
  flaky_->down = false;
  ASSERT_TRUE(WaitFor([&] { return resyncs_ >= 1; }));
  const int after = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= after + 5; }));
  EXPECT_EQ(resyncs_, 1);
}

// A registry that cannot be reached while the worker starts (a Redis blip
// after a long model load) does not stop the start: the heartbeat writes
// the entry once it can. An entry the store refuses does.
TEST_F(WorkerRegistrationTest, AnUnreachableRegistryAtStartIsRetried) {
  registration_.reset();
  flaky_->down = true;
  WorkerRegistrationOptions o;
  o.info.worker_id = "w3";
  o.info.address = "127.0.0.1:3";
  o.heartbeat_interval = absl::Milliseconds(20);
  o.clock = &clock_;
  auto r = WorkerRegistration::Start(flaky_.get(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(Listed(memory_.get(), "w3"));
  const int calls = flaky_->calls;
  ASSERT_TRUE(WaitFor([&] { return flaky_->calls >= calls + 2; }));
  flaky_->down = false;
  EXPECT_TRUE(WaitFor([&] { return Listed(memory_.get(), "w3"); }));

  o.info.worker_id = "not a valid id";
  auto refused = WorkerRegistration::Start(flaky_.get(), o);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  // Redis answering with an error (here NOPERM) would refuse every retry.
  o.info.worker_id = "w4";
  flaky_->refuse = true;
  auto denied = WorkerRegistration::Start(flaky_.get(), o);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(Listed(memory_.get(), "w4"));
}

TEST_F(WorkerRegistrationTest, StopUnregisters) {
  ASSERT_TRUE(Listed(memory_.get(), "w1"));
  registration_->Stop();
  EXPECT_FALSE(Listed(memory_.get(), "w1"));
}

}  // namespace
}  // namespace statestream
