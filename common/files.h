// SPDX-License-Identifier: Apache-2.0
// Reading whole files without surprises: an error for a directory or a read
// that fails part-way, never an empty or truncated string.
#ifndef STATESTREAM_COMMON_FILES_H_
#define STATESTREAM_COMMON_FILES_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace statestream {

// The whole file. Never throws: an error "cannot read PATH: WHY" (its errno's
// code: NOT_FOUND, PERMISSION_DENIED, ...) for a file that does not open, a
// directory or a read error (not an empty string).
absl::StatusOr<std::string> ReadFile(const std::string& path);
// The whole of standard input, like ReadFile (read from the descriptor: do
// not mix with std::cin).
absl::StatusOr<std::string> ReadStdin();

// The whole of a regular file of at most `max_bytes` (a symlink to one is
// followed): for files read again and again by a running server (secrets),
// where a FIFO would block the reader forever and /dev/zero would fill
// memory. Opened without blocking; anything else, or a larger file, is
// FAILED_PRECONDITION "cannot read PATH: ..."; errno's code otherwise.
absl::StatusOr<std::string> ReadRegularFile(const std::string& path,
                                            size_t max_bytes);
// ReadFile of at most `max_bytes`, of any kind (a pipe, /dev/stdin): a
// larger one is FAILED_PRECONDITION. May wait for a FIFO's writer.
absl::StatusOr<std::string> ReadFileUpTo(const std::string& path,
                                         size_t max_bytes);

// PATH whole or not at all: writes a temporary beside it (mkstemp, the
// file's permission bits, or 0666 less the umask), fsyncs it, renames it
// over PATH and syncs the directory; on failure the temporary goes and an
// earlier PATH stays as it was. A link to a file is followed (its target is
// replaced; a dangling link is replaced). A name for one of the process's
// descriptors (/dev/stdout, /dev/fd/N, /proc/self/fd/N) is written through
// that descriptor; a PATH that exists and is not a regular file (a device,
// a FIFO) is written in place.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view bytes);
// Whether WriteFileAtomically(path, ...) writes to this process's
// standard output: "-", or a name for a descriptor (/dev/stdout,
// /dev/fd/N, /proc/self/fd/N) open on the same file as descriptor 1.
// Where a command prints something beside such a file, it goes to stderr.
bool WritesToStdout(const std::string& path);

// fsync of the directory `path`: the entries created, renamed or removed
// in it survive a crash (a file's own fsync does not make its name
// durable). errno's code "cannot sync directory PATH: WHY" otherwise.
absl::Status SyncDirectory(const std::string& path);

}  // namespace statestream

#endif  // STATESTREAM_COMMON_FILES_H_
