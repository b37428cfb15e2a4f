// SPDX-License-Identifier: Apache-2.0
// Keeps a running server's API keys (and the per-tenant limits the keys
// file sets) in step with the file: a key added or revoked on disk (a
// Kubernetes Secret update) takes effect without a restart.
#ifndef STATESTREAM_SERVICES_API_KEYS_RELOADER_H_
#define STATESTREAM_SERVICES_API_KEYS_RELOADER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/tenants.h"

namespace statestream {

struct ApiKeysReloaderOptions {
  std::string path;
  // How often the file is reread; 0: only when Check() is called.
  absl::Duration interval = absl::Minutes(1);
  // Sha256Of the file's bytes the keys in use were made from.
  std::string loaded_digest;
  // A changed file is applied only once a second read this much later
  // finds the same bytes: a file saved in place may be caught half-written,
  // and a line cut short can name another valid tenant or limit.
  absl::Duration settle = absl::Seconds(1);
  // What this process needs of any keys file (a gateway without Redis
  // cannot count sessions); an error refuses the file. May be empty.
  std::function<absl::Status(const TenantAuth&)> validate;
  // Names the process on stderr ("gateway").
  std::string who = "statestream";
};

// Rereads an API keys file every `interval`. When its bytes have changed,
// hold still and parse (TenantAuth::FromText), every copy of `auth` holds
// the new keys, and `limits` (may be null) the new per-tenant overrides.
// A file that cannot be read, parsed or validated changes nothing (the keys
// in use stay), and says why on stderr once per version. Only digests of
// the file are kept, never its bytes (they hold the tokens). Thread-safe.
class ApiKeysReloader {
 public:
  // `auth` must not be in development mode.
  ApiKeysReloader(ApiKeysReloaderOptions options, TenantAuth auth,
                  std::shared_ptr<TenantLimits> limits);
  ~ApiKeysReloader();  // stops rereading
  ApiKeysReloader(const ApiKeysReloader&) = delete;
  ApiKeysReloader& operator=(const ApiKeysReloader&) = delete;

  // One reread now: OK if the file is as last applied or its keys are now
  // in use; else the keys in use stay and it says why: NOT_FOUND
  // (unreadable), UNAVAILABLE (it changed again within `settle`: read at
  // the next pass), or the file's error (INVALID_ARGUMENT naming the
  // line, or `validate`'s).
  absl::Status Check();

 private:
  void Loop();
  // Waits `d` unless stopped first; false if stopped.
  bool Sleep(absl::Duration d);

  const ApiKeysReloaderOptions options_;
  TenantAuth auth_;
  const std::shared_ptr<TenantLimits> limits_;
  absl::Mutex check_mu_;  // one Check at a time
  // The digest of the version last settled on (applied or refused), and
  // the outcome; "" after a failed read.
  std::string last_digest_ ABSL_GUARDED_BY(check_mu_);
  absl::Status last_status_ ABSL_GUARDED_BY(check_mu_);
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_API_KEYS_RELOADER_H_
