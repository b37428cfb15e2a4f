// SPDX-License-Identifier: Apache-2.0
// `statestream worker`: holds sessions, runs the model and checkpoints
// session state to Redis; reached through gateways.
#include <iostream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/server_flags.h"

namespace statestream::cli {
namespace {

int Run(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "statestream worker: unexpected argument \"" << args[0]
              << "\"\n";
    return kExitUsage;
  }
  return RunServer(
      "worker", ServerOptionsFromFlags(), ShutdownGraceFromFlag(),
      []() -> absl::StatusOr<ServiceSet> { return UnimplementedPublicApi(); });
}

}  // namespace

const Command& WorkerCommand() {
  static const Command kCommand{
      "worker",
      "Run a worker that serves sessions and checkpoints them to Redis.",
      "[flags]\n\n"
      "Serves the statestream.v1 API (as forwarded by gateways),\n"
      "grpc.health.v1 and server reflection.\n"
      "Stops cleanly on SIGINT or SIGTERM.",
      {__FILE__, kServerFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
