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
#include "common/files.h"

namespace statestream::cli {

// __FILE__ of cli/token_flags.cc, which defines --tokens and --vocab (each
// used by several commands; both names point at the same file).
extern const char* const kTokenFlagsFile;
extern const char* const kVocabFlagFile;
std::string TokensFlagValue();
std::string VocabFlagValue();

// A bad command line (a missing or extra argument, a malformed or
// out-of-range flag value, flags that do not go together): INVALID_ARGUMENT
// with Reason kInvalidArgument, marked as a usage error by a status payload
// (never by its message) so that ReportStatus exits kExitUsage. Only for
// this process's own arguments: an error a server returns is never marked,
// whatever its message says.
absl::Status UsageError(absl::string_view message);
// `status` marked as a usage error (OK stays OK): for flag checks in
// helpers shared with other callers (e.g. EngineOptionsFromFlags).
absl::Status AsUsageError(absl::Status status);
bool IsUsageError(const absl::Status& status);

// A UsageError naming `what` unless `value` is valid UTF-8: the API's
// `string` fields (ids, labels, stop strings) must be, and a server cannot
// even parse a request that breaks this (UNIMPLEMENTED with no message).
absl::Status CheckUtf8(absl::string_view what, absl::string_view value);
// A UsageError naming `what` unless `value` is printable ASCII (0x20-0x7E),
// all a gRPC metadata value may hold.
absl::Status CheckHeaderValue(absl::string_view what, absl::string_view value);

// "1,2,-3" -> {1, 2, -3}; "" -> {}. A UsageError naming `flag` on a
// malformed or out-of-range entry.
absl::StatusOr<std::vector<int32_t>> ParseIntList(absl::string_view text,
                                                  absl::string_view flag);

// ReadFile, ReadStdin, WriteFileAtomically, WritesToStdout:
// common/files.h.
// Flushes std::cout and stdout. An error if anything written to them did
// not reach the file (a full disk, /dev/full, an I/O error): output a
// command printed is then incomplete and it must not exit 0.
absl::Status FlushStdout();

// The command being run ("serve", "session"), for the hint that follows a
// usage error. Set once by main, before the command runs.
void SetCommandName(absl::string_view name);

// Prints a failed status as "error: MESSAGE [REASON]" to stderr, and for
// a UsageError the line "Run 'statestream COMMAND --help' for usage.".
// Returns kExitOk for OK, kExitUsage for a UsageError, else kExitFailure.
int ReportStatus(const absl::Status& status);
// " [REASON]" for a status carrying a reason (by name: a reason newer than
// this build is still shown), else "".
std::string ReasonTag(const absl::Status& status);
// ReportStatus(UsageError(message)): every command line that a command
// refuses is reported the same way, whichever verb (client or server)
// refused it. Returns kExitUsage.
int ReportUsageError(absl::string_view message);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_CLI_UTIL_H_
