// SPDX-License-Identifier: Apache-2.0
// The `/metrics` HTTP server against untrusted clients: only GET/HEAD
// /metrics is served, nothing a client sends past that is buffered, silent
// clients do not starve a scrape, and a server destroyed right after it
// started stops.
#include "worker/metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace statestream::worker {
namespace {

// A TCP connection to 127.0.0.1:`port`, from address `from` (-1 on error).
int Connect(int port, const char* from = "127.0.0.1") {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in local{};
  local.sin_family = AF_INET;
  inet_pton(AF_INET, from, &local.sin_addr);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

struct Reply {
  std::string text;
  bool closed = false;  // the server closed the connection
};

// Sends `request` (as much as the server takes) and reads until the server
// closes, one whole response arrived (unless `until_closed`), or `timeout`.
Reply Exchange(int port, const std::string& request,
               absl::Duration timeout = absl::Seconds(10),
               bool until_closed = false, const char* from = "127.0.0.1") {
  Reply r;
  const int fd = Connect(port, from);
  if (fd < 0) return r;
  // The server may answer (and close) before taking all of it.
  (void)send(fd, request.data(), request.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const int ms =
        static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    pollfd p{fd, POLLIN, 0};
    if (ms <= 0 || poll(&p, 1, ms) <= 0) break;
    char buf[4096];
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      r.closed = true;
      break;
    }
    r.text.append(buf, n);
    if (until_closed) continue;
    const size_t end = r.text.find("\r\n\r\n");
    if (end == std::string::npos) continue;
    size_t length = 0;
    const size_t cl = r.text.find("Content-Length: ");
    if (cl != std::string::npos && cl < end &&
        !absl::SimpleAtoi(
            r.text.substr(cl + 16, r.text.find("\r\n", cl) - cl - 16),
            &length)) {
      continue;
    }
    if (r.text.size() >= end + 4 + length) break;
  }
  close(fd);
  return r;
}

int PortOf(const MetricsHttpServer& server) {
  const std::string a = server.address();
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(a.substr(a.rfind(':') + 1), &port)) << a;
  return port;
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Serve() {
  return MetricsHttpServer::Start("127.0.0.1:0",
                                  [] { return std::string("up 1\n"); });
}

constexpr char kScrape[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

TEST(MetricsHttpTest, ServesGetAndHeadOfMetricsOnly) {
  auto server = Serve();
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = PortOf(**server);
  const Reply get = Exchange(port, kScrape);
  EXPECT_TRUE(absl::StartsWith(get.text, "HTTP/1.1 200")) << get.text;
  EXPECT_TRUE(absl::EndsWith(get.text, "up 1\n")) << get.text;
  EXPECT_TRUE(absl::StrContains(get.text, "text/plain; version=0.0.4"));
  const Reply head = Exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                              absl::Seconds(5));
  EXPECT_TRUE(absl::StartsWith(head.text, "HTTP/1.1 200")) << head.text;
  EXPECT_FALSE(absl::EndsWith(head.text, "up 1\n")) << head.text;
  EXPECT_TRUE(absl::StartsWith(
      Exchange(port, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").text,
      "HTTP/1.1 404"));
  const Reply put = Exchange(
      port, "PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab");
  EXPECT_TRUE(absl::StartsWith(put.text, "HTTP/1.1 405")) << put.text;
  EXPECT_TRUE(absl::StrContains(put.text, "Allow: GET, HEAD")) << put.text;
}

// Sends `head` and then up to `total` bytes of 'x' with no newline, as a
// client streaming an endless body or line would. Whether the server
// closed the connection (a send failed with EPIPE or ECONNRESET) before
// taking them all; a server that only stopped reading fails it (a send
// times out).
bool ClosedWhileStreaming(int port, const std::string& head, size_t total) {
  const int fd = Connect(port);
  if (fd < 0) return false;
  timeval limit{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  bool closed = false;
  if (send(fd, head.data(), head.size(), MSG_NOSIGNAL) ==
      static_cast<ssize_t>(head.size())) {
    const std::string chunk(64 << 10, 'x');
    for (size_t sent = 0; sent < total;) {
      const ssize_t n = send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        closed = n < 0 && (errno == EPIPE || errno == ECONNRESET);
        break;
      }
      sent += static_cast<size_t>(n);
    }
  }
  close(fd);
  return closed;
}

// Whatever a client sends past what is served goes unread: a POST's body
// announced at 100 GB, and a request line with no end, are answered and
// their connections closed, so a client streaming 256 MiB into either gets
// refused early. (cpp-httplib, used before, read a POST's body whole
// before finding no handler, and an endless line whole in any request.)
TEST(MetricsHttpTest, OversizeInputIsRefusedUnread) {
  auto server = Serve();
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = PortOf(**server);
  constexpr size_t kTotal = size_t{256} << 20;
  EXPECT_TRUE(ClosedWhileStreaming(port,
                                   "POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Length: 100000000000\r\n\r\n",
                                   kTotal));
  EXPECT_TRUE(ClosedWhileStreaming(port, "GET /", kTotal));
  EXPECT_TRUE(
      ClosedWhileStreaming(port, "GET /metrics HTTP/1.1\r\nX-Long: ", kTotal));
  const Reply post = Exchange(port,
                              "POST /metrics HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 100000000000\r\n\r\n" +
                                  std::string(1 << 16, 'x'),
                              absl::Seconds(10), /*until_closed=*/true);
  EXPECT_TRUE(absl::StartsWith(post.text, "HTTP/1.1 405"))
      << post.text.substr(0, 200);
  // Still serving.
  EXPECT_TRUE(absl::StartsWith(Exchange(port, kScrape).text, "HTTP/1.1 200"));
}

// Clients that connect and send nothing hold a socket each, not a thread:
// a scrape beside 40 of them (from other addresses: 16 an address at most)
// is answered at once.
TEST(MetricsHttpTest, SilentClientsDoNotBlockAScrape) {
  auto server = Serve();
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = PortOf(**server);
  std::vector<int> silent;
  struct Closer {
    std::vector<int>* fds;
    ~Closer() {
      for (int fd : *fds) close(fd);
    }
  } closer{&silent};
  for (int i = 0; i < 40; ++i) {
    const std::string from = "127.0.1." + std::to_string(1 + i % 3);
    const int fd = Connect(port, from.c_str());
    ASSERT_GE(fd, 0);
    silent.push_back(fd);
  }
  const Reply reply = Exchange(port, kScrape, absl::Milliseconds(1500),
                               /*until_closed=*/false, "127.0.0.2");
  EXPECT_TRUE(absl::StartsWith(reply.text, "HTTP/1.1 200")) << reply.text;
}

// `[::]:PORT` takes IPv4 clients too, as cpp-httplib's socket did (a
// Prometheus scraping over IPv4 keeps working).
TEST(MetricsHttpTest, TheIpv6AnyAddressTakesIpv4Clients) {
  auto server =
      MetricsHttpServer::Start("[::]:0", [] { return std::string("up 1\n"); });
  if (!server.ok()) GTEST_SKIP() << "no IPv6 here: " << server.status();
  EXPECT_TRUE(absl::StartsWith((*server)->address(), "[::]:"))
      << (*server)->address();
  EXPECT_TRUE(absl::StartsWith(Exchange(PortOf(**server), kScrape).text,
                               "HTTP/1.1 200"));
}

// `0.0.0.0:PORT` takes IPv6 clients too, as a gRPC listener on 0.0.0.0
// does: a metrics port scraped over IPv6 answers like the gRPC port.
TEST(MetricsHttpTest, TheIpv4AnyAddressTakesIpv6ClientsLikeGrpc) {
  auto server = MetricsHttpServer::Start("0.0.0.0:0",
                                         [] { return std::string("up 1\n"); });
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE(absl::StartsWith((*server)->address(), "0.0.0.0:"))
      << (*server)->address();
  EXPECT_TRUE(absl::StartsWith(Exchange(PortOf(**server), kScrape).text,
                               "HTTP/1.1 200"));
  const int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) GTEST_SKIP() << "no IPv6 here";
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_port = htons(static_cast<uint16_t>(PortOf(**server)));
  addr.sin6_addr = in6addr_loopback;
  const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  close(fd);
  if (rc != 0 && (err == EADDRNOTAVAIL || err == ENETUNREACH)) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  EXPECT_EQ(rc, 0) << std::strerror(err);
}

// Destroyed right after Start, over and over: it stops every time.
TEST(MetricsHttpTest, DestroyedRightAfterStartStops) {
  for (int i = 0; i < 200; ++i) {
    auto server = Serve();
    ASSERT_TRUE(server.ok()) << server.status();
  }
}

}  // namespace
}  // namespace statestream::worker
