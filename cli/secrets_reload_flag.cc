// SPDX-License-Identifier: Apache-2.0
// --secrets-reload-interval, shared by `gateway`, `worker` and `serve`
// (declared in cli/tenant_flags.h): how often the secrets files each reads
// (--api-keys, --internal-token-file) are reread.
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cli/tenant_flags.h"

ABSL_FLAG(absl::Duration, secrets_reload_interval, absl::Minutes(1),
          "How often --api-keys and --internal-token-file are reread (1s to "
          "24h): keys and tokens added or removed there (a Kubernetes "
          "Secret update) take effect without a restart, once a second read "
          "a second later finds the same bytes; an Append open under a "
          "revoked API key ends at its next request. A file that cannot be "
          "read or parsed changes nothing (said on stderr). 0: read once at "
          "start.");

namespace statestream::cli {

const char kSecretsReloadFlagFile[] = __FILE__;

absl::StatusOr<absl::Duration> SecretsReloadIntervalFromFlag() {
  const absl::Duration reload = absl::GetFlag(FLAGS_secrets_reload_interval);
  if (reload < absl::ZeroDuration() ||
      (reload > absl::ZeroDuration() && reload < absl::Seconds(1)) ||
      reload > absl::Hours(24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--secrets-reload-interval=", absl::FormatDuration(reload),
                     ": 0 (read once) or 1s to 24h"));
  }
  return absl::Trunc(reload, absl::Seconds(1));
}

}  // namespace statestream::cli
