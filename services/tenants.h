// SPDX-License-Identifier: Apache-2.0
// Who is calling: API keys (bearer tokens) mapped to tenants, or, with no
// keys configured, development mode (the `x-statestream-tenant` header, or
// "default"), as the public API's TENANCY AND AUTHENTICATION describes.
// No gRPC in here: the gateway passes the metadata values in.
#ifndef STATESTREAM_SERVICES_TENANTS_H_
#define STATESTREAM_SERVICES_TENANTS_H_

#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace statestream {

// Immutable after construction; thread-safe.
class TenantAuth {
 public:
  // Development mode: no keys.
  TenantAuth() = default;
  // `api_keys`: token -> tenant.
  explicit TenantAuth(std::map<std::string, std::string> api_keys);

  // Reads an API keys file: one "TOKEN TENANT" pair per line (whitespace
  // separated); blank lines and lines starting with '#' are skipped.
  // Tokens are 16-256 printable ASCII bytes without spaces; tenants 1-64
  // bytes of [a-z0-9_-]. INVALID_ARGUMENT naming the line; NOT_FOUND if
  // the file cannot be read.
  static absl::StatusOr<TenantAuth> FromFile(const std::string& path);

  bool development_mode() const { return api_keys_.empty(); }

  // The caller's tenant from its `authorization` and `x-statestream-tenant`
  // metadata (nullopt = absent). With keys: "Bearer <token>" of a known
  // token is required and the tenant header is refused; without keys: the
  // header, or "default". UNAUTHENTICATED/kUnauthenticated otherwise (the
  // message never echoes the token).
  absl::StatusOr<std::string> Authenticate(
      std::optional<absl::string_view> authorization,
      std::optional<absl::string_view> tenant_header) const;

 private:
  std::map<std::string, std::string> api_keys_;
};

// 1-64 bytes of [a-z0-9_-].
bool IsValidTenant(absl::string_view tenant);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_TENANTS_H_
