// SPDX-License-Identifier: Apache-2.0
#include "cli/gateway_security_flags.h"

#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/server_flags.h"
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
  const std::pair<const char*, std::string*> fields[] = {
      {"--worker-tls-ca", &tls.root_certs_pem},
      {"--worker-tls-cert", &tls.cert_chain_pem},
      {"--worker-tls-key", &tls.private_key_pem},
  };
  const std::string paths[] = {absl::GetFlag(FLAGS_worker_tls_ca),
                               absl::GetFlag(FLAGS_worker_tls_cert),
                               absl::GetFlag(FLAGS_worker_tls_key)};
  tls.enabled = absl::GetFlag(FLAGS_worker_tls) || !tls.server_name.empty();
  for (size_t i = 0; i < 3; ++i) {
    if (paths[i].empty()) continue;
    tls.enabled = true;
    absl::StatusOr<std::string> pem = ReadFile(paths[i]);
    if (!pem.ok() || pem->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(fields[i].first, ": cannot read ", paths[i],
                       pem.ok() ? " (empty)" : ""));
    }
    *fields[i].second = *std::move(pem);
  }
  if (absl::Status valid = ValidateClientTls(tls); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--worker-tls-*: ", valid.message()));
  }
  absl::StatusOr<absl::Duration> reload = TlsReloadIntervalFromFlag();
  if (!reload.ok()) return reload.status();
  tls.root_certs_path = paths[0];
  tls.cert_chain_path = paths[1];
  tls.private_key_path = paths[2];
  tls.reload_interval = *reload;
  return tls;
}

}  // namespace statestream::cli
