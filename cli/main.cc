// SPDX-License-Identifier: Apache-2.0
// `statestream <command> [flags] [args]`: finds the command, parses its
// flags and runs it. Each command's file fills its Options structs from its
// flags and wires the objects; nothing below main reads flags.
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli_util.h"
#include "cli/command.h"

namespace statestream::cli {
namespace {

int Main(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::cerr << MainHelp();
    return kExitUsage;
  }
  const std::string& verb = args[0];
  if (verb == "--help" || verb == "-help" || verb == "-h" || verb == "help") {
    const Command* command = args.size() > 1 ? FindCommand(args[1]) : nullptr;
    std::cout << (command != nullptr ? CommandHelp(*command) : MainHelp());
    return kExitOk;
  }
  if (verb == "--version" || verb == "version") {
    std::cout << "statestream " << STATESTREAM_VERSION << "\n";
    return kExitOk;
  }
  const Command* command = FindCommand(verb);
  if (command != nullptr) SetCommandName(command->name);
  if (command == nullptr) {
    std::cerr << "statestream: "
              << (verb[0] == '-' ? "flags go after the command: " + verb +
                                       " given before any command"
                                 : "unknown command \"" + verb + "\"")
              << "\nRun 'statestream --help' for the list of commands.\n";
    return kExitUsage;
  }
  auto parsed = ParseFlags(*command, {args.begin() + 1, args.end()});
  if (!parsed.ok()) {
    return ReportUsageError(parsed.status().message());
  }
  if (parsed->help) {
    std::cout << CommandHelp(*command);
    return kExitOk;
  }
  return command->run(parsed->positional);
}

}  // namespace
}  // namespace statestream::cli

int main(int argc, char** argv) {
  return statestream::cli::Main(
      std::vector<std::string>(argv + 1, argv + argc));
}
