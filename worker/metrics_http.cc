// SPDX-License-Identifier: Apache-2.0
#include "worker/metrics_http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace statestream::worker {
namespace {

// The port is unauthenticated and may face any client on the network, so
// every resource a client can hold is bounded: libmicrohttpd runs one
// event-driven thread (a slow client holds a socket, never a thread), at
// most kMaxConnections sockets (kPerAddress from one address), a request's
// line and headers within kMemoryPerConnection (past it: 431/414 and the
// connection closes), and a connection silent for kIdleSeconds is closed.
constexpr unsigned kMaxConnections = 64;
constexpr unsigned kPerAddress = 16;
constexpr size_t kMemoryPerConnection = 32 << 10;
constexpr unsigned kIdleSeconds = 2;

class HttpServer final : public MetricsHttpServer {
 public:
  HttpServer(std::string host, std::function<std::string()> render)
      : host_(std::move(host)), render_(std::move(render)) {}
  ~HttpServer() override {
    if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
  }

  // 0.0.0.0 binds as gRPC's listeners do: the IPv6 any address, dual
  // stack, so a metrics port scraped over IPv6 answers as the gRPC port
  // beside it does; 0.0.0.0 itself where the host has no IPv6.
  absl::Status Bind(int port) {
    if (host_ == "0.0.0.0" && BindHost("::", port).ok()) {
      return absl::OkStatus();
    }
    return BindHost(host_, port);
  }

  absl::Status BindHost(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = absl::StrCat(port);
    if (const int rc =
            getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
        rc != 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind the metrics server to ", host, ":", port,
                       ": ", gai_strerror(rc)));
    }
    // The first address that binds. An IPv6 one accepts IPv4 too where
    // the system allows ([::] takes every client, as a dual-stack socket).
    for (addrinfo* a = found; a != nullptr && daemon_ == nullptr;
         a = a->ai_next) {
      const bool v6 = a->ai_family == AF_INET6;
      daemon_ = MHD_start_daemon(
          MHD_USE_AUTO_INTERNAL_THREAD | (v6 ? MHD_USE_DUAL_STACK : 0), 0,
          nullptr, nullptr, &HttpServer::Handle, this, MHD_OPTION_SOCK_ADDR,
          a->ai_addr, MHD_OPTION_CONNECTION_LIMIT, kMaxConnections,
          MHD_OPTION_PER_IP_CONNECTION_LIMIT, kPerAddress,
          MHD_OPTION_CONNECTION_MEMORY_LIMIT, kMemoryPerConnection,
          MHD_OPTION_CONNECTION_TIMEOUT, kIdleSeconds, MHD_OPTION_END);
    }
    freeaddrinfo(found);
    if (daemon_ == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind the metrics server to ", host, ":", port));
    }
    const MHD_DaemonInfo* info =
        MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    port_ = info != nullptr ? info->port : port;
    return absl::OkStatus();
  }

  std::string address() const override {
    return host_.find(':') == std::string::npos
               ? absl::StrCat(host_, ":", port_)
               : absl::StrCat("[", host_, "]:", port_);
  }

 private:
  // GET/HEAD /metrics; anything else 404/405, answered at the headers (a
  // request's body is never read: the connection closes after the answer).
  static MHD_Result Handle(void* self, MHD_Connection* connection,
                           const char* url, const char* method,
                           const char* /*version*/, const char* /*upload_data*/,
                           size_t* /*upload_data_size*/, void** /*state*/) {
    const bool get = std::strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                     std::strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    unsigned status = MHD_HTTP_OK;
    std::string body;
    if (std::strcmp(url, "/metrics") != 0) {
      status = MHD_HTTP_NOT_FOUND;
    } else if (!get) {
      status = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else {
      body = static_cast<HttpServer*>(self)->render_();
    }
    MHD_Response* response = MHD_create_response_from_buffer(
        body.size(), body.data(), MHD_RESPMEM_MUST_COPY);
    if (response == nullptr) return MHD_NO;  // closes the connection
    if (status == MHD_HTTP_OK) {
      MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
                              "text/plain; version=0.0.4");
    } else if (status == MHD_HTTP_METHOD_NOT_ALLOWED) {
      MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    }
    const MHD_Result queued = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return queued;
  }

  const std::string host_;
  const std::function<std::string()> render_;
  MHD_Daemon* daemon_ = nullptr;
  int port_ = -1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, const WorkerMetrics* metrics) {
  return Start(listen, [metrics] { return metrics->Render(); });
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, std::function<std::string()> render) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen ", listen, ": want HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  // [::1]:9090 binds ::1 (the brackets only set the port apart).
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto server = std::make_unique<HttpServer>(host, std::move(render));
  if (absl::Status st = server->Bind(port); !st.ok()) return st;
  return std::unique_ptr<MetricsHttpServer>(std::move(server));
}

}  // namespace statestream::worker
