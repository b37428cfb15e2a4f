// SPDX-License-Identifier: Apache-2.0
// `statestream serve`: the all-in-one server, a worker with the public API
// and an embedded state store.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "cli/engine_flags.h"
#include "cli/metrics_flags.h"
#include "cli/model_flag.h"
#include "cli/model_loading.h"
#include "cli/server_flags.h"
#include "cli/tenant_flags.h"
#include "cli/worker_flags.h"
#include "cli/worker_metrics.h"
#include "common/files.h"
#include "common/malloc_tuning.h"
#include "state_store/memory_state_store.h"
#include "state_store/sqlite_state_store.h"
#include "worker/engine/random_model.h"
#include "worker/metrics.h"
#include "worker/metrics_http.h"
#include "worker/model_set.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, data_dir, "",
          "Directory of the embedded state store, created if missing; empty "
          "keeps session state in memory only (lost on exit). One server "
          "per directory: a second serve on it fails at start.");
namespace statestream::cli {
namespace {

struct ServeOptions {
  ServerOptions server;
  // Embedded store directory; empty: memory only.
  std::string data_dir;
  // The served models, the default first; empty: the built-in random demo
  // model.
  std::vector<ModelSpec> models;
  DeviceChoice device;
  worker::SessionManagerOptions sessions;
  worker::SchedulerOptions scheduler;
  std::string metrics_listen;  // empty: no /metrics
  TenantSetup tenants;         // API keys and limits
  absl::Duration client_stall_timeout = absl::Seconds(60);
};

// Everything the services point into, destroyed in reverse order.
struct Worker {
  // The --data-dir's lock (DataDirLock), held for the server's life.
  int data_dir_lock = -1;
  std::unique_ptr<worker::WorkerMetrics> metrics;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<ServedModels> models;  // drains on destruction
  std::unique_ptr<worker::MetricsHttpServer> metrics_http;
  ~Worker() {
    metrics_http.reset();
    models.reset();
    store.reset();
    if (data_dir_lock >= 0) close(data_dir_lock);
  }
};

// Locks `dir` for this server alone (flock on dir/serve.lock, which holds
// the holder's pid; the kernel drops it when the process ends, killed or
// not). Two servers on one directory would each be a worker with no
// gateway between them: each would take the sessions the other holds
// (a load takes over the lease) and resend input the other had put at the
// same offsets, so one writer's input was dropped as already there. The
// SQLite store itself serves several processes; serve is one worker.
absl::StatusOr<int> DataDirLock(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "serve.lock").string();
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot open ", path, " (--data-dir's lock): ", std::strerror(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    if (error == ENOLCK || error == EOPNOTSUPP || error == ENOSYS) {
      // A file system without locks (some network or FUSE ones): serve
      // runs, unguarded, and says so.
      std::cerr << "statestream serve: WARNING: cannot lock " << path << " ("
                << std::strerror(error)
                << "): nothing stops a second serve on this --data-dir\n";
      return fd;
    }
    char pid[32] = {0};
    const ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
    close(fd);
    if (error != EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot lock ", path, ": ", std::strerror(error)));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "--data-dir ", dir, " is in use by another statestream serve",
        n > 0 ? absl::StrCat(" (pid ", absl::StripAsciiWhitespace(pid), ")")
              : "",
        ": two servers on one directory would take each other's sessions; "
        "stop that one, or give this one its own --data-dir (to serve one "
        "store from several workers, run a gateway and workers on Redis: "
        "docs/deploy.md)"));
  }
  const std::string mine = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) != 0 || pwrite(fd, mine.data(), mine.size(), 0) !=
                                   static_cast<ssize_t>(mine.size())) {
    // The lock holds all the same; only the pid in a refusal is missing.
  }
  return fd;
}

// A small byte-level RWKV-7 with random weights, generated the same way
// every time, so `serve` works with no download. Its output is noise.
// Under --device auto, a choice the GPU refuses (int8 weights) runs on the
// CPU, as a --model does (LoadServedModel); `*device_used` says where.
absl::StatusOr<std::unique_ptr<engine::Model>> DemoModel(
    const DeviceChoice& device, std::string* device_used) {
  engine::RandomModelSpec spec;
  spec.n_layer = 2;
  spec.n_embd = 128;
  spec.vocab_size = 256;
  spec.seed = 20240424;
  auto options = EngineOptionsFromFlags();  // --threads, --precision
  if (!options.ok()) return options.status();
  options->device = device.device;
  options->cuda_verified_only = device.cpu_fallback;
  *device_used = device.device;
  auto model = engine::LoadRandomModel("x070", spec, *options);
  if (!model.ok() && device.cpu_fallback &&
      (model.status().code() == absl::StatusCode::kFailedPrecondition ||
       model.status().code() == absl::StatusCode::kResourceExhausted)) {
    std::cerr << "statestream serve: the demo model runs on the CPU: "
              << model.status().message() << "\n";
    options->device = "cpu";
    *device_used = "cpu";
    model = engine::LoadRandomModel("x070", spec, *options);
  }
  return model;
}

