// SPDX-License-Identifier: Apache-2.0
// `statestream feed --session S FILE|-`: streams a file (or stdin) into a
// session exactly once, resuming after failures (the SDK's AppendWriter),
// with a progress bar on a terminal.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "common/status.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int64_t, chunk_bytes, 64 << 10,
          "feed: bytes per Append request, 1 to 1048576.");
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

// Set by the first Ctrl-C (SIGINT): feed stops reading, commits what it
// sent and says where it stopped; a second one ends it at once (the
// handler restores the default action).
volatile sig_atomic_t g_interrupted = 0;

extern "C" void OnInterrupt(int) {
  g_interrupted = 1;
  signal(SIGINT, SIG_DFL);
}

// SIGINT blocked (`block`) or not in this thread: blocked while gRPC
// starts its threads, which keep it blocked, so that it reaches the main
// thread and interrupts its read.
void BlockInterrupts(bool block) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, nullptr);
}

// From here on a Ctrl-C stops the feed instead of killing it.
void CatchInterrupts() {
  struct sigaction action = {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: a blocked read returns EINTR
  sigaction(SIGINT, &action, nullptr);
}

// --chunk-bytes at most: well inside a server's smallest message limit.
constexpr int64_t kMaxChunkBytes = 1 << 20;

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

// The input, FILE or stdin, read through its descriptor: a read error (an
// I/O error, a directory) is an error, never taken for the end of the input
// as an istream would.
class Input {
 public:
  Input(const Input&) = delete;
  Input& operator=(const Input&) = delete;
  ~Input() {
    if (fd_ != STDIN_FILENO) ::close(fd_);
  }

  // `path`, or stdin for "-". An error for a file that does not open and
  // for a directory.
  static absl::StatusOr<std::unique_ptr<Input>> Open(const std::string& path) {
    int fd = STDIN_FILENO;
    if (path != "-") {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        const int open_errno = errno;
        return absl::ErrnoToStatus(open_errno,
                                   absl::StrCat("cannot open ", path));
      }
    }
    std::unique_ptr<Input> in(new Input(fd, path == "-" ? "stdin" : path));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int stat_errno = errno;
      return absl::ErrnoToStatus(stat_errno,
                                 absl::StrCat("cannot read ", in->name_));
    }
    if (S_ISDIR(st.st_mode)) {
      return absl::ErrnoToStatus(EISDIR,
                                 absl::StrCat("cannot read ", in->name_));
    }
    if (S_ISREG(st.st_mode)) {
      const off_t at = ::lseek(fd, 0, SEEK_CUR);
      in->size_ = st.st_size - std::max<int64_t>(0, at);
    }
    return in;
  }

  // Fills buffer[0, n); fewer bytes only at the end of the input (0 there).
  absl::StatusOr<size_t> Read(char* buffer, size_t n) {
    size_t got = 0;
    while (got < n && !g_interrupted) {
      const ssize_t r = ::read(fd_, buffer + got, n - got);
      if (r < 0) {
        if (errno == EINTR && g_interrupted) break;  // Ctrl-C: as an end
        if (errno == EINTR) continue;
        const int read_errno = errno;
        return absl::ErrnoToStatus(
            read_errno, absl::StrCat("cannot read ", name_, " after ",
                                     read_ + got, " bytes"));
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    read_ += got;
    return got;
  }

  // The bytes left to read when it opened, for a regular file; else -1.
  int64_t size() const { return size_; }

 private:
  Input(int fd, std::string name) : fd_(fd), name_(std::move(name)) {}

  int fd_;
  std::string name_;
  int64_t size_ = -1;
  uint64_t read_ = 0;  // bytes read so far
};

// `error` with `detail` after its message, keeping its code, Reason and
// metadata.
absl::Status WithDetail(const absl::Status& error, absl::string_view detail) {
  return WithMessage(error, absl::StrCat(error.message(), detail));
}

absl::Status Feed(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    return UsageError(
        "feed takes one FILE argument (or -); the session is --session ID");
  }
  SS_ASSIGN_OR_RETURN(std::string session_id, SessionFlagValue());
  const std::string mode = absl::GetFlag(FLAGS_progress);
  if (mode != "auto" && mode != "always" && mode != "never") {
    return UsageError("--progress must be auto, always or never");
  }
  const bool progress =
      mode == "always" || (mode == "auto" && isatty(STDERR_FILENO));
  const int64_t chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  if (chunk_bytes < 1 || chunk_bytes > kMaxChunkBytes) {
    return UsageError(absl::StrCat("--chunk-bytes must be in [1, ",
                                   kMaxChunkBytes, "] (got ", chunk_bytes,
                                   ")"));
  }
  const size_t chunk = static_cast<size_t>(chunk_bytes);
  if (absl::GetFlag(FLAGS_start_offset) < -1) {
    return UsageError(
        absl::StrCat("--start-offset must be an input_offset, or -1 for the "
                     "session's current one (got ",
                     absl::GetFlag(FLAGS_start_offset), ")"));
  }

  // Bad usage first; nothing connects before the first call.
  BlockInterrupts(true);  // while gRPC starts its threads
  absl::StatusOr<std::unique_ptr<client::Client>> made = ClientFromFlags();
  BlockInterrupts(false);  // until the stream, Ctrl-C kills as usual
  SS_ASSIGN_OR_RETURN(auto client, std::move(made));
  SS_ASSIGN_OR_RETURN(std::unique_ptr<Input> in, Input::Open(args[0]));
  int64_t total = in->size();

  client::Session session = client->OpenSession(session_id);
  SS_ASSIGN_OR_RETURN(v1::Session start, session.Get());
  std::string buffer(chunk, '\0');
  // The session's input_offset where the input begins (for a rerun).
  uint64_t base = start.input_offset();
  // A rerun: skip what the session already has of the input.
  uint64_t skipped = 0;
  // The end of the skipped bytes, up to a character's first 3: a run that
  // stopped inside a character (the writer splits long text anywhere)
  // left the session holding its start, and the rest continues it.
  std::string skipped_tail;
  if (const int64_t from = absl::GetFlag(FLAGS_start_offset); from >= 0) {
    if (start.input_offset() < static_cast<uint64_t>(from)) {
      return MakeError(
          absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
          absl::StrCat("the session is at input_offset ", start.input_offset(),
                       ", before --start-offset ", from),
          {{"actual_input_offset", absl::StrCat(start.input_offset())}});
    }
    base = static_cast<uint64_t>(from);
    skipped = start.input_offset() - base;
    uint64_t left = skipped;
    while (left > 0) {
      SS_ASSIGN_OR_RETURN(
          size_t n,
          in->Read(buffer.data(),
                   static_cast<size_t>(std::min<uint64_t>(left, chunk))));
      if (n == 0) break;
      left -= n;
      skipped_tail.append(buffer.data(), n);
      if (skipped_tail.size() > 3) {
        skipped_tail.erase(0, skipped_tail.size() - 3);
      }
    }
    if (left > 0) {
      return MakeError(
          absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
          absl::StrCat("the session already has ", skipped,
                       " bytes past --start-offset, more than the input"),
          {{"actual_input_offset", absl::StrCat(start.input_offset())}});
    }
    if (total >= 0) total -= static_cast<int64_t>(skipped);
  }
  client::AppendOptions options;
  options.max_chunk_bytes = chunk;
  // A few requests ahead keep the server busy; more would only run ahead
  // of the progress bar, which shows what the server has acked.
  options.window = 4;
  // Where the skip above (and the rerun hint) placed the input. Should the
  // session move before the stream opens, the server refuses the first
  // request that does not fit (POSITION_MISMATCH) instead of the input
  // landing at another offset: a session that went back (an owner lost
  // with input it had not committed) leaves a gap, and one that moved on
  // into a request's bytes splits it. Appends are idempotent by offset, so
  // requests wholly below where another writer took the session are taken
  // for resends (acked as duplicates): feed assumes it is the session's
  // only writer, as every Append does.
  options.start_offset = start.input_offset();
  SS_ASSIGN_OR_RETURN(auto writer, session.OpenAppend(options));

  CatchInterrupts();
  const absl::Time begin = absl::Now();
  absl::Time last_draw = absl::InfinitePast();
  bool drawn = false;
  uint64_t sent = 0;
  // What a failure leaves, and how to go on: the session's committed
  // offset at the last ack, and the rerun that appends each byte once.
  // (No ack yet: what the session had committed when feed began.) A
  // request too large for the server is one --chunk-bytes must shrink:
  // the same rerun would fail the same way. The size to rerun with scales
  // the largest request sent by the worker's token limit over the tokens
  // it counted, when it says (else: smaller than that request).
  size_t largest = 0;  // the largest request sent, in bytes
  auto smaller_chunks = [&](const absl::Status& error) -> std::string {
    if (GetReason(error) != Reason::kMessageTooLarge || largest == 0) {
      return "";
    }
    int64_t tokens = 0, limit = 0;
    if (absl::SimpleAtoi(GetErrorMetadata(error, "tokens").value_or(""),
                         &tokens) &&
        absl::SimpleAtoi(GetErrorMetadata(error, "limit").value_or(""),
                         &limit) &&
        limit > 0 && tokens > limit) {
      const uint64_t fit = std::max<uint64_t>(
          1, static_cast<uint64_t>(largest) * static_cast<uint64_t>(limit) /
                 static_cast<uint64_t>(tokens));
      return absl::StrCat(" and --chunk-bytes=", fit, " or less");
    }
    return absl::StrCat(" and a --chunk-bytes below ", largest);
  };
  auto stopped = [&](const absl::Status& error) {
    if (drawn) std::fputs("\n", stderr);
    const v1::AppendResponse& ack = writer->last_ack();
    return WithDetail(
        error,
        absl::StrCat(
            "; stopped after sending ", sent,
            " bytes (the session's committed_input_offset was ",
            ack.version() != 0
                ? absl::StrCat(ack.committed_input_offset(), " at the last ack")
                : absl::StrCat(start.committed_input_offset(),
                               " when feed began; no ack came"),
            "); rerun with --start-offset=", base, smaller_chunks(error),
            " to append each byte of the input once"));
  };
  // The input is checked as UTF-8 before it is sent: a server refuses
  // text that is not, and a session left with half a character pending
  // refuses every later text that does not complete it. `carry` holds an
  // incomplete character at the end of a read until the next one.
  // `carry` begins with the session's own incomplete character, if any:
  // checked with what follows, never sent (`held` bytes of it).
  std::string carry =
      skipped_tail.substr(Utf8CompletePrefixLength(skipped_tail));
  size_t held = carry.size();
  std::string data;
  absl::Status bad_input;
  while (true) {
    absl::StatusOr<size_t> n = in->Read(buffer.data(), chunk);
    if (!n.ok()) {
      // Not the end of the input: commit nothing more and say so. The
      // writer is abandoned (its call cancelled); the server may still
      // have committed part of what was sent by its own checkpoint policy.
      return stopped(absl::Status(
          n.status().code(),
          absl::StrCat(n.status().message(), "; nothing more was committed")));
    }
    // Ctrl-C: what was read is sent, an incomplete character is not (as
    // at an end inside one, but without the error), and the rest waits
    // for a rerun.
    const bool interrupted = g_interrupted != 0;
    data.assign(carry);
    data.append(buffer.data(), *n);
    carry.clear();
    const size_t complete = Utf8CompletePrefixLength(data);
    const size_t valid = FirstInvalidUtf8Byte(data);
    size_t take = complete;
    if (valid < complete || (*n == 0 && !interrupted && valid < data.size())) {
      // An ill-formed byte, or the input ends inside a character: send
      // (and commit) what comes before it, then stop.
      take = valid;
      const uint64_t at = skipped + sent + valid - held;  // in the input
      bad_input = MakeError(
          absl::StatusCode::kInvalidArgument, Reason::kInvalidUtf8,
          absl::StrCat(valid < complete
                           ? "the input is not valid UTF-8 at byte "
                           : "the input ends inside a UTF-8 character at "
                             "byte ",
                       at, " (session input_offset ", base + at,
                       "); the bytes before it were appended and committed: "
                       "fix the input and rerun with --start-offset=",
                       base, " to append the rest once"),
          {{"input_offset", absl::StrCat(base + at)}});
    } else {
      carry = data.substr(complete);
    }
    if (take > held) {
      if (absl::Status w =
              writer->Write(std::string_view(data.data() + held, take - held));
          !w.ok()) {
        return stopped(w);
      }
      sent += take - held;
      largest = std::max(largest, std::min<size_t>(take - held, chunk));
    }
    held -= std::min(held, take);
    if (*n == 0 || interrupted || !bad_input.ok()) break;
    if (progress && absl::Now() - last_draw > absl::Milliseconds(100)) {
      last_draw = absl::Now();
      drawn = true;
      // What the server has taken (acked) of this run; no ack yet reads
      // as offset and position 0.
      const v1::AppendResponse& ack = writer->last_ack();
      DrawProgress(ack.input_offset() > start.input_offset()
                       ? ack.input_offset() - start.input_offset()
                       : 0,
                   total,
                   ack.position() > start.position()
                       ? ack.position() - start.position()
                       : 0,
                   absl::Now() - begin);
    }
  }
  // The session's own open character, never completed (the input ended,
  // failed or was interrupted first), cannot be flushed: the server
  // refuses that. Closing commits without a flush.
  if (held == 0) {
    if (absl::Status f = writer->Flush(); !f.ok()) return stopped(f);
  }
  absl::StatusOr<v1::AppendResponse> closed = writer->Close();
  if (!closed.ok()) return stopped(closed.status());
  const v1::AppendResponse done = *std::move(closed);
  if (!bad_input.ok()) {
    if (drawn) std::fputs("\n", stderr);
    return bad_input;
  }
  const uint64_t tokens = done.position() - start.position();
  if (progress) {
    DrawProgress(sent, total < 0 ? -1 : static_cast<int64_t>(sent), tokens,
                 absl::Now() - begin);
    std::fputs("\n", stderr);
  }
  if (JsonOutputFlag()) {
    // As the proto3 JSON mapping writes them: 64-bit counts are strings.
    nlohmann::ordered_json j;
    j["session_id"] = session_id;
    j["bytes"] = absl::StrCat(sent);
    j["tokens"] = absl::StrCat(tokens);
    j["position"] = absl::StrCat(done.position());
    j["input_offset"] = absl::StrCat(done.input_offset());
    j["version"] = absl::StrCat(done.version());
    j["reconnects"] = writer->reconnects();
    j["skipped"] = absl::StrCat(skipped);
    if (g_interrupted) j["interrupted"] = true;
    std::cout << j.dump() << "\n";
  } else {
    if (skipped > 0) {
      std::cout << "skipped " << skipped << " bytes the session had; ";
    }
    std::cout << "fed " << sent << " bytes (" << tokens << " tokens) into "
              << session_id << ": position=" << done.position()
              << " input_offset=" << done.input_offset()
              << " version=" << done.version() << "\n";
  }
  if (g_interrupted) {
    std::cerr << "interrupted: the " << sent
              << " bytes sent are committed (input_offset "
              << done.input_offset() << "); rerun with --start-offset=" << base
              << " to append the rest of the input once\n";
  }
  return absl::OkStatus();
}

