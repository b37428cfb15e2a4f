// SPDX-License-Identifier: Apache-2.0
// `statestream score`: log-probabilities of a continuation.
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "common/status.h"

namespace statestream::cli {
namespace {

absl::Status Score(const std::vector<std::string>& args) {
  SS_ASSIGN_OR_RETURN(std::string session_id, SessionFlagValue());
  v1::ScoreRequest req;
  const std::string tokens = TokensFlagValue();
  if (!tokens.empty()) {
    if (!args.empty()) {
      return UsageError("give TEXT or --tokens, not both");
    }
    SS_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                        ParseIntList(tokens, "--tokens"));
    // " " parses as no ids: a request with no continuation.
    if (ids.empty()) return UsageError("--tokens: no token ids");
    for (int32_t id : ids) {
      // uint32 on the wire: -1 would be sent as 4294967295.
      if (id < 0) {
        return UsageError(absl::StrCat("--tokens: ", id, " is not a token id"));
      }
      req.mutable_tokens()->add_ids(static_cast<uint32_t>(id));
    }
  } else if (args.size() != 1) {
    return UsageError("score takes one TEXT argument (or -)");
  }
  // Before stdin is read: a bad --target is said at once, not after EOF.
  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  if (tokens.empty()) {
    std::string text = args[0];
    if (text == "-") {
      SS_ASSIGN_OR_RETURN(text, ReadStdin());
    }
    req.set_text_utf8(text);
  }
  SS_ASSIGN_OR_RETURN(v1::ScoreResponse r,
                      client->OpenSession(session_id).Score(req));
  if (JsonOutputFlag()) {
    std::cout << ToJson(r) << "\n";
    return absl::OkStatus();
  }
  for (const v1::ScoredToken& t : r.tokens()) {
    std::cout << absl::StrFormat("%d\t%.6f%s\n", t.token(), t.logprob(),
                                 t.greedy() ? "\tgreedy" : "");
  }
  std::cout << absl::StrFormat("sum_logprob %.6f  tokens %d  all_greedy %s\n",
                               r.sum_logprob(), r.tokens_size(),
                               r.all_greedy() ? "true" : "false");
  return absl::OkStatus();
}

// Usage errors exit 2, other failures 1; so does output that did not
// reach stdout (a full disk).
int Run(const std::vector<std::string>& args) {
  absl::Status s = Score(args);
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& ScoreCommand() {
  static const Command kCommand{
      "score",
      "Log-probabilities of a continuation (changes nothing).",
      "--session ID (TEXT | - | --tokens 1,2,3) [--json]\n\n"
      "Prints one line per token (id, logprob, whether greedy) and the sum;\n"
      "with --json the ScoreResponse.",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile, kTokenFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
