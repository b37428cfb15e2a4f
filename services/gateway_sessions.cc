// SPDX-License-Identifier: Apache-2.0
// The gateway's Sessions service: each unary rpc forwarded to the
// session's owner with failover (gateway_unary.h); Append, Generate,
// ExportState and ImportState have files of their own (see gateway.h for
// the contracts).
#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "common/grpc_status.h"
#include "services/gateway_internal.h"
#include "services/gateway_unary.h"
#include "services/request_checks.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

// Every rpc is one line: route key and the stub method.
#define SS_FORWARD(Service, Method, session_expr, hash_expr, any_model) \
  ForwardUnary<v1::Service>(                                            \
      gateway_, ctx, req, resp,                                         \
      Target{#Method, session_expr, hash_expr, "", any_model},          \
      [](auto* async, grpc::ClientContext* client, const auto* request, \
         auto* response, std::function<void(grpc::Status)> done) {      \
        async->Method(client, request, response, std::move(done));      \
      })

class SessionsService final : public v1::Sessions::CallbackService {
 public:
  explicit SessionsService(Gateway* gateway) : gateway_(gateway) {}

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx,
                                          const v1::CreateSessionRequest* req,
                                          v1::Session* resp) override {
    // A new session has no owner: rendezvous of its id (or, for a
    // server-generated id, of the request id, so retries land together)
    // among the workers serving its model; a fork goes where its source
    // lives.
    // The quota and the model are looked up on the call's first task (they
    // may wait on Redis or on the workers).
    return ForwardUnary<v1::Sessions>(
        gateway_, ctx, req, resp, Target{"CreateSession", "", "", ""},
        [](auto* async, grpc::ClientContext* client, const auto* request,
           auto* response, std::function<void(grpc::Status)> done) {
          async->CreateSession(client, request, response, std::move(done));
        },
        [this, ctx, req](const std::string& tenant, Target* target) {
          return CreateSessionTarget(*ctx, tenant, *req, target);
        });
  }
  grpc::Status CreateSessionTarget(const grpc::CallbackServerContext& ctx,
                                   const std::string& tenant,
                                   const v1::CreateSessionRequest& req,
                                   Target* target) {
    // A malformed request is refused as the worker would refuse it, before
    // the quota or the model (an UNAVAILABLE while the model's workers
    // restart would have it retried in vain).
    if (absl::Status bad = CheckCreateSessionFields(req); !bad.ok()) {
      return ToGrpcStatus(bad);
    }
    grpc::Status quota =
        SessionQuota(gateway_, tenant, req.session_id(), req.request_id());
    if (!quota.ok()) return quota;
    target->hash_key =
        req.session_id().empty() ? req.request_id() : req.session_id();
    if (!req.model_id().empty()) {
      auto model =
          gateway_->ResolveModel(ctx, tenant, req.model_id(), &target->unfit);
      if (!model.ok()) return ToGrpcStatus(model.status());
      target->fingerprint = model->fingerprint();
    } else if (req.has_fork_from() && !req.fork_from().session_id().empty()) {
      target->session_id = req.fork_from().session_id();
    }
    return grpc::Status::OK;
  }

  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx,
                                       const v1::GetSessionRequest* req,
                                       v1::Session* resp) override {
    return SS_FORWARD(Sessions, GetSession, req->session_id(), "",
                      /*any_model=*/true);
  }
  grpc::ServerUnaryReactor* ListSessions(
      grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest* req,
      v1::ListSessionsResponse* resp) override {
    return SS_FORWARD(Sessions, ListSessions, "", "list",
                      /*any_model=*/true);
  }
  grpc::ServerUnaryReactor* UpdateSession(grpc::CallbackServerContext* ctx,
                                          const v1::UpdateSessionRequest* req,
                                          v1::Session* resp) override {
    return SS_FORWARD(Sessions, UpdateSession, req->session_id(), "",
                      /*any_model=*/true);
  }
  grpc::ServerUnaryReactor* DeleteSession(
      grpc::CallbackServerContext* ctx, const v1::DeleteSessionRequest* req,
      v1::DeleteSessionResponse* resp) override {
    return SS_FORWARD(Sessions, DeleteSession, req->session_id(), "",
                      /*any_model=*/true);
  }
  grpc::ServerUnaryReactor* ListVersions(
      grpc::CallbackServerContext* ctx, const v1::ListVersionsRequest* req,
      v1::ListVersionsResponse* resp) override {
    return SS_FORWARD(Sessions, ListVersions, req->session_id(), "",
                      /*any_model=*/true);
  }
  grpc::ServerUnaryReactor* RollbackSession(
      grpc::CallbackServerContext* ctx, const v1::RollbackSessionRequest* req,
      v1::Session* resp) override {
    return SS_FORWARD(Sessions, RollbackSession, req->session_id(), "",
                      /*any_model=*/false);
  }

  // Server streaming: resent to another worker only before the first
  // message reached the client.
  grpc::ServerWriteReactor<v1::ExportStateResponse>* ExportState(
      grpc::CallbackServerContext* ctx,
      const v1::ExportStateRequest* req) override {
    return StartExport(gateway_, ctx, req);
  }

  // Client streaming: the whole import (at most one state) is read first,
  // so it can be resent to another worker.
  grpc::ServerReadReactor<v1::ImportStateRequest>* ImportState(
      grpc::CallbackServerContext* ctx, v1::Session* resp) override {
    return StartImport(gateway_, ctx, resp);
  }

 private:
  Gateway* const gateway_;
};

#undef SS_FORWARD

}  // namespace

grpc::Status SessionQuota(Gateway* gateway, const std::string& tenant,
                          const std::string& session_id,
                          const std::string& request_id) {
  TenantLimits* limits = gateway->options().limits.get();
  if (limits == nullptr) return grpc::Status::OK;
  // The workers' request-id window decides whether a derived id's session
  // is this request's.
  return ToGrpcStatus(limits->CheckNewCreate(
      tenant, session_id, request_id, gateway->options().request_id_window));
}

std::unique_ptr<grpc::Service> NewSessionsService(Gateway* gateway) {
  return std::make_unique<SessionsService>(gateway);
}

}  // namespace statestream::gateway
