// SPDX-License-Identifier: Apache-2.0
#include "worker/metrics_http.h"

#include <httplib.h>

#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace statestream::worker {
namespace {

class HttpServer final : public MetricsHttpServer {
 public:
  HttpServer(std::string host, std::function<std::string()> render)
      : host_(std::move(host)) {
    server_.Get("/metrics",
                [render = std::move(render)](const httplib::Request&,
                                             httplib::Response& res) {
                  res.set_content(render(), "text/plain; version=0.0.4");
                });
  }
  ~HttpServer() override {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  absl::Status Bind(int port) {
    if (port == 0) {
      port_ = server_.bind_to_any_port(host_);
    } else {
      port_ = server_.bind_to_port(host_, port) ? port : -1;
    }
    if (port_ < 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind the metrics server to ", host_, ":", port));
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    return absl::OkStatus();
  }
  std::string address() const override {
    return host_.find(':') == std::string::npos
               ? absl::StrCat(host_, ":", port_)
               : absl::StrCat("[", host_, "]:", port_);
  }

 private:
  const std::string host_;
  httplib::Server server_;
  int port_ = -1;
  std::thread thread_;
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
