// SPDX-License-Identifier: Apache-2.0
// Subcommands of the `statestream` binary and their command-line parsing.
//
// Adding a command (e.g. `statestream model`):
//   1. Write cli/model_command.cc: its ABSL_FLAGs, a `Run` function, and
//        const Command& ModelCommand() {
//          static const Command kCommand{"model", "One-line summary.",
//              "[flags] PATH\n\nLonger description.", {__FILE__}, &Run};
//          return kCommand;
//        }
//      Only flags defined in the files named in `flag_files` are accepted
//      (and listed by --help) for the command.
//   2. Add the file to `statestream` in cli/CMakeLists.txt.
//   3. Add `ModelCommand` to the list in cli/commands.cc.
#ifndef STATESTREAM_CLI_COMMAND_H_
#define STATESTREAM_CLI_COMMAND_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace statestream::cli {

// Exit codes of the statestream binary.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the command ran and failed
inline constexpr int kExitUsage = 2;    // bad command line

struct Command {
  // The verb, e.g. "serve".
  const char* name;
  // One line for `statestream --help`.
  const char* summary;
  // For `statestream <name> --help`: the synopsis after the verb, then a
  // blank line and a description.
  const char* usage;
  // The files whose ABSL_FLAGs belong to this command, as `__FILE__` spells
  // them: the command's own file, plus shared ones such as
  // kServerFlagsFile (cli/server_flags.h).
  std::vector<const char*> flag_files;
  // Runs the command once its flags are set; `args` are the positional
  // arguments. Returns an exit code. Prints its own errors (stderr).
  int (*run)(const std::vector<std::string>& args);
  // Flags of `flag_files` the command does not take (chat shares
  // generate's file but not its --commit): left out of its --help; the
  // command refuses them itself, saying why.
  std::vector<const char*> hidden_flags = {};
};

// Every command, in the order `statestream --help` lists them.
const std::vector<const Command*>& AllCommands();
// The command named `name`, or null.
const Command* FindCommand(const std::string& name);

struct ParsedArgs {
  bool help = false;                    // --help or -h was given
  std::vector<std::string> positional;  // non-flag arguments, in order
};

// Parses `args` (what follows the verb) and sets the command's flags.
// Accepts --name=value, --name value, --bool_flag, --nobool_flag,
// '-' or '_' in names, single or double dashes, and "--" ending the flags.
// INVALID_ARGUMENT (with a message for the user) for an unknown flag, a flag
// of another command, a missing value or a bad value.
absl::StatusOr<ParsedArgs> ParseFlags(const Command& command,
                                      const std::vector<std::string>& args);

// Whether ParseFlags set the flag `name` (as Abseil names it, e.g.
// "max_tokens"; --noflag counts), whatever the value: for a flag a command
// accepts through a shared file but must refuse (chat and --prompt), or
// one it must tell apart from its default.
bool FlagGiven(absl::string_view name);

// `statestream --help` and `statestream <command> --help` texts.
std::string MainHelp();
std::string CommandHelp(const Command& command);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_COMMAND_H_
