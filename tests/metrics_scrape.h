// SPDX-License-Identifier: Apache-2.0
// Reads a server's Prometheus text exposition (`/metrics` at HOST:PORT,
// as printed after "metrics on "): series (with labels) to values.
#ifndef STATESTREAM_TESTS_METRICS_SCRAPE_H_
#define STATESTREAM_TESTS_METRICS_SCRAPE_H_

#include <httplib.h>

#include <map>
#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace statestream::e2e {

// The samples of a Prometheus text exposition: series (with labels) to
// values.
inline std::map<std::string, double> ParseMetrics(absl::string_view text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    double v = 0;
    if (space != absl::string_view::npos &&
        absl::SimpleAtod(line.substr(space + 1), &v)) {
      samples[std::string(line.substr(0, space))] = v;
    }
  }
  return samples;
}

// nullopt when the address is malformed or the GET fails.
inline std::optional<std::map<std::string, double>> ScrapeMetrics(
    const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &port)) {
    return std::nullopt;
  }
  httplib::Client client(address.substr(0, colon), port);
  auto res = client.Get("/metrics");
  if (!res || res->status != 200) return std::nullopt;
  return ParseMetrics(res->body);
}

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_METRICS_SCRAPE_H_
