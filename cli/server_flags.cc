// SPDX-License-Identifier: Apache-2.0
#include "cli/server_flags.h"

#include <pthread.h>
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "cli/tls_flags.h"
#include "common/status.h"
#include "common/throttled_log.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7700",
          "Address to serve on, HOST:PORT; port 0 picks a free port. Once "
          "ready, the server prints `listening on HOST:PORT` (the port "
          "actually bound) to stdout; with --metrics-listen a `metrics on "
          "HOST:PORT` line comes first.");
ABSL_FLAG(int32_t, max_receive_message_bytes, 8 << 20,
          "Largest gRPC message accepted, in bytes (at least 2 MiB); larger "
          "ones fail with RESOURCE_EXHAUSTED. A gateway uses the larger of "
          "this and --max-send-message-bytes towards its workers.");
ABSL_FLAG(int32_t, max_send_message_bytes, 8 << 20,
          "Largest gRPC message sent, in bytes (at least 8 MiB: a Score "
          "response with top_logprobs reaches ~6 MB).");
ABSL_FLAG(std::string, health_listen, "",
          "HOST:PORT of a second, plaintext port serving only "
          "grpc.health.v1 with the main port's statuses, for probes that "
          "cannot speak TLS (Kubernetes' native gRPC probes); its bound "
          "address is logged to stderr. Empty: none.");
ABSL_FLAG(absl::Duration, readiness_interval, absl::Seconds(1),
          "How often the worker roles (serve, worker) probe their state "
          "store; while it does not answer, grpc.health.v1 reports "
          "NOT_SERVING. At least 10ms.");
ABSL_FLAG(absl::Duration, request_id_window, absl::Hours(1),
          "How long request ids are remembered for idempotent retries "
          "(CreateSession, committing Generate). Workers remember them; a "
          "gateway with a tenant session limit lets a retried create through "
          "within it, so give it the workers' value.");
ABSL_FLAG(absl::Duration, max_connection_age, absl::ZeroDuration(),
          "Tell each client connection to go away (HTTP/2 GOAWAY) after "
          "about this long (e.g. 10m; gRPC jitters it by +-10%): calls "
          "open on it run to their end, the client opens a new connection "
          "for its next calls, so behind a Kubernetes Service clients spread "
          "over gateways added since. 0: never. At least 1s.");
ABSL_FLAG(
    absl::Duration, shutdown_grace, absl::Seconds(5),
    "On SIGINT/SIGTERM/SIGHUP, how long calls in flight may take to finish "
    "before they are cancelled (e.g. 5s, 500ms). gateway and worker "
    "let them run; serve first drains its sessions (running "
    "generations stop and commit, appends stop at their next "
    "request, dirty sessions commit), so its calls end sooner.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "Mutual TLS: PEM CA certificates; every client must present a "
          "certificate signed by one of them (the handshake fails "
          "otherwise). Needs --tls-cert.");

ABSL_FLAG(absl::Duration, tls_reload_interval, absl::Minutes(1),
          "How often --tls-cert, --tls-key and --tls-client-ca (and a "
          "gateway's --worker-tls-* files) are reread (1s to 24h): new "
          "connections use what the files hold, so a certificate renewed on "
          "disk (a Kubernetes Secret, cert-manager) is used without a "
          "restart; open connections keep theirs. Replace a certificate and "
          "its key together (a Secret volume does). 0: read once at start.");

