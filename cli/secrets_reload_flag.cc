// SPDX-License-Identifier: Apache-2.0
// --secrets-reload-interval, shared by `gateway`, `worker` and `serve`
// (declared in cli/tenant_flags.h): how often the secrets files each reads
// (--api-keys, --internal-token-file) are reread.
#include <sys/stat.h>

#include <iostream>
#include <memory>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cli/server_flags.h"
#include "cli/tenant_flags.h"
#include "common/files.h"

ABSL_FLAG(absl::Duration, secrets_reload_interval, absl::Minutes(1),
          "How often the secrets files (--api-keys; --internal-token-file on "
          "gateway and worker) are reread (1s to "
          "24h): keys and tokens added or removed there (a Kubernetes "
          "Secret update) take effect without a restart, once a second read "
          "a second later finds the same bytes; an Append open under a "
          "revoked API key ends at its next request. A file that cannot be "
          "read or parsed changes nothing (said on stderr). 0: read once at "
          "start.");

namespace statestream::cli {

const char kSecretsReloadFlagFile[] = __FILE__;

absl::StatusOr<absl::Duration> SecretsReloadIntervalFromFlag() {
  return ReloadInterval("--secrets-reload-interval",
                        absl::GetFlag(FLAGS_secrets_reload_interval));
}

absl::StatusOr<std::string> ReadSecretsFileAtStart(const std::string& path,
                                                   const char* flag,
                                                   const char* command,
                                                   absl::Duration reload,
                                                   SecretsFile* file) {
  struct stat st;
  const bool regular = ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  absl::StatusOr<std::string> text =
      regular ? ReadRegularFile(path, kMaxSecretsFileBytes)
              : ReadFileUpTo(path, kMaxSecretsFileBytes);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", text.status().message()));
  }
  if (!regular && reload > absl::ZeroDuration()) {
    std::cerr << "statestream " << command << ": " << flag << ": " << path
              << " is not a regular file: read once, not reread\n";
  }
  file->path = path;
  file->flag = flag;
  file->digest = Sha256Of(*text);
  file->reload_interval = regular ? reload : absl::ZeroDuration();
  return text;
}

std::shared_ptr<SecretFileReloader> StartSecretsReloader(
    const SecretsFile& file, const char* command, SecretFileApply apply) {
  if (!file.reloads()) return nullptr;
  SecretFileOptions options;
  options.path = file.path;
  options.flag = file.flag;
  options.interval = file.reload_interval;
  options.loaded_digest = file.digest;
  options.who = command;
  return std::make_shared<SecretFileReloader>(std::move(options),
                                              std::move(apply));
}

}  // namespace statestream::cli
