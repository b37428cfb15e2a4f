// SPDX-License-Identifier: Apache-2.0
// --metrics-listen, shared by the roles that serve Prometheus metrics
// (serve, worker, gateway).
#ifndef STATESTREAM_CLI_METRICS_FLAGS_H_
#define STATESTREAM_CLI_METRICS_FLAGS_H_

#include <string>

#include "absl/status/statusor.h"

namespace statestream::cli {

// __FILE__ of cli/metrics_flags.cc, for Command::flag_files.
extern const char kMetricsFlagsFile[];

// --metrics-listen: HOST:PORT for `/metrics`; empty: no endpoint. A
// malformed address is an error (a usage error: exit 2 before anything
// loads).
absl::StatusOr<std::string> MetricsListenFromFlag();

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_METRICS_FLAGS_H_
