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
  auto copy = [&ctx](const char* key) -> std::optional<std::string> {
    std::optional<absl::string_view> value = ClientMetadata(ctx, key);
    if (!value) return std::nullopt;
    return std::string(*value);
  };
  return {copy("authorization"), copy("x-statestream-tenant")};
}

}  // namespace statestream
