// SPDX-License-Identifier: Apache-2.0
// A session's TTL under operations that write it when they end (an
// Append's ingest, a committing generation), on the memory store and a
// real (random-weight, byte-level) model, with a fake clock moved on while
// they run.
#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/memory_state_store.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

class SessionTtlTest : public SessionManagerTest {
 protected:
  // A slow manager (an ingest keeps its session busy a while) and a fresh
  // store, both on clock_; session "short" with a 20 s TTL, "prompt"
  // appended and committed, then past half its TTL with nothing written.
  void SetUp() override {
    SessionManagerTest::SetUp();  // the model, tokenizer and scheduler
    MemoryStateStoreOptions store;
    store.clock = &clock_;
    store_ = *NewMemoryStateStore(store);
    SessionManagerOptions o;
    o.clock = &clock_;
    o.checkpoint_interval = absl::Hours(1);
    StartSlow(o);
    CreateParams p;
    p.session_id = "short";
    p.request_id = "create-short";
    p.ttl = absl::Seconds(20);
    ASSERT_TRUE(manager_->CreateSession("t", p).ok());
    auto w = Open("short");
    ASSERT_TRUE(Append(w, 0, "prompt", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
    clock_.Advance(absl::Seconds(11));
  }

  // The manager and the store go before the clock they read.
  void TearDown() override {
    manager_.reset();
    store_.reset();
  }

  FakeClock clock_{absl::Now()};
};

// The Append's input is due at once (half the TTL passed), but the policy
// is checked as the ingest ends: the TTL of the last write ran out
// meanwhile, the commit met NOT_FOUND, and the session and the input were
// gone. The ingest's start refreshes the TTL instead.
TEST_F(SessionTtlTest, ASessionDoesNotExpireUnderAnIngest) {
  auto w = Open("short");
  AppendInput in;
  in.expected_input_offset = 6;
  in.kind = AppendInput::Kind::kText;
  in.text = std::string(20000, 'x');
  absl::Notification ended;
  absl::StatusOr<AppendAck> ack;
  AppendWhileIngesting(w, in, &ended, &ack);
  clock_.Advance(absl::Seconds(10));  // 21 s after the last write
  ended.WaitForNotification();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->committed_input_offset, 20006u);
  ASSERT_TRUE(Close(w).ok());
  auto head = store_->GetHead({"t", "short"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, 20006u);
}

// The same for a committing generation: its final commit came after the
// TTL of the session's last write.
TEST_F(SessionTtlTest, ASessionDoesNotExpireUnderACommittingGeneration) {
  GenerateInput in;
  in.request_id = "generate-1";
  in.max_tokens = 8;
  in.commit = true;
  in.sampling.seed = 9;
  in.has_seed = true;
  absl::Notification done;
  absl::StatusOr<GenerateOutcome> out;
  bool moved = false;
  manager_->Generate(
      "t", "short", in,
      [&](const GeneratedPiece&) {
        if (!moved) clock_.Advance(absl::Seconds(10));  // 21 s on
        moved = true;
      },
      [&](absl::StatusOr<GenerateOutcome> o) {
        out = std::move(o);
        done.Notify();
      });
  done.WaitForNotification();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->committed);
  EXPECT_TRUE(moved);
  auto head = store_->GetHead({"t", "short"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_GT(head->head.version, 2u);
}

}  // namespace
}  // namespace statestream::worker
