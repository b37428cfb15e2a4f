// SPDX-License-Identifier: Apache-2.0
#include "services/gateway_metrics.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace statestream {
namespace {

constexpr const char* kDecisionNames[] = {"owner", "rendezvous", "retry",
                                          "no_worker", "remembered"};

}  // namespace

void GatewayMetrics::SetGaugeSource(std::function<Gauges()> source) {
  absl::MutexLock lock(&gauge_mu_);
  gauges_ = std::move(source);
}

void GatewayMetrics::ObserveCall(const std::string& method,
                                 const std::string& code,
                                 const std::string& reason,
                                 absl::Duration latency) {
  Histogram* h;
  {
    absl::MutexLock lock(&mu_);
    auto& slot = latency_[method];
    if (slot == nullptr) {
      slot = std::make_unique<Histogram>(Histogram::LatencyBounds());
    }
    h = slot.get();  // never removed
    ++calls_[{method, code}];
    if (code != "OK") ++errors_[reason.empty() ? code : reason];
  }
  h->Observe(absl::ToDoubleSeconds(latency));
}

void GatewayMetrics::ObserveAppendAck(absl::Duration d) {
  append_ack_.Observe(absl::ToDoubleSeconds(d));
}

void GatewayMetrics::IncFailover(const std::string& method) {
  absl::MutexLock lock(&mu_);
  ++failovers_[method];
}

void GatewayMetrics::CountClientStall(const std::string& method) {
  absl::MutexLock lock(&mu_);
  ++client_stalls_[method];
}

void GatewayMetrics::IncRoute(RouteDecision decision) {
  absl::MutexLock lock(&mu_);
  ++routes_[static_cast<int>(decision)];
}

void GatewayMetrics::AddReplayedRequests(int64_t n) {
  if (n <= 0) return;
  absl::MutexLock lock(&mu_);
  replayed_ += static_cast<uint64_t>(n);
}

void GatewayMetrics::AddSkippedTokens(int64_t n) {
  if (n <= 0) return;
  absl::MutexLock lock(&mu_);
  skipped_ += static_cast<uint64_t>(n);
}

void GatewayMetrics::IncDiverged() {
  absl::MutexLock lock(&mu_);
  ++diverged_;
}

std::string GatewayMetrics::Render() const {
  Gauges g;
  {
    absl::MutexLock lock(&gauge_mu_);
    if (gauges_) g = gauges_();
  }
  std::string out;
  absl::MutexLock lock(&mu_);
  AppendMetricHeader(
      &out, "statestream_gateway_rpc_seconds", "histogram",
      "Forwarded calls, from arrival to the final status (streams: their "
      "whole life), by rpc method.");
  for (const auto& [method, h] : latency_) {
    h->Render("statestream_gateway_rpc_seconds",
              absl::StrCat("method=\"", method, "\""), &out);
  }
  AppendMetricHeader(&out, "statestream_gateway_calls_total", "counter",
                     "Finished calls by rpc method and gRPC code.");
  for (const auto& [key, n] : calls_) {
    absl::StrAppend(&out, "statestream_gateway_calls_total{method=\"",
                    key.first, "\",code=\"", key.second, "\"} ", n, "\n");
  }
  AppendMetricHeader(
      &out, "statestream_gateway_append_ack_seconds", "histogram",
      "Append: from a request read from the client to its ack sent back.");
  append_ack_.Render("statestream_gateway_append_ack_seconds", "", &out);
  AppendMetricHeader(
      &out, "statestream_gateway_errors_total", "counter",
      "Calls that ended with an error, by reason (the gRPC code name when "
      "the error has none).");
  for (const auto& [reason, n] : errors_) {
    absl::StrAppend(&out, "statestream_gateway_errors_total{reason=\"", reason,
                    "\"} ", n, "\n");
  }
  AppendMetricHeader(
      &out, "statestream_gateway_failovers_total", "counter",
      "Calls moved to another worker (Append replays, Generate resumes, "
      "resent unary calls), by rpc method.");
  for (const auto& [method, n] : failovers_) {
    absl::StrAppend(&out, "statestream_gateway_failovers_total{method=\"",
                    method, "\"} ", n, "\n");
  }
  AppendMetricHeader(
      &out, "statestream_gateway_client_stalls_total", "counter",
      "Clients cut off for holding buffers without moving for "
      "--client-stall-timeout (an Append ack left unread, an import left "
      "unsent, an export or Generate message left unread), by rpc method.");
  for (const auto& [method, n] : client_stalls_) {
    absl::StrAppend(&out, "statestream_gateway_client_stalls_total{method=\"",
                    method, "\"} ", n, "\n");
  }
  AppendMetricHeader(
      &out, "statestream_gateway_routing_decisions_total", "counter",
      "How each attempt's worker was chosen: the session's owner, "
      "rendezvous hashing, a retry after a failover, or no worker.");
  for (int i = 0; i < kDecisions; ++i) {
    absl::StrAppend(&out,
                    "statestream_gateway_routing_decisions_total{decision=\"",
                    kDecisionNames[i], "\"} ", routes_[i], "\n");
  }
  AppendMetric(&out, "statestream_gateway_replayed_requests_total", "counter",
               "Append requests re-sent to a new worker after a failover.",
               replayed_);
  AppendMetric(
      &out, "statestream_gateway_generate_skipped_tokens_total", "counter",
      "Generate tokens produced again after a failover and not re-sent.",
      skipped_);
  AppendMetric(
      &out, "statestream_gateway_generate_diverged_total", "counter",
      "Generate re-runs that differed from the output already delivered.",
      diverged_);
  AppendMetric(&out, "statestream_gateway_workers_known", "gauge",
               "Workers in the registry (and the static list).",
               g.workers_known);
  AppendMetric(&out, "statestream_gateway_workers_ready", "gauge",
               "Known workers not suspect (no recent failed call).",
               g.workers_ready);
  AppendMetric(&out, "statestream_gateway_calls_active", "gauge",
               "Forwarded calls in flight.", g.calls_active);
  AppendMetric(&out, "statestream_gateway_worker_channels", "gauge",
               "Connections to worker addresses held open.", g.worker_channels);
  AppendMetric(&out, "statestream_gateway_buffered_bytes", "gauge",
               "Bytes of Append requests kept for replay and of imports read "
               "whole (--max-buffered-bytes).",
               g.buffered_bytes);
  return out;
}

}  // namespace statestream
