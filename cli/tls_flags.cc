// SPDX-License-Identifier: Apache-2.0
#include "cli/tls_flags.h"

#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"

ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (leaf first) this process presents: a "
          "server role serves TLS with it (empty: plaintext); a client verb "
          "sends it as its client certificate (mutual TLS, with --tls). "
          "Needs --tls-key.");
ABSL_FLAG(std::string, tls_key, "",
          "PEM private key (unencrypted) of --tls-cert.");

namespace statestream::cli {

const char kTlsFlagsFile[] = __FILE__;

absl::Status ReadPemFiles(std::initializer_list<PemFileFlag> files) {
  for (const PemFileFlag& f : files) {
    if (f.path.empty()) continue;
    absl::StatusOr<std::string> pem = ReadFile(f.path);
    if (!pem.ok() || pem->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          f.flag, ": cannot read ", f.path, pem.ok() ? " (empty)" : ""));
    }
    *f.pem = *std::move(pem);
    *f.where = f.path;
  }
  return absl::OkStatus();
}

}  // namespace statestream::cli
