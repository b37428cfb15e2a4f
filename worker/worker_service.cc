// SPDX-License-Identifier: Apache-2.0
#include "worker/worker_service.h"

#include <grpcpp/grpcpp.h>

#include "common/grpc_status.h"
#include "common/status.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/api_convert.h"

namespace statestream::worker {
namespace {

class ModelsService final : public v1::Models::CallbackService {
 public:
  explicit ModelsService(SessionManager* m) : m_(m) {}

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* out) override {
    ModelToProto(*m_, out->add_models());
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* req,
                                     v1::Model* out) override {
    auto* r = ctx->DefaultReactor();
    if (req->model_id() != m_->options().model_id) {
      r->Finish(ToGrpcStatus(MakeError(
          absl::StatusCode::kNotFound, Reason::kModelNotFound,
          "no served model has this id", {{"model_id", req->model_id()}})));
      return r;
    }
    ModelToProto(*m_, out);
    r->Finish(grpc::Status::OK);
    return r;
  }

 private:
  SessionManager* m_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewModelsService(SessionManager* manager) {
  return std::make_unique<ModelsService>(manager);
}

ServiceSet PublicApiServices(SessionManager* manager) {
  ServiceSet set;
  set.Add(v1::Sessions::service_full_name(), NewSessionsService(manager));
  set.Add(v1::Streams::service_full_name(), NewStreamsService(manager));
  set.Add(v1::Models::service_full_name(), NewModelsService(manager));
  return set;
}

}  // namespace statestream::worker
