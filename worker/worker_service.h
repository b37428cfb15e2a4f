// SPDX-License-Identifier: Apache-2.0
// The public API (statestream.v1 Sessions, Streams, Models) served by a
// worker over the session managers of its models, as gRPC callback
// services. Handlers never call the engine: they hand requests to the
// manager of the call's model (worker/model_set.h), which submits tasks to
// its scheduler, and stream results back from its callbacks.
#ifndef STATESTREAM_WORKER_WORKER_SERVICE_H_
#define STATESTREAM_WORKER_WORKER_SERVICE_H_

#include <memory>

#include "services/service_set.h"
#include "worker/model_set.h"
#include "worker/session_manager.h"

namespace statestream::worker {

// The three services over every model of `models`, which must outlive them
// (keep it alive with ServiceSet::Own).
ServiceSet PublicApiServices(ModelSet* models);
// The same for one model; `manager` must outlive the services.
ServiceSet PublicApiServices(SessionManager* manager);

// One service each (worker_service.cc wires them together).
std::unique_ptr<grpc::Service> NewSessionsService(ModelSet* models);
std::unique_ptr<grpc::Service> NewStreamsService(ModelSet* models);
std::unique_ptr<grpc::Service> NewModelsService(ModelSet* models);

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_WORKER_SERVICE_H_