// The models of --model, or the demo model.
absl::StatusOr<std::vector<ServedModel>> LoadModels(
    const ServeOptions& options) {
  std::vector<ServedModel> out;
  if (options.models.empty()) {
    ServedModel demo;
    auto model = DemoModel(options.device, &demo.device);
    if (!model.ok()) return model.status();
    demo.model_id = "demo-random-bytes";
    demo.model = *std::move(model);
    demo.tokenizer = *engine::MakeByteTokenizer();
    out.push_back(std::move(demo));
    std::cerr << "statestream serve: no --model: serving the built-in demo "
                 "model \"demo-random-bytes\" (random weights, byte-level; "
                 "its output is noise)\n";
    return out;
  }
  for (const ModelSpec& spec : options.models) {
    auto served = LoadServedModel(spec, options.device);
    if (!served.ok()) return served.status();
    LogServedModel("serve", *served, spec);
    out.push_back(*std::move(served));
  }
  return out;
}

// `*models_out` is set to the models (for the drain hook) and `*store_out`
// to the store (for the readiness probe).
absl::StatusOr<ServiceSet> Build(const ServeOptions& options,
                                 worker::ModelSet** models_out,
                                 StateStore** store_out) {
  if (!options.data_dir.empty()) {
    std::error_code error;
    // A directory serve creates is private (0700): it holds every
    // tenant's state. One that exists is left as its owner set it.
    // The directories it creates are synced into their parents: the
    // store's fsyncs make the file durable, not its path.
    std::vector<std::filesystem::path> created;
    for (std::filesystem::path p =
             std::filesystem::absolute(options.data_dir, error);
         !error && !p.empty() && !std::filesystem::exists(p, error);
         p = p.parent_path()) {
      created.push_back(p);
    }
    if (!error && !created.empty() &&
        std::filesystem::create_directories(options.data_dir, error)) {
      std::filesystem::permissions(
          options.data_dir, std::filesystem::perms::owner_all,
          std::filesystem::perm_options::replace, error);
      for (const std::filesystem::path& p : created) {
        if (absl::Status synced = SyncDirectory(p.parent_path().string());
            !error && !synced.ok()) {
          return absl::FailedPreconditionError(
              absl::StrCat("cannot create --data-dir ", options.data_dir, ": ",
                           synced.message()));
        }
      }
    }
    if (error || !std::filesystem::is_directory(options.data_dir)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create --data-dir ", options.data_dir, ": ",
                       error ? error.message() : "not a directory"));
    }
    // The store writes its file, log and lock files there (even a read
    // takes a session's lease): say so at start, not as SQLite's "unable
    // to open database file".
    if (access(options.data_dir.c_str(), W_OK | X_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("--data-dir ", options.data_dir,
                       " is not writable: ", std::strerror(errno)));
    }
  }
  auto w = std::make_shared<Worker>();
  if (!options.data_dir.empty()) {
    auto lock = DataDirLock(options.data_dir);
    if (!lock.ok()) return lock.status();
    w->data_dir_lock = *lock;
  }
  auto models = LoadModels(options);
  if (!models.ok()) return models.status();
  absl::StatusOr<std::unique_ptr<StateStore>> store;
  if (options.data_dir.empty()) {
    std::cerr << "statestream serve: no --data-dir: sessions live in memory "
                 "and are lost when the server exits\n";
    store = NewMemoryStateStore(MemoryStateStoreOptions{});
  } else {
    SqliteStateStoreOptions sqlite;
    sqlite.path =
        (std::filesystem::path(options.data_dir) / "sessions.db").string();
    store = NewSqliteStateStore(sqlite);
  }
  if (!store.ok()) return store.status();
  w->store = *std::move(store);
  *store_out = w->store.get();
  w->metrics = std::make_unique<worker::WorkerMetrics>(
      options.data_dir.empty() ? "memory" : "sqlite");
  worker::WorkerMetrics* metrics = w->metrics.get();
  worker::SchedulerOptions scheduler = options.scheduler;
  worker::SessionManagerOptions sessions = options.sessions;
  sessions.owner = absl::StrCat("serve-", getpid());
  AttachWorkerMetrics(metrics, &scheduler, &sessions);
  auto started =
      StartModels(*std::move(models), sessions, scheduler, w->store.get());
  if (!started.ok()) return started.status();
  w->models = *std::move(started);
  *models_out = w->models->set.get();
  auto secrets = std::make_shared<SecretFileMetrics>();
  auto http =
      ServeWorkerMetrics(metrics, w->models->set.get(), w->models->schedulers(),
                         options.metrics_listen, secrets);
  if (!http.ok()) return http.status();
  w->metrics_http = *std::move(http);
  auto policy = std::make_shared<worker::CallerPolicy>();
  policy->auth = options.tenants.auth;
  // No gateway in front cuts stalled clients off: the worker does.
  policy->client_stall_timeout = options.client_stall_timeout;
  if (options.tenants.NeedsLimits()) {
    // Sessions are counted in the embedded store, which outlives the
    // services (ServiceSet::Own below).
    policy->limits =
        std::make_shared<TenantLimits>(options.tenants.limits, w->store.get());
  }
  std::shared_ptr<SecretFileReloader> reloader =
      StartApiKeysReloader(options.tenants, policy->limits, "serve");
  secrets->Add(reloader);
  ServiceSet set =
      worker::PublicApiServices(w->models->set.get(), std::move(policy));
  set.Own(std::move(w));
  set.Own(std::move(reloader));  // stops first: it updates the limits
  return set;
}

