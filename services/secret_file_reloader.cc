// SPDX-License-Identifier: Apache-2.0
#include "services/secret_file_reloader.h"

#include <iostream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/files.h"
#include "common/histogram.h"

namespace statestream {

SecretFileReloader::SecretFileReloader(SecretFileOptions options,
                                       SecretFileApply apply)
    : options_(std::move(options)),
      apply_(std::move(apply)),
      stats_(std::make_shared<StatsCell>()) {
  {
    absl::MutexLock lock(&check_mu_);
    last_digest_ = options_.loaded_digest;
    applied_digest_ = options_.loaded_digest;
  }
  stats_->flag = std::string(absl::StripPrefix(options_.flag, "--"));
  {
    absl::MutexLock lock(&stats_->mu);
    stats_->stats.last_applied = absl::Now();
  }
  if (options_.interval > absl::ZeroDuration()) {
    thread_ = std::thread([this] { Loop(); });
  }
}

SecretFileReloader::~SecretFileReloader() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  wake_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::Status SecretFileReloader::Check() {
  absl::MutexLock lock(&check_mu_);
  const std::string& path = options_.path;
  auto say = [this](absl::string_view what) {
    std::cerr << "statestream " << options_.who << ": " << options_.flag << ": "
              << what << "\n";
  };
  auto read = [this, &path] {
    return options_.read ? options_.read(path)
                         : ReadRegularFile(path, kMaxSecretsFileBytes);
  };
  absl::StatusOr<std::string> text = read();
  if (!text.ok()) {
    // Said once: a file being replaced may be missing for a moment, and a
    // deleted one stays so.
    absl::Status unreadable = absl::NotFoundError(
        absl::StrCat(text.status().message(), "; what is in use stays"));
    if (last_status_ != unreadable) {
      say(unreadable.message());
      Count(false);
    }
    last_digest_.clear();
    last_status_ = unreadable;
    return unreadable;
  }
  const std::string digest = Sha256Of(*text);
  if (!digest.empty() && digest == last_digest_) return last_status_;
  if (!digest.empty() && digest == applied_digest_) {
    // Back to the version in use (after an unreadable spell, or a refused
    // version undone): nothing to apply.
    last_digest_ = digest;
    last_status_ = absl::OkStatus();
    SetCurrent();
    return last_status_;
  }
  if (options_.settle > absl::ZeroDuration()) {
    if (!Sleep(options_.settle)) return absl::CancelledError("stopping");
    absl::StatusOr<std::string> again = read();
    if (!again.ok() || Sha256Of(*again) != digest) {
      return absl::UnavailableError(absl::StrCat(
          path, " changed while being read; it is read again next time"));
    }
  }
  last_digest_ = digest;
  absl::StatusOr<std::string> applied = apply_(*text);
  if (!applied.ok()) {
    last_status_ = absl::Status(
        applied.status().code(),
        absl::StrCat(applied.status().message(), "; what is in use stays"));
    say(last_status_.message());
    Count(false);
    return last_status_;
  }
  say(absl::StrCat(path, " reread: ", *applied));
  applied_digest_ = digest;
  Count(true);
  last_status_ = absl::OkStatus();
  return last_status_;
}

void SecretFileReloader::Count(bool applied) {
  absl::MutexLock lock(&stats_->mu);
  Stats& stats = stats_->stats;
  stats.current = applied;
  if (applied) {
    ++stats.applied;
    stats.last_applied = absl::Now();
  } else {
    ++stats.refused;
  }
}

void SecretFileReloader::SetCurrent() {
  absl::MutexLock lock(&stats_->mu);
  stats_->stats.current = true;
}

void SecretFileMetrics::Add(
    const std::shared_ptr<SecretFileReloader>& reloader) {
  if (reloader == nullptr) return;
  absl::MutexLock lock(&mu_);
  files_.push_back(reloader->stats_);
}

std::string SecretFileMetrics::Render() const {
  std::vector<std::pair<std::string, SecretFileReloader::Stats>> files;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& weak : files_) {
      if (std::shared_ptr<const SecretFileReloader::StatsCell> file =
              weak.lock()) {
        absl::MutexLock file_lock(&file->mu);
        files.emplace_back(file->flag, file->stats);
      }
    }
  }
  std::string out;
  if (files.empty()) return out;
  AppendMetricHeader(
      &out, "statestream_secrets_file_current", "gauge",
      "1 while the secrets file's current version is in use; 0 after a "
      "reread found it unreadable or refused it (the version before stays "
      "in use), by flag.");
  for (const auto& [flag, stats] : files) {
    absl::StrAppend(&out, "statestream_secrets_file_current{flag=\"", flag,
                    "\"} ", stats.current ? 1 : 0, "\n");
  }
  AppendMetricHeader(
      &out, "statestream_secrets_reloads_total", "counter",
      "Changed versions of a secrets file found by its rereads, by flag and "
      "outcome (applied; refused: malformed, not servable, or unreadable).");
  for (const auto& [flag, stats] : files) {
    absl::StrAppend(&out, "statestream_secrets_reloads_total{flag=\"", flag,
                    "\",result=\"applied\"} ", stats.applied, "\n",
                    "statestream_secrets_reloads_total{flag=\"", flag,
                    "\",result=\"refused\"} ", stats.refused, "\n");
  }
  AppendMetricHeader(
      &out, "statestream_secrets_last_applied_timestamp_seconds", "gauge",
      "When the version in use was read (at start, or by a reread), by "
      "flag.");
  for (const auto& [flag, stats] : files) {
    absl::StrAppend(
        &out, "statestream_secrets_last_applied_timestamp_seconds{flag=\"",
        flag, "\"} ", absl::ToUnixSeconds(stats.last_applied), "\n");
  }
  return out;
}

