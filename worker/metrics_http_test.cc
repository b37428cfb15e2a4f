// SPDX-License-Identifier: Apache-2.0
// The `/metrics` HTTP server against untrusted clients: only GET/HEAD
// /metrics is served, a request's body is never read into memory past a
// small limit, and a server destroyed right after it started stops.
#include "worker/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace statestream::worker {
namespace {

// Sends `request` to 127.0.0.1:`port` and returns what comes back until
// the server closes or `timeout` passes.
std::string Exchange(int port, const std::string& request,
                     absl::Duration timeout = absl::Seconds(10)) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string reply;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      const int ms =
          static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      pollfd p{fd, POLLIN, 0};
      if (ms <= 0 || poll(&p, 1, ms) <= 0) break;
      char buf[4096];
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      reply.append(buf, n);
      // One response is enough (the server may keep the connection).
      if (absl::StrContains(reply, "\r\n\r\n") &&
          !absl::StrContains(reply, "Content-Length: ")) {
        break;
      }
      const size_t end = reply.find("\r\n\r\n");
      const size_t cl = reply.find("Content-Length: ");
      size_t length = 0;
      if (end != std::string::npos && cl != std::string::npos && cl < end &&
          absl::SimpleAtoi(
              reply.substr(cl + 16, reply.find("\r\n", cl) - cl - 16),
              &length) &&
          reply.size() >= end + 4 + length) {
        break;
      }
    }
  }
  close(fd);
  return reply;
}

int PortOf(const MetricsHttpServer& server) {
  const std::string a = server.address();
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(a.substr(a.rfind(':') + 1), &port)) << a;
  return port;
}

TEST(MetricsHttpTest, ServesGetAndHeadOfMetricsOnly) {
  auto server = MetricsHttpServer::Start("127.0.0.1:0",
                                         [] { return std::string("up 1\n"); });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = PortOf(**server);
  const std::string get =
      Exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(get, "HTTP/1.1 200")) << get;
  EXPECT_TRUE(absl::EndsWith(get, "up 1\n")) << get;
  EXPECT_TRUE(absl::StartsWith(
      Exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
      "HTTP/1.1 200"));
  EXPECT_TRUE(
      absl::StartsWith(Exchange(port, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"),
                       "HTTP/1.1 404"));
  const std::string put = Exchange(
      port, "PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab");
  EXPECT_TRUE(absl::StartsWith(put, "HTTP/1.1 405")) << put;
}

// A body announced at 100 GB is answered at once, unread: before, the
// server read (and buffered) a POST's body, whatever its size, before it
// found no handler for it.
TEST(MetricsHttpTest, AHugeBodyIsRefusedUnread) {
  auto server = MetricsHttpServer::Start("127.0.0.1:0",
                                         [] { return std::string("up 1\n"); });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = PortOf(**server);
  for (const char* method : {"POST", "GET"}) {
    const std::string reply =
        Exchange(port, std::string(method) +
                           " /metrics HTTP/1.1\r\nHost: x\r\n"
                           "Content-Length: 100000000000\r\n\r\n" +
                           std::string(4096, 'x'));
    // (A GET's body is never read: the GET is answered, and what follows
    // it is a malformed next request that ends the connection.)
    EXPECT_TRUE(absl::StartsWith(
        reply, method == std::string("GET") ? "HTTP/1.1 200" : "HTTP/1.1 405"))
        << method << ": " << reply;
  }
  // Still serving.
  EXPECT_TRUE(absl::StartsWith(
      Exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
      "HTTP/1.1 200"));
}

// Destroyed right after Start: stop() must find the server running (it
// did nothing before the listening thread got there, and the destructor
// waited forever).
TEST(MetricsHttpTest, DestroyedRightAfterStartStops) {
  for (int i = 0; i < 200; ++i) {
    auto server = MetricsHttpServer::Start(
        "127.0.0.1:0", [] { return std::string("up 1\n"); });
    ASSERT_TRUE(server.ok()) << server.status();
  }
}

}  // namespace
}  // namespace statestream::worker
