// SPDX-License-Identifier: Apache-2.0
// The registry of `statestream` commands: one line per command (see
// cli/command.h for how to add one).
#include "cli/command.h"

namespace statestream::cli {

// Each defined in cli/<verb>_command.cc.
const Command& ServeCommand();
const Command& GatewayCommand();
const Command& WorkerCommand();
const Command& ModelCommand();
const Command& TokenizeCommand();
const Command& DetokenizeCommand();
const Command& SessionCommand();
const Command& ModelsCommand();
const Command& FeedCommand();
const Command& GenerateCommand();
const Command& ChatCommand();
const Command& ScoreCommand();
const Command& BenchCommand();

const std::vector<const Command*>& AllCommands() {
  static const auto* const kCommands = new std::vector<const Command*>{
      &ServeCommand(),   &GatewayCommand(),  &WorkerCommand(),
      &ModelCommand(),   &TokenizeCommand(), &DetokenizeCommand(),
      &SessionCommand(), &FeedCommand(),     &GenerateCommand(),
      &ChatCommand(),    &ScoreCommand(),    &ModelsCommand(),
      &BenchCommand(),
  };
  return *kCommands;
}

}  // namespace statestream::cli
