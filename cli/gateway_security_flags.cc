// SPDX-License-Identifier: Apache-2.0
#include "cli/gateway_security_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/server_flags.h"
#include "cli/tls_flags.h"
#include "common/status.h"
#include "services/tenants.h"

ABSL_FLAG(bool, worker_tls, false,
          "Dial workers with TLS (implied by the other --worker-tls-* "
          "flags); default plaintext.");
ABSL_FLAG(std::string, worker_tls_ca, "",
          "PEM CA certificates the workers' certificates must chain to "
          "(default: the system's roots).");
ABSL_FLAG(std::string, worker_tls_cert, "",
          "PEM client certificate the gateway presents to workers (mutual "
          "TLS: for workers started with --tls-client-ca); needs "
          "--worker-tls-key.");
ABSL_FLAG(std::string, worker_tls_key, "",
          "PEM private key (unencrypted) of --worker-tls-cert.");
ABSL_FLAG(std::string, worker_tls_server_name, "",
          "Name expected in every worker's certificate instead of the host "
          "of its registered address (e.g. one certificate for all "
          "workers).");

namespace statestream::cli {

const char kGatewaySecurityFlagsFile[] = __FILE__;

absl::StatusOr<ClientTlsOptions> WorkerTlsFromFlags() {
  ClientTlsOptions tls;
  tls.server_name = absl::GetFlag(FLAGS_worker_tls_server_name);
  SS_RETURN_IF_ERROR(ReadPemFiles({
      {"--worker-tls-ca", absl::GetFlag(FLAGS_worker_tls_ca),
       &tls.root_certs_pem, &tls.root_certs_path},
      {"--worker-tls-cert", absl::GetFlag(FLAGS_worker_tls_cert),
       &tls.cert_chain_pem, &tls.cert_chain_path},
      {"--worker-tls-key", absl::GetFlag(FLAGS_worker_tls_key),
       &tls.private_key_pem, &tls.private_key_path},
  }));
  // Any of them turns TLS on.
  tls.enabled = absl::GetFlag(FLAGS_worker_tls) || !tls.server_name.empty() ||
                !tls.root_certs_path.empty() || !tls.cert_chain_path.empty() ||
                !tls.private_key_path.empty();
  if (absl::Status valid = ValidateClientTls(tls); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--worker-tls-*: ", valid.message()));
  }
  SS_ASSIGN_OR_RETURN(tls.reload_interval, TlsReloadIntervalFromFlag());
  return tls;
}

}  // namespace statestream::cli
