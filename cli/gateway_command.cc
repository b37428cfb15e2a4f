// SPDX-License-Identifier: Apache-2.0
// `statestream gateway`: a stateless front end that authenticates callers
// and routes each session's calls to the worker that owns it.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "cli/gateway_security_flags.h"
#include "cli/metrics_flags.h"
#include "cli/redis_flags.h"
#include "cli/server_flags.h"
#include "cli/tenant_flags.h"
#include "common/malloc_tuning.h"
#include "services/gateway.h"
#include "services/server.h"
#include "services/tenants.h"
#include "state_store/internal/store_util.h"
#include "state_store/redis_state_store.h"
#include "worker/metrics_http.h"

ABSL_FLAG(std::string, workers, "",
          "Static worker list HOST:PORT[,...], used besides (or, without "
          "--redis, instead of) the Redis registry.");
ABSL_FLAG(std::string, gateway_id, "",
          "Name sent to workers as x-statestream-forwarded-by and holding "
          "its streams' tenant slots, 1-128 bytes of [A-Za-z0-9._:-]; "
          "default gateway-HOST-PID.");
ABSL_FLAG(absl::Duration, upstream_stall_timeout, absl::Seconds(10),
          "A worker that answers nothing this long while requests are "
          "outstanding (Append: plus 100 ms per token or text byte of the "
          "oldest request in flight), or whose connection leaves pings "
          "unanswered this long, "
          "is treated as failed and the call moves on.");
ABSL_FLAG(absl::Duration, append_idle_probe, absl::Seconds(15),
          "An Append stream idle this long whose kept requests are not known "
          "committed asks its worker what the session has committed (the "
          "worker commits idle input on its own) and drops what is; again "
          "after twice as long each time that drops nothing; inf: never.");
ABSL_FLAG(int, max_calls, 4096,
          "Calls served at once, streams included (a call holds a thread "
          "only while it routes or fails over, not while it waits); more "
          "are RESOURCE_EXHAUSTED/OVERLOADED with retry_after_ms.");
ABSL_FLAG(int, max_task_threads, 256,
          "Threads for the steps of calls that may block (routing, stream "
          "slots, a failover's wait), started on demand up to this many; "
          "beyond it the steps queue.");
ABSL_FLAG(int64_t, max_buffered_bytes, int64_t{512} << 20,
          "Bytes all calls together keep in memory: Append requests kept for "
          "replay until committed, and imports (read whole, each at most "
          "256 MiB). Past it each Append goes a request at a time, each "
          "committed before the next is read (within this plus two requests "
          "a call), and imports are RESOURCE_EXHAUSTED/OVERLOADED with "
          "retry_after_ms unless nothing else is held. Size the gateway's "
          "memory limit for it plus ~256 MiB.");
ABSL_FLAG(absl::Duration, suspect_for, absl::Seconds(5),
          "How long a worker that failed a call is avoided.");
ABSL_FLAG(absl::Duration, tenant_stream_ttl, absl::Seconds(15),
          "With --redis, --tenant-max-streams (and max_streams) hold across "
          "gateways: each stream holds a slot in Redis, renewed every third "
          "of this while open. A gateway that dies without ending its "
          "streams frees their slots this long after (at least 1s).");

