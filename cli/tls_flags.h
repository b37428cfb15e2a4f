// SPDX-License-Identifier: Apache-2.0
// --tls-cert and --tls-key, shared by the server roles (the server's own
// certificate) and the client verbs (the client certificate for mutual
// TLS): the certificate this process presents. Declared here, read by
// cli/server_flags.cc and cli/client_flags.cc.
#ifndef STATESTREAM_CLI_TLS_FLAGS_H_
#define STATESTREAM_CLI_TLS_FLAGS_H_

#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(std::string, tls_key);

namespace statestream::cli {

// __FILE__ of cli/tls_flags.cc, for Command::flag_files (every command
// that lists kServerFlagsFile or kClientFlagsFile lists it too).
extern const char kTlsFlagsFile[];

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_TLS_FLAGS_H_
