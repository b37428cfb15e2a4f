// SPDX-License-Identifier: Apache-2.0
#include "services/caller_metadata.h"

#include <string>

namespace statestream {

std::optional<absl::string_view> ClientMetadata(
    const grpc::CallbackServerContext& ctx, const char* key) {
  const auto& md = ctx.client_metadata();
  auto it = md.find(key);
  if (it == md.end()) return std::nullopt;
  return absl::string_view(it->second.data(), it->second.size());
}

Credentials CredentialsOf(const grpc::CallbackServerContext& ctx) {
  return Credentials::Of(ClientMetadata(ctx, "authorization"),
                         ClientMetadata(ctx, "x-statestream-tenant"));
}

}  // namespace statestream
