// SPDX-License-Identifier: Apache-2.0
#include "cli/metrics_flags.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "services/server.h"

ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks "
          "a free one; the server then prints `metrics on HOST:PORT` to "
          "stdout before `listening on`); empty: no metrics endpoint.");

namespace statestream::cli {

const char kMetricsFlagsFile[] = __FILE__;

absl::StatusOr<std::string> MetricsListenFromFlag() {
  std::string listen = absl::GetFlag(FLAGS_metrics_listen);
  if (listen.empty()) return listen;
  if (auto address = ParseListenAddress(listen); !address.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen: ", address.status().message()));
  }
  return listen;
}

}  // namespace statestream::cli
