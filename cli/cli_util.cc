// SPDX-License-Identifier: Apache-2.0
#include "cli/cli_util.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <iostream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/command.h"
#include "common/status.h"
#include "common/utf8.h"

namespace statestream::cli {
namespace {

// The payload that marks a UsageError (a URL no server error carries: the
// SDK only turns ErrorInfo into the reason and metadata payloads).
constexpr absl::string_view kUsageUrl = "statestream.dev/cli/usage-error";

}  // namespace

absl::Status UsageError(absl::string_view message) {
  return AsUsageError(InvalidArgumentError(Reason::kInvalidArgument, message));
}

absl::Status CheckUtf8(absl::string_view what, absl::string_view value) {
  if (IsValidUtf8(value)) return absl::OkStatus();
  return UsageError(absl::StrCat(what, " is not valid UTF-8"));
}

absl::Status CheckHeaderValue(absl::string_view what, absl::string_view value) {
  for (char c : value) {
    if (c < 0x20 || c > 0x7E) {
      return UsageError(absl::StrCat(
          what,
          " may hold only printable ASCII (it is sent as a header); "
          "found byte 0x",
          absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2)));
    }
  }
  return absl::OkStatus();
}

absl::Status AsUsageError(absl::Status status) {
  if (!status.ok()) status.SetPayload(kUsageUrl, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kUsageUrl).has_value();
}

absl::StatusOr<std::vector<int32_t>> ParseIntList(absl::string_view text,
                                                  absl::string_view flag) {
  std::vector<int32_t> out;
  text = absl::StripAsciiWhitespace(text);
  if (text.empty()) return out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &v)) {
      return UsageError(
          absl::StrCat(flag, ": '", part, "' is not a 32-bit integer"));
    }
    out.push_back(v);
  }
  return out;
}

absl::Status FlushStdout() {
  // std::cout is synchronised with stdio (nothing turns that off): what it
  // was given is in stdout's buffer, so flushing stdout first tells why a
  // write failed; an earlier failed write left stdout's error flag and
  // std::cout's badbit set.
  errno = 0;
  const bool flush_failed = std::fflush(stdout) != 0;
  const int flush_errno = errno;
  std::cout.flush();
  if (!flush_failed && std::cout.good() && !std::ferror(stdout)) {
    return absl::OkStatus();
  }
  if (flush_failed && flush_errno != 0) {
    return absl::ErrnoToStatus(flush_errno, "cannot write to stdout");
  }
  return absl::DataLossError("cannot write to stdout (output incomplete)");
}

namespace {
std::string& CommandName() {
  static std::string* const name = new std::string;
  return *name;
}
}  // namespace

void SetCommandName(absl::string_view name) {
  CommandName() = std::string(name);
}

std::string ReasonTag(const absl::Status& status) {
  const std::string reason = GetReasonName(status);
  if (reason.empty() || reason == ReasonName(Reason::kUnspecified)) return "";
  return absl::StrCat(" [", reason, "]");
}

int ReportStatus(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  std::cerr << "error: " << status.message() << ReasonTag(status) << "\n";
  // UNAVAILABLE without a reason is the transport's, not a statestream
  // server's (its errors carry one); gRPC's words say whether a connection
  // was never made (a stream cut midway is UNAVAILABLE too).
  if (absl::IsUnavailable(status) && GetReasonName(status).empty() &&
      (absl::StrContains(status.message(), "failed to connect") ||
       absl::StrContains(status.message(), "DNS resolution failed"))) {
    std::cerr << "hint: no statestream server answered at the --target "
                 "address (default 127.0.0.1:7700; is `statestream serve` "
                 "or a gateway running there, with --tls if it uses "
                 "TLS?)\n";
  }
  if (GetReason(status) == Reason::kSessionNotFound) {
    std::cerr << "hint: `statestream session list` shows this tenant's "
                 "sessions; `statestream session create ID` makes one\n";
  }
  if (!IsUsageError(status)) return kExitFailure;
  std::cerr << "Run 'statestream "
            << (CommandName().empty() ? "" : CommandName() + " ")
            << "--help' for usage.\n";
  return kExitUsage;
}

int ReportUsageError(absl::string_view message) {
  return ReportStatus(UsageError(message));
}

}  // namespace statestream::cli
