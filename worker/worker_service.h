// SPDX-License-Identifier: Apache-2.0
// The public API (statestream.v1 Sessions, Streams, Models) served by a
// worker over the session managers of its models, as gRPC callback
// services. Handlers never call the engine: they hand requests to the
// manager of the call's model (worker/model_set.h), which submits tasks to
// its scheduler, and stream results back from its callbacks.
#ifndef STATESTREAM_WORKER_WORKER_SERVICE_H_
#define STATESTREAM_WORKER_WORKER_SERVICE_H_

#include <memory>

#include "absl/time/time.h"
#include "services/service_set.h"
#include "services/tenants.h"
#include "worker/model_set.h"
#include "worker/session_manager.h"

namespace statestream::worker {

// Who may call the services and what a tenant may hold through them. A
// worker behind gateways keeps the defaults (the gateway authenticates and
// passes the tenant in x-statestream-tenant; the gateways enforce the
// limits); `statestream serve`, with no gateway in front, may set both.
struct CallerPolicy {
  // Default: development mode (x-statestream-tenant, or "default").
  TenantAuth auth;
  // Null: no limits. Sessions (CreateSession, forks, creating
  // ImportState) and open calls (Append, Generate, ImportState,
  // ExportState, Score).
  std::shared_ptr<TenantLimits> limits;
  // A worker's: configured, every call must show it (the gateways send
  // it), before its tenant header is believed.
  InternalToken internal_token;
  // A streaming call that waits on its client this long (a Generate or
  // export message or an Append ack left unread, an import left unsent) is
  // cut off, CANCELLED (worker/client_stalls.h). `serve` sets it; a worker
  // behind gateways keeps it infinite: they cut their own clients off.
  absl::Duration client_stall_timeout = absl::InfiniteDuration();
};

// The three services over every model of `models`, which must outlive them
// (keep it alive with ServiceSet::Own); `policy` null: the defaults.
ServiceSet PublicApiServices(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy = nullptr);
// The same for one model; `manager` must outlive the services.
ServiceSet PublicApiServices(SessionManager* manager);

// One service each (worker_service.cc wires them together); `policy` must
// not be null.
std::unique_ptr<grpc::Service> NewSessionsService(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy);
std::unique_ptr<grpc::Service> NewStreamsService(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy);
std::unique_ptr<grpc::Service> NewModelsService(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy);

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_WORKER_SERVICE_H_
