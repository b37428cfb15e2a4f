// SPDX-License-Identifier: Apache-2.0
#include "cli/client_flags.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "cli/cli_util.h"
#include "cli/tls_flags.h"
#include "common/status.h"
#include "services/tls.h"

ABSL_FLAG(std::string, target, "127.0.0.1:7700",
          "Server addresses HOST:PORT, comma-separated (gateways or "
          "`statestream serve`); calls fail over to the next one.");
ABSL_FLAG(std::string, api_key, "",
          "API key, sent as `authorization: Bearer KEY` (in the clear "
          "without --tls). Empty: the STATESTREAM_API_KEY environment "
          "variable, if set (which, unlike a flag, other users cannot read "
          "in the process list).");
ABSL_FLAG(std::string, tenant, "",
          "Tenant for development-mode servers (x-statestream-tenant).");
ABSL_FLAG(bool, json, false,
          "Print JSON (one object per line) for scripts, in the proto3 JSON "
          "mapping: bytes fields (generate's and chat's text_utf8) are "
          "base64, 64-bit integers are strings; every field is printed, "
          "zeros and empty ones too.");
ABSL_FLAG(bool, tls, false, "Connect with TLS (default: plaintext).");
ABSL_FLAG(std::string, tls_ca, "",
          "TLS: PEM file of root certificates (default: the system's). "
          "Needs --tls.");
ABSL_FLAG(std::string, tls_server_name, "",
          "TLS: expect this name in the server certificate. Needs --tls.");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(60),
          "Deadline of each unary call attempt; a session export or import "
          "attempt ends once it goes this long without moving a 1 MiB "
          "chunk.");
ABSL_FLAG(int, max_attempts, 10,
          "Attempts per operation before giving up, counted from the last "
          "progress (an Append or Generate that moved on starts again). With "
          "--max-backoff they bound how long a server may be down or "
          "restarting: 10 attempts at up to 2 s wait about 9 s.");
ABSL_FLAG(absl::Duration, max_backoff, absl::Seconds(2),
          "Longest wait between two attempts (the waits double from 50 ms).");
ABSL_FLAG(std::string, session, "", "The session id.");

