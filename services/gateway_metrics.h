// SPDX-License-Identifier: Apache-2.0
// The gateway's Prometheus metrics (text exposition format 0.0.4; served
// over HTTP by worker/metrics_http.h): per-rpc latency and outcome,
// failovers, replayed Append requests, skipped Generate output, routing
// decisions, errors by reason, and the workers the router knows.
//
// Thread-safe: every method may be called from any thread.
#ifndef STATESTREAM_SERVICES_GATEWAY_METRICS_H_
#define STATESTREAM_SERVICES_GATEWAY_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/histogram.h"

namespace statestream {

class GatewayMetrics {
 public:
  // How a call's worker was chosen (one per attempt).
  enum class RouteDecision {
    kOwner,       // the session's live lease holder
    kRendezvous,  // rendezvous hashing (no live owner, or a new session)
    kRetry,       // a later attempt, after a failover
    kNoWorker,    // no live worker could take it
    kRemembered,  // the owner last seen, the store being unreachable
  };
  // Point-in-time values read when rendering.
  struct Gauges {
    int64_t workers_known = 0;    // registry + static workers
    int64_t workers_ready = 0;    // of those, not suspect
    int64_t calls_active = 0;     // forwarded calls in flight
    int64_t worker_channels = 0;  // open connections to worker addresses
    int64_t buffered_bytes = 0;   // Append logs and imports held in memory
  };

  GatewayMetrics() = default;
  GatewayMetrics(const GatewayMetrics&) = delete;
  GatewayMetrics& operator=(const GatewayMetrics&) = delete;

  // Called on each Render() under an internal lock; nullptr clears it (the
  // call then waits for a Render in progress, so the source may be
  // destroyed right after).
  void SetGaugeSource(std::function<Gauges()> source);

  // One finished call: `method` is the rpc name ("Append"), `code` the gRPC
  // code name ("OK", "UNAVAILABLE"), `reason` the ErrorInfo reason or "" .
  // Non-OK calls also count in errors_total{reason} (the code name when
  // there is no reason).
  void ObserveCall(const std::string& method, const std::string& code,
                   const std::string& reason, absl::Duration latency);
  // Append: from a request read from the client to its ack sent back.
  void ObserveAppendAck(absl::Duration d);
  // A call moved to another worker (`method` as above).
  void IncFailover(const std::string& method);
  // A client cut off for not moving (client_stall_timeout), by method.
  void CountClientStall(const std::string& method);
  void IncRoute(RouteDecision decision);
  // Append requests re-sent to a new worker after a failover.
  void AddReplayedRequests(int64_t n);
  // Generate tokens produced again by the new worker and not re-sent.
  void AddSkippedTokens(int64_t n);
  // Generate re-runs that differed from what was delivered.
  void IncDiverged();

  std::string Render() const;

 private:
  static constexpr int kDecisions = 5;

  mutable absl::Mutex gauge_mu_;
  std::function<Gauges()> gauges_ ABSL_GUARDED_BY(gauge_mu_);
  Histogram append_ack_{Histogram::LatencyBounds()};
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Histogram>> latency_
      ABSL_GUARDED_BY(mu_);  // by method
  std::map<std::pair<std::string, std::string>, uint64_t> calls_
      ABSL_GUARDED_BY(mu_);  // by (method, code)
  std::map<std::string, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> failovers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> client_stalls_ ABSL_GUARDED_BY(mu_);
  uint64_t routes_[kDecisions] ABSL_GUARDED_BY(mu_) = {};
  uint64_t replayed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t skipped_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t diverged_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_GATEWAY_METRICS_H_
