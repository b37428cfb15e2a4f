// SPDX-License-Identifier: Apache-2.0
// Serves WorkerMetrics::Render() as `GET /metrics` over HTTP (cpp-httplib),
// on its own thread.
#ifndef STATESTREAM_WORKER_METRICS_HTTP_H_
#define STATESTREAM_WORKER_METRICS_HTTP_H_

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
  virtual ~MetricsHttpServer() = default;
  // HOST:PORT actually bound.
  virtual std::string address() const = 0;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_METRICS_HTTP_H_