namespace statestream::cli {

const char kClientFlagsFile[] = __FILE__;

namespace {

// --tls, --tls-ca, --tls-cert, --tls-key and --tls-server-name into
// `options`, checked before anything connects (gRPC would take an empty
// root PEM for "the system's roots", and drop a certificate without its
// key): every file given reads and holds PEM that parses, the certificate
// and its key go together, and the others need --tls. Usage errors.
absl::Status TlsFromFlags(client::ClientOptions* options) {
  options->tls = absl::GetFlag(FLAGS_tls);
  options->tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  struct File {
    const char* flag;
    std::string path;
    std::string* pem;
  };
  const File files[] = {
      {"--tls-ca", absl::GetFlag(FLAGS_tls_ca), &options->tls_root_certs_pem},
      {"--tls-cert", absl::GetFlag(FLAGS_tls_cert),
       &options->tls_cert_chain_pem},
      {"--tls-key", absl::GetFlag(FLAGS_tls_key),
       &options->tls_private_key_pem},
  };
  if (!options->tls) {
    std::vector<std::string> given;
    for (const File& f : files) {
      if (!f.path.empty()) given.push_back(f.flag);
    }
    if (!options->tls_server_name.empty()) {
      given.push_back("--tls-server-name");
    }
    if (given.empty()) return absl::OkStatus();
    return UsageError(absl::StrCat(absl::StrJoin(given, ", "),
                                   given.size() == 1 ? " needs" : " need",
                                   " --tls"));
  }
  const File& cert = files[1];
  const File& key = files[2];
  if (cert.path.empty() != key.path.empty()) {
    return UsageError(cert.path.empty()
                          ? "--tls-key needs --tls-cert (the client "
                            "certificate it belongs to)"
                          : "--tls-cert needs --tls-key (its private key)");
  }
  for (const File& f : files) {
    if (f.path.empty()) continue;
    absl::StatusOr<std::string> pem = ReadFile(f.path);
    if (!pem.ok()) {
      return UsageError(absl::StrCat(f.flag, ": ", pem.status().message()));
    }
    if (pem->empty()) {
      return UsageError(absl::StrCat(f.flag, ": ", f.path, " is empty"));
    }
    *f.pem = *std::move(pem);
  }
  ClientTlsOptions check;
  check.enabled = true;
  check.root_certs_pem = options->tls_root_certs_pem;
  check.cert_chain_pem = options->tls_cert_chain_pem;
  check.private_key_pem = options->tls_private_key_pem;
  check.server_name = options->tls_server_name;
  if (absl::Status valid = ValidateClientTls(check); !valid.ok()) {
    return UsageError(
        absl::StrCat("--tls-ca/--tls-cert/--tls-key: ", valid.message()));
  }
  return absl::OkStatus();
}

// A HOST:PORT target's port is a number in 1-65535: gRPC dials "99999" as
// 34463 (mod 65536), "abc" as 0 and "-5" as 65531, so a typo reached
// another port, or retried one that cannot answer until --timeout. A gRPC
// target URI (a scheme first: dns:, unix:, ipv4:, ...) is gRPC's to parse.
absl::Status CheckTargetPort(absl::string_view target) {
  absl::string_view host_port = target;
  // dns:HOST:PORT and dns://AUTHORITY/HOST:PORT name a port as well, and
  // without one gRPC dials 443, as for a host alone.
  const bool dns = absl::ConsumePrefix(&host_port, "dns:");
  if (dns && absl::ConsumePrefix(&host_port, "//")) {
    const size_t slash = host_port.find('/');
    host_port = slash == absl::string_view::npos ? absl::string_view()
                                                 : host_port.substr(slash + 1);
  }
  if (dns && host_port.rfind(':') == absl::string_view::npos) {
    return UsageError(absl::StrCat("--target ", target,
                                   ": want dns:HOST:PORT (no port given)"));
  }
  if (!dns) {
    const absl::string_view scheme = target.substr(0, target.find(':'));
    for (absl::string_view uri :
         {"unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds"}) {
      if (scheme == uri) return absl::OkStatus();
    }
    if (absl::StrContains(target, "://")) return absl::OkStatus();
  }
  const size_t colon = host_port.rfind(':');
  if (colon == absl::string_view::npos) return absl::OkStatus();  // gRPC's
  // gRPC reads a host of two colons or more, unbracketed, as an IPv6
  // address alone, and dials it at 443.
  const absl::string_view host = host_port.substr(0, colon);
  if (absl::StrContains(host, ':') &&
      !(absl::StartsWith(host, "[") && absl::EndsWith(host, "]"))) {
    return UsageError(absl::StrCat(
        "--target ", target, ": write an IPv6 address as [ADDRESS]:PORT"));
  }
  const absl::string_view port = host_port.substr(colon + 1);
  int number = 0;
  if (port.size() > 5 ||
      !std::all_of(port.begin(), port.end(),
                   [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(port, &number) || number < 1 || number > 65535) {
    return UsageError(absl::StrCat("--target ", target,
                                   ": the port must be a number in 1-65535"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<client::Client>> ClientFromFlags() {
  client::ClientOptions options;
  for (absl::string_view t :
       absl::StrSplit(absl::GetFlag(FLAGS_target), ',', absl::SkipEmpty())) {
    // HOST:PORT, or a gRPC target URI (dns:///h:p, unix:/path, ...): a
    // host alone would go to gRPC's default port, 443.
    if (!absl::StrContains(t, ':') || absl::EndsWith(t, ":")) {
      return UsageError(
          absl::StrCat("--target ", t, ": want HOST:PORT (no port given)"));
    }
    SS_RETURN_IF_ERROR(CheckTargetPort(t));
    options.targets.emplace_back(t);
  }
  if (options.targets.empty()) return UsageError("--target is empty");
  options.api_key = absl::GetFlag(FLAGS_api_key);
  const char* api_key_from = "--api-key";
  if (options.api_key.empty()) {
    if (const char* env = std::getenv("STATESTREAM_API_KEY")) {
      options.api_key = env;
      api_key_from = "STATESTREAM_API_KEY";
    }
  }
  options.tenant = absl::GetFlag(FLAGS_tenant);
  SS_RETURN_IF_ERROR(CheckHeaderValue(api_key_from, options.api_key));
  SS_RETURN_IF_ERROR(CheckHeaderValue("--tenant", options.tenant));
  options.timeout = absl::GetFlag(FLAGS_timeout);
  options.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.max_backoff = absl::GetFlag(FLAGS_max_backoff);
  if (options.max_attempts < 1) {
    return UsageError("--max-attempts must be at least 1");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return UsageError("--timeout must be positive");
  }
  if (options.max_backoff < absl::ZeroDuration()) {
    return UsageError("--max-backoff must not be negative");
  }
  SS_RETURN_IF_ERROR(TlsFromFlags(&options));
  return client::Client::Create(std::move(options));
}

bool JsonOutputFlag() { return absl::GetFlag(FLAGS_json); }

bool SessionFlagIsEmpty() { return absl::GetFlag(FLAGS_session).empty(); }

absl::StatusOr<std::string> SessionFlagValue() {
  std::string session = absl::GetFlag(FLAGS_session);
  if (session.empty()) {
    return UsageError(
        "--session ID is required (create one with `statestream session "
        "create`)");
  }
  SS_RETURN_IF_ERROR(CheckUtf8("--session", session));
  return session;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  // Every field, zeros too: `jq .position` of a new session is 0, not null.
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

}  // namespace statestream::cli
