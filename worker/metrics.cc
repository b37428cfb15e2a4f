// SPDX-License-Identifier: Apache-2.0
#include "worker/metrics.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace statestream::worker {
namespace {

std::vector<double> LatencyBounds() { return Histogram::LatencyBounds(); }
std::vector<double> SizeBounds() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
}

}  // namespace

WorkerMetrics::WorkerMetrics(std::string store)
    : store_(std::move(store)),
      ttft_(LatencyBounds()),
      inter_token_(LatencyBounds()),
      queue_(LatencyBounds()),
      batch_sequences_(SizeBounds()),
      batch_tokens_(SizeBounds()),
      load_(LatencyBounds()),
      commit_(LatencyBounds()) {}

void WorkerMetrics::SetGaugeSource(std::function<Gauges()> source) {
  absl::MutexLock lock(&mu_);
  gauges_ = std::move(source);
}

void WorkerMetrics::ObserveBatch(int sequences, int tokens) {
  batch_sequences_.Observe(sequences);
  batch_tokens_.Observe(tokens);
}

void WorkerMetrics::Add(uint64_t* counter, int64_t n) {
  if (n <= 0) return;
  absl::MutexLock lock(&mu_);
  *counter += static_cast<uint64_t>(n);
}

void WorkerMetrics::IncError(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  ++errors_[reason];
}

void WorkerMetrics::IncClientStall(const std::string& method) {
  absl::MutexLock lock(&mu_);
  ++client_stalls_[method];
}

std::string WorkerMetrics::Render() const {
  std::function<Gauges()> source;
  uint64_t in, out_tokens, takeovers, fenced, renewal_failures, replayed;
  std::map<std::string, uint64_t> errors, client_stalls;
  {
    absl::MutexLock lock(&mu_);
    source = gauges_;
    in = tokens_in_;
    out_tokens = tokens_out_;
    takeovers = takeovers_;
    fenced = fenced_;
    renewal_failures = renewal_failures_;
    replayed = replayed_;
    errors = errors_;
    client_stalls = client_stalls_;
  }
  Gauges g;
  if (source) g = source();
  std::string out;
  const std::string store = absl::StrCat("store=\"", store_, "\"");
  AppendMetricHeader(&out, "statestream_time_to_first_token_seconds",
                     "histogram",
                     "Generate: from the request to its first output token.");
  ttft_.Render("statestream_time_to_first_token_seconds", "", &out);
  AppendMetricHeader(
      &out, "statestream_inter_token_seconds", "histogram",
      "Generate: time between consecutive output tokens of one call.");
  inter_token_.Render("statestream_inter_token_seconds", "", &out);
  AppendMetricHeader(
      &out, "statestream_queue_seconds", "histogram",
      "Scheduler: from admission of a task to its first engine step (or "
      "its end, if it ended queued).");
  queue_.Render("statestream_queue_seconds", "", &out);
  AppendMetricHeader(&out, "statestream_batch_sequences", "histogram",
                     "Scheduler: sequences per engine batch.");
  batch_sequences_.Render("statestream_batch_sequences", "", &out);
  AppendMetricHeader(&out, "statestream_batch_tokens", "histogram",
                     "Scheduler: tokens per engine batch.");
  batch_tokens_.Render("statestream_batch_tokens", "", &out);
  AppendMetricHeader(
      &out, "statestream_state_load_seconds", "histogram",
      "Loading a session's state from the store (lease + load).");
  load_.Render("statestream_state_load_seconds", store, &out);
  AppendMetricHeader(&out, "statestream_state_commit_seconds", "histogram",
                     "Committing a session's state to the store.");
  commit_.Render("statestream_state_commit_seconds", store, &out);
  AppendMetric(&out, "statestream_tokens_in_total", "counter",
               "Tokens consumed by the engine (appends, prompts, scoring).",
               in);
  AppendMetric(&out, "statestream_tokens_out_total", "counter",
               "Tokens generated.", out_tokens);
  AppendMetric(&out, "statestream_lease_takeovers_total", "counter",
               "Sessions loaded while another owner still held the lease.",
               takeovers);
  AppendMetric(&out, "statestream_fenced_commits_total", "counter",
               "Commits or renewals refused, or resident copies found stale "
               "by a read, because another worker took over.",
               fenced);
  AppendMetric(&out, "statestream_lease_renewal_failures_total", "counter",
               "Leases a renewal could not renew (store unreachable or "
               "refusing writes; not a takeover or a delete).",
               renewal_failures);
  AppendMetric(&out, "statestream_replayed_generations_total", "counter",
               "Retried committed Generate calls answered from the record.",
               replayed);
  AppendMetricHeader(&out, "statestream_errors_total", "counter",
                     "Calls that ended with an error, by reason.");
  for (const auto& [reason, n] : errors) {
    absl::StrAppend(&out, "statestream_errors_total{reason=\"", reason, "\"} ",
                    n, "\n");
  }
  AppendMetricHeader(&out, "statestream_client_stalls_total", "counter",
                     "Calls cut off for waiting on their client longer than "
                     "--client-stall-timeout (a message or an ack left "
                     "unread, an import left unsent), by method.");
  for (const auto& [method, n] : client_stalls) {
    absl::StrAppend(&out, "statestream_client_stalls_total{method=\"", method,
                    "\"} ", n, "\n");
  }
  AppendMetric(&out, "statestream_sessions_resident", "gauge",
               "Sessions whose state is held in memory.", g.sessions_resident);
  AppendMetric(
      &out, "statestream_sessions_active", "gauge",
      "Resident sessions with an operation running or a writer attached.",
      g.sessions_active);
  AppendMetric(&out, "statestream_resident_bytes", "gauge",
               "Bytes of resident session state.", g.resident_bytes);
  AppendMetric(&out, "statestream_scheduler_tasks", "gauge",
               "Tasks admitted to the scheduler (running or queued).",
               g.scheduler_tasks);
  AppendMetric(&out, "statestream_session_loads_total", "counter",
               "Sessions loaded from the store.", g.loads);
  AppendMetric(&out, "statestream_session_evictions_total", "counter",
               "Idle sessions evicted to fit the residency budget.",
               g.evictions);
  AppendMetric(&out, "statestream_session_commits_total", "counter",
               "Session states committed to the store.", g.commits);
  return out;
}

}  // namespace statestream::worker
