// SPDX-License-Identifier: Apache-2.0
// Conversions between the statestream.v1 messages and the session manager's
// plain structs, and the request checks every service shares (tenant,
// request ids). Internal to the worker's services.
#ifndef STATESTREAM_WORKER_API_CONVERT_H_
#define STATESTREAM_WORKER_API_CONVERT_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/request_checks.h"  // CheckRequestId, CheckLabels, ...
#include "state_store/state_store.h"
#include "statestream/v1/statestream.pb.h"
#include "worker/session_manager.h"
#include "worker/worker_service.h"

namespace grpc {
class CallbackServerContext;
}  // namespace grpc

namespace statestream::worker {

// The caller's tenant under `policy.auth` (TenantAuth::Authenticate of the
// `authorization` and `x-statestream-tenant` metadata); UNAUTHENTICATED.
absl::StatusOr<std::string> TenantOf(const grpc::CallbackServerContext& ctx,
                                     const CallerPolicy& policy);

// One of `tenant`'s stream slots, held until destroyed (null without
// limits), or RESOURCE_EXHAUSTED/TENANT_LIMIT.
absl::StatusOr<std::unique_ptr<TenantLimits::StreamSlot>> HoldStream(
    const CallerPolicy& policy, const std::string& tenant);

// TenantLimits::CheckNewCreate under `policy` (OK without limits): a
// session that exists already under the create's id (a retry) passes, for
// the manager to answer.
absl::Status CheckSessionQuota(const CallerPolicy& policy,
                               const std::string& tenant,
                               const std::string& session_id,
                               const std::string& request_id,
                               absl::Duration request_id_window);

// The session limit a create by `tenant` passes to the store (0: none):
// the smaller of `policy`'s own (serve) and the one a gateway forwards in
// kSessionLimitHeader (a caller can only lower its limit with it). A
// server with API keys of its own (serve --api-keys) ignores the header:
// its callers are clients, not gateways.
int64_t SessionLimit(const grpc::CallbackServerContext& ctx,
                     const CallerPolicy& policy, const std::string& tenant);

// The level asked for; nullopt for DURABILITY_UNSPECIFIED (the server's
// default). A value this version does not know is INVALID_ARGUMENT
// (field=durability), never silently a lower level. A level above `max`,
// which the state store can never reach (StateStore::MaxDurability), is
// FAILED_PRECONDITION/INVALID_ARGUMENT (field=durability, metadata
// max_durability): refused before anything is written, where a commit
// would be written at the lower level and fail UNAVAILABLE on every retry.
absl::StatusOr<std::optional<Durability>> DurabilityFromProto(v1::Durability d,
                                                              Durability max);
v1::Durability DurabilityToProto(Durability d);

void SessionToProto(const SessionView& view, v1::Session* out);
void ModelToProto(const SessionManager& manager, v1::Model* out);
void VersionToProto(const VersionInfo& info, uint64_t oldest_parent,
                    v1::Version* out);

// Counts a call that ended with `status` (if not OK) in the manager's
// metrics, by reason (or gRPC code name when it has no reason).
void CountError(const SessionManager& manager, const absl::Status& status);

// FNV-1a 64 of the deterministic serialization of `message`: the content
// digest of a request for request-id idempotency.
uint64_t ContentDigest(const google::protobuf::Message& message);

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_API_CONVERT_H_
