// SPDX-License-Identifier: Apache-2.0
// `statestream feed --session S FILE|-`: streams a file (or stdin) into a
// session exactly once, resuming after failures (the SDK's AppendWriter),
// with a progress bar on a terminal.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "common/status.h"

ABSL_FLAG(int64_t, chunk_bytes, 64 << 10, "feed: bytes per Append request.");
ABSL_FLAG(int64_t, start_offset, -1,
          "feed: the session's input_offset where FILE begins (e.g. the "
          "input_offset before a run that failed): the bytes the session "
          "already has are skipped, so a rerun appends each byte once. -1: "
          "append the whole file at the session's current offset.");
ABSL_FLAG(std::string, progress, "auto",
          "feed: progress bar on stderr: auto (only on a terminal), always, "
          "never.");

namespace statestream::cli {
namespace {

std::string Bytes(double n) {
  if (n >= 1 << 20) return absl::StrFormat("%.1f MiB", n / (1 << 20));
  if (n >= 1 << 10) return absl::StrFormat("%.1f KiB", n / (1 << 10));
  return absl::StrFormat("%.0f B", n);
}

// One line, redrawn in place: bar (if the size is known), bytes, tokens,
// tokens/s, ETA.
void DrawProgress(uint64_t sent, int64_t total, uint64_t tokens,
                  absl::Duration elapsed) {
  const double secs = std::max(absl::ToDoubleSeconds(elapsed), 1e-3);
  std::string line = "\r";
  if (total > 0) {
    constexpr int kWidth = 24;
    const double frac = std::min(1.0, static_cast<double>(sent) / total);
    const int filled = static_cast<int>(frac * kWidth);
    absl::StrAppend(&line, "[", std::string(filled, '#'),
                    std::string(kWidth - filled, ' '), "] ",
                    absl::StrFormat("%3.0f%% ", frac * 100));
  }
  absl::StrAppend(&line, Bytes(sent));
  if (total > 0) absl::StrAppend(&line, "/", Bytes(total));
  absl::StrAppend(&line, "  ", tokens, " tok  ",
                  absl::StrFormat("%.0f tok/s", tokens / secs));
  if (total > 0 && sent > 0) {
    const double eta = (total - static_cast<double>(sent)) * secs / sent;
    absl::StrAppend(&line, absl::StrFormat("  ETA %.0fs", eta));
  }
  absl::StrAppend(&line, "\x1b[K");  // clear to the end of the line
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

absl::Status Feed(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "feed takes one FILE argument (or -)");
  }
  SS_ASSIGN_OR_RETURN(std::string session_id, SessionFlagValue());
  const std::string mode = absl::GetFlag(FLAGS_progress);
  if (mode != "auto" && mode != "always" && mode != "never") {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "--progress must be auto, always or never");
  }
  const bool progress =
      mode == "always" || (mode == "auto" && isatty(STDERR_FILENO));
  const size_t chunk = static_cast<size_t>(
      std::clamp<int64_t>(absl::GetFlag(FLAGS_chunk_bytes), 1, 1 << 20));

  std::ifstream file;
  std::istream* in = &std::cin;
  int64_t total = -1;
  if (args[0] != "-") {
    file.open(args[0], std::ios::binary);
    if (!file) {
      return absl::NotFoundError(absl::StrCat("cannot open ", args[0]));
    }
    struct stat st;
    if (stat(args[0].c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total = st.st_size;
    }
    in = &file;
  }

  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  client::Session session = client->OpenSession(session_id);
  SS_ASSIGN_OR_RETURN(v1::Session start, session.Get());
  // A rerun: skip what the session already has of the file.
  uint64_t skipped = 0;
  if (const int64_t from = absl::GetFlag(FLAGS_start_offset); from >= 0) {
    if (start.input_offset() < static_cast<uint64_t>(from)) {
      return MakeError(
          absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
          absl::StrCat("the session is at input_offset ", start.input_offset(),
                       ", before --start_offset ", from),
          {{"actual_input_offset", absl::StrCat(start.input_offset())}});
    }
    skipped = start.input_offset() - static_cast<uint64_t>(from);
    in->ignore(static_cast<std::streamsize>(skipped));
    if (static_cast<uint64_t>(in->gcount()) != skipped) {
      return MakeError(
          absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
          absl::StrCat("the session already has ", skipped,
                       " bytes past --start_offset, more than the input"),
          {{"actual_input_offset", absl::StrCat(start.input_offset())}});
    }
    if (total >= 0) total -= static_cast<int64_t>(skipped);
  }
  client::AppendOptions options;
  options.max_chunk_bytes = chunk;
  SS_ASSIGN_OR_RETURN(auto writer, session.OpenAppend(options));

  const absl::Time begin = absl::Now();
  absl::Time last_draw = absl::InfinitePast();
  uint64_t sent = 0;
  std::string buffer(chunk, '\0');
  while (*in) {
    in->read(buffer.data(), static_cast<std::streamsize>(chunk));
    const size_t n = static_cast<size_t>(in->gcount());
    if (n == 0) break;
    SS_RETURN_IF_ERROR(writer->Write(std::string_view(buffer.data(), n)));
    sent += n;
    if (progress && absl::Now() - last_draw > absl::Milliseconds(100)) {
      last_draw = absl::Now();
      // No ack yet reads as position 0.
      const uint64_t acked = writer->last_ack().position();
      DrawProgress(sent, total,
                   acked > start.position() ? acked - start.position() : 0,
                   absl::Now() - begin);
    }
  }
  SS_RETURN_IF_ERROR(writer->Flush());
  SS_ASSIGN_OR_RETURN(v1::AppendResponse done, writer->Close());
  const uint64_t tokens = done.position() - start.position();
  if (progress) {
    DrawProgress(sent, total < 0 ? -1 : static_cast<int64_t>(sent), tokens,
                 absl::Now() - begin);
    std::fputs("\n", stderr);
  }
  if (JsonOutputFlag()) {
    std::cout << absl::StrCat(
        R"({"session_id":")", session_id, R"(","bytes":)", sent,
        R"(,"tokens":)", tokens, R"(,"position":)", done.position(),
        R"(,"input_offset":)", done.input_offset(), R"(,"version":)",
        done.version(), R"(,"reconnects":)", writer->reconnects(),
        R"(,"skipped":)", skipped, "}\n");
  } else {
    if (skipped > 0) {
      std::cout << "skipped " << skipped << " bytes the session had; ";
    }
    std::cout << "fed " << sent << " bytes (" << tokens << " tokens) into "
              << session_id << ": position=" << done.position()
              << " input_offset=" << done.input_offset()
              << " version=" << done.version() << "\n";
  }
  return absl::OkStatus();
}

int Run(const std::vector<std::string>& args) {
  return ReportStatus(Feed(args));
}

}  // namespace

const Command& FeedCommand() {
  static const Command kCommand{
      "feed",
      "Stream a file or stdin into a session, exactly once.",
      "--session ID FILE|- [--target HOST:PORT] [--progress auto]\n"
      "             [--start_offset N] [--max_attempts N]\n\n"
      "Appends the bytes as text, flushes the tokenizer and commits. A\n"
      "broken connection or a restarted server is resumed transparently\n"
      "(nothing is lost or applied twice) for up to --max_attempts\n"
      "attempts. If it gives up, rerun with --start_offset (the session's\n"
      "input_offset before the first run): the bytes it already has are\n"
      "skipped. On a terminal, stderr shows a progress bar: bytes, tokens,\n"
      "tokens/s and (for files) ETA.",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