namespace statestream::cli {
namespace {

constexpr char kSessionLimitsNeedRedis[] =
    "session limits need --redis (sessions are counted in the state store)";

int Run(const std::vector<std::string>& args) {
  BlockShutdownSignals();
  if (!args.empty()) {
    return ReportUsageError(
        absl::StrCat("unexpected argument \"", args[0], "\""));
  }
  GatewayOptions options;
  absl::StatusOr<RedisStateStoreOptions> redis_flags = RedisOptionsFromFlags();
  if (!redis_flags.ok()) {
    return ReportUsageError(redis_flags.status().message());
  }
  RedisStateStoreOptions redis = *std::move(redis_flags);
  for (absl::string_view w :
       absl::StrSplit(absl::GetFlag(FLAGS_workers), ',', absl::SkipEmpty())) {
    // Checked now: gRPC dials a worker without a port at 443, and port
    // 99999 as 99999 mod 65536, so every call failed UNAVAILABLE.
    auto address = ParseListenAddress(w);
    if (!address.ok() || address->second == 0) {
      return ReportUsageError(absl::StrCat(
          "--workers: \"", absl::CHexEscape(w),
          "\" is not HOST:PORT (port 1-65535, an IPv6 host in brackets)"));
    }
    options.router.static_workers.emplace_back(w);
  }
  if (redis.addresses.empty() && options.router.static_workers.empty()) {
    return ReportUsageError("give --redis (registry) or --workers");
  }
  options.gateway_id = absl::GetFlag(FLAGS_gateway_id);
  if (options.gateway_id.empty()) {
    char host[64] = {};
    gethostname(host, sizeof(host) - 1);
    options.gateway_id = absl::StrCat("gateway-", host, "-", getpid());
  }
  // Sent as a header and kept in Redis (tenant slots): a byte gRPC refuses
  // in a header would abort the gateway on its first forwarded call.
  if (absl::Status id =
          store_internal::ValidateNodeId("gateway_id", options.gateway_id);
      !id.ok()) {
    return ReportUsageError(absl::StrCat("--gateway-id: ", id.message()));
  }
  options.upstream_stall_timeout = absl::GetFlag(FLAGS_upstream_stall_timeout);
  if (options.upstream_stall_timeout <= absl::ZeroDuration()) {
    return ReportUsageError("--upstream-stall-timeout must be positive");
  }
  absl::StatusOr<absl::Duration> client_stall = ClientStallTimeoutFromFlag();
  if (!client_stall.ok()) {
    return ReportUsageError(client_stall.status().message());
  }
  options.client_stall_timeout = *client_stall;
  options.append_idle_probe = absl::GetFlag(FLAGS_append_idle_probe);
  if (options.append_idle_probe <= absl::ZeroDuration()) {
    return ReportUsageError("--append-idle-probe must be positive (or inf)");
  }
  options.request_id_window = RequestIdWindowFromFlag();
  // What clients may send is forwarded, and what workers answer is sent on.
  const ServerOptions server = ServerOptionsFromFlags();
  options.max_message_bytes =
      std::max(server.max_receive_message_bytes, server.max_send_message_bytes);
  options.max_calls = absl::GetFlag(FLAGS_max_calls);
  options.max_task_threads = absl::GetFlag(FLAGS_max_task_threads);
  if (options.max_task_threads < 1) {
    return ReportUsageError("--max-task-threads must be at least 1");
  }
  if (options.max_calls < 1) {
    return ReportUsageError("--max-calls must be at least 1");
  }
  options.max_buffered_bytes = absl::GetFlag(FLAGS_max_buffered_bytes);
  if (options.max_buffered_bytes < 1) {
    return ReportUsageError("--max-buffered-bytes must be at least 1");
  }
  options.router.suspect_for = absl::GetFlag(FLAGS_suspect_for);
  if (options.router.suspect_for < absl::ZeroDuration() ||
      options.router.suspect_for == absl::InfiniteDuration()) {
    return ReportUsageError("--suspect-for must be 0 or more, and finite");
  }
  absl::StatusOr<TenantSetup> tenants = TenantSetupFromFlags("gateway");
  if (!tenants.ok()) {
    return ReportUsageError(tenants.status().message());
  }
  options.auth = tenants->auth;
  absl::StatusOr<InternalTokenSetup> internal_token =
      InternalTokenFromFlags("gateway");
  if (!internal_token.ok()) {
    return ReportUsageError(internal_token.status().message());
  }
  options.internal_token = internal_token->token;
  absl::StatusOr<ClientTlsOptions> worker_tls = WorkerTlsFromFlags();
  if (!worker_tls.ok()) {
    return ReportUsageError(worker_tls.status().message());
  }
  options.worker_tls = *std::move(worker_tls);
  TenantLimitsOptions limits = tenants->limits;
  limits.slot_holder = options.gateway_id;  // names its streams' slots
  limits.slot_ttl = absl::GetFlag(FLAGS_tenant_stream_ttl);
  if (limits.slot_ttl < absl::Seconds(1) ||
      limits.slot_ttl == absl::InfiniteDuration()) {
    return ReportUsageError(
        "--tenant-stream-ttl must be at least 1s and finite");
  }
  if (limits.LimitsSessions() && redis.addresses.empty()) {
    return ReportUsageError(kSessionLimitsNeedRedis);
  }
  TuneMallocForLargeBuffers();
  // Outlives the services (and their gauge source): the HTTP server stops
  // after RunServer returns.
  absl::StatusOr<std::string> listen_flag = MetricsListenFromFlag();
  if (!listen_flag.ok()) {
    return ReportUsageError(listen_flag.status().message());
  }
  const std::string metrics_listen = *std::move(listen_flag);
  GatewayMetrics metrics;
  SecretFileMetrics secrets;
  options.metrics = &metrics;
  std::unique_ptr<worker::MetricsHttpServer> metrics_http;
  return RunServer(
      "gateway", ServerOptionsFromFlags(), ShutdownGraceFromFlag(),
      [&]() -> absl::StatusOr<ServiceSet> {
        // Here: RunServer has blocked the stop signals, so
        // the HTTP thread never takes them.
        if (!metrics_listen.empty()) {
          auto http = worker::MetricsHttpServer::Start(
              metrics_listen, [&metrics, &secrets] {
                return metrics.Render() + secrets.Render();
              });
          if (!http.ok()) return http.status();
          metrics_http = *std::move(http);
          std::printf("metrics on %s\n", metrics_http->address().c_str());
          std::fflush(stdout);
        }
        std::shared_ptr<StateStore> store;
        if (!redis.addresses.empty()) {
          auto opened = ConnectRedis(redis, "gateway");
          if (!opened.ok()) return opened.status();
          store = std::shared_ptr<StateStore>(std::move(*opened));
        }
        if (tenants->NeedsLimits()) {
          options.limits = std::make_shared<TenantLimits>(limits, store.get());
        }
        absl::StatusOr<ServiceSet> set =
            GatewayServices(options, std::move(store));
        if (set.ok()) {
          // Stops rereading before the limits it updates go.
          std::shared_ptr<SecretFileReloader> keys = StartApiKeysReloader(
              *tenants, options.limits, "gateway",
              [counts_sessions =
                   !redis.addresses.empty()](const TenantAuth& auth) {
                TenantLimitsOptions reread;
                reread.tenants = auth.limits();
                if (reread.LimitsSessions() && !counts_sessions) {
                  return absl::InvalidArgumentError(kSessionLimitsNeedRedis);
                }
                return absl::OkStatus();
              });
          std::shared_ptr<SecretFileReloader> token =
              StartInternalTokenReloader(*internal_token, "gateway");
          secrets.Add(keys);
          secrets.Add(token);
          set->Own(std::move(keys));
          set->Own(std::move(token));
        }
        // The set's gateway holds the limits now: they (and their slot
        // renewals) end before the store they use, which the set owns.
        options.limits.reset();
        return set;
      });
}

}  // namespace

const Command& GatewayCommand() {
  static const Command kCommand{
      "gateway",
      "Run a stateless gateway that routes sessions to workers.",
      "--redis HOST:PORT[,...] | --workers HOST:PORT[,...] [flags]\n\n"
      "Serves the statestream.v1 API, grpc.health.v1 and server reflection,\n"
      "forwarding each call to the session's owner worker (its lease\n"
      "holder), else to a live worker chosen by rendezvous hashing; moves\n"
      "Append and Generate streams to another worker when one fails.\n"
      "Stops cleanly (drains) on SIGINT, SIGTERM or SIGHUP.",
      {__FILE__, kServerFlagsFile, kClientStallFlagFile, kTlsFlagsFile,
       kGatewaySecurityFlagsFile, kTenantFlagsFile, kInternalTokenFlagFile,
       kSecretsReloadFlagFile, kMetricsFlagsFile, kRedisFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