namespace statestream::cli {

const char kServerFlagsFile[] = __FILE__;

absl::Duration RequestIdWindowFromFlag() {
  return absl::GetFlag(FLAGS_request_id_window);
}

ServerOptions ServerOptionsFromFlags() {
  ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.max_receive_message_bytes =
      absl::GetFlag(FLAGS_max_receive_message_bytes);
  options.max_send_message_bytes = absl::GetFlag(FLAGS_max_send_message_bytes);
  options.readiness_interval = absl::GetFlag(FLAGS_readiness_interval);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  options.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  return options;
}

absl::Duration ShutdownGraceFromFlag() {
  return absl::GetFlag(FLAGS_shutdown_grace);
}

absl::StatusOr<ServerTlsOptions> ServerTlsFromFlags() {
  ServerTlsOptions tls;
  SS_RETURN_IF_ERROR(ReadPemFiles({
      {"--tls-cert", absl::GetFlag(FLAGS_tls_cert), &tls.cert_chain_pem,
       &tls.cert_chain_path},
      {"--tls-key", absl::GetFlag(FLAGS_tls_key), &tls.private_key_pem,
       &tls.private_key_path},
      {"--tls-client-ca", absl::GetFlag(FLAGS_tls_client_ca),
       &tls.client_ca_pem, &tls.client_ca_path},
  }));
  if (absl::Status valid = ValidateServerTls(tls); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-cert/--tls-key/--tls-client-ca: ", valid.message()));
  }
  SS_ASSIGN_OR_RETURN(tls.reload_interval, TlsReloadIntervalFromFlag());
  return tls;
}

absl::StatusOr<absl::Duration> ReloadInterval(const char* flag,
                                              absl::Duration value) {
  if (value < absl::ZeroDuration() ||
      (value > absl::ZeroDuration() && value < absl::Seconds(1)) ||
      value > absl::Hours(24)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", absl::FormatDuration(value),
                     ": 0 (read once) or 1s to 24h"));
  }
  return absl::Trunc(value, absl::Seconds(1));
}

absl::StatusOr<absl::Duration> TlsReloadIntervalFromFlag() {
  return ReloadInterval("--tls-reload-interval",
                        absl::GetFlag(FLAGS_tls_reload_interval));
}

bool ClientCertificatesRequired() {
  return !absl::GetFlag(FLAGS_tls_client_ca).empty();
}

sigset_t ShutdownSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  // Not when started ignoring it (nohup): a blocked signal is never
  // discarded as ignored, so sigwait would take it. Nothing here changes
  // SIGHUP's disposition, so every call answers the same.
  struct sigaction hup = {};
  if (sigaction(SIGHUP, nullptr, &hup) != 0 || hup.sa_handler != SIG_IGN) {
    sigaddset(&signals, SIGHUP);
  }
  return signals;
}

bool ShutdownSignalPending() {
  sigset_t pending;
  sigemptyset(&pending);
  sigpending(&pending);
  const sigset_t stop = ShutdownSignals();
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sigismember(&stop, sig) == 1 && sigismember(&pending, sig) == 1) {
      return true;
    }
  }
  return false;
}

