// SPDX-License-Identifier: Apache-2.0
#include "cli/worker_metrics.h"

#include <cstdio>

namespace statestream::cli {

void AttachWorkerMetrics(worker::WorkerMetrics* metrics,
                         worker::SchedulerOptions* scheduler,
                         worker::SessionManagerOptions* sessions) {
  scheduler->on_batch = [metrics](int sequences, int tokens) {
    metrics->ObserveBatch(sequences, tokens);
  };
  scheduler->on_first_step = [metrics](absl::Duration queued) {
    metrics->ObserveQueueTime(queued);
  };
  sessions->metrics = metrics;
}

absl::StatusOr<std::unique_ptr<worker::MetricsHttpServer>> ServeWorkerMetrics(
    worker::WorkerMetrics* metrics, const worker::ModelSet* models,
    std::vector<worker::Scheduler*> schedulers, const std::string& listen,
    std::shared_ptr<const SecretFileMetrics> secrets) {
  metrics->SetGaugeSource([models, schedulers] {
    const worker::SessionManager::Stats s = models->stats();
    worker::WorkerMetrics::Gauges g;
    g.sessions_resident = s.resident;
    g.sessions_active = s.active;
    g.resident_bytes = s.resident_bytes;
    g.loads = s.loads;
    g.evictions = s.evictions;
    g.commits = s.commits;
    for (worker::Scheduler* scheduler : schedulers) {
      g.scheduler_tasks += scheduler->stats().active_tasks;
    }
    return g;
  });
  if (listen.empty()) return nullptr;
  auto http = worker::MetricsHttpServer::Start(
      listen, [metrics, secrets = std::move(secrets)] {
        std::string out = metrics->Render();
        if (secrets != nullptr) out += secrets->Render();
        return out;
      });
  if (!http.ok()) return http.status();
  std::printf("metrics on %s\n", (*http)->address().c_str());
  std::fflush(stdout);
  return http;
}

}  // namespace statestream::cli
