// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the client-side subcommands.
#ifndef STATESTREAM_CLI_CLI_UTIL_H_
#define STATESTREAM_CLI_CLI_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace statestream::cli {

// __FILE__ of cli/token_flags.cc, which defines --tokens and --vocab (each
// used by several commands; both names point at the same file).
extern const char* const kTokenFlagsFile;
extern const char* const kVocabFlagFile;
std::string TokensFlagValue();
std::string VocabFlagValue();

// "1,2,-3" -> {1, 2, -3}; "" -> {}. INVALID_ARGUMENT naming `flag` on a
// malformed or out-of-range entry.
absl::StatusOr<std::vector<int32_t>> ParseIntList(absl::string_view text,
                                                  absl::string_view flag);

absl::StatusOr<std::string> ReadFile(const std::string& path);
// Writes to PATH.tmp, fsyncs, renames over PATH.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view bytes);

// Prints a failed status as "error: MESSAGE [REASON]" to stderr. Returns
// kExitOk for OK, else kExitFailure.
int ReportStatus(const absl::Status& status);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_CLI_UTIL_H_
