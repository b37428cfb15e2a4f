// SPDX-License-Identifier: Apache-2.0
// Forks retried on another worker (or after a restart: the request-id memo
// is gone) once their source has moved on, on the memory store and a real
// (random-weight, byte-level) model.
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

}  // namespace
}  // namespace statestream::worker