bool SecretFileReloader::Sleep(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  // On the steady clock: a wall clock stepped back must not hold rereads
  // (a revoked key would keep working for as long).
  return !wake_.Await(
      &mu_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; }, d);
}

void SecretFileReloader::Loop() {
  while (Sleep(options_.interval)) {
    Check().IgnoreError();  // said on stderr
  }
}

SecretFileApply ApplyApiKeys(
    std::string name, TenantAuth auth, std::shared_ptr<TenantLimits> limits,
    std::function<absl::Status(const TenantAuth&)> validate) {
  return [name = std::move(name), auth = std::move(auth),
          limits = std::move(limits), validate = std::move(validate)](
             absl::string_view text) mutable -> absl::StatusOr<std::string> {
    absl::StatusOr<TenantAuth> newer = TenantAuth::FromText(name, text);
    if (!newer.ok()) return newer.status();
    if (validate) {
      if (absl::Status valid = validate(*newer); !valid.ok()) return valid;
    }
    if (absl::Status replaced = auth.Replace(*newer); !replaced.ok()) {
      return replaced;
    }
    if (limits != nullptr) limits->SetOverrides(newer->limits());
    if (newer->holds_placeholder()) {
      std::cerr << "statestream: WARNING: " << name
                << " holds a placeholder key of the example manifests: "
                   "anyone who has read them can act as its tenant; replace "
                   "it\n";
    }
    return absl::StrCat(newer->key_count(), " API keys in use");
  };
}

SecretFileApply ApplyInternalToken(std::string name, InternalToken token) {
  return [name = std::move(name), token = std::move(token)](
             absl::string_view text) mutable -> absl::StatusOr<std::string> {
    absl::StatusOr<InternalToken> newer = InternalToken::FromText(name, text);
    if (!newer.ok()) return newer.status();
    if (absl::Status replaced = token.Replace(*newer); !replaced.ok()) {
      return replaced;
    }
    if (newer->holds_placeholder()) {
      std::cerr << "statestream: WARNING: " << name
                << " holds the placeholder token of the example manifests: "
                   "anyone who has read them can act as a gateway; replace "
                   "it\n";
    }
    return absl::StrCat(newer->count(),
                        newer->count() == 1 ? " token" : " tokens",
                        " in use; gateways send the first");
  };
}

}  // namespace statestream
