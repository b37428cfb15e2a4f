// SPDX-License-Identifier: Apache-2.0
// The worker's Prometheus metrics, wired the same way for `serve` and
// `worker`.
#ifndef STATESTREAM_CLI_WORKER_METRICS_H_
#define STATESTREAM_CLI_WORKER_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/secret_file_reloader.h"
#include "worker/metrics.h"
#include "worker/metrics_http.h"
#include "worker/model_set.h"
#include "worker/scheduler.h"
#include "worker/session_manager.h"

namespace statestream::cli {

// Before the scheduler and the session manager are built: points their
// hooks (batch sizes, queue time, latencies, counters) at `metrics`.
void AttachWorkerMetrics(worker::WorkerMetrics* metrics,
                         worker::SchedulerOptions* scheduler,
                         worker::SessionManagerOptions* sessions);

// After: reads the residency gauges from `models` and `schedulers` (summed
// over the served models), and, unless `listen` is empty, serves
// `/metrics` there and prints "metrics on HOST:PORT" (before the server's
// "listening on" line). Returns the endpoint (nullptr when `listen` is
// empty). `models` and `schedulers` must outlive `metrics`' renders.
// `secrets` (may be null): the secrets files' metrics, served after the
// worker's.
absl::StatusOr<std::unique_ptr<worker::MetricsHttpServer>> ServeWorkerMetrics(
    worker::WorkerMetrics* metrics, const worker::ModelSet* models,
    std::vector<worker::Scheduler*> schedulers, const std::string& listen,
    std::shared_ptr<const SecretFileMetrics> secrets = nullptr);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_WORKER_METRICS_H_
