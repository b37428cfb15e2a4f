// SPDX-License-Identifier: Apache-2.0
// --internal-token-file, shared by `gateway` and `worker` (declared in
// cli/tenant_flags.h). Its own file: Command::flag_files lists files, and
// a worker takes this flag but not the API keys.
#include <iostream>
#include <memory>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/tenant_flags.h"

ABSL_FLAG(std::string, internal_token_file, "",
          "File holding the secret (16-256 printable ASCII bytes, no spaces; "
          "several, one per line, while rotating: gateways send the first, "
          "workers accept any) that gateways "
          "show workers on every call (x-statestream-internal-token). A "
          "worker given it refuses calls without it (UNAUTHENTICATED), so "
          "only gateways can pick a tenant; a gateway given it sends it. "
          "Empty: none.");

namespace statestream::cli {

const char kInternalTokenFlagFile[] = __FILE__;

absl::StatusOr<InternalTokenSetup> InternalTokenFromFlags(const char* command) {
  InternalTokenSetup setup;
  // Checked whether or not a file is given: a bad value is a mistake.
  absl::StatusOr<absl::Duration> reload = SecretsReloadIntervalFromFlag();
  if (!reload.ok()) return reload.status();
  const std::string path = absl::GetFlag(FLAGS_internal_token_file);
  if (path.empty()) return setup;
  absl::StatusOr<std::string> text = ReadSecretsFileAtStart(
      path, "--internal-token-file", command, *reload, &setup.file);
  if (!text.ok()) return text.status();
  auto token = InternalToken::FromText(path, *text);
  if (!token.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--internal-token-file: ", token.status().message()));
  }
  if (token->holds_placeholder()) {
    std::cerr << "statestream: WARNING: --internal-token-file holds the "
                 "placeholder token of the example manifests: anyone who "
                 "has read them can act as a gateway; replace it\n";
  }
  setup.token = *std::move(token);
  return setup;
}

std::shared_ptr<SecretFileReloader> StartInternalTokenReloader(
    const InternalTokenSetup& setup, const char* command) {
  return StartSecretsReloader(setup.file, command,
                              ApplyInternalToken(setup.file.path, setup.token));
}

}  // namespace statestream::cli
