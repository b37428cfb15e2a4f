// SPDX-License-Identifier: Apache-2.0
// The worker's Prometheus metrics: counters and histograms the session
// manager, the scheduler hooks and the services update, rendered in the
// Prometheus text exposition format (0.0.4) for `/metrics`. No HTTP here
// (worker/metrics_http.h serves it).
//
// Thread-safe: every method may be called from any thread.
#ifndef STATESTREAM_WORKER_METRICS_H_
#define STATESTREAM_WORKER_METRICS_H_

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/histogram.h"

namespace statestream::worker {

class WorkerMetrics {
 public:
  // Point-in-time values read when rendering.
  struct Gauges {
    int64_t sessions_resident = 0;
    int64_t sessions_active = 0;  // an operation running/queued or a writer
    int64_t resident_bytes = 0;
    int64_t scheduler_tasks = 0;
    // Counts since the start (SessionManager::Stats, all models).
    int64_t loads = 0, evictions = 0, commits = 0;
  };

  // `store` names the state store in the state load/commit latency labels
  // ("sqlite", "memory", "redis").
  explicit WorkerMetrics(std::string store);
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  // Called (without locks held) on each Render(); set before serving.
  void SetGaugeSource(std::function<Gauges()> source);

  void ObserveTimeToFirstToken(absl::Duration d) { ttft_.Observe(Sec(d)); }
  void ObserveInterToken(absl::Duration d) { inter_token_.Observe(Sec(d)); }
  void ObserveQueueTime(absl::Duration d) { queue_.Observe(Sec(d)); }
  void ObserveBatch(int sequences, int tokens);
  void ObserveStateLoad(absl::Duration d) { load_.Observe(Sec(d)); }
  void ObserveCommit(absl::Duration d) { commit_.Observe(Sec(d)); }
  void AddTokensIn(int64_t n) { Add(&tokens_in_, n); }
  void AddTokensOut(int64_t n) { Add(&tokens_out_, n); }
  void IncLeaseTakeover() { Add(&takeovers_, 1); }
  void IncFencedCommit() { Add(&fenced_, 1); }
  // Leases a renewal round could not renew for a reason other than a
  // takeover or a delete (the store down or refusing writes).
  void AddLeaseRenewalFailures(int64_t n) { Add(&renewal_failures_, n); }
  void IncReplayedGeneration() { Add(&replayed_, 1); }
  // A call that ended with an error; `reason` is the Reason name
  // ("OVERLOADED", ...) or the gRPC code name when it has none.
  void IncError(const std::string& reason);
  // A call cut off for waiting on its client too long (ClientStalls);
  // `method` is the rpc's name ("Generate").
  void IncClientStall(const std::string& method);

  // The exposition text.
  std::string Render() const;

 private:
  static double Sec(absl::Duration d) { return absl::ToDoubleSeconds(d); }
  void Add(uint64_t* counter, int64_t n);

  const std::string store_;
  Histogram ttft_, inter_token_, queue_, batch_sequences_, batch_tokens_, load_,
      commit_;
  mutable absl::Mutex mu_;
  std::function<Gauges()> gauges_ ABSL_GUARDED_BY(mu_);
  uint64_t tokens_in_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t tokens_out_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t takeovers_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t fenced_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t renewal_failures_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t replayed_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> client_stalls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_METRICS_H_
