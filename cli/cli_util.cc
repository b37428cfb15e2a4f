// SPDX-License-Identifier: Apache-2.0
#include "cli/cli_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/command.h"
#include "common/status.h"
#include "worker/engine/utf8.h"

namespace statestream::cli {
namespace {

// The payload that marks a UsageError (a URL no server error carries: the
// SDK only turns ErrorInfo into the reason and metadata payloads).
constexpr absl::string_view kUsageUrl = "statestream.dev/cli/usage-error";

// Reads `fd` to its end; `name` (a path, or "stdin") for errors.
absl::StatusOr<std::string> ReadAll(int fd, const std::string& name) {
  const std::string what = absl::StrCat("cannot read ", name);
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, what);
  // read(2) on a directory fails with EISDIR anyway; say so before trying.
  if (S_ISDIR(st.st_mode)) return absl::ErrnoToStatus(EISDIR, what);
  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) {
    out.reserve(static_cast<size_t>(st.st_size));
  }
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, what);
    }
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace

absl::Status UsageError(absl::string_view message) {
  return AsUsageError(InvalidArgumentError(Reason::kInvalidArgument, message));
}

absl::Status CheckUtf8(absl::string_view what, absl::string_view value) {
  if (engine::IsValidUtf8(value)) return absl::OkStatus();
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

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int open_errno = errno;
    return absl::ErrnoToStatus(open_errno, absl::StrCat("cannot read ", path));
  }
  absl::StatusOr<std::string> bytes = ReadAll(fd, path);
  ::close(fd);
  return bytes;
}

absl::StatusOr<std::string> ReadStdin() {
  return ReadAll(STDIN_FILENO, "stdin");
}

namespace {

// All of `bytes` to `fd`, retrying interrupted and short writes.
absl::Status WriteAll(int fd, absl::string_view bytes,
                      const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::ErrnoToStatus(n < 0 ? errno : EIO,
                                 absl::StrCat("cannot write ", path));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view bytes) {
  auto failed = [&](int error) {
    return absl::ErrnoToStatus(error, absl::StrCat("cannot write ", path));
  };
  // What is not a regular file of its own has nothing to replace and is
  // written in place: a device or a FIFO, and /dev/... or /proc/... names
  // such as /dev/stdout (a link to whatever fd 1 is, even a regular file
  // the shell opened: renaming over it would replace the link, or fail).
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if ((exists && !S_ISREG(st.st_mode)) || absl::StartsWith(path, "/dev/") ||
      absl::StartsWith(path, "/proc/")) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return failed(errno);
    absl::Status written = WriteAll(fd, bytes, path);
    if (::close(fd) != 0 && written.ok()) written = failed(errno);
    return written;
  }
  // A link is followed: its target is replaced, the link stays.
  std::string target = path;
  if (exists) {
    std::error_code error;
    const std::filesystem::path real = std::filesystem::canonical(path, error);
    if (error) return failed(error.value());
    target = real.string();
  }
  // The temporary sits beside the target under a name mkstemp made its own
  // (O_EXCL: never a file or link already there), with the mode the file
  // had, or a new file's (0666 less the umask; mkstemp makes 0600).
  std::filesystem::path dir = std::filesystem::path(target).parent_path();
  if (dir.empty()) dir = ".";
  std::string tmp = (dir / ".statestream-XXXXXX").string();
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return failed(errno);
  mode_t mode = st.st_mode & 07777;
  if (!exists) {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    mode = 0666 & ~mask;
  }
  absl::Status written =
      ::fchmod(fd, mode) == 0 ? absl::OkStatus() : failed(errno);
  if (written.ok()) written = WriteAll(fd, bytes, path);
  if (written.ok() && ::fsync(fd) != 0) written = failed(errno);
  if (::close(fd) != 0 && written.ok()) written = failed(errno);
  if (written.ok() && std::rename(tmp.c_str(), target.c_str()) != 0) {
    written = failed(errno);
  }
  if (!written.ok()) {
    ::unlink(tmp.c_str());  // the earlier file, if any, is untouched
    return written;
  }
  // The rename itself survives a crash once the directory is synced.
  if (const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      d >= 0) {
    ::fsync(d);
    ::close(d);
  }
  return absl::OkStatus();
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

int ReportStatus(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  std::cerr << "error: " << status.message();
  if (Reason r = GetReason(status); r != Reason::kUnspecified) {
    std::cerr << " [" << ReasonName(r) << "]";
  }
  std::cerr << "\n";
  return IsUsageError(status) ? kExitUsage : kExitFailure;
}

}  // namespace statestream::cli
