// SPDX-License-Identifier: Apache-2.0
// The gateway's unary calls in front of scripted workers
// (services/gateway_test_util.h): what a retry after a lost worker
// answers.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "services/gateway.h"
#include "services/gateway_test_util.h"
#include "state_store/memory_state_store.h"
#include "state_store/state_store.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {
namespace {

grpc::Status SessionNotFound() {
  return ToGrpcStatus(MakeError(absl::StatusCode::kNotFound,
                                Reason::kSessionNotFound,
                                "session s not found"));
}

grpc::Status DeleteS(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::ClientContext ctx;
  v1::DeleteSessionRequest req;
  req.set_request_id("r");
  req.set_session_id("s");
  v1::DeleteSessionResponse resp;
  return v1::Sessions::NewStub(channel)->DeleteSession(&ctx, req, &resp);
}

// The worker deleted the session and was lost before it answered; the
// retry's worker cannot know the request and finds the session gone. The
// delete succeeded: the client gets OK, not the SESSION_NOT_FOUND that
// it would take as a failure.
TEST_F(GatewayTest, ADeleteWhoseWorkerWasLostSucceedsWhenTheRetryFindsItGone) {
  Script<grpc::Status(int)>(&ScriptedWorker::delete_session, [](int n) {
    return n == 0 ? Lost() : SessionNotFound();
  });
  Start();
  const grpc::Status deleted = DeleteS(channel_);
  EXPECT_TRUE(deleted.ok())
      << deleted.error_code() << " " << deleted.error_message();
  EXPECT_EQ(calls_.load(), 2);
}

// A worker that refused the delete (draining: it says stopping) did not
// apply it, so the retry's SESSION_NOT_FOUND is the answer.
TEST_F(GatewayTest, ADeleteRefusedByItsFirstWorkerStaysNotFound) {
  Script<grpc::Status(int)>(&ScriptedWorker::delete_session, [](int n) {
    if (n > 0) return SessionNotFound();
    return ToGrpcStatus(
        MakeError(absl::StatusCode::kUnavailable, Reason::kOverloaded,
                  "the worker is draining",
                  {{"retry_after_ms", "100"}, {"stopping", "true"}}));
  });
  Start();
  const grpc::Status deleted = DeleteS(channel_);
  EXPECT_EQ(deleted.error_code(), grpc::StatusCode::NOT_FOUND)
      << deleted.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(deleted)), Reason::kSessionNotFound);
  EXPECT_EQ(calls_.load(), 2);
}

// An attempt that never reached its worker (no connection could be made:
// the session's lease holder is gone) did not apply the delete either.
TEST_F(GatewayTest, ADeleteWhoseFirstWorkerCouldNotBeReachedStaysNotFound) {
  std::shared_ptr<StateStore> store(*NewMemoryStateStore({}));
  CreateSessionRequest create;
  create.key = {"default", "s"};
  create.model_id = "tiny";
  create.initial_state.model_fingerprint = "fp-tiny";
  ASSERT_TRUE(store->CreateSession(create).ok());
  for (int i = 0; i < 2; ++i) {
    WorkerInfo w;
    w.worker_id = absl::StrCat("w", i);
    w.address = workers_[i]->address();
    w.model_fingerprints = {"fp-tiny"};
    ASSERT_TRUE(store->RegisterWorker(w, absl::Minutes(5)).ok());
  }
  ASSERT_TRUE(
      store->AcquireLease(create.key, "w0", absl::Minutes(5), false).ok());
  const auto answer = [](const char* who) {
    return [who](int) {
      return ToGrpcStatus(MakeError(absl::StatusCode::kNotFound,
                                    Reason::kSessionNotFound, who));
    };
  };
  workers_[0]->delete_session = answer("w0");
  workers_[1]->delete_session = answer("w1");
  Start({}, store, /*static_workers=*/false);
  const auto delete_s = [&] {
    grpc::ClientContext ctx;
    v1::DeleteSessionRequest req;
    req.set_request_id("r");
    req.set_session_id("s");
    v1::DeleteSessionResponse resp;
    return v1::Sessions::NewStub(channel_)->DeleteSession(&ctx, req, &resp);
  };
  // The call goes to the lease holder, w0.
  EXPECT_EQ(delete_s().error_message(), "w0");
  // w0 is gone: its port refuses connections. The call tries it, fails
  // over to w1, and the delete stays not found.
  workers_[0].reset();
  // Until the gateway's channel has seen the connection close, a call may
  // still go out on it and fail mid-call ("Socket closed"), which is an
  // attempt that may have been applied: not the case under test.
  absl::SleepFor(absl::Milliseconds(300));
  const grpc::Status deleted = delete_s();
  EXPECT_EQ(GetReason(FromGrpcStatus(deleted)), Reason::kSessionNotFound)
      << deleted.error_code() << " " << deleted.error_message();
  EXPECT_EQ(deleted.error_message(), "w1");
  EXPECT_EQ(calls_.load(), 2);
}

// Without an earlier attempt, SESSION_NOT_FOUND is passed on.
TEST_F(GatewayTest, ADeleteOfAMissingSessionIsNotFound) {
  Script<grpc::Status(int)>(&ScriptedWorker::delete_session,
                            [](int) { return SessionNotFound(); });
  Start();
  const grpc::Status deleted = DeleteS(channel_);
  EXPECT_EQ(GetReason(FromGrpcStatus(deleted)), Reason::kSessionNotFound);
  EXPECT_EQ(calls_.load(), 1);
}

}  // namespace
}  // namespace statestream
