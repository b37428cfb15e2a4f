// SPDX-License-Identifier: Apache-2.0
// `statestream chat`: an interactive conversation whose history is the
// session itself: each turn is one committing Generate whose prompt is the
// user's line, so nothing is ever re-sent.
#include <unistd.h>

#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "cli/generate_flags.h"
#include "common/status.h"

ABSL_FLAG(std::string, user_prefix,
          "User: ", "chat: text before each user line.");
ABSL_FLAG(std::string, assistant_prefix, "\n\nAssistant:",
          "chat: text after each user line, before the reply.");
ABSL_FLAG(std::string, turn_end, "\n\n",
          "chat: a reply ends at this string (also appended after a reply "
          "that ended otherwise).");

namespace statestream::cli {
namespace {

absl::Status Chat(const std::vector<std::string>& args) {
  if (!args.empty()) {
    return UsageError(
        "chat takes no arguments (--session ID continues a session)");
  }
  // generate's flags that chat shares the file of but not the meaning: the
  // prompt is each stdin line, and every turn commits.
  if (FlagGiven("prompt")) {
    return UsageError(
        "chat takes no --prompt: it reads one message per line from stdin");
  }
  if (FlagGiven("commit")) {
    return UsageError("chat takes no --commit: every turn is committed");
  }
  SS_ASSIGN_OR_RETURN(const v1::GenerateRequest sampling,
                      GenerateRequestFromFlags());
  const std::string turn_end = absl::GetFlag(FLAGS_turn_end);
  SS_RETURN_IF_ERROR(CheckUtf8("--turn-end", turn_end));
  // The turn end rides as one more stop string, within the API's bounds
  // (1-256 bytes, at most 16), or every turn would be refused.
  if (turn_end.size() > 256) {
    return UsageError(
        absl::StrCat("--turn-end: at most 256 bytes (a stop string; got ",
                     turn_end.size(), ")"));
  }
  const bool turn_end_is_stop =
      !turn_end.empty() && absl::c_find(sampling.stop_strings(), turn_end) ==
                               sampling.stop_strings().end();
  if (turn_end_is_stop && sampling.stop_strings_size() >= 16) {
    return UsageError(
        "--stop: at most 15 stop strings besides --turn-end (a reply's 16th)");
  }
  SS_RETURN_IF_ERROR(
      CheckUtf8("--user-prefix", absl::GetFlag(FLAGS_user_prefix)));
  SS_RETURN_IF_ERROR(
      CheckUtf8("--assistant-prefix", absl::GetFlag(FLAGS_assistant_prefix)));
  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  // --session= (an empty $SID) starts a new session like no --session: at
  // the first message, so input that never makes one leaves none behind.
  std::optional<client::Session> session;
  if (!SessionFlagIsEmpty()) {
    SS_ASSIGN_OR_RETURN(std::string session_id, SessionFlagValue());
    session = client->OpenSession(session_id);
  }
  const bool tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
  const bool json = JsonOutputFlag();
  std::string line;
  for (;;) {
    if (tty) std::cout << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    SS_RETURN_IF_ERROR(CheckUtf8("a line of stdin", line));
    if (!session) {
      SS_ASSIGN_OR_RETURN(v1::Session created,
                          client->CreateSession(v1::CreateSessionRequest()));
      std::cerr << "session " << created.session_id() << "\n";
      session = client->OpenSession(created.session_id());
    }
    v1::GenerateRequest req = sampling;
    req.set_commit(true);
    req.set_prompt_text_utf8(
        absl::StrCat(absl::GetFlag(FLAGS_user_prefix), line,
                     absl::GetFlag(FLAGS_assistant_prefix)));
    if (turn_end_is_stop) req.add_stop_strings(turn_end);
    SS_ASSIGN_OR_RETURN(v1::GenerateDone done,
                        StreamGeneration(*session, req, json));
    // Unless the reply ended with the turn end itself (a --stop string
    // is not one).
    if (!turn_end.empty() &&
        !(done.finish_reason() == v1::FINISH_REASON_STOP_STRING &&
          done.stop_string() == turn_end)) {
      // Close the turn in the session's history too; the turn's done line
      // then reports the session after it.
      SS_ASSIGN_OR_RETURN(v1::AppendResponse closed,
                          session->AppendText(turn_end));
      done.set_position(closed.position());
      done.set_input_offset(closed.input_offset());
      done.set_version(closed.version());
      done.set_durability(closed.durability());
    }
    if (json) {
      std::cout << ToJson(done) << "\n";
    } else {
      std::cout << "\n";
    }
    // A reply that did not reach stdout (a full disk, say) ends the chat:
    // no further turn is committed unseen.
    SS_RETURN_IF_ERROR(FlushStdout());
  }
  return absl::OkStatus();
}

// Usage errors exit 2, other failures 1; so does output that did not
// reach stdout (a full disk).
int Run(const std::vector<std::string>& args) {
  absl::Status s = Chat(args);
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& ChatCommand() {
  static const Command kCommand{
      "chat",
      "Talk with a model; the session is the conversation's memory.",
      "[--session ID] [--max-tokens N] [--temperature T] [--json]\n\n"
      "Reads one user message per line from stdin and streams each reply.\n"
      "Each turn commits `User: LINE\\n\\nAssistant:` and the reply to the\n"
      "session, so a later `chat --session ID` continues the conversation\n"
      "without re-sending it. Without --session a new session is created\n"
      "(its id is printed on stderr). With --json each reply is its\n"
      "GenerateChunk lines, then its GenerateDone (as generate --json: a\n"
      "chunk's text_utf8 is base64). generate's --prompt and --commit are\n"
      "refused: the prompt is each line, and every turn commits.",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile, kGenerateFlagsFile},
      &Run,
      {"prompt", "commit"}};
  return kCommand;
}

}  // namespace statestream::cli
