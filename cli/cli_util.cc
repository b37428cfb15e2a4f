// SPDX-License-Identifier: Apache-2.0
#include "cli/cli_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
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

// The descriptor a name stands for: /dev/stdin|stdout|stderr, /dev/fd/N
// and /proc/self/fd/N.
std::optional<int> NamedDescriptor(absl::string_view path) {
  if (path == "/dev/stdout") return STDOUT_FILENO;
  if (path == "/dev/stderr") return STDERR_FILENO;
  int fd = -1;
  for (absl::string_view prefix : {"/dev/fd/", "/proc/self/fd/"}) {
    if (absl::ConsumePrefix(&path, prefix) && absl::SimpleAtoi(path, &fd) &&
        fd >= 0) {
      return fd;
    }
  }
  return std::nullopt;
}

// The process's umask, read without changing it (umask(2) sets it, for a
// moment, for every thread).
mode_t CurrentUmask() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "Umask:")) {
      const std::string octal(absl::StripAsciiWhitespace(rest));
      char* end = nullptr;
      const unsigned long mask = std::strtoul(octal.c_str(), &end, 8);
      if (!octal.empty() && *end == '\0' && mask <= 0777) {
        return static_cast<mode_t>(mask);
      }
    }
  }
  // No Umask line (Linux before 4.7, no /proc): set it back at once.
  const mode_t mask = ::umask(077);
  ::umask(mask);
  return mask;
}

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

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view bytes) {
  auto failed = [&](int error) {
    return absl::ErrnoToStatus(error, absl::StrCat("cannot write ", path));
  };
  // A name for one of this process's descriptors (/dev/stdout, /dev/fd/N,
  // /proc/self/fd/N) is written through that descriptor, where the shell
  // put it (at its offset, appending under >>): reopening the name would
  // start again at offset 0 of a file the shell opened.
  if (std::optional<int> fd = NamedDescriptor(path)) {
    // Only a descriptor the command was given (a shell's 3>file), open for
    // writing: the process's own (gRPC's sockets, say) are close-on-exec.
    const int fd_flags = ::fcntl(*fd, F_GETFD);
    const int fl = ::fcntl(*fd, F_GETFL);
    if (fd_flags < 0 || fl < 0) return failed(errno);
    if ((fd_flags & FD_CLOEXEC) != 0 || (fl & O_ACCMODE) == O_RDONLY) {
      return failed(EBADF);
    }
    // After what was printed before it (stdout may share the file).
    std::cout.flush();
    std::fflush(stdout);
    return WriteAll(*fd, bytes, path);
  }
  // What exists and is not a regular file (a device, a FIFO) has nothing
  // to replace and is written in place.
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (exists && !S_ISREG(st.st_mode)) {
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
  // The permission bits only: the new file is the caller's, so setuid,
  // setgid or sticky bits copied from another owner's file mean nothing.
  const mode_t mode = exists ? st.st_mode & 0777 : 0666 & ~CurrentUmask();
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
  // The rename itself survives a crash once the directory is synced (the
  // file is written either way: a failed sync is not reported).
  SyncDirectory(dir.string()).IgnoreError();
  return absl::OkStatus();
}

bool WritesToStdout(const std::string& path) {
  if (path == "-") return true;
  const std::optional<int> fd = NamedDescriptor(path);
  if (!fd) return false;
  if (*fd == STDOUT_FILENO) return true;
  struct stat named, out;
  return ::fstat(*fd, &named) == 0 && ::fstat(STDOUT_FILENO, &out) == 0 &&
         named.st_dev == out.st_dev && named.st_ino == out.st_ino;
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
