// SPDX-License-Identifier: Apache-2.0
#include "common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace statestream {
namespace {

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

}  // namespace statestream
