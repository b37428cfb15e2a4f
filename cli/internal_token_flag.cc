// SPDX-License-Identifier: Apache-2.0
// --internal-token-file, shared by `gateway` and `worker` (declared in
// cli/tenant_flags.h). Its own file: Command::flag_files lists files, and
// a worker takes this flag but not the API keys.
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/tenant_flags.h"

ABSL_FLAG(std::string, internal_token_file, "",
          "File holding the secret (16-256 printable bytes) that gateways "
          "show workers on every call (x-statestream-internal-token). A "
          "worker given it refuses calls without it (UNAUTHENTICATED), so "
          "only gateways can pick a tenant; a gateway given it sends it. "
          "Empty: none.");

namespace statestream::cli {

const char kInternalTokenFlagFile[] = __FILE__;

absl::StatusOr<InternalToken> InternalTokenFromFlag() {
  const std::string path = absl::GetFlag(FLAGS_internal_token_file);
  if (path.empty()) return InternalToken();
  auto token = InternalToken::FromFile(path);
  if (!token.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--internal-token-file: ", token.status().message()));
  }
  if (token->holds_placeholder()) {
    std::cerr << "statestream: WARNING: --internal-token-file holds the "
                 "placeholder token of the example manifests: anyone who "
                 "has read them can act as a gateway; replace it\n";
  }
  return token;
}

}  // namespace statestream::cli
