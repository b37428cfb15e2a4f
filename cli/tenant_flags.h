// SPDX-License-Identifier: Apache-2.0
// Who may call a server that faces clients, and how much each tenant may
// hold: --api-keys, --tenant-max-sessions, --tenant-max-streams. Used by
// `statestream gateway` and by `statestream serve` (which has no gateway in
// front of it). And the secret between gateways and workers,
// --internal-token-file (kInternalTokenFlagFile: gateway and worker).
#ifndef STATESTREAM_CLI_TENANT_FLAGS_H_
#define STATESTREAM_CLI_TENANT_FLAGS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/secret_file_reloader.h"
#include "services/tenants.h"

namespace statestream::cli {

// __FILE__ of cli/tenant_flags.cc, for Command::flag_files.
extern const char kTenantFlagsFile[];

// A secrets file as read at start (ReadSecretsFileAtStart): what a
// SecretFileReloader needs to reread it.
struct SecretsFile {
  std::string path;       // "" when its flag is unset
  const char* flag = "";  // "--api-keys"
  // Sha256Of what it held at start (never its bytes: they hold tokens).
  std::string digest;
  // --secrets-reload-interval, or 0 (read once) for a file that is no
  // regular file.
  absl::Duration reload_interval = absl::ZeroDuration();

  bool reloads() const {
    return !path.empty() && reload_interval > absl::ZeroDuration();
  }
};

struct TenantSetup {
  TenantAuth auth;  // development mode without --api-keys
  // The flags' defaults with the keys file's per-tenant overrides.
  TenantLimitsOptions limits;
  SecretsFile keys;  // --api-keys

  // The keys file is reread while running: the limits it sets may change,
  // so a TenantLimits is needed even when none is set now.
  bool NeedsLimits() const {
    return keys.reloads() || limits.LimitsSessions() || limits.LimitsStreams();
  }
};

// Reads --api-keys (and warns on stderr, as `command`, when it is absent:
// every caller then picks its tenant), --secrets-reload-interval and the
// limit flags. INVALID_ARGUMENT naming the flag.
absl::StatusOr<TenantSetup> TenantSetupFromFlags(const char* command);

// What keeps `setup.auth` (every copy) and `limits` (may be null) in step
// with the keys file while it lives; null when setup.keys.reloads() is
// false.
// `validate` (may be empty): what `command` needs of a reread file, as it
// checked the first at start.
std::shared_ptr<SecretFileReloader> StartApiKeysReloader(
    const TenantSetup& setup, std::shared_ptr<TenantLimits> limits,
    const char* command,
    std::function<absl::Status(const TenantAuth&)> validate = {});

// __FILE__ of cli/internal_token_flag.cc, for Command::flag_files.
extern const char kInternalTokenFlagFile[];

struct InternalTokenSetup {
  InternalToken token;  // none when --internal-token-file is unset
  SecretsFile file;     // --internal-token-file
};
// --internal-token-file's token (warning on stderr, as `command`, when it
// holds the example manifests' placeholder) and --secrets-reload-interval.
// INVALID_ARGUMENT naming the flag (never echoing the token).
absl::StatusOr<InternalTokenSetup> InternalTokenFromFlags(const char* command);
// What keeps `setup.token` (every copy) in step with its file while it
// lives; null when there is none or it is read once.
std::shared_ptr<SecretFileReloader> StartInternalTokenReloader(
    const InternalTokenSetup& setup, const char* command);

// __FILE__ of cli/secrets_reload_flag.cc, for Command::flag_files.
extern const char kSecretsReloadFlagFile[];
// --secrets-reload-interval: 0 (read once) or 1s to 24h, in whole
// seconds. INVALID_ARGUMENT naming the flag.
absl::StatusOr<absl::Duration> SecretsReloadIntervalFromFlag();
// The secrets file `path` (given as `flag`) at start, its bytes, and in
// `*file` how to reread it: a regular file is reread every `reload`;
// anything else (a pipe: `<(vault ...)`, /dev/stdin) is read whole once
// (said on stderr as `command` when `reload` is on). At most
// kMaxSecretsFileBytes. INVALID_ARGUMENT naming the flag.
absl::StatusOr<std::string> ReadSecretsFileAtStart(const std::string& path,
                                                   const char* flag,
                                                   const char* command,
                                                   absl::Duration reload,
                                                   SecretsFile* file);
// What rereads `file` into `apply` while it lives, saying so on stderr as
// `command`; null when the file is read once (or there is none).
std::shared_ptr<SecretFileReloader> StartSecretsReloader(
    const SecretsFile& file, const char* command, SecretFileApply apply);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_TENANT_FLAGS_H_
