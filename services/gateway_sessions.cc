// SPDX-License-Identifier: Apache-2.0
// The gateway's Sessions service: each rpc forwarded to the session's
// owner with unary failover (see gateway.h for the contracts).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/gateway_unary.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

using v1::Sessions;

// OK, or TENANT_LIMIT when the caller's tenant may not create another
// session (services/tenants.h). A create whose session exists already (a
// retry of one that succeeded: under `session_id`, or for a generated id
// the one derived from `request_id`) passes, for the worker to answer.
grpc::Status SessionQuota(Gateway* gateway,
                          const grpc::CallbackServerContext& ctx,
                          const std::string& session_id,
                          const std::string& request_id) {
  TenantLimits* limits = gateway->options().limits.get();
  if (limits == nullptr) return grpc::Status::OK;
  auto tenant = gateway->Tenant(ctx);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  // The workers' request-id window decides whether a derived id's session
  // is this request's.
  return ToGrpcStatus(limits->CheckNewCreate(
      *tenant, session_id, request_id, gateway->options().request_id_window));
}

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
    grpc::Status quota =
        SessionQuota(gateway_, ctx, req.session_id(), req.request_id());
    if (!quota.ok()) return quota;
    target->hash_key =
        req.session_id().empty() ? req.request_id() : req.session_id();
    if (!req.model_id().empty()) {
      auto model = gateway_->ResolveModel(ctx, tenant, req.model_id());
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
    class Reader final
        : public Blocking<grpc::ServerReadReactor<v1::ImportStateRequest>> {
     public:
      bool Read(v1::ImportStateRequest* msg) {
        {
          absl::MutexLock lock(&mu_);
          reading_ = true;
        }
        MarkUnread(msg);
        StartRead(msg);
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](bool* p) { return !*p; }, &reading_));
        unparsable_ = !ok_ && ReadUnparsable(*msg);
        return ok_;
      }
      // The last Read failed on a message gRPC could not parse.
      bool unparsable() {
        absl::MutexLock lock(&mu_);
        return unparsable_;
      }
      void OnReadDone(bool ok) override {
        absl::MutexLock lock(&mu_);
        ok_ = ok;
        reading_ = false;
      }

     private:
      absl::Mutex mu_;
      bool reading_ ABSL_GUARDED_BY(mu_) = false;
      bool ok_ ABSL_GUARDED_BY(mu_) = false;
      bool unparsable_ ABSL_GUARDED_BY(mu_) = false;
    };
    auto* reader = new Reader();
    const absl::Time began = gateway_->BeginCall();
    // The caller is authenticated, and within its tenant's stream limit,
    // before a byte is read: the import is buffered whole.
    const absl::StatusOr<std::string> tenant = gateway_->Tenant(*ctx);
    if (!tenant.ok()) {
      const grpc::Status st = ToGrpcStatus(tenant.status());
      gateway_->EndCall("ImportState", st, began);
      reader->Finish(st);
      reader->Release();
      return reader;
    }
    const bool spawned = gateway_->Spawn([this, ctx, resp, reader, began,
                                          tenant = *tenant]() mutable {
      // On the call's own thread: the slot may wait on Redis.
      absl::StatusOr<std::shared_ptr<TenantLimits::StreamSlot>> held =
          HoldStreamSlot(gateway_, tenant);
      if (!held.ok()) {
        const grpc::Status st = ToGrpcStatus(held.status());
        gateway_->EndCall("ImportState", st, began);
        reader->Finish(st);
        reader->Release();
        return;
      }
      std::shared_ptr<TenantLimits::StreamSlot> slot = *std::move(held);
      // Kept whole for a replay on failover, so bounded: no more state
      // bytes than the header announces (the worker refuses more anyway)
      // nor than the gateway's limit. A stream that breaks either ends at
      // once, before the gateway has buffered it.
      std::vector<v1::ImportStateRequest> parts;
      v1::ImportStateRequest msg;
      uint64_t bytes = 0, kept = 0;
      absl::Status bad;
      // Its room in the gateway's buffers: the announced state's at the
      // header, more as the messages turn out to hold more (each by the
      // budget's rule), given back once the import is forwarded.
      ByteBudget::Hold room;
      // Per call, within the gateway's whole budget too.
      const uint64_t max_import = static_cast<uint64_t>(
          std::min(gateway_->options().max_import_bytes,
                   gateway_->options().max_buffered_bytes));
      while (bad.ok() && reader->Read(&msg)) {
        // What the message holds in memory (its chunk is a message of its
        // own), an empty one included, and its place in `parts` (whose
        // capacity doubles).
        kept += msg.SpaceUsedLong() + sizeof(msg);
        // Typed as the worker types them (worker/sessions_service.cc):
        // the header's mode and state, checked before the gateway buffers
        // chunks or acts on the mode; the worker checks the rest (so a
        // header wrong in several fields may name another one first).
        const auto mode = msg.header().mode();
        if (parts.empty() != msg.has_header()) {
          bad = MakeError(
              absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
              "header: the first message must be the header, and only it",
              {{"field", "header"}});
        } else if (msg.has_header() && mode != v1::IMPORT_MODE_CREATE &&
                   mode != v1::IMPORT_MODE_NEW_VERSION) {
          bad = MakeError(absl::StatusCode::kInvalidArgument,
                          Reason::kInvalidArgument, "mode: required",
                          {{"field", "mode"}});
        } else if (msg.has_header() && !msg.header().has_state()) {
          bad = MakeError(absl::StatusCode::kInvalidArgument,
                          Reason::kInvalidArgument, "state: required",
                          {{"field", "state"}});
        } else if (!msg.has_header() && !msg.has_chunk()) {
          bad = MakeError(
              absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
              "chunk: every message after the header must carry a chunk",
              {{"field", "chunk"}});
        } else if (msg.has_chunk()) {
          bytes += msg.chunk().data().size();
          if (bytes > parts[0].header().state().total_bytes()) {
            const std::string detail =
                absl::StrCat("more state bytes than the header's total_bytes ",
                             parts[0].header().state().total_bytes());
            bad = MakeError(absl::StatusCode::kDataLoss, Reason::kStateCorrupt,
                            absl::StrCat("state blob rejected: ", detail),
                            {{"detail", detail}});
          }
        }
        if (bad.ok() && msg.has_header() &&
            msg.header().state().total_bytes() > max_import) {
          kept = msg.header().state().total_bytes();  // refused just below
        }
        if (bad.ok() && kept <= max_import) {
          // What is held, and the rest of the announced state.
          const uint64_t total = msg.has_header()
                                     ? msg.header().state().total_bytes()
                                     : parts[0].header().state().total_bytes();
          const uint64_t want = kept + (total > bytes ? total - bytes : 0);
          if (want > static_cast<uint64_t>(room.bytes())) {
            bad = gateway_->buffers().Grow(
                &room, static_cast<int64_t>(want) - room.bytes());
          }
        }
        if (bad.ok() && kept > max_import) {
          bad = MakeError(
              absl::StatusCode::kInvalidArgument, Reason::kMessageTooLarge,
              absl::StrCat("the import is larger than the gateway takes (",
                           max_import, " bytes)"),
              {{"field", "chunk"}, {"limit", absl::StrCat(max_import)}});
        }
        parts.push_back(std::move(msg));
      }
      if (bad.ok() && reader->unparsable()) bad = UnparsableRequestError();
      if (!bad.ok()) {
        const grpc::Status st = ToGrpcStatus(bad);
        gateway_->EndCall("ImportState", st, began);
        slot.reset();
        parts.clear();
        room.Release();  // before the client sees the end, as the slot
        reader->Finish(st);
        reader->Release();
        return;
      }
      // A new version goes to the session's owner; a new session to a
      // worker serving the state's model (rendezvous of its id, or of the
      // request id for a generated one, so retries land together).
      Target target{"ImportState", "", "", ""};
      grpc::Status quota;
      if (!parts.empty() && parts[0].has_header()) {
        const auto& header = parts[0].header();
        if (header.mode() == v1::IMPORT_MODE_NEW_VERSION) {
          target.session_id = header.session_id();
          // A session the store does not know is answered by a worker of
          // the state's model (SESSION_NOT_FOUND), not any worker's
          // MODEL_MISMATCH.
          target.fingerprint = header.state().model_fingerprint();
        } else {
          target.hash_key = header.session_id().empty() ? header.request_id()
                                                        : header.session_id();
          target.fingerprint = header.state().model_fingerprint();
          quota = SessionQuota(gateway_, *ctx, header.session_id(),
                               header.request_id());
        }
      }
      grpc::Status st =
          !quota.ok()
              ? quota
              : ForwardWithFailover(
                    gateway_, *ctx, target,
                    [&](const std::shared_ptr<grpc::Channel>& channel,
                        grpc::ClientContext* client) {
                      auto writer =
                          Sessions::NewStub(channel)->ImportState(client, resp);
                      for (const auto& part : parts) {
                        if (!writer->Write(part)) break;
                      }
                      writer->WritesDone();
                      return writer->Finish();
                    });
      gateway_->EndCall("ImportState", st, began);
      slot.reset();  // the client may open its next stream at once
      parts.clear();
      room.Release();  // and its next import find the room
      reader->Finish(st);
      reader->Release();
    });
    if (!spawned) {
      gateway_->EndCall("ImportState", Gateway::Refused(), began);
      reader->Finish(Gateway::Refused());
      reader->Release();
    }
    return reader;
  }

 private:
  Gateway* const gateway_;
};

#undef SS_FORWARD

}  // namespace

std::unique_ptr<grpc::Service> NewSessionsService(Gateway* gateway) {
  return std::make_unique<SessionsService>(gateway);
}

}  // namespace statestream::gateway
