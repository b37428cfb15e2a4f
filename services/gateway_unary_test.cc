// SPDX-License-Identifier: Apache-2.0
// The gateway's unary calls in front of scripted workers
// (services/gateway_test_util.h): what a retry after a lost worker
// answers.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <string>

#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "services/gateway.h"
#include "services/gateway_test_util.h"
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
