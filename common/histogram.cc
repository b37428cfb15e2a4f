// SPDX-License-Identifier: Apache-2.0
#include "common/histogram.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace statestream {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

std::vector<double> Histogram::LatencyBounds() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
          0.5,    1,     2.5,    5,     10,   30,    60,   300};
}

void Histogram::Observe(double value) {
  // Durations come from the wall clock: one stepped back (NTP) would make
  // _sum fall, which Prometheus reads as a counter reset.
  if (!(value >= 0)) value = 0;
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  absl::MutexLock lock(&mu_);
  ++counts_[i];
  sum_ += value;
  ++count_;
}

uint64_t Histogram::count() const {
  absl::MutexLock lock(&mu_);
  return count_;
}

double Histogram::Quantile(double q) const {
  absl::MutexLock lock(&mu_);
  if (count_ == 0) return 0;
  const double rank = q * static_cast<double>(count_);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    const uint64_t before = cumulative;
    cumulative += counts_[i];
    if (static_cast<double>(cumulative) < rank || counts_[i] == 0) continue;
    if (i == bounds_.size()) return bounds_.empty() ? 0 : bounds_.back();
    const double lo = i == 0 ? 0 : bounds_[i - 1];
    const double frac =
        (rank - static_cast<double>(before)) / static_cast<double>(counts_[i]);
    return lo + (bounds_[i] - lo) * frac;
  }
  return bounds_.empty() ? 0 : bounds_.back();
}

void Histogram::Render(const std::string& name, const std::string& labels,
                       std::string* out) const {
  absl::MutexLock lock(&mu_);
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le =
        i < bounds_.size() ? absl::StrCat(bounds_[i]) : std::string("+Inf");
    absl::StrAppend(out, name, "_bucket{", labels, sep, "le=\"", le, "\"} ",
                    cumulative, "\n");
  }
  const std::string braces =
      labels.empty() ? "" : absl::StrCat("{", labels, "}");
  // Every digit (%.17g round-trips a double): absl::StrCat keeps six, so
  // a sum past 1e5 moved in whole units and rate(_sum) read wrong.
  absl::StrAppend(out, name, "_sum", braces, " ",
                  absl::StrFormat("%.17g", sum_), "\n", name, "_count", braces,
                  " ", count_, "\n");
}

}  // namespace statestream
