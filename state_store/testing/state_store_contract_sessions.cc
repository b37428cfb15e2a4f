// SPDX-License-Identifier: Apache-2.0
// The contract suite (state_store_contract.h): a tenant's sessions — the
// session limit, counting and listing them — and the worker registry.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "state_store/testing/state_store_contract.h"
#include "state_store/testing/state_store_contract_util.h"

namespace statestream::testing {
namespace {

using ::testing::ElementsAre;

// A create with max_tenant_sessions is refused at the limit (TENANT_LIMIT,
// with the limit), atomically: of concurrent creates, exactly as many as
// there is room for succeed. An existing id is not one more session, and
// expired sessions (in Redis: index entries no listing pruned yet) do not
// count.
TEST_P(StateStoreContractTest, ATenantSessionLimitHoldsUnderConcurrentCreates) {
  auto create = [&](const std::string& id,
                    absl::Duration ttl = absl::ZeroDuration()) {
    CreateSessionRequest r = Create({"acme", id});
    r.ttl = ttl;
    r.max_tenant_sessions = 6;
    return store_->CreateSession(r).status();
  };
  ASSERT_OK(create("a"));
  EXPECT_ERROR(create("a"), kAlreadyExists, kSessionExists);
  std::atomic<int> created{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const absl::Status st = create(absl::StrCat("c", t));
      if (st.ok()) {
        ++created;
      } else if (GetReason(st) == Reason::kTenantLimit) {
        ++refused;
        EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
        EXPECT_EQ(GetErrorMetadata(st, "limit").value_or(""), "max_sessions");
        EXPECT_EQ(GetErrorMetadata(st, "max").value_or(""), "6");
      } else {
        ADD_FAILURE() << st;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(created.load(), 5);
  EXPECT_EQ(refused.load(), 3);
  ASSERT_OK(store_->CreateSession(Create({"other", "x"})));  // no limit
  // An expired session does not count: its slot is free again.
  ASSERT_OK(store_->DeleteSession({"acme", "a"}));
  ASSERT_OK(create("brief", absl::Seconds(1)));
  EXPECT_ERROR(create("late"), kResourceExhausted, kTenantLimit);
  env_->Advance(absl::Milliseconds(1500));  // "brief" expires
  ASSERT_OK(create("late"));
  EXPECT_ERROR(create("later"), kResourceExhausted, kTenantLimit);
}

// CountSessionsBound is never below the tenant's live sessions, and equals
// them once a listing has pruned what expired.
TEST_P(StateStoreContractTest, CountSessionsBoundsTheLiveSessions) {
  auto count = [&](const std::string& tenant) {
    absl::StatusOr<int64_t> n = store_->CountSessionsBound(tenant);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(-1);
  };
  EXPECT_EQ(count("acme"), 0);
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_OK(store_->CreateSession(Create({"acme", id})));
  }
  ASSERT_OK(store_->CreateSession(Create({"other", "a"})));
  EXPECT_EQ(count("acme"), 3);
  EXPECT_EQ(count("other"), 1);
  ASSERT_OK(store_->DeleteSession({"acme", "b"}));
  EXPECT_EQ(count("acme"), 2);
  // Counted at once after its create (on a real clock a second is all it
  // has: nothing slow may come between).
  CreateSessionRequest brief = Create({"acme", "brief"});
  brief.ttl = absl::Seconds(1);
  ASSERT_OK(store_->CreateSession(brief));
  EXPECT_EQ(count("acme"), 3);
  env_->Advance(absl::Milliseconds(1500));  // "brief" expires
  EXPECT_GE(count("acme"), 2);
  ListSessionsRequest list;
  list.tenant = "acme";
  auto page = store_->ListSessions(list);
  ASSERT_OK(page);
  EXPECT_EQ(page->sessions.size(), 2u);
  EXPECT_EQ(count("acme"), 2);
  EXPECT_ERROR(store_->CountSessionsBound("bad tenant!"), kInvalidArgument,
               kInvalidArgument);
}

TEST_P(StateStoreContractTest, ListSessionsPagesFiltersAndIsolatesTenants) {
  for (int i = 0; i < 5; ++i) {
    CreateSessionRequest r = Create({"acme", absl::StrCat("s", i)});
    r.labels = {{"team", i % 2 ? "blue" : "red"}};
    ASSERT_OK(store_->CreateSession(r));
  }
  ASSERT_OK(store_->CreateSession(Create({"other", "s9"})));
  std::vector<std::string> ids;
  ListSessionsRequest req;
  req.tenant = "acme";
  req.page_size = 2;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = store_->ListSessions(req);
    ASSERT_OK(page);
    EXPECT_LE(page->sessions.size(), 2u);
    for (const SessionHead& h : page->sessions) {
      EXPECT_EQ(h.key.tenant, "acme");
      ids.push_back(h.key.session_id);
    }
    if (page->next_page_token.empty()) break;
    req.page_token = page->next_page_token;
  }
  EXPECT_THAT(ids, ElementsAre("s0", "s1", "s2", "s3", "s4"));

  req = ListSessionsRequest();
  req.tenant = "acme";
  req.label_filter = {{"team", "blue"}};
  auto blue = store_->ListSessions(req);
  ASSERT_OK(blue);
  ASSERT_EQ(blue->sessions.size(), 2u);
  EXPECT_EQ(blue->sessions[0].key.session_id, "s1");
  EXPECT_EQ(blue->sessions[1].key.session_id, "s3");

  EXPECT_ERROR(store_->GetHead({"other", "s1"}), kNotFound, kSessionNotFound);
  EXPECT_ERROR(store_->GetHead({"acme", "s9"}), kNotFound, kSessionNotFound);
  req.page_token = "garbage!";
  EXPECT_ERROR(store_->ListSessions(req), kInvalidArgument, kInvalidArgument);
  req.page_token = "";
  req.page_size = 0;
  EXPECT_ERROR(store_->ListSessions(req), kInvalidArgument, kInvalidArgument);
}

// The model filter is applied as the store reads, as the label filter
// is: a page of page_size holds that many sessions of the model when
// that many exist, however many sessions of other models lie between.
TEST_P(StateStoreContractTest, ListSessionsFiltersByModelAsItReads) {
  for (int i = 0; i < 9; ++i) {
    CreateSessionRequest r = Create({"acme", absl::StrCat("m", i)});
    if (i % 3 == 2) r.model_id = "other";
    ASSERT_OK(store_->CreateSession(r));
  }
  ListSessionsRequest req;
  req.tenant = "acme";
  req.page_size = 2;
  req.model_filter = "other";
  auto page = store_->ListSessions(req);
  ASSERT_OK(page);
  ASSERT_EQ(page->sessions.size(), 2u);
  EXPECT_EQ(page->sessions[0].key.session_id, "m2");
  EXPECT_EQ(page->sessions[1].key.session_id, "m5");
  req.page_token = page->next_page_token;
  page = store_->ListSessions(req);
  ASSERT_OK(page);
  ASSERT_EQ(page->sessions.size(), 1u);
  EXPECT_EQ(page->sessions[0].key.session_id, "m8");
  EXPECT_EQ(page->sessions[0].model_id, "other");
  EXPECT_EQ(page->next_page_token, "");
}

// A page also ends at max_bytes of heads (one head at least), so sessions
// with many labels page through a response size limit: every session
// once, in order.
TEST_P(StateStoreContractTest, ListSessionsPagesByBytesToo) {
  const std::string big(200, 'x');
  for (int i = 0; i < 5; ++i) {
    CreateSessionRequest r = Create({"acme", absl::StrCat("b", i)});
    for (int l = 0; l < 20; ++l) r.labels[absl::StrCat("label", l)] = big;
    ASSERT_OK(store_->CreateSession(r));
  }
  ListSessionsRequest req;
  req.tenant = "acme";
  req.page_size = 1000;
  req.max_bytes = 9000;  // two of these heads (~4.4 KB each) a page
  std::vector<std::string> ids;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = store_->ListSessions(req);
    ASSERT_OK(page);
    EXPECT_GE(page->sessions.size(), 1u);
    EXPECT_LE(page->sessions.size(), 2u);
    EXPECT_LE(page->bytes, req.max_bytes);
    for (const SessionHead& h : page->sessions) {
      ids.push_back(h.key.session_id);
    }
    if (page->next_page_token.empty()) break;
    req.page_token = page->next_page_token;
  }
  EXPECT_THAT(ids, ElementsAre("b0", "b1", "b2", "b3", "b4"));
  // Smaller than one head: one a page, never none.
  req.page_token = "";
  req.max_bytes = 1;
  auto one = store_->ListSessions(req);
  ASSERT_OK(one);
  EXPECT_EQ(one->sessions.size(), 1u);
  EXPECT_FALSE(one->next_page_token.empty());
}

TEST_P(StateStoreContractTest, WorkerRegistry) {
  WorkerInfo a{"w-a", "10.0.0.1:7000", {"fp1", "fp2"}, 0.5, {}};
  WorkerInfo b{"w-b", "10.0.0.2:7000", {"fp1"}, 0.25, {}};
  // RegisterWorker says whether the entry was listed just before.
  auto listed = store_->RegisterWorker(a, absl::Hours(1));
  ASSERT_OK(listed);
  EXPECT_FALSE(*listed);  // announced
  ASSERT_OK(store_->RegisterWorker(b, absl::Milliseconds(300)));
  a.load = 0.75;
  listed = store_->RegisterWorker(a, absl::Hours(1));  // heartbeat
  ASSERT_OK(listed);
  EXPECT_TRUE(*listed);
  EXPECT_ERROR(store_->RegisterWorker(WorkerInfo{"bad id", "", {}, 0, {}},
                                      absl::Hours(1)),
               kInvalidArgument, kInvalidArgument);
  env_->Advance(absl::Milliseconds(1500));
  auto workers = store_->ListWorkers();
  ASSERT_OK(workers);
  ASSERT_EQ(workers->size(), 1u);
  EXPECT_EQ((*workers)[0].worker_id, "w-a");
  EXPECT_EQ((*workers)[0].address, "10.0.0.1:7000");
  EXPECT_THAT((*workers)[0].model_fingerprints, ElementsAre("fp1", "fp2"));
  EXPECT_EQ((*workers)[0].load, 0.75);
  // A heartbeat after the entry expired finds it unlisted.
  listed = store_->RegisterWorker(b, absl::Milliseconds(300));
  ASSERT_OK(listed);
  EXPECT_FALSE(*listed);
  ASSERT_OK(store_->UnregisterWorker("w-b"));
  ASSERT_OK(store_->UnregisterWorker("w-a"));
  workers = store_->ListWorkers();
  ASSERT_OK(workers);
  EXPECT_TRUE(workers->empty());
  listed = store_->RegisterWorker(a, absl::Hours(1));  // after unregistering
  ASSERT_OK(listed);
  EXPECT_FALSE(*listed);
  ASSERT_OK(store_->UnregisterWorker("w-a"));
}

}  // namespace
}  // namespace statestream::testing
