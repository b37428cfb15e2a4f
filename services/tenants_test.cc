// SPDX-License-Identifier: Apache-2.0
#include "services/tenants.h"

#include <map>
#include <string>

#include "common/status.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

constexpr char kToken[] = "token-0123456789abcdef";

TenantAuth Keys() {
  return TenantAuth(std::map<std::string, std::string>{
      {kToken, "acme"}, {"other-token-0123456789", "globex"}});
}

TEST(TenantAuthTest, AKnownTokenNamesItsTenantInAnySchemeCase) {
  const TenantAuth auth = Keys();
  for (const std::string scheme : {"Bearer ", "bearer ", "BEARER "}) {
    auto tenant = auth.Authenticate(scheme + kToken, std::nullopt);
    ASSERT_TRUE(tenant.ok()) << scheme << tenant.status();
    EXPECT_EQ(*tenant, "acme");
  }
  auto other = auth.Authenticate("Bearer other-token-0123456789", std::nullopt);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(*other, "globex");
}

TEST(TenantAuthTest, AnythingElseIsUnauthenticatedWithoutEchoingTheToken) {
  const TenantAuth auth = Keys();
  const std::optional<absl::string_view> bad[] = {
      std::nullopt,
      "token-0123456789abcdef",          // no scheme
      "Basic token-0123456789abcdef",    // another scheme
      "Bearer token-0123456789abcdeF",   // one byte off
      "Bearer token-0123456789abcde",    // a prefix
      "Bearer token-0123456789abcdef ",  // trailing space
      "Bearer "};
  for (const auto& authorization : bad) {
    auto tenant = auth.Authenticate(authorization, std::nullopt);
    EXPECT_EQ(tenant.status().code(), absl::StatusCode::kUnauthenticated)
        << authorization.value_or("(none)");
    EXPECT_EQ(GetReason(tenant.status()), Reason::kUnauthenticated);
    EXPECT_EQ(tenant.status().message().find("0123456789"),
              absl::string_view::npos);
  }
  // With keys, the tenant header is refused even beside a valid token.
  EXPECT_EQ(auth.Authenticate(std::string("Bearer ") + kToken, "acme")
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TenantAuthTest, DevelopmentModeTakesTheTenantHeader) {
  const TenantAuth auth;
  EXPECT_TRUE(auth.development_mode());
  EXPECT_EQ(*auth.Authenticate(std::nullopt, std::nullopt), "default");
  EXPECT_EQ(*auth.Authenticate(std::nullopt, "acme"), "acme");
  EXPECT_EQ(auth.Authenticate(std::nullopt, "Not/Valid").status().code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace statestream
