// SPDX-License-Identifier: Apache-2.0
// `statestream models`: the models a server serves (through a gateway: every
// ready worker's, merged).
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "common/status.h"

namespace statestream::cli {
namespace {

absl::Status Models() {
  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  SS_ASSIGN_OR_RETURN(v1::ListModelsResponse resp, client->ListModels());
  for (const v1::Model& m : resp.models()) {
    if (JsonOutputFlag()) {
      std::cout << ToJson(m) << "\n";
      continue;
    }
    std::cout << m.model_id() << "\tarchitecture=" << m.architecture()
              << " n_layer=" << m.n_layer() << " n_embd=" << m.n_embd()
              << " vocab_size=" << m.vocab_size()
              << " state_bytes=" << m.state_bytes()
              << " weights=" << m.weights_dtype();
    if (!m.bf16_activations().empty()) {
      std::cout << " bf16_activations=" << m.bf16_activations();
    }
    std::cout << " fingerprint=" << m.fingerprint() << "\n";
  }
  return absl::OkStatus();
}

int Run(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "statestream models: unexpected argument \"" << args[0]
              << "\"\n";
    return kExitUsage;
  }
  if (FlagGiven("session")) {
    return ReportStatus(
        UsageError("models takes no --session (it lists the server's models)"));
  }
  // Output that did not reach stdout (a full disk) fails too.
  absl::Status s = Models();
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& ModelsCommand() {
  static const Command kCommand{
      "models",
      "List the models a server serves (ListModels).",
      "[--target HOST:PORT] [--json]\n\n"
      "One line per model (with --json one statestream.v1.Model object per\n"
      "line). Through a gateway: the models of every ready worker, merged.\n"
      "For local checkpoint files see `statestream model`.",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
