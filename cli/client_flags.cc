// SPDX-License-Identifier: Apache-2.0
#include "cli/client_flags.h"

#include <google/protobuf/util/json_util.h>

#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "cli/cli_util.h"
#include "cli/tls_flags.h"
#include "common/status.h"

ABSL_FLAG(std::string, target, "127.0.0.1:7700",
          "Server addresses HOST:PORT, comma-separated (gateways or "
          "`statestream serve`); calls fail over to the next one.");
ABSL_FLAG(std::string, api_key, "",
          "API key, sent as `authorization: Bearer KEY`.");
ABSL_FLAG(std::string, tenant, "",
          "Tenant for development-mode servers (x-statestream-tenant).");
ABSL_FLAG(bool, json, false, "Print JSON (one object per line) for scripts.");
ABSL_FLAG(bool, tls, false, "Connect with TLS (default: plaintext).");
ABSL_FLAG(std::string, tls_ca, "",
          "TLS: PEM file of root certificates (default: the system's).");
ABSL_FLAG(std::string, tls_server_name, "",
          "TLS: expect this name in the server certificate.");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(60),
          "Deadline of each unary call attempt.");
ABSL_FLAG(int, max_attempts, 10,
          "Attempts per operation before giving up, counted from the last "
          "progress (an Append or Generate that moved on starts again). With "
          "--max_backoff they bound how long a server may be down or "
          "restarting: 10 attempts at up to 2 s wait about 15 s.");
ABSL_FLAG(absl::Duration, max_backoff, absl::Seconds(2),
          "Longest wait between two attempts (the waits double from 50 ms).");
ABSL_FLAG(std::string, session, "", "The session id.");

namespace statestream::cli {

const char kClientFlagsFile[] = __FILE__;

absl::StatusOr<std::unique_ptr<client::Client>> ClientFromFlags() {
  client::ClientOptions options;
  for (absl::string_view t :
       absl::StrSplit(absl::GetFlag(FLAGS_target), ',', absl::SkipEmpty())) {
    options.targets.emplace_back(t);
  }
  if (options.targets.empty()) {
    return InvalidArgumentError(Reason::kInvalidArgument, "--target is empty");
  }
  options.api_key = absl::GetFlag(FLAGS_api_key);
  options.tenant = absl::GetFlag(FLAGS_tenant);
  options.timeout = absl::GetFlag(FLAGS_timeout);
  options.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.max_backoff = absl::GetFlag(FLAGS_max_backoff);
  if (options.max_attempts < 1) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "--max_attempts must be at least 1");
  }
  if (options.max_backoff < absl::ZeroDuration()) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "--max_backoff must not be negative");
  }
  options.tls = absl::GetFlag(FLAGS_tls);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  const std::pair<std::string, std::string*> files[] = {
      {absl::GetFlag(FLAGS_tls_ca), &options.tls_root_certs_pem},
      {absl::GetFlag(FLAGS_tls_cert), &options.tls_cert_chain_pem},
      {absl::GetFlag(FLAGS_tls_key), &options.tls_private_key_pem},
  };
  for (const auto& [path, out] : files) {
    if (path.empty()) continue;
    if (!options.tls) {
      return InvalidArgumentError(Reason::kInvalidArgument,
                                  "--tls_ca/--tls_cert/--tls_key need --tls");
    }
    SS_ASSIGN_OR_RETURN(*out, ReadFile(path));
  }
  return client::Client::Create(std::move(options));
}

bool JsonOutputFlag() { return absl::GetFlag(FLAGS_json); }

absl::StatusOr<std::string> SessionFlagValue() {
  std::string session = absl::GetFlag(FLAGS_session);
  if (session.empty()) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "--session is required");
  }
  return session;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

}  // namespace statestream::cli
