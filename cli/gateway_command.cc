// SPDX-License-Identifier: Apache-2.0
// `statestream gateway`: a stateless front end that authenticates callers
// and routes each session's calls to the worker that owns it.
#include <iostream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/server_flags.h"

namespace statestream::cli {
namespace {

int Run(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "statestream gateway: unexpected argument \"" << args[0]
              << "\"\n";
    return kExitUsage;
  }
  return RunServer(
      "gateway", ServerOptionsFromFlags(), ShutdownGraceFromFlag(),
      []() -> absl::StatusOr<ServiceSet> { return UnimplementedPublicApi(); });
}

}  // namespace

const Command& GatewayCommand() {
  static const Command kCommand{
      "gateway",
      "Run a stateless gateway that routes sessions to workers.",
      "[flags]\n\n"
      "Serves the statestream.v1 API, grpc.health.v1 and server reflection,\n"
      "forwarding each call to the session's owner worker.\n"
      "Stops cleanly on SIGINT or SIGTERM.",
      {__FILE__, kServerFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