// 130 after a Ctrl-C that stopped it (128 + SIGINT, as a shell reports
// one), once what it sent is committed and reported.
int Run(const std::vector<std::string>& args) {
  absl::Status s = Feed(args);
  if (s.ok()) s = FlushStdout();
  if (s.ok() && g_interrupted) return 128 + SIGINT;
  return ReportStatus(s);
}

}  // namespace

const Command& FeedCommand() {
  static const Command kCommand{
      "feed",
      "Stream a file or stdin into a session, exactly once.",
      "--session ID FILE|- [--target HOST:PORT] [--progress auto]\n"
      "             [--start-offset N] [--max-attempts N]\n\n"
      "Appends the bytes as text, flushes the tokenizer and commits. The\n"
      "input must be UTF-8: at an ill-formed byte, or an end inside a\n"
      "character, what comes before it is appended and committed and feed\n"
      "stops there (INVALID_UTF8, naming the byte). A\n"
      "broken connection or a restarted server is resumed transparently\n"
      "(nothing is lost or applied twice) for up to --max-attempts\n"
      "attempts. If it gives up, rerun with --start-offset (the session's\n"
      "input_offset before the first run): the bytes it already has are\n"
      "skipped. On a terminal, stderr shows a progress bar: bytes, tokens,\n"
      "tokens/s and (for files) ETA. With --json, one line: session_id,\n"
      "bytes, tokens, position, input_offset, version, reconnects, skipped\n"
      "(64-bit counts as strings, as the proto3 JSON mapping has them).\n"
      "Ctrl-C stops reading: what was sent is committed and reported (and\n"
      "\"interrupted\": true), then it exits 130; a second Ctrl-C ends it\n"
      "at once.",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
