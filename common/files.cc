// SPDX-License-Identifier: Apache-2.0
#include "common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

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

}  // namespace statestream
