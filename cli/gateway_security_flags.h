// SPDX-License-Identifier: Apache-2.0
// The gateway's security flags: TLS towards workers, mutual with a client
// certificate (--worker-tls-ca, --worker-tls-cert, ...), and the default
// per-tenant limits (--tenant-max-sessions, --tenant-max-streams).
#ifndef STATESTREAM_CLI_GATEWAY_SECURITY_FLAGS_H_
#define STATESTREAM_CLI_GATEWAY_SECURITY_FLAGS_H_

#include "absl/status/statusor.h"
#include "services/tenants.h"
#include "services/tls.h"

namespace statestream::cli {

// __FILE__ of cli/gateway_security_flags.cc, for Command::flag_files.
extern const char kGatewaySecurityFlagsFile[];

// The files read and checked (ValidateClientTls); TLS is on with
// --worker-tls or any other --worker-tls-* flag. INVALID_ARGUMENT naming
// the flag.
absl::StatusOr<ClientTlsOptions> WorkerTlsFromFlags();
// --tenant-max-sessions, --tenant-max-streams. INVALID_ARGUMENT if negative.
absl::StatusOr<TenantLimit> TenantLimitDefaultsFromFlags();

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_GATEWAY_SECURITY_FLAGS_H_
