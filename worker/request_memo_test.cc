// SPDX-License-Identifier: Apache-2.0
#include "worker/request_memo.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"

namespace statestream::worker {
namespace {

TEST(RequestMemoTest, RetriesMatchReusesDifferOthersAreUnseen) {
  FakeClock clock;
  RequestMemo memo(absl::Hours(1), 100, &clock);
  memo.Remember("t", "r1", "s1", 42);
  memo.Remember("t", "r2", "s1", 44, /*version=*/7);
  std::string id;
  uint64_t version = 99;
  auto seen = memo.Seen("t", "r1", 42, &id, &version);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_TRUE(*seen);
  EXPECT_EQ(id, "s1");
  EXPECT_EQ(version, 0u);  // a call that committed no version
  ASSERT_TRUE(*memo.Seen("t", "r2", 44, &id, &version));
  EXPECT_EQ(version, 7u);
  // Other content under the same id.
  EXPECT_EQ(GetReason(memo.Seen("t", "r1", 43).status()),
            Reason::kDuplicateRequest);
  // Ids are per tenant; an empty id is never recorded.
  EXPECT_FALSE(*memo.Seen("u", "r1", 42));
  memo.Remember("t", "", "s2", 7);
  EXPECT_FALSE(*memo.Seen("t", "", 7));
}

TEST(RequestMemoTest, ForgetsPastTheWindowAndTheCount) {
  FakeClock clock;
  RequestMemo memo(absl::Minutes(10), 3, &clock);
  memo.Remember("t", "old", "s", 1);
  clock.Advance(absl::Minutes(11));
  EXPECT_FALSE(*memo.Seen("t", "old", 1));
  for (int i = 0; i < 4; ++i) {
    memo.Remember("t", absl::StrCat("r", i), "s", i);
  }
  EXPECT_FALSE(*memo.Seen("t", "r0", 0));  // the oldest of four, dropped
  EXPECT_TRUE(*memo.Seen("t", "r3", 3));
  // Re-recording an id (later) keeps it past its first entry's turn.
  clock.Advance(absl::Seconds(1));
  memo.Remember("t", "r1", "s", 1);
  memo.Remember("t", "r4", "s", 4);
  memo.Remember("t", "r5", "s", 5);
  EXPECT_TRUE(*memo.Seen("t", "r1", 1));
}

// Past the count, the tenant holding the most ids loses its oldest: one
// tenant's burst of calls does not push out another's ids (whose retries
// would then be applied again). They once went oldest-first across all.
TEST(RequestMemoTest, ABurstOfOneTenantKeepsTheOthersIds) {
  FakeClock clock;
  RequestMemo memo(absl::Hours(1), 4, &clock);
  memo.Remember("quiet", "q0", "s", 1);
  clock.Advance(absl::Seconds(1));
  memo.Remember("quiet", "q1", "s", 2);
  for (int i = 0; i < 1000; ++i) {
    clock.Advance(absl::Milliseconds(1));
    memo.Remember("loud", absl::StrCat("l", i), "s", i);
  }
  EXPECT_TRUE(*memo.Seen("quiet", "q0", 1));
  EXPECT_TRUE(*memo.Seen("quiet", "q1", 2));
  EXPECT_TRUE(*memo.Seen("loud", "l999", 999));
  EXPECT_TRUE(*memo.Seen("loud", "l998", 998));
  EXPECT_FALSE(*memo.Seen("loud", "l997", 997));  // its own oldest went
  // Both at two: the next over the count takes the oldest of the one that
  // holds the most after it (loud, three).
  clock.Advance(absl::Seconds(1));
  memo.Remember("loud", "l1000", "s", 1000);
  EXPECT_FALSE(*memo.Seen("loud", "l998", 998));
  EXPECT_TRUE(*memo.Seen("quiet", "q0", 1));
  // The window still applies to every tenant.
  clock.Advance(absl::Hours(2));
  memo.Remember("loud", "l1001", "s", 1001);
  EXPECT_FALSE(*memo.Seen("quiet", "q0", 1));
  EXPECT_FALSE(*memo.Seen("loud", "l1000", 1000));
  EXPECT_TRUE(*memo.Seen("loud", "l1001", 1001));
}

// A call with an id under way holds back a second with the same tenant and
// id (which then finds what the first remembered), not others.
TEST(RequestMemoTest, ASecondCallWithTheSameIdWaitsForTheFirst) {
  FakeClock clock;
  RequestMemo memo(absl::Hours(1), 100, &clock);
  auto first = std::make_unique<RequestMemo::InFlight>(&memo, "t", "d1");
  { RequestMemo::InFlight other_id(&memo, "t", "d2"); }
  { RequestMemo::InFlight other_tenant(&memo, "u", "d1"); }
  { RequestMemo::InFlight no_id(&memo, "t", ""); }
  absl::Notification entered;
  bool seen = false;
  std::thread second([&] {
    RequestMemo::InFlight call(&memo, "t", "d1");
    entered.Notify();
    seen = *memo.Seen("t", "d1", 7);
  });
  EXPECT_FALSE(entered.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  memo.Remember("t", "d1", "s", 7);
  first.reset();
  second.join();
  EXPECT_TRUE(entered.HasBeenNotified());
  EXPECT_TRUE(seen);
}

// A second call whose caller goes away while it waits gives up (entered()
// false) instead of holding its thread until the first ends: the wait
// ignored cancellation, so a burst of retried deletes behind a slow one
// held the worker's request threads for as long as it ran. A call not
// cancelled still waits, and one with nothing ahead of it enters at once
// even with a `cancelled` that says so.
TEST(RequestMemoTest, AWaitingCallWhoseCallerWentAwayGivesUp) {
  FakeClock clock;
  RequestMemo memo(absl::Hours(1), 100, &clock);
  {
    RequestMemo::InFlight alone(&memo, "t", "d0", [] { return true; });
    EXPECT_TRUE(alone.entered());
  }
  auto first = std::make_unique<RequestMemo::InFlight>(&memo, "t", "d1");
  std::atomic<bool> gone{false};
  absl::Notification done;
  bool entered = true;
  std::thread second([&] {
    RequestMemo::InFlight call(&memo, "t", "d1", [&] { return gone.load(); });
    entered = call.entered();
    done.Notify();
  });
  EXPECT_FALSE(done.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  gone = true;
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  second.join();
  EXPECT_FALSE(entered);
  // The one that gave up held nothing: a later call waits for the first
  // only, and enters once it ends.
  absl::Notification third_in;
  std::thread third([&] {
    RequestMemo::InFlight call(&memo, "t", "d1", [] { return false; });
    EXPECT_TRUE(call.entered());
    third_in.Notify();
  });
  EXPECT_FALSE(
      third_in.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  first.reset();
  third.join();
  EXPECT_TRUE(third_in.HasBeenNotified());
}

}  // namespace
}  // namespace statestream::worker
