// SPDX-License-Identifier: Apache-2.0
#include "services/tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/channel_arguments.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace statestream {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;

Bio MemoryBio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in `pem`, in order; empty if none parses.
std::vector<Cert> ReadCertificates(const std::string& pem) {
  std::vector<Cert> certs;
  Bio bio = MemoryBio(pem);
  while (bio != nullptr) {
    Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    certs.push_back(std::move(cert));
  }
  ERR_clear_error();  // the end of the input reads as an error
  return certs;
}

absl::Status Invalid(absl::string_view what, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
}

absl::Status CheckCertificates(const std::string& pem, absl::string_view what) {
  if (ReadCertificates(pem).empty()) {
    return Invalid(what, "no PEM certificate (BEGIN CERTIFICATE) in it");
  }
  return absl::OkStatus();
}

// The key parses and belongs to the first certificate of `chain_pem`.
absl::Status CheckKeyPair(const std::string& chain_pem,
                          const std::string& key_pem,
                          absl::string_view cert_what,
                          absl::string_view key_what) {
  std::vector<Cert> chain = ReadCertificates(chain_pem);
  if (chain.empty()) {
    return Invalid(cert_what, "no PEM certificate (BEGIN CERTIFICATE) in it");
  }
  Bio bio = MemoryBio(key_pem);
  Key key(bio == nullptr
              ? nullptr
              : PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return Invalid(key_what,
                   "no unencrypted PEM private key (BEGIN PRIVATE KEY) in it");
  }
  if (X509_check_private_key(chain[0].get(), key.get()) != 1) {
    ERR_clear_error();
    return Invalid(key_what, absl::StrCat("does not match the ", cert_what));
  }
  return absl::OkStatus();
}

// gRPC's watcher takes whole seconds (at least 1); the flag is at most a
// day (TlsReloadIntervalFromFlag).
unsigned int RereadSeconds(absl::Duration interval) {
  return static_cast<unsigned int>(std::clamp<int64_t>(
      absl::ToInt64Seconds(interval), 1, int64_t{24} * 3600));
}

}  // namespace

absl::Status ValidateServerTls(const ServerTlsOptions& options) {
  if (options.cert_chain_pem.empty() != options.private_key_pem.empty()) {
    return absl::InvalidArgumentError(
        "a TLS certificate and its key go together (give both or neither)");
  }
  if (!options.enabled()) {
    if (!options.client_ca_pem.empty()) {
      return absl::InvalidArgumentError(
          "client certificate verification needs a server certificate and "
          "key");
    }
    return absl::OkStatus();
  }
  absl::Status pair =
      CheckKeyPair(options.cert_chain_pem, options.private_key_pem,
                   "certificate", "private key");
  if (!pair.ok()) return pair;
  if (!options.client_ca_pem.empty()) {
    return CheckCertificates(options.client_ca_pem, "client CA");
  }
  return absl::OkStatus();
}

absl::Status ValidateClientTls(const ClientTlsOptions& options) {
  if (!options.enabled) {
    if (!options.root_certs_pem.empty() || !options.cert_chain_pem.empty() ||
        !options.private_key_pem.empty() || !options.server_name.empty()) {
      return absl::InvalidArgumentError("TLS options given without TLS");
    }
    return absl::OkStatus();
  }
  if (!options.root_certs_pem.empty()) {
    absl::Status roots = CheckCertificates(options.root_certs_pem, "CA");
    if (!roots.ok()) return roots;
  }
  if (options.cert_chain_pem.empty() != options.private_key_pem.empty()) {
    return absl::InvalidArgumentError(
        "a TLS client certificate and its key go together (give both or "
        "neither)");
  }
  if (options.cert_chain_pem.empty()) return absl::OkStatus();
  return CheckKeyPair(options.cert_chain_pem, options.private_key_pem,
                      "client certificate", "client key");
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const ServerTlsOptions& options) {
  if (!options.enabled()) return grpc::InsecureServerCredentials();
  const grpc_ssl_client_certificate_request_type request =
      options.client_ca_pem.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  if (options.reload_interval > absl::ZeroDuration() &&
      !options.cert_chain_path.empty() && !options.private_key_path.empty() &&
      options.client_ca_pem.empty() == options.client_ca_path.empty()) {
    // gRPC's watcher rereads the files (key and certificate together, and
    // retries a read that raced a rewrite) on its own thread.
    auto files =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            options.private_key_path, options.cert_chain_path,
            options.client_ca_path, RereadSeconds(options.reload_interval));
    grpc::experimental::TlsServerCredentialsOptions tls(files);
    tls.watch_identity_key_cert_pairs();
    if (!options.client_ca_path.empty()) tls.watch_root_certs();
    tls.set_cert_request_type(request);
    // Null only for options gRPC refuses, which these are not meant to
    // be: then the files as read at start.
    if (auto credentials = grpc::experimental::TlsServerCredentials(tls)) {
      return credentials;
    }
    std::cerr << "statestream: gRPC refused the TLS options of the "
                 "certificate watcher; serving the files as read at start\n";
  }
  grpc::SslServerCredentialsOptions ssl(request);
  ssl.pem_root_certs = options.client_ca_pem;
  ssl.pem_key_cert_pairs.push_back(
      {options.private_key_pem, options.cert_chain_pem});
  return grpc::SslServerCredentials(ssl);
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(
    const ClientTlsOptions& options) {
  if (!options.enabled) return grpc::InsecureChannelCredentials();
  const bool identity = !options.cert_chain_path.empty() &&
                        !options.private_key_path.empty() &&
                        !options.cert_chain_pem.empty();
  const bool roots =
      !options.root_certs_path.empty() && !options.root_certs_pem.empty();
  if (options.reload_interval > absl::ZeroDuration() && (identity || roots)) {
    auto files =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            identity ? options.private_key_path : "",
            identity ? options.cert_chain_path : "",
            roots ? options.root_certs_path : "",
            RereadSeconds(options.reload_interval));
    grpc::experimental::TlsChannelCredentialsOptions tls;
    tls.set_certificate_provider(files);
    if (identity) tls.watch_identity_key_cert_pairs();
    if (roots) tls.watch_root_certs();  // else the system's roots
    // The certificate must name the host (or the override), as with the
    // SSL credentials below.
    tls.set_verify_server_certs(true);
    tls.set_certificate_verifier(
        std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
    if (auto credentials = grpc::experimental::TlsCredentials(tls)) {
      return credentials;
    }
    std::cerr << "statestream: gRPC refused the TLS options of the "
                 "certificate watcher; using the files as read at start\n";
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options.root_certs_pem;
  ssl.pem_cert_chain = options.cert_chain_pem;
  ssl.pem_private_key = options.private_key_pem;
  return grpc::SslCredentials(ssl);
}

void SetServerName(const ClientTlsOptions& options,
                   grpc::ChannelArguments* args) {
  if (options.enabled && !options.server_name.empty()) {
    args->SetSslTargetNameOverride(options.server_name);
  }
}

}  // namespace statestream
