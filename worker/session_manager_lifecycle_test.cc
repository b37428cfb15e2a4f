// SPDX-License-Identifier: Apache-2.0
// Sessions that change under a call, on the memory store and a real
// (random-weight, byte-level) model: a fork retried on another worker (or
// after a restart: the request-id memo is gone) once its source has moved
// on, and a writer whose session was deleted and made again.
#include <memory>
#include <string>

#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

// A fork made by its first attempt, whose source was deleted before the
// retry: the retry finds the fork by the request id its head records
// instead of failing on the source (SESSION_NOT_FOUND, final for a client
// that would then fork again under a new id, or give up on a fork that
// exists). With other content under the request id it is
// DUPLICATE_REQUEST, and another request still gets the source's error.
TEST_F(SessionManagerTest, AForkRetriedAfterItsSourceWentAwayIsFoundOnce) {
  Create("src");
  auto w = Open("src");
  ASSERT_TRUE(Append(w, 0, "the source", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  CreateParams chosen;
  chosen.request_id = "fork-chosen";
  chosen.session_id = "copy";
  chosen.fork_from.emplace("src", 2);
  CreateParams derived;  // the id derives from the request id
  derived.request_id = "fork-derived";
  derived.fork_from.emplace("src", 0);
  auto first_chosen = manager_->CreateSession("t", chosen);
  ASSERT_TRUE(first_chosen.ok()) << first_chosen.status();
  auto first_derived = manager_->CreateSession("t", derived);
  ASSERT_TRUE(first_derived.ok()) << first_derived.status();
  ASSERT_TRUE(manager_->DeleteSession("t", "src", false, "delete-src").ok());

  auto other = OtherWorker();
  ASSERT_NE(other, nullptr);
  auto retried_chosen = other->CreateSession("t", chosen);
  ASSERT_TRUE(retried_chosen.ok()) << retried_chosen.status();
  EXPECT_EQ(retried_chosen->session_id, "copy");
  EXPECT_EQ(retried_chosen->input_offset, 10u);
  auto retried_derived = other->CreateSession("t", derived);
  ASSERT_TRUE(retried_derived.ok()) << retried_derived.status();
  EXPECT_EQ(retried_derived->session_id, first_derived->session_id);
  EXPECT_EQ(retried_derived->input_offset, 10u);

  CreateParams changed = chosen;
  changed.labels = {{"k", "v"}};
  EXPECT_EQ(GetReason(other->CreateSession("t", changed).status()),
            Reason::kDuplicateRequest);
  CreateParams another = chosen;
  another.request_id = "fork-chosen-2";
  EXPECT_EQ(GetReason(other->CreateSession("t", another).status()),
            Reason::kSessionNotFound);
}

// A writer's session deleted through another worker and created again
// under its id: the writer's next commit is refused (its fence is the old
// session's), and the call ends SESSION_NOT_FOUND, as for a delete. It
// ended FENCED, which a gateway takes for a takeover: it replayed the
// writer's input from its last commit into the new session.
TEST_F(SessionManagerTest, AWriterWhoseSessionWasMadeAgainIsNotFound) {
  Create("again");
  auto w = Open("again");
  ASSERT_TRUE(Append(w, 0, "abc").ok());  // not committed
  auto other = OtherWorker();
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->DeleteSession("t", "again", false, "delete-1").ok());
  CreateParams p;
  p.session_id = "again";
  p.request_id = "create-again";
  ASSERT_TRUE(other->CreateSession("t", p).ok());
  auto ack = Append(w, 3, "def", false, /*checkpoint=*/true);
  EXPECT_EQ(GetReason(ack.status()), Reason::kSessionNotFound) << ack.status();
  Close(w).IgnoreError();
  // The new session has none of it.
  auto head = store_->GetHead({"t", "again"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, 0u);
}

}  // namespace
}  // namespace statestream::worker
