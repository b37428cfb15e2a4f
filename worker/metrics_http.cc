// SPDX-License-Identifier: Apache-2.0
#include "worker/metrics_http.h"

#include <httplib.h>

#include <atomic>
#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace statestream::worker {
namespace {

// cpp-httplib's own pool queues every accepted connection without bound
// (each holding a descriptor). This one runs kThreads connections and
// queues at most kQueued more; past that the accepting thread waits, so
// further clients wait in the kernel's small listen backlog instead.
class BoundedPool final : public httplib::TaskQueue {
 public:
  static constexpr int kThreads = 2;
  static constexpr size_t kQueued = 16;

  BoundedPool() {
    for (int i = 0; i < kThreads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~BoundedPool() override = default;

  void enqueue(std::function<void()> fn) override {
    absl::MutexLock lock(&mu_);
    auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return jobs_.size() < kQueued;
    };
    mu_.Await(absl::Condition(&room));
    jobs_.push_back(std::move(fn));
  }
  void shutdown() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> job;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !jobs_.empty() || stopping_;
        };
        mu_.Await(absl::Condition(&ready));
        if (jobs_.empty()) return;  // stopping, nothing left
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();  // serves the connection, then closes it
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

class HttpServer final : public MetricsHttpServer {
 public:
  HttpServer(std::string host, std::function<std::string()> render)
      : host_(std::move(host)) {
    // Anything but GET/HEAD /metrics is answered before its body is read,
    // and no request may carry more than a small body.
    server_.set_pre_routing_handler(
        [](const httplib::Request& req, httplib::Response& res) {
          if (req.path != "/metrics") {
            res.status = 404;
            return httplib::Server::HandlerResponse::Handled;
          }
          if (req.method != "GET" && req.method != "HEAD") {
            res.status = 405;
            res.set_header("Allow", "GET, HEAD");
            return httplib::Server::HandlerResponse::Handled;
          }
          return httplib::Server::HandlerResponse::Unhandled;
        });
    server_.set_payload_max_length(kMaxBody);
    server_.set_read_timeout(1, 0);
    server_.set_write_timeout(5, 0);
    server_.set_keep_alive_timeout(1);
    server_.set_keep_alive_max_count(100);
    server_.new_task_queue = [] { return new BoundedPool(); };
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
    thread_ = std::thread([this] {
      server_.listen_after_bind();
      listen_returned_ = true;
    });
    // stop() does nothing until the listening thread has marked the server
    // running: a server destroyed before that would wait forever.
    while (!server_.is_running() && !listen_returned_) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    return absl::OkStatus();
  }
  std::string address() const override {
    return host_.find(':') == std::string::npos
               ? absl::StrCat(host_, ":", port_)
               : absl::StrCat("[", host_, "]:", port_);
  }

 private:
  static constexpr size_t kMaxBody = 1024;
  const std::string host_;
  httplib::Server server_;
  int port_ = -1;
  std::atomic<bool> listen_returned_{false};
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