int Run(const std::vector<std::string>& args) {
  BlockShutdownSignals();  // before any thread (a GPU driver's) starts
  if (!args.empty()) {
    return ReportUsageError(
        absl::StrCat("unexpected argument \"", args[0], "\""));
  }
  ServeOptions options;
  options.server = ServerOptionsFromFlags();
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  auto models = ParseModelList(ModelFlagValue(), VocabFlagValue());
  if (!models.ok()) {
    return ReportUsageError(models.status().message());
  }
  options.models = *std::move(models);
  auto device = EngineFlagsAndDevice("serve");
  if (!device.ok()) {
    return ReportUsageError(device.status().message());
  }
  options.device = *std::move(device);
  if (absl::Status s = ApplyWorkerFlags(&options.sessions, &options.scheduler);
      !s.ok()) {
    return ReportUsageError(s.message());
  }
  absl::StatusOr<std::string> metrics_listen = MetricsListenFromFlag();
  if (!metrics_listen.ok()) {
    return ReportUsageError(metrics_listen.status().message());
  }
  options.metrics_listen = *std::move(metrics_listen);
  auto tenants = TenantSetupFromFlags("serve");
  if (!tenants.ok()) {
    return ReportUsageError(tenants.status().message());
  }
  options.tenants = *std::move(tenants);
  absl::StatusOr<absl::Duration> client_stall = ClientStallTimeoutFromFlag();
  if (!client_stall.ok()) {
    return ReportUsageError(client_stall.status().message());
  }
  options.client_stall_timeout = *client_stall;
  TuneMallocForLargeBuffers();  // multi-MB states: docs/state-store.md
  // On SIGTERM, before gRPC drains: stop admitting (UNAVAILABLE with a
  // retry hint), end running generations gracefully (committed, finish
  // reason CANCELLED), commit dirty sessions, release every lease.
  worker::ModelSet* models_set = nullptr;
  StateStore* store = nullptr;
  ServerHooks hooks;
  hooks.draining = [&models_set] {
    if (models_set != nullptr) models_set->Drain();
  };
  // Ready while the embedded store answers (a SQLite file can fail).
  hooks.ready = [&store] { return store != nullptr && store->Ping().ok(); };
  return RunServer(
      "serve", options.server, ShutdownGraceFromFlag(),
      [&] { return Build(options, &models_set, &store); }, hooks);
}

}  // namespace

const Command& ServeCommand() {
  static const Command kCommand{
      "serve",
      "Run the all-in-one server (worker + embedded store); no setup needed.",
      "[flags]\n\n"
      "Serves the statestream.v1 API, grpc.health.v1 and server reflection\n"
      "from one process holding the model and an embedded state store.\n"
      "Without --model it serves a small built-in demo model with random\n"
      "weights (byte-level; its output is noise). Several models, of any\n"
      "architectures, are served side by side with\n"
      "  --model a.safetensors,chat=/m/b.pth [--vocab ,/m/vocab.txt]\n"
      "(ids \"a\" and \"chat\"; the first is the default model; --vocab\n"
      "entries pair with --model entries, and an empty one, or no --vocab,\n"
      "means rwkv_vocab_v20230424.txt beside the model; byte-level models\n"
      "need none). With --api-keys FILE callers authenticate with\n"
      "`authorization: Bearer TOKEN` (else any caller picks its tenant);\n"
      "--tenant-max-sessions/--tenant-max-streams limit each tenant.\n"
      "Stops cleanly (drains) on SIGINT, SIGTERM or SIGHUP.",
      {__FILE__, kServerFlagsFile, kClientStallFlagFile, kTlsFlagsFile,
       kTenantFlagsFile, kSecretsReloadFlagFile, kMetricsFlagsFile,
       kModelFlagFile, kVocabFlagFile, kDeviceFlagFile, kEngineFlagsFile,
       kWorkerFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
