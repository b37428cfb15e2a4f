// SPDX-License-Identifier: Apache-2.0
// The gateway's ExportState, forwarded by reactors (no thread per call):
// resent to another worker only before its first message reached the
// client.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/gateway_server_stream.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

// One client ExportState call (ServerStreamCall): the worker's messages go
// to the client as they are. Once one has, the export cannot be resent
// (the client would get a second header and chunk 0 again): a lost worker
// then ends it UNAVAILABLE for the client to retry whole.
class ExportCall final : public ServerStreamCall<v1::ExportStateResponse> {
 public:
  ExportCall(Gateway* gateway, grpc::CallbackServerContext* ctx,
             const v1::ExportStateRequest* request)
      : ServerStreamCall(gateway, ctx, "ExportState"), request_(*request) {}

 private:
  Target AttemptTarget() override {
    return Target{"ExportState", request_.session_id(), "", "",
                  /*any_model=*/true};
  }

  void BindLocked(Upstream* upstream) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::shared_ptr<v1::Sessions::Stub> stub =
        v1::Sessions::NewStub(upstream->channel());
    stub->async()->ExportState(upstream->context(), &request_, upstream);
    upstream->stub = std::move(stub);
  }

  Relay RelayLocked(v1::ExportStateResponse* in,
                    v1::ExportStateResponse* out) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    delivered_ = true;
    *out = std::move(*in);
    return Relay::kWrite;
  }

  std::optional<grpc::Status> RefuseResend() override {
    absl::MutexLock lock(&mu_);
    if (!delivered_) return std::nullopt;
    // Part of the state reached the client: it retries the export whole.
    return ToGrpcStatus(MakeError(
        absl::StatusCode::kUnavailable, Reason::kOverloaded,
        "worker lost during export; retry", {{"retry_after_ms", "200"}}));
  }

  // gRPC's, kept until OnDone (which follows Finish).
  const v1::ExportStateRequest& request_;
  // A message went to the client: the export cannot be resent.
  bool delivered_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerWriteReactor<v1::ExportStateResponse>* StartExport(
    Gateway* gateway, grpc::CallbackServerContext* ctx,
    const v1::ExportStateRequest* request) {
  auto* call = new ExportCall(gateway, ctx, request);
  call->Start();
  return call;
}

}  // namespace statestream::gateway
