// SPDX-License-Identifier: Apache-2.0
// A Prometheus histogram (cumulative buckets with fixed upper bounds),
// rendered in the text exposition format (0.0.4), and the helpers for
// plain metrics. Shared by the worker's and the gateway's metrics.
// Histogram is thread-safe.
#ifndef STATESTREAM_COMMON_HISTOGRAM_H_
#define STATESTREAM_COMMON_HISTOGRAM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace statestream {

class Histogram {
 public:
  // `bounds`: increasing upper bounds (`le`); +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // Appends `name_bucket`, `name_sum`, `name_count` lines; `labels` is
  // either empty or `key="value"` pairs without braces.
  void Render(const std::string& name, const std::string& labels,
              std::string* out) const;
  // The value under which a fraction `q` (0..1) of the observations fall,
  // interpolated linearly inside its bucket (as Prometheus'
  // histogram_quantile); 0 without observations.
  double Quantile(double q) const;
  uint64_t count() const;

  // Seconds, 0.5 ms to 5 min: the bounds of every latency histogram (a
  // stream's whole life, a load behind a slow store, run to minutes).
  static std::vector<double> LatencyBounds();

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // per bucket, +Inf last
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// The `# HELP` and `# TYPE` lines of metric `name`.
inline void AppendMetricHeader(std::string* out, const char* name,
                               const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type,
                  "\n");
}

// A metric with one unlabelled sample: its header, then `name value`.
template <typename T>
void AppendMetric(std::string* out, const char* name, const char* type,
                  const char* help, T value) {
  AppendMetricHeader(out, name, type, help);
  absl::StrAppend(out, name, " ", value, "\n");
}

}  // namespace statestream

#endif  // STATESTREAM_COMMON_HISTOGRAM_H_
