// SPDX-License-Identifier: Apache-2.0
#include "services/api_keys_reloader.h"

#include <iostream>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace statestream {

ApiKeysReloader::ApiKeysReloader(ApiKeysReloaderOptions options,
                                 TenantAuth auth,
                                 std::shared_ptr<TenantLimits> limits)
    : options_(std::move(options)),
      auth_(std::move(auth)),
      limits_(std::move(limits)) {
  {
    absl::MutexLock lock(&check_mu_);
    last_digest_ = options_.loaded_digest;
  }
  if (options_.interval > absl::ZeroDuration()) {
    thread_ = std::thread([this] { Loop(); });
  }
}

ApiKeysReloader::~ApiKeysReloader() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status ApiKeysReloader::Check() {
  absl::MutexLock lock(&check_mu_);
  const std::string& path = options_.path;
  auto say = [this](const absl::Status& status) {
    std::cerr << "statestream " << options_.who
              << ": --api-keys: " << status.message() << "\n";
  };
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    // Said once: a file being replaced may be missing for a moment, and a
    // deleted one stays so.
    absl::Status unreadable = absl::NotFoundError(
        absl::StrCat(text.status().message(), "; the API keys in use stay"));
    if (last_status_ != unreadable) say(unreadable);
    last_digest_.clear();
    last_status_ = unreadable;
    return unreadable;
  }
  const std::string digest = Sha256Of(*text);
  if (!digest.empty() && digest == last_digest_) return last_status_;
  if (options_.settle > absl::ZeroDuration()) {
    if (!Sleep(options_.settle)) return absl::CancelledError("stopping");
    absl::StatusOr<std::string> again = ReadFile(path);
    if (!again.ok() || Sha256Of(*again) != digest) {
      return absl::UnavailableError(absl::StrCat(
          path, " changed while being read; it is read again next time"));
    }
  }
  last_digest_ = digest;
  absl::StatusOr<TenantAuth> newer = TenantAuth::FromText(path, *text);
  absl::Status applied = newer.status();
  if (applied.ok() && options_.validate) applied = options_.validate(*newer);
  if (applied.ok()) applied = auth_.Replace(*newer);
  if (!applied.ok()) {
    last_status_ = absl::Status(
        applied.code(),
        absl::StrCat(applied.message(), "; the API keys in use stay"));
    say(last_status_);
    return last_status_;
  }
  if (limits_ != nullptr) limits_->SetOverrides(newer->limits());
  std::cerr << "statestream " << options_.who << ": --api-keys: " << path
            << " reread: " << newer->key_count() << " API keys in use\n";
  last_status_ = absl::OkStatus();
  return last_status_;
}

bool ApiKeysReloader::Sleep(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  return !mu_.AwaitWithTimeout(absl::Condition(&stop_), d);
}

void ApiKeysReloader::Loop() {
  while (Sleep(options_.interval)) {
    Check().IgnoreError();  // said on stderr
  }
}

}  // namespace statestream
