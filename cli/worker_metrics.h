// SPDX-License-Identifier: Apache-2.0
// The worker's Prometheus metrics, wired the same way for `serve` and
// `worker`.
#ifndef STATESTREAM_CLI_WORKER_METRICS_H_
#define STATESTREAM_CLI_WORKER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/metrics.h"
#include "worker/metrics_http.h"
#include "worker/scheduler.h"
#include "worker/session_manager.h"

namespace statestream::cli {

// Before the scheduler and the session manager are built: points their
// hooks (batch sizes, queue time, latencies, counters) at `metrics`.
void AttachWorkerMetrics(worker::WorkerMetrics* metrics,
                         worker::SchedulerOptions* scheduler,
                         worker::SessionManagerOptions* sessions);

// After: reads the residency gauges from `manager` and `scheduler`, and,
// unless `listen` is empty, serves `/metrics` there and prints
// "metrics on HOST:PORT" (before the server's "listening on" line).
// Returns the endpoint (nullptr when `listen` is empty).
absl::StatusOr<std::unique_ptr<worker::MetricsHttpServer>> ServeWorkerMetrics(
    worker::WorkerMetrics* metrics, worker::SessionManager* manager,
    worker::Scheduler* scheduler, const std::string& listen);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_WORKER_METRICS_H_