void BlockShutdownSignals() {
  // A server outlives the pipe its logs go to (a crashed log shipper, a
  // closed terminal's `| tee`): a write there fails with EPIPE instead of
  // ending the process by SIGPIPE at its next log line.
  signal(SIGPIPE, SIG_IGN);
  const sigset_t signals = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

int RunServer(absl::string_view role, const ServerOptions& options,
              absl::Duration grace,
              absl::FunctionRef<absl::StatusOr<ServiceSet>()> build) {
  return RunServer(role, options, grace, build, ServerHooks{});
}

int RunServer(absl::string_view role, const ServerOptions& options,
              absl::Duration grace,
              absl::FunctionRef<absl::StatusOr<ServiceSet>()> build,
              const ServerHooks& hooks) {
  BlockShutdownSignals();
  const sigset_t signals = ShutdownSignals();
  if (options.readiness_interval < absl::Milliseconds(10)) {
    // Below it, the store's pings run back to back.
    return ReportUsageError("--readiness-interval must be at least 10ms");
  }
  if (const absl::Duration window = RequestIdWindowFromFlag();
      window <= absl::ZeroDuration() || window == absl::InfiniteDuration()) {
    // 0 or less would forget every request id at once: retries applied
    // twice.
    return ReportUsageError("--request-id-window must be positive and finite");
  }
  if (grace < absl::ZeroDuration() || grace == absl::InfiniteDuration()) {
    return ReportUsageError(
        "--shutdown-grace must be 0 or more (e.g. 5s), and finite");
  }
  if (options.max_connection_age != absl::ZeroDuration() &&
      options.max_connection_age < absl::Seconds(1)) {
    return ReportUsageError(
        "--max-connection-age must be 0 (never) or at least 1s");
  }

  if (auto address = ParseListenAddress(options.listen); !address.ok()) {
    return ReportUsageError(
        absl::StrCat("--listen: ", address.status().message()));
  }
  if (!options.health_listen.empty()) {
    if (auto address = ParseListenAddress(options.health_listen);
        !address.ok()) {
      return ReportUsageError(
          absl::StrCat("--health-listen: ", address.status().message()));
    }
  }
  // gRPC reads -1 as unlimited and 0 as nothing; below the floor the API's
  // own messages (1 MiB state chunks) would not fit.
  const std::tuple<const char*, int, int> sizes[] = {
      {"--max-receive-message-bytes", options.max_receive_message_bytes,
       kMinMessageBytes},
      {"--max-send-message-bytes", options.max_send_message_bytes,
       kMinSendMessageBytes}};
  for (const auto& [flag, bytes, least] : sizes) {
    if (bytes < least) {
      return ReportUsageError(absl::StrCat(flag, " must be at least ", least,
                                           " (got ", bytes, ")"));
    }
  }
  ServerOptions server_options = options;
  absl::StatusOr<ServerTlsOptions> tls = ServerTlsFromFlags();
  if (!tls.ok()) {
    return ReportUsageError(tls.status().message());
  }
  server_options.tls = *std::move(tls);
  auto fail = [&](const absl::Status& status) {
    std::cerr << "statestream " << role << ": " << status.message()
              << ReasonTag(status) << "\n";
    return kExitFailure;
  };
  // One thread takes the stop signals from here on. Before the server
  // serves (a model loading for minutes, Redis awaited), the first one
  // exits at once: there is nothing to drain, and it used to wait for the
  // start to finish (a second Ctrl-C did nothing). Once it binds, the
  // first starts the drain below and a second SIGINT/SIGTERM ends it (not
  // a second SIGHUP: a closing terminal sends one from the shell and one
  // from the kernel).
  struct Stop {
    absl::Mutex mu;
    bool serving ABSL_GUARDED_BY(mu) = false;
    int signal ABSL_GUARDED_BY(mu) = 0;
  };
  auto stop = std::make_shared<Stop>();
  std::thread([stop, signals, role = std::string(role)] {
    int first = 0;
    sigwait(&signals, &first);
    {
      absl::MutexLock lock(&stop->mu);
      if (stop->serving) {
        stop->signal = first;
      } else {
        std::cerr << "statestream " << role << ": " << strsignal(first)
                  << " while starting; exiting\n";
        FlushLogLines(absl::Milliseconds(200));  // _Exit runs no atexit
        std::_Exit(kExitFailure);
      }
    }
    int again = SIGHUP;
    while (again == SIGHUP) sigwait(&signals, &again);
    FlushLogLines(absl::Milliseconds(200));
    std::_Exit(kExitFailure);
  }).detach();
  absl::StatusOr<ServiceSet> services = build();
  if (!services.ok()) return fail(services.status());
  server_options.readiness = hooks.ready;
  {
    // From here a signal drains: Start binds the port, so the server may
    // hold calls before it returns (its first readiness probe can wait on
    // a hung store for seconds).
    absl::MutexLock lock(&stop->mu);
    stop->serving = true;
  }
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(server_options, *std::move(services));
  if (!server.ok()) return fail(server.status());
  bool signalled = false;
  {
    absl::MutexLock lock(&stop->mu);
    signalled = stop->signal != 0;
  }
  // Signalled while starting: straight to the drain (announcing the
  // worker only to withdraw it would draw calls to a leaving worker).
  if (hooks.started && !signalled) {
    absl::Status started = hooks.started((*server)->address());
    if (!started.ok()) {
      (*server)->Shutdown(absl::ZeroDuration());
      return fail(started);
    }
  }

  if (!(*server)->health_address().empty()) {
    std::cerr << "statestream " << role << ": health (plaintext) on "
              << (*server)->health_address() << "\n";
  }
  std::printf("listening on %s\n", (*server)->address().c_str());
  std::fflush(stdout);

  int signal_number = 0;
  {
    absl::MutexLock lock(&stop->mu);
    stop->mu.Await(absl::Condition(
        +[](int* signal) { return *signal != 0; }, &stop->signal));
    signal_number = stop->signal;
  }
  std::cerr << "statestream " << role << ": " << strsignal(signal_number)
            << ", shutting down\n";
  (*server)->StopServing();  // NOT_SERVING while the role drains
  if (hooks.draining) hooks.draining();
  (*server)->Shutdown(grace);
  return kExitOk;
}

}  // namespace statestream::cli
