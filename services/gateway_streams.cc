// SPDX-License-Identifier: Apache-2.0
// The gateway's Streams service: Append (gateway_append.cc) and Generate
// (gateway_generate.cc), forwarded by reactors, and Score, forwarded like
// any unary call (see gateway.h for the contracts).
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "services/gateway_internal.h"
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
    return ForwardUnary(
        gateway_, ctx, req, resp, Target{"Score", req->session_id(), "", ""},
        [](const std::shared_ptr<grpc::Channel>& channel,
           grpc::ClientContext* client, const v1::ScoreRequest& request,
           v1::ScoreResponse* response) {
          return v1::Streams::NewStub(channel)->Score(client, request,
                                                      response);
        });
  }

 private:
  Gateway* const gateway_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewStreamsService(Gateway* gateway) {
  return std::make_unique<StreamsService>(gateway);
}

}  // namespace statestream::gateway
