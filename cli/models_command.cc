// SPDX-License-Identifier: Apache-2.0
// `statestream models [ID]`: the models a server serves (through a gateway:
// every ready worker's, merged), or one of them.
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "common/status.h"

namespace statestream::cli {
namespace {

void Print(const v1::Model& m) {
  if (JsonOutputFlag()) {
    std::cout << ToJson(m) << "\n";
    return;
  }
  std::cout << m.model_id() << "\tarchitecture=" << m.architecture()
            << " n_layer=" << m.n_layer() << " n_embd=" << m.n_embd()
            << " vocab_size=" << m.vocab_size()
            << " state_bytes=" << m.state_bytes()
            << " weights=" << m.weights_dtype();
  if (!m.bf16_activations().empty()) {
    std::cout << " bf16_activations=" << m.bf16_activations();
  }
  std::cout << " fingerprint=" << m.fingerprint();
  // What a `session create` without --model-id gets.
  if (m.is_default()) std::cout << " default=true";
  std::cout << "\n";
}

// Every model (ListModels), or the one named (GetModel).
absl::Status Models(const std::vector<std::string>& ids) {
  if (!ids.empty()) SS_RETURN_IF_ERROR(CheckUtf8("the model id", ids[0]));
  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  if (ids.empty()) {
    SS_ASSIGN_OR_RETURN(v1::ListModelsResponse resp, client->ListModels());
    for (const v1::Model& m : resp.models()) Print(m);
    return absl::OkStatus();
  }
  SS_ASSIGN_OR_RETURN(v1::Model m, client->GetModel(ids[0]));
  Print(m);
  return absl::OkStatus();
}

int Run(const std::vector<std::string>& args) {
  if (args.size() > 1) {
    return ReportUsageError(
        absl::StrCat("unexpected argument \"", args[1], "\""));
  }
  if (FlagGiven("session")) {
    return ReportStatus(
        UsageError("models takes no --session (it lists the server's models)"));
  }
  // Output that did not reach stdout (a full disk) fails too.
  absl::Status s = Models(args);
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& ModelsCommand() {
  static const Command kCommand{
      "models",
      "List the models a server serves (ListModels), or show one (GetModel).",
      "[MODEL_ID] [--target HOST:PORT] [--json]\n\n"
      "One line per model (with --json one statestream.v1.Model object per\n"
      "line); default=true marks the one a create without --model-id gets.\n"
      "Through a gateway: the models of every ready worker, merged (a\n"
      "default only when every worker has the same).\n"
      "With MODEL_ID only that model; one no server serves is\n"
      "MODEL_NOT_FOUND (exit 1). For local checkpoint files see\n"
      "`statestream model`.",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile},
      &Run,
      {"session"}};
  return kCommand;
}

}  // namespace statestream::cli
