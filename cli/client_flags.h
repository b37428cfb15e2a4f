// SPDX-License-Identifier: Apache-2.0
// Flags shared by the client verbs (session, feed, generate, chat, score):
// where the server is, credentials, TLS, output format, the session.
// Commands list kClientFlagsFile and kTlsFlagsFile in their
// Command::flag_files.
#ifndef STATESTREAM_CLI_CLIENT_FLAGS_H_
#define STATESTREAM_CLI_CLIENT_FLAGS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cli/tls_flags.h"
#include "google/protobuf/message.h"
#include "statestream/client.h"

namespace statestream::cli {

// __FILE__ of cli/client_flags.cc.
extern const char kClientFlagsFile[];

// A client from --target, --api-key, --tenant, --tls*, --timeout,
// --max-attempts, --max-backoff. Bad values are usage errors (UsageError,
// cli/cli_util.h), found before anything connects: --max-attempts below 1,
// a TLS file that does not read, is empty or holds no usable PEM, --tls-cert
// without --tls-key (or the reverse), a --tls-* flag without --tls.
absl::StatusOr<std::unique_ptr<client::Client>> ClientFromFlags();
// --json: print machine-readable JSON instead of text.
bool JsonOutputFlag();
// --session; a usage error naming the flag when empty.
absl::StatusOr<std::string> SessionFlagValue();
// Whether --session is unset or empty.
bool SessionFlagIsEmpty();
// One message as a single line of JSON (proto3 JSON mapping, field names
// as in the .proto).
std::string ToJson(const google::protobuf::Message& message);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_CLIENT_FLAGS_H_
