// SPDX-License-Identifier: Apache-2.0
#include "services/server.h"

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(ParseListenAddressTest, AcceptsHostAndPort) {
  auto v4 = ParseListenAddress("127.0.0.1:7700");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->first, "127.0.0.1");
  EXPECT_EQ(v4->second, 7700);
  auto v6 = ParseListenAddress("[::1]:0");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->first, "[::1]");
  EXPECT_EQ(v6->second, 0);
  EXPECT_TRUE(ParseListenAddress("localhost:65535").ok());
}

TEST(ParseListenAddressTest, RejectsMalformed) {
  for (const char* bad : {"", "7700", ":7700", "host:", "host:x", "host:-1",
                          "host:65536", "host:123456", "::1:80", "[::1:80"}) {
    EXPECT_EQ(ParseListenAddress(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

int PortOf(const Server& server) {
  int port = 0;
  auto colon = server.address().rfind(':');
  EXPECT_TRUE(absl::SimpleAtoi(server.address().substr(colon + 1), &port));
  return port;
}

TEST(ServerTest, PortZeroPicksAFreePortAndItIsNotShared) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  auto first = Server::Start(options, UnimplementedPublicApi());
  ASSERT_TRUE(first.ok()) << first.status();
  int port = PortOf(**first);
  EXPECT_GT(port, 0);
  EXPECT_EQ((*first)->address(), "127.0.0.1:" + std::to_string(port));

  options.listen = (*first)->address();
  auto second = Server::Start(options, UnimplementedPublicApi());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);

  (*first)->Shutdown(absl::Seconds(1));
  (*first)->Shutdown(absl::Seconds(1));  // idempotent
}

TEST(ServerTest, RejectsMalformedListenAddress) {
  ServerOptions options;
  options.listen = "nonsense";
  EXPECT_EQ(Server::Start(options, ServiceSet()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace statestream
