// SPDX-License-Identifier: Apache-2.0
#include "services/tenants.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace statestream {
namespace {

absl::Status Unauthenticated(absl::string_view message) {
  return MakeError(absl::StatusCode::kUnauthenticated, Reason::kUnauthenticated,
                   message);
}

bool IsValidToken(absl::string_view token) {
  if (token.size() < 16 || token.size() > 256) return false;
  for (char c : token) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

}  // namespace

bool IsValidTenant(absl::string_view tenant) {
  if (tenant.empty() || tenant.size() > 64) return false;
  for (char c : tenant) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

TenantAuth::TenantAuth(std::map<std::string, std::string> api_keys)
    : api_keys_(std::move(api_keys)) {}

absl::StatusOr<TenantAuth> TenantAuth::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::map<std::string, std::string> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    std::istringstream words(line);
    std::string token, tenant, extra;
    if (!(words >> token) || token[0] == '#') continue;
    if (!(words >> tenant) || (words >> extra) || !IsValidToken(token) ||
        !IsValidTenant(tenant)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number,
                       ": expected \"TOKEN TENANT\" (token: 16-256 printable "
                       "bytes; tenant: 1-64 bytes of [a-z0-9_-])"));
    }
    if (!keys.emplace(token, tenant).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": duplicate token"));
    }
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no API keys"));
  }
  return TenantAuth(std::move(keys));
}

absl::StatusOr<std::string> TenantAuth::Authenticate(
    std::optional<absl::string_view> authorization,
    std::optional<absl::string_view> tenant_header) const {
  if (development_mode()) {
    if (!tenant_header.has_value()) return std::string("default");
    if (!IsValidTenant(*tenant_header)) {
      return Unauthenticated(
          "x-statestream-tenant must be 1-64 bytes of [a-z0-9_-]");
    }
    return std::string(*tenant_header);
  }
  if (tenant_header.has_value()) {
    return Unauthenticated(
        "x-statestream-tenant is not accepted: this server authenticates "
        "with API keys (authorization: Bearer <token>)");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (!authorization.has_value() ||
      !absl::StartsWith(*authorization, kBearer)) {
    return Unauthenticated("missing credentials (authorization: Bearer ...)");
  }
  auto it = api_keys_.find(std::string(authorization->substr(kBearer.size())));
  if (it == api_keys_.end()) return Unauthenticated("unknown API key");
  return it->second;
}

}  // namespace statestream
