// SPDX-License-Identifier: Apache-2.0
// The gateway's unary calls, forwarded by reactors: no thread waits while
// a worker answers. Internal to services/.
#ifndef STATESTREAM_SERVICES_GATEWAY_UNARY_H_
#define STATESTREAM_SERVICES_GATEWAY_UNARY_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "services/gateway_internal.h"

namespace statestream::gateway {

// Starts one attempt of a unary call: the rpc on `channel` with `context`
// (both valid until `done`), which gRPC completes by calling `done` once
// with the worker's status. Must not block.
using UnaryAttempt = std::function<void(
    const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* context,
    std::function<void(grpc::Status)> done)>;
// Runs once, on a task thread, before the first attempt: a status that
// ends the call instead (a quota, a model that is not served), or OK with
// `target` completed. May block.
using UnaryPrepare =
    std::function<grpc::Status(const std::string& tenant, Target* target)>;

// Forwards a unary call to workers until one answers with something other
// than a failover condition (Gateway::ShouldFailover), or max_attempts are
// used (a worker that could not be reached costs none:
// Gateway::SkipsAttempt). The call is admitted (Gateway::AdmitCall) for
// its whole life, but holds a thread only while it routes, decides on a
// failover or runs `prepare`: a worker's answer is awaited by gRPC.
// With `stream_slot`, the call holds one of the tenant's stream slots
// (TenantLimits::AcquireStream: max_streams) from before its first attempt
// until it ends, as a streaming call does: for a unary call that runs the
// model (Score).
grpc::ServerUnaryReactor* StartUnary(Gateway* gateway,
                                     grpc::CallbackServerContext* ctx,
                                     Target target, UnaryAttempt attempt,
                                     UnaryPrepare prepare = nullptr,
                                     bool stream_slot = false);

// StartUnary for a call whose attempts are one stub method:
// `call(stub_async, context, request, response, done)`, e.g.
//   [](auto* async, grpc::ClientContext* c, const auto* req, auto* resp,
//      auto done) { async->GetSession(c, req, resp, std::move(done)); }
// with `async` a v1::<Service>::Stub::async(). `resp` is cleared before
// each attempt, so a failed one leaves nothing behind.
template <class Service, class Req, class Resp, class Call>
grpc::ServerUnaryReactor* ForwardUnary(Gateway* gateway,
                                       grpc::CallbackServerContext* ctx,
                                       const Req* req, Resp* resp,
                                       Target target, Call call,
                                       UnaryPrepare prepare = nullptr,
                                       bool stream_slot = false) {
  return StartUnary(
      gateway, ctx, std::move(target),
      [req, resp, call](const std::shared_ptr<grpc::Channel>& channel,
                        grpc::ClientContext* context,
                        std::function<void(grpc::Status)> done) {
        resp->Clear();
        // The stub may go once the call has started: the call holds the
        // channel's core (and the caller the channel itself).
        auto stub = Service::NewStub(channel);
        call(stub->async(), context, req, resp, std::move(done));
      },
      std::move(prepare), stream_slot);
}

}  // namespace statestream::gateway

#endif  // STATESTREAM_SERVICES_GATEWAY_UNARY_H_
