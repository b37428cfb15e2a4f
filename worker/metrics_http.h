// SPDX-License-Identifier: Apache-2.0
// Serves Prometheus text (WorkerMetrics::Render(), or any renderer: the
// gateway's metrics) as `GET /metrics` over HTTP (libmicrohttpd), on its
// own thread, with every per-client resource bounded (metrics_http.cc).
#ifndef STATESTREAM_WORKER_METRICS_HTTP_H_
#define STATESTREAM_WORKER_METRICS_HTTP_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/metrics.h"

namespace statestream::worker {

class MetricsHttpServer {
 public:
  // Binds `listen` (HOST:PORT; port 0 picks a free one) and serves until
  // destroyed. `metrics` must outlive the server.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, const WorkerMetrics* metrics);
  // The same for any renderer, called on the server's thread for each
  // request; it must stay callable until the server is destroyed.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::function<std::string()> render);
  virtual ~MetricsHttpServer() = default;
  // HOST:PORT actually bound.
  virtual std::string address() const = 0;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_METRICS_HTTP_H_
