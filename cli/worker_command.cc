// SPDX-License-Identifier: Apache-2.0
// `statestream worker`: holds sessions, runs the model and checkpoints
// session state to Redis; registers itself in the cluster registry so that
// gateways can route to it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "cli/engine_flags.h"
#include "cli/metrics_flags.h"
#include "cli/model_flag.h"
#include "cli/model_loading.h"
#include "cli/redis_flags.h"
#include "cli/server_flags.h"
#include "cli/tenant_flags.h"
#include "cli/worker_flags.h"
#include "cli/worker_metrics.h"
#include "common/malloc_tuning.h"
#include "services/server.h"
#include "services/worker_registration.h"
#include "state_store/internal/store_util.h"
#include "state_store/redis_state_store.h"
#include "worker/model_set.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, worker_id, "",
          "This worker's id in the registry and as lease owner, 1-128 bytes "
          "of [A-Za-z0-9._:-], unique per process; default worker-HOST-PID.");
ABSL_FLAG(std::string, advertise, "",
          "HOST:PORT gateways use to reach this worker; default the bound "
          "--listen address (a wildcard one, 0.0.0.0 or [::], is logged as a "
          "warning: only this host can dial it). An IPv6 host goes in brackets "
          "([fd00::5]:7700); "
          "one without them (as $(POD_IP):7700 gives on an IPv6 cluster) is "
          "bracketed at the last colon.");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(1),
          "Registry heartbeat period; the entry expires after three. At "
          "least 10ms.");
ABSL_FLAG(absl::Duration, lease_ttl, absl::Seconds(30),
          "Session lease duration (renewed every third of it). Takeover by "
          "another worker never waits for it: the fence makes it safe. At "
          "least 100ms.");

// Defined by `serve` (cli/serve_command.cc) and shared with it.

