// SPDX-License-Identifier: Apache-2.0
#include "cli/tenant_flags.h"

#include <iostream>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

ABSL_FLAG(std::string, api_keys, "",
          "File of \"TOKEN TENANT [max_sessions=N] [max_streams=N]\" lines "
          "(TOKEN: 16-256 printable ASCII bytes, no spaces; TENANT: 1-64 "
          "bytes of [a-z0-9_-]; '#' starts a comment line). "
          "Callers then authenticate with `authorization: Bearer TOKEN`. "
          "Without it the server runs UNAUTHENTICATED (development mode: "
          "tenant from the x-statestream-tenant header).");
ABSL_FLAG(int32_t, tenant_max_sessions, 0,
          "Live sessions each tenant may hold (counted in the state store); "
          "creating one more fails with RESOURCE_EXHAUSTED/TENANT_LIMIT. 0: "
          "unlimited. --api-keys may set it per tenant. A gateway needs "
          "--redis for it.");
ABSL_FLAG(int32_t, tenant_max_streams, 0,
          "Append, Generate, ImportState, ExportState and Score calls each "
          "tenant may have open at once on this server; one more fails with "
          "RESOURCE_EXHAUSTED/"
          "TENANT_LIMIT. 0: unlimited. --api-keys may set it per tenant.");

namespace statestream::cli {

const char kTenantFlagsFile[] = __FILE__;

absl::StatusOr<TenantSetup> TenantSetupFromFlags(const char* command) {
  TenantSetup setup;
  // Checked whether or not a file is given: a bad value is a mistake.
  absl::StatusOr<absl::Duration> reload = SecretsReloadIntervalFromFlag();
  if (!reload.ok()) return reload.status();
  const std::string keys = absl::GetFlag(FLAGS_api_keys);
  if (!keys.empty()) {
    absl::StatusOr<std::string> text = ReadSecretsFileAtStart(
        keys, "--api-keys", command, *reload, &setup.keys);
    if (!text.ok()) return text.status();
    auto auth = TenantAuth::FromText(keys, *text);
    if (!auth.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--api-keys: ", auth.status().message()));
    }
    if (auth->holds_placeholder()) {
      std::cerr << "statestream " << command
                << ": WARNING: --api-keys holds a placeholder key of the "
                   "example manifests: anyone who has read them can act as "
                   "its tenant; replace it\n";
    }
    setup.auth = *std::move(auth);
  } else {
    std::cerr << "statestream " << command
              << ": WARNING: no --api-keys: running UNAUTHENTICATED; any "
                 "caller picks its tenant with the x-statestream-tenant "
                 "header\n";
  }
  setup.limits.defaults.max_sessions = absl::GetFlag(FLAGS_tenant_max_sessions);
  setup.limits.defaults.max_streams = absl::GetFlag(FLAGS_tenant_max_streams);
  if (setup.limits.defaults.max_sessions < 0 ||
      setup.limits.defaults.max_streams < 0) {
    return absl::InvalidArgumentError(
        "--tenant-max-sessions/--tenant-max-streams must be >= 0");
  }
  setup.limits.tenants = setup.auth.limits();
  return setup;
}

std::shared_ptr<SecretFileReloader> StartApiKeysReloader(
    const TenantSetup& setup, std::shared_ptr<TenantLimits> limits,
    const char* command,
    std::function<absl::Status(const TenantAuth&)> validate) {
  return StartSecretsReloader(
      setup.keys, command,
      ApplyApiKeys(setup.keys.path, setup.auth, std::move(limits),
                   std::move(validate)));
}

}  // namespace statestream::cli
