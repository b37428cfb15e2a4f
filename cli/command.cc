// SPDX-License-Identifier: Apache-2.0
#include "cli/command.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <string>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"

namespace statestream::cli {
namespace {

bool BelongsTo(const absl::CommandLineFlag& flag, const Command& command) {
  // Abseil normalizes the file name by dropping a prefix (e.g. the leading
  // "/"), so compare by suffix.
  std::string file = flag.Filename();
  if (file.empty()) return false;
  for (const char* owned : command.flag_files) {
    if (absl::EndsWith(owned, file)) return true;
  }
  return false;
}

// The command's flags, sorted by name.
std::vector<absl::CommandLineFlag*> FlagsOf(const Command& command) {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!flag->IsRetired() && BelongsTo(*flag, command)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  return flags;
}

// The names of the flags ParseFlags set (FlagGiven).
std::set<std::string>& GivenFlags() {
  static auto* const given = new std::set<std::string>();
  return *given;
}

// "--data-dir": how help text and errors spell a flag.
std::string Spelling(absl::string_view name) {
  return absl::StrCat("--", absl::StrReplaceAll(name, {{"_", "-"}}));
}

// `text` word-wrapped to `width` columns, each line indented by `indent`.
std::string Wrap(absl::string_view text, size_t indent, size_t width) {
  std::string out;
  size_t column = 0;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (column > 0 && column + 1 + word.size() > width) {
      out += "\n";
      column = 0;
    }
    if (column == 0) {
      out.append(indent, ' ');
      column = indent;
    } else {
      out += ' ';
      ++column;
    }
    absl::StrAppend(&out, word);
    column += word.size();
  }
  return out + "\n";
}

}  // namespace

const Command* FindCommand(const std::string& name) {
  for (const Command* command : AllCommands()) {
    if (name == command->name) return command;
  }
  return nullptr;
}

absl::StatusOr<ParsedArgs> ParseFlags(const Command& command,
                                      const std::vector<std::string>& args) {
  ParsedArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--") {
      parsed.positional.insert(parsed.positional.end(), args.begin() + i + 1,
                               args.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      parsed.positional.emplace_back(arg);
      continue;
    }
    absl::string_view body =
        absl::StripPrefix(absl::StripPrefix(arg, "-"), "-");
    absl::string_view value_text;
    bool has_value = false;
    if (size_t eq = body.find('='); eq != absl::string_view::npos) {
      value_text = body.substr(eq + 1);
      body = body.substr(0, eq);
      has_value = true;
    }
    std::string name = absl::StrReplaceAll(body, {{"-", "_"}});
    if (name == "help" || name == "h") {
      parsed.help = true;
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    std::string value(value_text);
    // --noverbose / --no-verbose for a boolean --verbose.
    if ((flag == nullptr || flag->IsRetired()) &&
        absl::StartsWith(name, "no") && !has_value) {
      absl::CommandLineFlag* negated =
          absl::FindCommandLineFlag(absl::StripPrefix(name.substr(2), "_"));
      if (negated != nullptr && negated->IsOfType<bool>()) {
        flag = negated;
        value = "false";
        has_value = true;
      }
    }
    std::string shown = Spelling(body);
    if (flag == nullptr || flag->IsRetired()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", shown));
    }
    if (!BelongsTo(*flag, command)) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag ", shown, " is not a flag of `statestream ",
                       command.name, "`"));
    }
    if (!has_value) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag ", shown, " needs a value"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      // Abseil's words say nothing of the form a duration takes.
      const char* form = flag->IsOfType<absl::Duration>()
                             ? " (a duration such as 500ms, 30s, 15m or 24h; "
                               "hours are the largest unit)"
                             : "";
      return absl::InvalidArgumentError(absl::StrCat(
          "bad value \"", value, "\" for flag ", shown, ": ", error, form));
    }
    GivenFlags().insert(std::string(flag->Name()));
  }
  return parsed;
}

bool FlagGiven(absl::string_view name) {
  return GivenFlags().count(std::string(name)) > 0;
}

std::string MainHelp() {
  std::string text =
      "statestream: stateful streaming inference for RWKV language models.\n"
      "\n"
      "Usage: statestream <command> [flags] [args]\n"
      "\n"
      "Commands:\n";
  size_t width = 0;
  for (const Command* command : AllCommands()) {
    width = std::max(width, std::strlen(command->name));
  }
  for (const Command* command : AllCommands()) {
    absl::StrAppend(&text, "  ", command->name,
                    std::string(width + 2 - std::strlen(command->name), ' '),
                    command->summary, "\n");
  }
  absl::StrAppend(&text,
                  "\nRun 'statestream <command> --help' for a command's "
                  "flags.\nExit status: 0 success, 1 failure, 2 bad usage.\n");
  return text;
}

std::string CommandHelp(const Command& command) {
  std::string text = absl::StrCat("Usage: statestream ", command.name, " ",
                                  command.usage, "\n");
  std::vector<absl::CommandLineFlag*> flags = FlagsOf(command);
  absl::StrAppend(&text, "\nFlags:\n");
  for (const absl::CommandLineFlag* flag : flags) {
    if (std::find(command.hidden_flags.begin(), command.hidden_flags.end(),
                  flag->Name()) != command.hidden_flags.end()) {
      continue;
    }
    std::string fallback = flag->DefaultValue();
    // Escaped: a default of "\n\nAssistant:" stays on one line.
    if (flag->IsOfType<std::string>() || fallback.empty()) {
      fallback = absl::StrCat("\"", absl::CHexEscape(fallback), "\"");
    }
    absl::StrAppend(&text, "  ", Spelling(flag->Name()), " (default ", fallback,
                    ")\n", Wrap(flag->Help(), 6, 78));
  }
  absl::StrAppend(&text, "  --help\n      Show this help.\n");
  return text;
}

}  // namespace statestream::cli
