// SPDX-License-Identifier: Apache-2.0
#include "cli/tls_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (leaf first) this process presents: a "
          "server role serves TLS with it (empty: plaintext); a client verb "
          "sends it as its client certificate (mutual TLS, with --tls). "
          "Needs --tls-key.");
ABSL_FLAG(std::string, tls_key, "",
          "PEM private key (unencrypted) of --tls-cert.");

namespace statestream::cli {

const char kTlsFlagsFile[] = __FILE__;

}  // namespace statestream::cli