namespace statestream::cli {
namespace {

struct WorkerOptions {
  ServerOptions server;
  RedisStateStoreOptions redis;
  std::string worker_id;
  std::string advertise;
  absl::Duration heartbeat_interval;
  std::vector<ModelSpec> models;  // the default first
  DeviceChoice device;
  worker::SessionManagerOptions sessions;
  worker::SchedulerOptions scheduler;
  std::string metrics_listen;  // empty: no /metrics
};

// Everything the services point into, destroyed in reverse order.
struct Worker {
  std::unique_ptr<worker::WorkerMetrics> metrics;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<ServedModels> models;  // drains on destruction
  std::unique_ptr<WorkerRegistration> registration;
  std::unique_ptr<worker::MetricsHttpServer> metrics_http;
  ~Worker() {
    metrics_http.reset();
    if (registration) registration->Stop();
    models.reset();
  }
};

absl::StatusOr<std::vector<ServedModel>> LoadModels(
    const WorkerOptions& options) {
  std::vector<ServedModel> out;
  for (const ModelSpec& spec : options.models) {
    auto served = LoadServedModel(spec, options.device);
    if (!served.ok()) return served.status();
    LogServedModel("worker", *served, spec);
    out.push_back(*std::move(served));
  }
  return out;
}

int Run(const std::vector<std::string>& args) {
  BlockShutdownSignals();  // before any thread (a GPU driver's) starts
  if (!args.empty()) {
    return ReportUsageError(
        absl::StrCat("unexpected argument \"", args[0], "\""));
  }
  WorkerOptions options;
  options.server = ServerOptionsFromFlags();
  absl::StatusOr<RedisStateStoreOptions> redis = RedisOptionsFromFlags();
  if (!redis.ok()) {
    return ReportUsageError(redis.status().message());
  }
  options.redis = *std::move(redis);
  if (options.redis.addresses.empty()) {
    return ReportUsageError("--redis is required");
  }
  options.worker_id = absl::GetFlag(FLAGS_worker_id);
  if (options.worker_id.empty()) {
    char host[64] = {};
    gethostname(host, sizeof(host) - 1);
    options.worker_id = absl::StrCat("worker-", host, "-", getpid());
  }
  // Checked now, not once the models are loaded and the port is bound.
  if (absl::Status id = store_internal::ValidateWorkerId(options.worker_id);
      !id.ok()) {
    return ReportUsageError(absl::StrCat("--worker-id: ", id.message()));
  }
  options.advertise = absl::GetFlag(FLAGS_advertise);
  if (!options.advertise.empty()) {
    // fd00::5:7700: the port is after the last colon (a port is required),
    // the rest an IPv6 host that gRPC reads only in brackets.
    const size_t colon = options.advertise.rfind(':');
    if (options.advertise.front() != '[' && colon != std::string::npos &&
        options.advertise.find(':') < colon) {
      options.advertise = absl::StrCat("[", options.advertise.substr(0, colon),
                                       "]", options.advertise.substr(colon));
    }
    auto address = ParseListenAddress(options.advertise);
    // A bracketed host must be an IPv6 address (fd00::5 without its port
    // would read as [fd00:]:5), and gateways dial a real port.
    // (A link-local address's %zone is not inet_pton's to read.)
    in6_addr ip6;
    const bool bad_host =
        address.ok() && address->first.front() == '[' &&
        inet_pton(AF_INET6,
                  address->first.substr(1, address->first.size() - 2)
                      .substr(0, address->first.find('%') - 1)
                      .c_str(),
                  &ip6) != 1;
    if (!address.ok() || bad_host || address->second == 0) {
      return ReportUsageError(absl::StrCat(
          "--advertise ", options.advertise,
          ": want HOST:PORT with a port 1-65535 (an IPv6 host in brackets)"));
    }
  }
  options.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  auto models = ParseModelList(ModelFlagValue(), VocabFlagValue());
  if (!models.ok() || models->empty()) {
    return ReportUsageError(models.ok() ? "--model is required"
                                        : models.status().message());
  }
  options.models = *std::move(models);
  auto device = EngineFlagsAndDevice("worker");
  if (!device.ok()) {
    return ReportUsageError(device.status().message());
  }
  options.device = *std::move(device);
  options.sessions.owner = options.worker_id;
  options.sessions.lease_ttl = absl::GetFlag(FLAGS_lease_ttl);
  // Floors: Redis keeps TTLs in milliseconds (a nanosecond lease or entry
  // lived a millisecond while its renewals ran back to back).
  if (options.sessions.lease_ttl < absl::Milliseconds(100) ||
      options.heartbeat_interval < absl::Milliseconds(10)) {
    return ReportUsageError(
        "--lease-ttl must be at least 100ms and --heartbeat-interval at "
        "least 10ms");
  }
  if (absl::Status s = ApplyWorkerFlags(&options.sessions, &options.scheduler);
      !s.ok()) {
    return ReportUsageError(s.message());
  }
  absl::StatusOr<std::string> metrics_listen = MetricsListenFromFlag();
  if (!metrics_listen.ok()) {
    return ReportUsageError(metrics_listen.status().message());
  }
  options.metrics_listen = *std::move(metrics_listen);
  absl::StatusOr<InternalTokenSetup> internal_token =
      InternalTokenFromFlags("worker");
  if (!internal_token.ok()) {
    return ReportUsageError(internal_token.status().message());
  }
  auto policy = std::make_shared<worker::CallerPolicy>();
  policy->internal_token = internal_token->token;
  // Workers trust the tenant the gateway forwards; say who may call.
  std::vector<std::string> must;
  if (policy->internal_token.configured()) {
    must.push_back("show the --internal-token-file token");
  }
  if (ClientCertificatesRequired()) {
    must.push_back("present a client certificate signed by --tls-client-ca");
  }
  if (must.empty()) {
    std::cerr << "statestream worker: WARNING: running UNAUTHENTICATED: any "
                 "caller that reaches this port picks its tenant with the "
                 "x-statestream-tenant header (start workers with "
                 "--internal-token-file, or --tls-client-ca, so only "
                 "gateways can call)\n";
  } else {
    std::cerr << "statestream worker: callers must "
              << absl::StrJoin(must, " and ")
              << "; the tenant is the x-statestream-tenant header they "
                 "forward\n";
  }
  TuneMallocForLargeBuffers();

  std::shared_ptr<Worker> kept;
  auto secrets = std::make_shared<SecretFileMetrics>();
  auto build = [&]() -> absl::StatusOr<ServiceSet> {
    auto w = std::make_shared<Worker>();
    auto models = LoadModels(options);
    if (!models.ok()) return models.status();
    RedisStateStoreOptions redis = options.redis;
    redis.on_warning = [](const std::string& warning) {
      std::cerr << "statestream worker: WARNING: " << warning << "\n";
    };
    auto store = ConnectRedis(redis, "worker");
    if (!store.ok()) return store.status();
    w->store = *std::move(store);
    w->metrics = std::make_unique<worker::WorkerMetrics>("redis");
    worker::SessionManagerOptions sessions = options.sessions;
    worker::SchedulerOptions scheduler = options.scheduler;
    AttachWorkerMetrics(w->metrics.get(), &scheduler, &sessions);
    auto started =
        StartModels(*std::move(models), sessions, scheduler, w->store.get());
    if (!started.ok()) return started.status();
    w->models = *std::move(started);
    auto http = ServeWorkerMetrics(w->metrics.get(), w->models->set.get(),
                                   w->models->schedulers(),
                                   options.metrics_listen, secrets);
    if (!http.ok()) return http.status();
    w->metrics_http = *std::move(http);
    ServiceSet set = worker::PublicApiServices(w->models->set.get(), policy);
    set.Own(w);
    std::shared_ptr<SecretFileReloader> reloader =
        StartInternalTokenReloader(*internal_token, "worker");
    secrets->Add(reloader);
    set.Own(std::move(reloader));
    kept = w;
    return set;
  };
  ServerHooks hooks;
  hooks.started = [&](const std::string& address) -> absl::Status {
    WorkerRegistrationOptions reg;
    reg.info.worker_id = options.worker_id;
    reg.info.address = options.advertise.empty() ? address : options.advertise;
    // Every model: gateways route sessions of any of them here.
    reg.info.model_fingerprints = kept->models->set->fingerprints();
    reg.heartbeat_interval = options.heartbeat_interval;
    const worker::ModelSet* models = kept->models->set.get();
    reg.load_fn = [models] {
      return static_cast<double>(models->stats().resident);
    };
    reg.resync = [models] {
      for (worker::SessionManager* m : models->managers()) m->RenewLeasesNow();
    };
    reg.resync_after_failing = options.sessions.lease_ttl / 3;
    auto registration = WorkerRegistration::Start(kept->store.get(), reg);
    if (!registration.ok()) return registration.status();
    kept->registration = *std::move(registration);
    std::cerr << "statestream worker: registered " << options.worker_id
              << " at " << reg.info.address << "\n";
    // A wildcard is where this worker listens, not an address to dial:
    // gateways elsewhere would dial themselves.
    auto host = ParseListenAddress(reg.info.address);
    if (host.ok() && (host->first == "0.0.0.0" || host->first == "[::]" ||
                      host->first.empty())) {
      std::cerr << "statestream worker: warning: gateways will dial "
                << reg.info.address
                << ", a wildcard address only this host reaches; set "
                   "--advertise HOST:PORT to an address they can dial (e.g. "
                   "the pod's IP)\n";
    }
    return absl::OkStatus();
  };
  // Ready while Redis answers: a worker that cannot load or commit states
  // is taken out of load balancing until it can again.
  hooks.ready = [&kept] { return kept && kept->store->Ping().ok(); };
  // Leave the registry first, so gateways route new sessions elsewhere
  // while calls in flight finish.
  hooks.draining = [&] {
    if (kept && kept->registration) kept->registration->Stop();
  };
  int code = RunServer("worker", options.server, ShutdownGraceFromFlag(), build,
                       hooks);
  kept.reset();
  return code;
}

}  // namespace

const Command& WorkerCommand() {
  static const Command kCommand{
      "worker",
      "Run a worker that serves sessions and checkpoints them to Redis.",
      "--redis HOST:PORT[,...] --model [ID=]PATH[,...] [flags]\n\n"
      "Serves the statestream.v1 API (as forwarded by gateways),\n"
      "grpc.health.v1 and server reflection over a Redis state store, and\n"
      "registers itself (address, model fingerprints, load) in the Redis\n"
      "worker registry with a heartbeat; leaves it on SIGINT/SIGTERM/SIGHUP, "
      "then\n"
      "finishes calls in flight, commits and releases its sessions.\n"
      "Several models (comma-separated --model, optional ID= names, the\n"
      "first the default; --vocab entries pair with them) are served side\n"
      "by side, each with its own scheduler.",
      {__FILE__, kServerFlagsFile, kTlsFlagsFile, kRedisFlagsFile,
       kModelFlagFile, kVocabFlagFile, kDeviceFlagFile, kEngineFlagsFile,
       kWorkerFlagsFile, kMetricsFlagsFile, kInternalTokenFlagFile,
       kSecretsReloadFlagFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
