// SPDX-License-Identifier: Apache-2.0
#include "cli/cli_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/command.h"
#include "common/status.h"

namespace statestream::cli {

absl::StatusOr<std::vector<int32_t>> ParseIntList(absl::string_view text,
                                                  absl::string_view flag) {
  std::vector<int32_t> out;
  text = absl::StripAsciiWhitespace(text);
  if (text.empty()) return out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &v)) {
      return InvalidArgumentError(
          Reason::kInvalidArgument,
          absl::StrCat(flag, ": '", part, "' is not a 32-bit integer"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view bytes) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      ::close(fd);
      return absl::DataLossError(absl::StrCat("short write to ", tmp));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 ||
      std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::DataLossError(absl::StrCat("cannot finish writing ", path));
  }
  return absl::OkStatus();
}

int ReportStatus(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  std::cerr << "error: " << status.message();
  if (Reason r = GetReason(status); r != Reason::kUnspecified) {
    std::cerr << " [" << ReasonName(r) << "]";
  }
  std::cerr << "\n";
  return kExitFailure;
}

}  // namespace statestream::cli
