// SPDX-License-Identifier: Apache-2.0
#include "worker/worker_service.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <vector>

#include "common/grpc_status.h"
#include "common/status.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/api_convert.h"

namespace statestream::worker {
namespace {

class ModelsService final : public v1::Models::CallbackService {
 public:
  ModelsService(ModelSet* models, std::shared_ptr<const CallerPolicy> policy)
      : models_(models), policy_(std::move(policy)) {}

  // Ordered by model_id.
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* out) override {
    if (auto tenant = TenantOf(*ctx, *policy_); !tenant.ok()) {
      return Finish(ctx, tenant.status());
    }
    std::vector<const SessionManager*> sorted(models_->managers().begin(),
                                              models_->managers().end());
    std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) {
      return a->options().model_id < b->options().model_id;
    });
    for (const SessionManager* m : sorted) {
      v1::Model* model = out->add_models();
      ModelToProto(*m, model);
      model->set_is_default(m == &models_->default_manager());
    }
    return Finish(ctx, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* req,
                                     v1::Model* out) override {
    if (auto tenant = TenantOf(*ctx, *policy_); !tenant.ok()) {
      return Finish(ctx, tenant.status());
    }
    // An empty id is not the default model here: GetModel names one.
    absl::StatusOr<SessionManager*> m =
        req->model_id().empty()
            ? MakeError(absl::StatusCode::kNotFound, Reason::kModelNotFound,
                        "no served model has this id", {{"model_id", ""}})
            : models_->ForModel(req->model_id());
    if (!m.ok()) return Finish(ctx, m.status());
    ModelToProto(**m, out);
    out->set_is_default(*m == &models_->default_manager());
    return Finish(ctx, absl::OkStatus());
  }

 private:
  // Finishes the call with `status`, counted in statestream_errors_total
  // as the other services' errors are (the managers share one
  // WorkerMetrics, or none).
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx,
                                   const absl::Status& status) {
    CountError(models_->default_manager(), status);
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(ToGrpcStatus(status));
    return r;
  }

  ModelSet* models_;
  const std::shared_ptr<const CallerPolicy> policy_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewModelsService(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy) {
  return std::make_unique<ModelsService>(models, std::move(policy));
}

ServiceSet PublicApiServices(ModelSet* models,
                             std::shared_ptr<const CallerPolicy> policy) {
  if (policy == nullptr) policy = std::make_shared<const CallerPolicy>();
  ServiceSet set;
  set.Add(v1::Sessions::service_full_name(),
          NewSessionsService(models, policy));
  set.Add(v1::Streams::service_full_name(), NewStreamsService(models, policy));
  set.Add(v1::Models::service_full_name(), NewModelsService(models, policy));
  return set;
}

ServiceSet PublicApiServices(SessionManager* manager) {
  // One model needs no store to route: Create cannot fail.
  std::shared_ptr<ModelSet> models = *ModelSet::Create({manager}, nullptr);
  ServiceSet set = PublicApiServices(models.get());
  set.Own(std::move(models));
  return set;
}

}  // namespace statestream::worker
