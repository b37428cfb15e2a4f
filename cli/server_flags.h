// SPDX-License-Identifier: Apache-2.0
// What the server roles (serve, gateway, worker) share: the flags of their
// gRPC server and the process lifecycle around it.
#ifndef STATESTREAM_CLI_SERVER_FLAGS_H_
#define STATESTREAM_CLI_SERVER_FLAGS_H_

#include <signal.h>

#include <functional>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cli/tls_flags.h"
#include "services/server.h"
#include "services/service_set.h"
#include "services/tls.h"

namespace statestream::cli {

// __FILE__ of server_flags.cc, for Command::flag_files of the server roles.
extern const char kServerFlagsFile[];

// __FILE__ of client_stall_flag.cc (gateway and serve).
extern const char kClientStallFlagFile[];
// --client-stall-timeout: INVALID_ARGUMENT unless positive.
absl::StatusOr<absl::Duration> ClientStallTimeoutFromFlag();

// ServerOptions from --listen, --max-receive-message-bytes, ...
ServerOptions ServerOptionsFromFlags();
// The smallest message size limits a server role takes (RunServer checks):
// received, and sent (a Score response with top_logprobs reaches ~6 MB; a
// lower limit would fail it after the work, with gRPC's bare error).
inline constexpr int kMinMessageBytes = 2 << 20;
inline constexpr int kMinSendMessageBytes = 8 << 20;
// --shutdown-grace.
absl::Duration ShutdownGraceFromFlag();
// --request-id-window: how long workers remember request ids (a gateway
// needs the same value for its tenant session limit).
absl::Duration RequestIdWindowFromFlag();
// --tls-cert, --tls-key, --tls-client-ca: the files read and checked
// (ValidateServerTls), reread every --tls-reload-interval. INVALID_ARGUMENT
// naming the flag. RunServer applies them itself; for roles that need to
// know (the unauthenticated warning).
absl::StatusOr<ServerTlsOptions> ServerTlsFromFlags();
// --tls-reload-interval (also the gateway's --worker-tls-* files):
// INVALID_ARGUMENT unless 0 or at least 1s.
absl::StatusOr<absl::Duration> TlsReloadIntervalFromFlag();
// A reread interval flag's `value`: 0 (read once) or 1s to 24h, in whole
// seconds (truncated). INVALID_ARGUMENT naming the flag and the value.
absl::StatusOr<absl::Duration> ReloadInterval(const char* flag,
                                              absl::Duration value);
// Whether --tls-client-ca is set (callers must hold a client certificate).
bool ClientCertificatesRequired();

// Runs a server role until SIGINT, SIGTERM or SIGHUP, and returns its exit
// code. Serves TLS as --tls-cert/--tls-key/--tls-client-ca say (bad or
// unreadable files: usage error, exit 2, before `build`, as are a bad --listen
// or
// --health-listen and message limits below kMinMessageBytes);
// `options.tls` is replaced.
// Blocks those signals first (so threads started later never take them),
// then calls `build` for the role's services, starts the server, prints
// "listening on HOST:PORT" to stdout once it is ready (after the `metrics
// on` line of a --metrics-listen, which `build` prints), and
// on the first signal shuts down with `grace` for calls in flight (exit 0).
// A second SIGINT or SIGTERM exits at once (exit 1). Errors are printed to
// stderr prefixed with "statestream <role>: " (exit 1).
int RunServer(absl::string_view role, const ServerOptions& options,
              absl::Duration grace,
              absl::FunctionRef<absl::StatusOr<ServiceSet>()> build);

// The signals that drain a server: SIGINT, SIGTERM and SIGHUP (a closed
// terminal or session drains it like a SIGTERM rather than killing it;
// not SIGHUP when the process started with it ignored, as under nohup).
sigset_t ShutdownSignals();
// Whether one of them is pending (blocked, not yet taken).
bool ShutdownSignalPending();

// Blocks ShutdownSignals() in the calling thread, so every thread started
// after it leaves them to RunServer's handling, and ignores SIGPIPE for the
// process (a log pipe whose reader died fails writes with EPIPE instead of
// killing the server). Server roles call it first (RunServer does too): a
// thread started before, a GPU driver's say, would otherwise take a SIGTERM
// and end the process without a drain.
void BlockShutdownSignals();

// Lifecycle hooks of RunServer, for roles that announce themselves (the
// worker registers its bound address in the cluster registry).
struct ServerHooks {
  // After the server is bound and serving, before "listening on" is
  // printed, with the bound HOST:PORT. An error stops the server (exit 1).
  std::function<absl::Status(const std::string& address)> started;
  // At the first SIGINT/SIGTERM, after health turned NOT_SERVING, before
  // the server drains.
  std::function<void()> draining;
  // Readiness probe (ServerOptions::readiness, every --readiness-interval);
  // empty: ready while running. Called after `build`.
  std::function<bool()> ready;
};
int RunServer(absl::string_view role, const ServerOptions& options,
              absl::Duration grace,
              absl::FunctionRef<absl::StatusOr<ServiceSet>()> build,
              const ServerHooks& hooks);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_SERVER_FLAGS_H_
