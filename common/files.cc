// SPDX-License-Identifier: Apache-2.0
#include "common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace statestream {
namespace {

constexpr size_t kNoLimit = static_cast<size_t>(-1);

// Reads `fd` to its end, at most `max_bytes`; `name` (a path, or "stdin")
// for errors. `regular_only`: refuses anything but a regular file.
absl::StatusOr<std::string> ReadAll(int fd, const std::string& name,
                                    size_t max_bytes = kNoLimit,
                                    bool regular_only = false) {
  const std::string what = absl::StrCat("cannot read ", name);
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, what);
  // read(2) on a directory fails with EISDIR anyway; say so before trying.
  if (S_ISDIR(st.st_mode)) return absl::ErrnoToStatus(EISDIR, what);
  if (regular_only && !S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": not a regular file"));
  }
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > max_bytes) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": larger than ", max_bytes, " bytes"));
  }
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
    // A file growing as it is read.
    if (out.size() > max_bytes) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": larger than ", max_bytes, " bytes"));
    }
  }
  return out;
}

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

absl::StatusOr<std::string> ReadRegularFile(const std::string& path,
                                            size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO with no writer returns at once (and fstat
  // then refuses it) instead of waiting for one.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int open_errno = errno;
    return absl::ErrnoToStatus(open_errno, absl::StrCat("cannot read ", path));
  }
  absl::StatusOr<std::string> bytes =
      ReadAll(fd, path, max_bytes, /*regular_only=*/true);
  ::close(fd);
  return bytes;
}

absl::StatusOr<std::string> ReadFileUpTo(const std::string& path,
                                         size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int open_errno = errno;
    return absl::ErrnoToStatus(open_errno, absl::StrCat("cannot read ", path));
  }
  absl::StatusOr<std::string> bytes = ReadAll(fd, path, max_bytes);
  ::close(fd);
  return bytes;
}

absl::StatusOr<std::string> ReadStdin() {
  return ReadAll(STDIN_FILENO, "stdin");
}

absl::Status SyncDirectory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int error = fd < 0 ? errno : 0;
  if (fd >= 0) {
    if (::fsync(fd) != 0) error = errno;
    ::close(fd);
  }
  if (error == 0) return absl::OkStatus();
  return absl::ErrnoToStatus(error,
                             absl::StrCat("cannot sync directory ", path));
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

}  // namespace statestream
