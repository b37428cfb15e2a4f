// SPDX-License-Identifier: Apache-2.0
#include "cli/metrics_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks "
          "a free one; the server then prints `metrics on HOST:PORT` to "
          "stdout before `listening on`); empty: no metrics endpoint.");

namespace statestream::cli {

const char kMetricsFlagsFile[] = __FILE__;

std::string MetricsListenFromFlag() {
  return absl::GetFlag(FLAGS_metrics_listen);
}

}  // namespace statestream::cli
