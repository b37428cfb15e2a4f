// SPDX-License-Identifier: Apache-2.0
// `statestream serve`: the all-in-one server, a worker with the public API
// and an embedded state store.
#include <filesystem>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cli/command.h"
#include "cli/model_flag.h"
#include "cli/server_flags.h"

ABSL_FLAG(std::string, data_dir, "",
          "Directory of the embedded state store, created if missing; empty "
          "keeps session state in memory only (lost on exit).");

namespace statestream::cli {
namespace {

struct ServeOptions {
  ServerOptions server;
  // Embedded store directory; empty: memory only.
  std::string data_dir;
  // Model weights file; empty: none yet (the API answers UNIMPLEMENTED).
  std::string model_path;
};

absl::Status CheckServeOptions(const ServeOptions& options) {
  if (!options.data_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(options.data_dir, error);
    if (error || !std::filesystem::is_directory(options.data_dir)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create --data-dir ", options.data_dir, ": ",
                       error ? error.message() : "not a directory"));
    }
  }
  if (!options.model_path.empty() &&
      !std::filesystem::is_regular_file(options.model_path)) {
    return absl::NotFoundError(
        absl::StrCat("--model ", options.model_path, ": no such file"));
  }
  return absl::OkStatus();
}

int Run(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "statestream serve: unexpected argument \"" << args[0]
              << "\"\n";
    return kExitUsage;
  }
  ServeOptions options;
  options.server = ServerOptionsFromFlags();
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.model_path = ModelFlagValue();
  return RunServer("serve", options.server, ShutdownGraceFromFlag(),
                   [&]() -> absl::StatusOr<ServiceSet> {
                     absl::Status valid = CheckServeOptions(options);
                     if (!valid.ok()) return valid;
                     return UnimplementedPublicApi();
                   });
}

}  // namespace

const Command& ServeCommand() {
  static const Command kCommand{
      "serve",
      "Run the all-in-one server (worker + embedded store); no setup needed.",
      "[flags]\n\n"
      "Serves the statestream.v1 API, grpc.health.v1 and server reflection\n"
      "from one process holding the model and an embedded state store.\n"
      "Stops cleanly on SIGINT or SIGTERM.",
      {__FILE__, kServerFlagsFile, kModelFlagFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
