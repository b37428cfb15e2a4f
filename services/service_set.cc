// SPDX-License-Identifier: Apache-2.0
#include "services/service_set.h"

#include <grpcpp/impl/codegen/service_type.h>

#include <utility>

#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {

ServiceSet::ServiceSet() = default;
ServiceSet::~ServiceSet() {
  services_.clear();
  while (!resources_.empty()) resources_.pop_back();
}
ServiceSet::ServiceSet(ServiceSet&&) = default;
ServiceSet& ServiceSet::operator=(ServiceSet&&) = default;

void ServiceSet::Add(std::string full_name,
                     std::unique_ptr<grpc::Service> service) {
  names_.push_back(std::move(full_name));
  services_.push_back(std::move(service));
}

void ServiceSet::Own(std::shared_ptr<void> resource) {
  resources_.push_back(std::move(resource));
}

void ServiceSet::OnInterrupt(std::function<void()> hook) {
  interrupt_hooks_.push_back(std::move(hook));
}

void ServiceSet::Interrupt() const {
  for (const auto& hook : interrupt_hooks_) hook();
}

std::vector<grpc::Service*> ServiceSet::services() const {
  std::vector<grpc::Service*> out;
  for (const auto& service : services_) out.push_back(service.get());
  return out;
}

ServiceSet UnimplementedPublicApi() {
  // The generated base classes answer every rpc with UNIMPLEMENTED.
  ServiceSet set;
  set.Add(v1::Sessions::service_full_name(),
          std::make_unique<v1::Sessions::Service>());
  set.Add(v1::Streams::service_full_name(),
          std::make_unique<v1::Streams::Service>());
  set.Add(v1::Models::service_full_name(),
          std::make_unique<v1::Models::Service>());
  return set;
}

}  // namespace statestream
