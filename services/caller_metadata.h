// SPDX-License-Identifier: Apache-2.0
// What a server reads from a caller's metadata to authenticate it, shared
// by the gateway and the servers that face clients themselves (serve).
#ifndef STATESTREAM_SERVICES_CALLER_METADATA_H_
#define STATESTREAM_SERVICES_CALLER_METADATA_H_

#include <grpcpp/grpcpp.h>

#include <optional>

#include "absl/strings/string_view.h"
#include "services/tenants.h"

namespace statestream {

// The value of the caller's metadata `key` (nullopt = absent), valid
// while the call's metadata are: until its OnDone.
std::optional<absl::string_view> ClientMetadata(
    const grpc::CallbackServerContext& ctx, const char* key);

// The call's `authorization` (as its token's digest) and
// `x-statestream-tenant`: what a long call keeps to TenantAuth::Recheck
// them.
Credentials CredentialsOf(const grpc::CallbackServerContext& ctx);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_CALLER_METADATA_H_
