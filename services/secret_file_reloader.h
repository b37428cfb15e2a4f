// SPDX-License-Identifier: Apache-2.0
// Keeps a running server's secrets in step with their files: API keys
// (and the per-tenant limits the keys file sets) and the internal token
// added or revoked on disk (a Kubernetes Secret update) take effect
// without a restart. (TLS files are reread by gRPC itself: services/tls.h.)
#ifndef STATESTREAM_SERVICES_SECRET_FILE_RELOADER_H_
#define STATESTREAM_SERVICES_SECRET_FILE_RELOADER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "services/tenants.h"

namespace statestream {

struct SecretFileOptions {
  std::string path;
  // The flag that names it, for stderr ("--api-keys").
  std::string flag;
  // How often the file is reread; 0: only when Check() is called.
  absl::Duration interval = absl::Minutes(1);
  // Sha256Of the file's bytes the secrets in use were made from.
  std::string loaded_digest;
  // A changed file is applied only once a second read this much later
  // finds the same bytes: a file saved in place may be caught half-written,
  // and a line cut short can name another valid tenant or limit.
  absl::Duration settle = absl::Seconds(1);
  // Names the process on stderr ("gateway").
  std::string who = "statestream";
  // Reads the file (tests stand in for a file changing between reads);
  // default: ReadRegularFile, at most kMaxSecretsFileBytes.
  std::function<absl::StatusOr<std::string>(const std::string& path)> read;
};

// Puts a changed file's bytes in use: what is now in use, for stderr
// ("3 API keys in use"), or why the file is refused (nothing changed).
using SecretFileApply =
    std::function<absl::StatusOr<std::string>(absl::string_view text)>;

// Rereads a secrets file every `interval`. When its bytes have changed and
// hold still, `apply` takes them. A file that cannot be read or is refused
// changes nothing (the secrets in use stay) and says why on stderr once per
// version. Only digests of the file are kept, never its bytes. Thread-safe.
class SecretFileReloader {
 public:
  SecretFileReloader(SecretFileOptions options, SecretFileApply apply);
  ~SecretFileReloader();  // stops rereading
  SecretFileReloader(const SecretFileReloader&) = delete;
  SecretFileReloader& operator=(const SecretFileReloader&) = delete;

  // One reread now: OK if the file is as last applied or is now in use;
  // else what is in use stays and it says why: NOT_FOUND (unreadable),
  // UNAVAILABLE (it changed again within `settle`: read at the next pass),
  // or `apply`'s error.
  absl::Status Check();

  // For /metrics (SecretFileMetrics).
  struct Stats {
    uint64_t applied = 0;  // versions put in use since start
    // Versions refused (malformed, not servable) and spells unreadable.
    uint64_t refused = 0;
    // The file's current version is what is in use (false after a reread
    // found it unreadable or refused it, until one is applied).
    bool current = true;
    absl::Time last_applied;  // start, or when the version in use was read
  };

 private:
  friend class SecretFileMetrics;
  // What /metrics reads: shared with SecretFileMetrics, which must not
  // keep the reloader (and what its apply holds) alive.
  struct StatsCell {
    std::string flag;  // without its dashes
    mutable absl::Mutex mu;
    Stats stats ABSL_GUARDED_BY(mu);
  };

  void Loop();
  // Records a version applied (true) or refused; `current`: whether the
  // version in use is the file's current one.
  void Count(bool applied);
  void SetCurrent();
  // Waits `d` unless stopped first; false if stopped.
  bool Sleep(absl::Duration d);

  const SecretFileOptions options_;
  const SecretFileApply apply_;
  absl::Mutex check_mu_;  // one Check at a time
  // The digest of the version last settled on (applied or refused), and
  // the outcome; "" after a failed read.
  std::string last_digest_ ABSL_GUARDED_BY(check_mu_);
  absl::Status last_status_ ABSL_GUARDED_BY(check_mu_);
  // The digest of the version in use: found again after an unreadable
  // spell, it is not applied (nor counted) again.
  std::string applied_digest_ ABSL_GUARDED_BY(check_mu_);
  // Not under check_mu_: a Check may wait.
  const std::shared_ptr<StatsCell> stats_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  SteadyWaiter wake_;  // told when stop_ is set
  std::thread thread_;
};

// The reloaders' state for a process's /metrics:
// statestream_secrets_file_current{flag}, statestream_secrets_reloads_total
// {flag,result} and statestream_secrets_last_applied_timestamp_seconds
// {flag}. Holds only their counters, weakly (a reloader ends with its
// services). Thread-safe.
class SecretFileMetrics {
 public:
  void Add(const std::shared_ptr<SecretFileReloader>& reloader);  // null: none
  std::string Render() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<std::weak_ptr<const SecretFileReloader::StatsCell>> files_
      ABSL_GUARDED_BY(mu_);
};

// An API keys file (TenantAuth::FromText): every copy of `auth` (not in
// development mode) holds its keys, and `limits` (may be null) its
// per-tenant limits. `validate` (may be empty): what the process needs of
// any keys file (a gateway without Redis cannot count sessions).
SecretFileApply ApplyApiKeys(
    std::string name, TenantAuth auth, std::shared_ptr<TenantLimits> limits,
    std::function<absl::Status(const TenantAuth&)> validate = {});

// An internal token file (InternalToken::FromText): every copy of `token`
// (configured) holds its tokens.
SecretFileApply ApplyInternalToken(std::string name, InternalToken token);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_SECRET_FILE_RELOADER_H_
