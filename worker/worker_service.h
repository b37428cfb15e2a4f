// SPDX-License-Identifier: Apache-2.0
// The public API (statestream.v1 Sessions, Streams, Models) served by a
// worker over its SessionManager, as gRPC callback services. Handlers never
// call the engine: they hand requests to the manager, which submits tasks to
// the scheduler, and stream results back from its callbacks.
#ifndef STATESTREAM_WORKER_WORKER_SERVICE_H_
#define STATESTREAM_WORKER_WORKER_SERVICE_H_

#include <memory>

#include "services/service_set.h"
#include "worker/session_manager.h"

namespace statestream::worker {

// The three services. `manager` must outlive them (keep it alive with
// ServiceSet::Own).
ServiceSet PublicApiServices(SessionManager* manager);

// One service each (worker_service.cc wires them together).
std::unique_ptr<grpc::Service> NewSessionsService(SessionManager* manager);
std::unique_ptr<grpc::Service> NewStreamsService(SessionManager* manager);
std::unique_ptr<grpc::Service> NewModelsService(SessionManager* manager);

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_WORKER_SERVICE_H_
