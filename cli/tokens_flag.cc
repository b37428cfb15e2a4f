// SPDX-License-Identifier: Apache-2.0
// --tokens: token ids for the commands that take them (model eval,
// tokenize/detokenize, score, bench engine), and only those.
#include "absl/flags/flag.h"
#include "cli/cli_util.h"

ABSL_FLAG(std::string, tokens, "",
          "Comma-separated token ids, e.g. 1,2,3 (bench engine: a count, the "
          "prefill call's length or the decode steps timed).");

namespace statestream::cli {

const char* const kTokenFlagsFile = __FILE__;

std::string TokensFlagValue() { return absl::GetFlag(FLAGS_tokens); }

}  // namespace statestream::cli
