// SPDX-License-Identifier: Apache-2.0
// `statestream serve`: the all-in-one server, a worker with the public API
// and an embedded state store.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "cli/metrics_flags.h"
#include "cli/model_flag.h"
#include "cli/model_loading.h"
#include "cli/server_flags.h"
#include "cli/worker_flags.h"
#include "cli/worker_metrics.h"
#include "common/malloc_tuning.h"
#include "state_store/memory_state_store.h"
#include "state_store/sqlite_state_store.h"
#include "worker/engine/random_model.h"
#include "worker/engine/weight_writer.h"
#include "worker/metrics.h"
#include "worker/metrics_http.h"
#include "worker/scheduler.h"
#include "worker/session_manager.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, data_dir, "",
          "Directory of the embedded state store, created if missing; empty "
          "keeps session state in memory only (lost on exit).");
namespace statestream::cli {
namespace {

struct ServeOptions {
  ServerOptions server;
  // Embedded store directory; empty: memory only.
  std::string data_dir;
  // Model weights file; empty: the built-in random demo model.
  std::string model_path;
  std::string vocab_path;  // empty: beside the model
  worker::SessionManagerOptions sessions;
  worker::SchedulerOptions scheduler;
  std::string metrics_listen;  // empty: no /metrics
};

// Everything the services point into, destroyed in reverse order.
struct Worker {
  std::unique_ptr<worker::WorkerMetrics> metrics;
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<worker::Scheduler> scheduler;
  std::unique_ptr<worker::SessionManager> sessions;
  std::unique_ptr<worker::MetricsHttpServer> metrics_http;
  ~Worker() {
    metrics_http.reset();
    if (sessions) sessions->Drain();  // commit, release leases
    sessions.reset();
    scheduler.reset();
  }
};

// A small byte-level RWKV-7 with random weights, generated the same way
// every time, so `serve` works with no download. Its output is noise.
absl::StatusOr<std::unique_ptr<engine::Model>> DemoModel() {
  engine::RandomModelSpec spec;
  spec.n_layer = 2;
  spec.n_embd = 128;
  spec.vocab_size = 256;
  spec.seed = 20240424;
  auto tensors = engine::RandomRwkv7(spec);
  if (!tensors.ok()) return tensors.status();
  const std::string path =
      absl::StrCat(std::filesystem::temp_directory_path().string(),
                   "/statestream-demo-", getpid(), ".safetensors");
  absl::Status written =
      engine::WriteCheckpoint(path, *tensors, engine::DType::kF32);
  if (!written.ok()) return written;
  auto model = engine::LoadModel(path);
  std::remove(path.c_str());  // the mapping stays valid
  return model;
}

// `*manager_out` is set to the session manager (for the drain hook) and
// `*store_out` to the store (for the readiness probe).
absl::StatusOr<ServiceSet> Build(const ServeOptions& options,
                                 worker::SessionManager** manager_out,
                                 StateStore** store_out) {
  if (!options.data_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(options.data_dir, error);
    if (error || !std::filesystem::is_directory(options.data_dir)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create --data-dir ", options.data_dir, ": ",
                       error ? error.message() : "not a directory"));
    }
  }
  auto w = std::make_shared<Worker>();
  worker::SessionManagerOptions sessions = options.sessions;
  if (options.model_path.empty()) {
    auto model = DemoModel();
    if (!model.ok()) return model.status();
    w->model = *std::move(model);
    w->tokenizer = *engine::MakeByteTokenizer();
    sessions.model_id = "demo-random-bytes";
    std::cerr << "statestream serve: no --model: serving the built-in demo "
                 "model \"demo-random-bytes\" (random weights, byte-level; "
                 "its output is noise)\n";
  } else {
    auto served = LoadServedModel(options.model_path, options.vocab_path);
    if (!served.ok()) return served.status();
    w->model = std::move(served->model);
    w->tokenizer = std::move(served->tokenizer);
    sessions.model_id = served->model_id;
  }
  absl::StatusOr<std::unique_ptr<StateStore>> store;
  if (options.data_dir.empty()) {
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
  sessions.owner = absl::StrCat("serve-", getpid());
  AttachWorkerMetrics(metrics, &scheduler, &sessions);
  w->scheduler = std::make_unique<worker::Scheduler>(w->model.get(), scheduler);
  auto manager = worker::SessionManager::Create(
      sessions, w->model.get(), w->tokenizer.get(), w->scheduler.get(),
      w->store.get());
  if (!manager.ok()) return manager.status();
  w->sessions = *std::move(manager);
  *manager_out = w->sessions.get();
  auto http = ServeWorkerMetrics(metrics, w->sessions.get(), w->scheduler.get(),
                                 options.metrics_listen);
  if (!http.ok()) return http.status();
  w->metrics_http = *std::move(http);
  ServiceSet set = worker::PublicApiServices(w->sessions.get());
  set.Own(std::move(w));
  return set;
}

int Run(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "statestream serve: unexpected argument \"" << args[0]
              << "\"\n";
    return kExitUsage;
  }
  ServeOptions options;
  options.server = ServerOptionsFromFlags();
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.model_path = ModelFlagValue();
  options.vocab_path = VocabFlagValue();
  ApplyWorkerFlags(&options.sessions, &options.scheduler);
  options.metrics_listen = MetricsListenFromFlag();
  // `serve` has no API keys: say so once, loudly.
  std::cerr << "statestream serve: WARNING: running UNAUTHENTICATED: any "
               "caller picks its tenant with the x-statestream-tenant header "
               "(put `statestream gateway --api-keys` in front to "
               "authenticate)\n";
  TuneMallocForLargeBuffers();  // multi-MB states: docs/state-store.md
  // On SIGTERM, before gRPC drains: stop admitting (UNAVAILABLE with a
  // retry hint), end running generations gracefully (committed, finish
  // reason CANCELLED), commit dirty sessions, release every lease.
  worker::SessionManager* manager = nullptr;
  StateStore* store = nullptr;
  ServerHooks hooks;
  hooks.draining = [&manager] {
    if (manager != nullptr) manager->Drain();
  };
  // Ready while the embedded store answers (a SQLite file can fail).
  hooks.ready = [&store] { return store != nullptr && store->Ping().ok(); };
  return RunServer(
      "serve", options.server, ShutdownGraceFromFlag(),
      [&] { return Build(options, &manager, &store); }, hooks);
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
      "weights (byte-level; its output is noise). --vocab defaults to\n"
      "rwkv_vocab_v20230424.txt beside --model (byte-level models need none).\n"
      "Stops cleanly on SIGINT or SIGTERM.",
      {__FILE__, kServerFlagsFile, kTlsFlagsFile, kMetricsFlagsFile,
       kModelFlagFile, kVocabFlagFile, kWorkerFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
