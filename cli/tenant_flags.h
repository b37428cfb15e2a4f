// SPDX-License-Identifier: Apache-2.0
// Who may call a server that faces clients, and how much each tenant may
// hold: --api-keys, --tenant-max-sessions, --tenant-max-streams. Used by
// `statestream gateway` and by `statestream serve` (which has no gateway in
// front of it). And the secret between gateways and workers,
// --internal-token-file (kInternalTokenFlagFile: gateway and worker).
#ifndef STATESTREAM_CLI_TENANT_FLAGS_H_
#define STATESTREAM_CLI_TENANT_FLAGS_H_

#include "absl/status/statusor.h"
#include "services/tenants.h"

namespace statestream::cli {

// __FILE__ of cli/tenant_flags.cc, for Command::flag_files.
extern const char kTenantFlagsFile[];

struct TenantSetup {
  TenantAuth auth;  // development mode without --api-keys
  // The flags' defaults with the keys file's per-tenant overrides.
  TenantLimitsOptions limits;
};

// Reads --api-keys (and warns on stderr, as `command`, when it is absent:
// every caller then picks its tenant) and the limit flags.
// INVALID_ARGUMENT naming the flag.
absl::StatusOr<TenantSetup> TenantSetupFromFlags(const char* command);

// __FILE__ of cli/internal_token_flag.cc, for Command::flag_files.
extern const char kInternalTokenFlagFile[];
// --internal-token-file's token (none when unset). INVALID_ARGUMENT naming
// the flag (never echoing the token).
absl::StatusOr<InternalToken> InternalTokenFromFlag();

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_TENANT_FLAGS_H_
