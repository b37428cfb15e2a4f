// SPDX-License-Identifier: Apache-2.0
// The gateway's Models service, answered from the models of all ready
// workers (see gateway.h).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {

std::vector<v1::Model> MergeModels(
    const std::vector<Gateway::WorkerModels>& workers) {
  std::map<std::pair<std::string, std::string>, v1::Model> merged;
  std::map<std::pair<std::string, std::string>, size_t> defaults;
  for (const auto& w : workers) {
    for (const v1::Model& m : w.models) {
      auto [it, fresh] = merged.try_emplace({m.model_id(), m.fingerprint()}, m);
      v1::Model& out = it->second;
      if (fresh) {
        out.clear_backends();
        out.set_workers(0);
      }
      out.set_workers(out.workers() + 1);
      if (m.is_default()) ++defaults[{m.model_id(), m.fingerprint()}];
      for (int b : m.backends()) {
        if (std::find(out.backends().begin(), out.backends().end(), b) ==
            out.backends().end()) {
          out.add_backends(static_cast<v1::Backend>(b));
        }
      }
    }
  }
  std::vector<v1::Model> out;
  for (auto& [key, m] : merged) {
    std::sort(m.mutable_backends()->begin(), m.mutable_backends()->end());
    // Wherever a create without a model lands, it gets this one.
    m.set_is_default(defaults[key] == workers.size());
    out.push_back(std::move(m));
  }
  return out;
}

absl::Status ModelNotFound(const std::string& model_id) {
  return MakeError(
      absl::StatusCode::kNotFound, Reason::kModelNotFound,
      absl::StrCat("no ready worker serves model \"", model_id, "\""),
      {{"model_id", model_id}});
}

namespace {

class ModelsService final : public v1::Models::CallbackService {
 public:
  explicit ModelsService(Gateway* gateway) : gateway_(gateway) {}

  // Both answered from the models of all ready workers (see gateway.h).
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* resp) override {
    return Answer(ctx, "ListModels", [resp](std::vector<v1::Model> models) {
      for (auto& m : models) *resp->add_models() = std::move(m);
      return absl::OkStatus();
    });
  }
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* req,
                                     v1::Model* resp) override {
    // The model CreateSession would bind (ResolveModel).
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    const absl::Time began = gateway_->BeginCall();
    const bool spawned =
        gateway_->Spawn([this, ctx, req, resp, reactor, began] {
          absl::Status status;
          auto tenant = gateway_->Tenant(*ctx);
          if (!tenant.ok()) {
            status = tenant.status();
          } else if (req->model_id().empty()) {
            // As a worker answers it: an empty id is not the default model.
            status = ModelNotFound("");
          } else {
            auto model = gateway_->ResolveModel(*ctx, *tenant, req->model_id());
            status = model.status();
            if (model.ok()) *resp = *std::move(model);
          }
          const grpc::Status out = ToGrpcStatus(status);
          gateway_->EndCall("GetModel", out, began);
          reactor->Finish(out);
        });
    if (!spawned) {
      gateway_->EndCall("GetModel", Gateway::Refused(), began);
      reactor->Finish(Gateway::Refused());
    }
    return reactor;
  }

 private:
  grpc::ServerUnaryReactor* Answer(
      grpc::CallbackServerContext* ctx, const char* method,
      std::function<absl::Status(std::vector<v1::Model>)> fill) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    const absl::Time began = gateway_->BeginCall();
    const bool spawned = gateway_->Spawn(
        [this, ctx, method, fill = std::move(fill), reactor, began] {
          grpc::Status status;
          auto tenant = gateway_->Tenant(*ctx);
          if (!tenant.ok()) {
            status = ToGrpcStatus(tenant.status());
          } else if (auto workers = gateway_->Models(*ctx, *tenant);
                     !workers.ok()) {
            status = ToGrpcStatus(workers.status());
          } else {
            status = ToGrpcStatus(fill(MergeModels(*workers)));
          }
          gateway_->EndCall(method, status, began);
          reactor->Finish(status);
        });
    if (!spawned) {
      gateway_->EndCall(method, Gateway::Refused(), began);
      reactor->Finish(Gateway::Refused());
    }
    return reactor;
  }

  Gateway* const gateway_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewModelsService(Gateway* gateway) {
  return std::make_unique<ModelsService>(gateway);
}

}  // namespace statestream::gateway
