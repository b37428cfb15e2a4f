// SPDX-License-Identifier: Apache-2.0
// --tls-cert and --tls-key, shared by the server roles (the server's own
// certificate) and the client verbs (the client certificate for mutual
// TLS): the certificate this process presents. Declared here, read by
// cli/server_flags.cc and cli/client_flags.cc.
#ifndef STATESTREAM_CLI_TLS_FLAGS_H_
#define STATESTREAM_CLI_TLS_FLAGS_H_

#include <initializer_list>
#include <string>

#include "absl/flags/declare.h"
#include "absl/status/status.h"

ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(std::string, tls_key);

namespace statestream::cli {

// __FILE__ of cli/tls_flags.cc, for Command::flag_files (every command
// that lists kServerFlagsFile or kClientFlagsFile lists it too).
extern const char kTlsFlagsFile[];

// A server role's flag naming a PEM file (--tls-cert, --worker-tls-ca, ...).
struct PemFileFlag {
  const char* flag;    // its name, for errors
  std::string path;    // its value; empty: not given
  std::string* pem;    // gets the file's contents
  std::string* where;  // gets `path` (kept to reread the file)
};

// Reads every given file into its `pem` and records its path.
// INVALID_ARGUMENT naming the flag when one cannot be read or is empty.
absl::Status ReadPemFiles(std::initializer_list<PemFileFlag> files);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_TLS_FLAGS_H_
