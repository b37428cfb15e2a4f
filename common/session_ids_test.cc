// SPDX-License-Identifier: Apache-2.0
#include "common/session_ids.h"

#include "gtest/gtest.h"

namespace statestream {
namespace {

// Pinned values: a create retried across an upgrade must derive the same id
// on the new release as on the old one.
TEST(DerivedSessionIdTest, IsStableAndSeparatesTenantFromRequestId) {
  EXPECT_EQ(DerivedSessionId("acme", "req-1"), "4jjpxyyvs1m14ndk11x1tfp8h1");
  // The tenant's length is part of the key: no shift between the two.
  EXPECT_EQ(DerivedSessionId("acm", "e/req-1"), "thmzdhj0sm476d0vryj895ztdd");
  const std::string id = DerivedSessionId("t", "");
  EXPECT_EQ(id.size(), static_cast<size_t>(kGeneratedSessionIdLength));
  for (char c : id) {
    EXPECT_NE(std::string(kSessionIdAlphabet).find(c), std::string::npos);
  }
}

}  // namespace
}  // namespace statestream
