// SPDX-License-Identifier: Apache-2.0
// The gateway's Streams service: Append (gateway_append.cc) and Generate
// (gateway_generate.cc), forwarded by reactors, and Score, forwarded like
// any unary call but holding a stream slot, as it runs the model (see
// gateway.h for the contracts).
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "services/gateway_internal.h"
#include "services/gateway_unary.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

class StreamsService final : public v1::Streams::CallbackService {
 public:
  explicit StreamsService(Gateway* gateway) : gateway_(gateway) {}

  grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>* Append(
      grpc::CallbackServerContext* ctx) override {
    return StartAppend(gateway_, ctx);
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx,
      const v1::GenerateRequest* req) override {
    return StartGenerate(gateway_, ctx, req);
  }

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx,
                                  const v1::ScoreRequest* req,
                                  v1::ScoreResponse* resp) override {
    return ForwardUnary<v1::Streams>(
        gateway_, ctx, req, resp, Target{"Score", req->session_id(), "", ""},
        [](auto* async, grpc::ClientContext* client, const auto* request,
           auto* response, std::function<void(grpc::Status)> done) {
          async->Score(client, request, response, std::move(done));
        },
        /*prepare=*/nullptr, /*stream_slot=*/true);
  }

 private:
  Gateway* const gateway_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewStreamsService(Gateway* gateway) {
  return std::make_unique<StreamsService>(gateway);
}

}  // namespace statestream::gateway
