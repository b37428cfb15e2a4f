// SPDX-License-Identifier: Apache-2.0
// The gateway's security flags towards workers: TLS, mutual with a client
// certificate (--worker-tls-ca, --worker-tls-cert, ...). Callers' API keys
// and tenant limits: cli/tenant_flags.h.
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

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_GATEWAY_SECURITY_FLAGS_H_
