// SPDX-License-Identifier: Apache-2.0
// TLS credentials for the servers (serve, gateway, worker) and for the
// gateway's channels to its workers, built in one place. Certificates and
// keys are PEM *contents* (the command line reads the files); empty
// options mean plaintext.
#ifndef STATESTREAM_SERVICES_TLS_H_
#define STATESTREAM_SERVICES_TLS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace grpc {
class ChannelArguments;
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace statestream {

struct ServerTlsOptions {
  // The server's certificate chain (leaf first) and its private key. Both
  // empty: plaintext.
  std::string cert_chain_pem;
  std::string private_key_pem;
  // Root certificates that client certificates must chain to. Non-empty:
  // mutual TLS, every client must present a valid certificate (the
  // handshake fails otherwise, so no call is ever served). Needs a
  // certificate.
  std::string client_ca_pem;
  // The files the three were read from, reread every reload_interval when
  // it is positive and the paths are set: new handshakes then use what the
  // files hold (a certificate renewed on disk, e.g. a Kubernetes Secret
  // updated by cert-manager, is served without a restart; connections
  // already open keep theirs). The certificate and key must change together
  // (a Secret volume swaps its files at once); see docs/gateway.md.
  std::string cert_chain_path;
  std::string private_key_path;
  std::string client_ca_path;
  absl::Duration reload_interval = absl::ZeroDuration();

  bool enabled() const { return !cert_chain_pem.empty(); }
};

struct ClientTlsOptions {
  // Off: plaintext (the other fields must be empty).
  bool enabled = false;
  // Root certificates the server's certificate must chain to; empty: the
  // system's roots.
  std::string root_certs_pem;
  // Client certificate chain and key for mutual TLS; both or neither.
  std::string cert_chain_pem;
  std::string private_key_pem;
  // Name checked against the server certificate instead of the host part of
  // the address; empty: the host.
  std::string server_name;
  // The files the PEM fields were read from, reread every reload_interval
  // when it is positive (as ServerTlsOptions): new connections use what the
  // files hold, so a renewed client certificate or CA bundle is used without
  // a restart.
  std::string root_certs_path;
  std::string cert_chain_path;
  std::string private_key_path;
  absl::Duration reload_interval = absl::ZeroDuration();
};

// INVALID_ARGUMENT naming what is wrong (no certificate in the PEM, a key
// that does not parse or does not match the certificate, a client CA
// without a server certificate). Never fails on empty (plaintext) options.
absl::Status ValidateServerTls(const ServerTlsOptions& options);
absl::Status ValidateClientTls(const ClientTlsOptions& options);

// Credentials for ServerBuilder::AddListeningPort: insecure when
// !options.enabled(). Call ValidateServerTls first: gRPC itself reports bad
// PEM only by failing to listen.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const ServerTlsOptions& options);

// Credentials for channels (insecure when !options.enabled); one object
// serves every channel (with files to reread, one watcher thread for all).
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(
    const ClientTlsOptions& options);
// Sets the server name override (if any) on a channel's `args`.
void SetServerName(const ClientTlsOptions& options,
                   grpc::ChannelArguments* args);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_TLS_H_
