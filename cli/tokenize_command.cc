// SPDX-License-Identifier: Apache-2.0
// `statestream tokenize` and `statestream detokenize`.
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_join.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "common/status.h"
#include "worker/engine/tokenizer.h"

namespace statestream::cli {
namespace {

absl::StatusOr<std::unique_ptr<engine::Tokenizer>> LoadFlagTokenizer() {
  const std::string vocab = VocabFlagValue();
  if (vocab.empty()) {
    return UsageError("--vocab is required (a vocab file or 'bytes')");
  }
  if (vocab == "bytes") return engine::MakeByteTokenizer();
  // A tokenizer.json is the NeoX tokenizer; anything else a World vocab.
  return engine::LoadTokenizerFile(vocab);
}

absl::Status Tokenize(const std::vector<std::string>& args) {
  if (args.size() > 1) {
    return UsageError("tokenize takes one TEXT argument (or -)");
  }
  // The tokenizer first: a missing --vocab is reported at once, not after
  // stdin (a terminal, say) has been read to its end.
  SS_ASSIGN_OR_RETURN(auto tok, LoadFlagTokenizer());
  std::string text;
  if (args.empty() || args[0] == "-") {
    SS_ASSIGN_OR_RETURN(text, ReadStdin());
  } else {
    text = args[0];
  }
  std::cout << "[" << absl::StrJoin(tok->Encode(text), ",") << "]\n";
  return absl::OkStatus();
}

absl::Status Detokenize(const std::vector<std::string>& args) {
  const std::string list = TokensFlagValue();
  if (!args.empty()) {
    return UsageError("detokenize takes ids from --tokens");
  }
  SS_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIntList(list, "--tokens"));
  if (ids.empty()) {
    return UsageError("detokenize needs --tokens (ids, e.g. --tokens=72,105)");
  }
  SS_ASSIGN_OR_RETURN(auto tok, LoadFlagTokenizer());
  SS_ASSIGN_OR_RETURN(std::string bytes, tok->Decode(ids));
  std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::cout.flush();
  return absl::OkStatus();
}

// Usage errors exit 2, other failures 1; so does output that did not
// reach stdout (a full disk).
int RunTokenize(const std::vector<std::string>& args) {
  absl::Status s = Tokenize(args);
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

int RunDetokenize(const std::vector<std::string>& args) {
  absl::Status s = Detokenize(args);
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& TokenizeCommand() {
  static const Command kCommand{
      "tokenize",
      "Print the token ids of a text as a JSON array.",
      "--vocab PATH|bytes [TEXT | -]\n\n"
      "Encodes TEXT (or standard input for '-' or no argument) with the\n"
      "tokenizer the file holds: a Hugging Face tokenizer.json (the GPT-NeoX\n"
      "20B tokenizer of RWKV-4 Pile/Raven), an RWKV World vocab (greedy\n"
      "longest match), or 'bytes' for the byte tokenizer.",
      {__FILE__, kVocabFlagFile},
      &RunTokenize};
  return kCommand;
}

const Command& DetokenizeCommand() {
  static const Command kCommand{
      "detokenize",
      "Write the bytes of token ids to standard output.",
      "--vocab PATH|bytes --tokens 1,2,3\n\n"
      "Writes the raw bytes (which need not be valid UTF-8); the World\n"
      "vocabulary's id 0 (end of text) writes nothing (with bytes, 0 is\n"
      "the byte 0x00); an id outside the vocabulary is an error.",
      {__FILE__, kVocabFlagFile, kTokenFlagsFile},
      &RunDetokenize};
  return kCommand;
}

}  // namespace statestream::cli
