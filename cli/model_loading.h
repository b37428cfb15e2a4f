// SPDX-License-Identifier: Apache-2.0
// The models a worker process serves, shared by `serve` and `worker`: the
// --model/--vocab lists, the --device choice, loading, and one scheduler
// and session manager per model behind a worker::ModelSet.
#ifndef STATESTREAM_CLI_MODEL_LOADING_H_
#define STATESTREAM_CLI_MODEL_LOADING_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "state_store/state_store.h"
#include "worker/engine/model.h"
#include "worker/engine/tokenizer.h"
#include "worker/model_set.h"
#include "worker/scheduler.h"
#include "worker/session_manager.h"

namespace statestream::cli {

// A model id for the API from a checkpoint path: its stem, with characters
// outside [A-Za-z0-9._-] replaced by '-', at most 128 bytes.
std::string ModelIdFromPath(const std::string& path);

// One entry of --model, with its --vocab entry.
struct ModelSpec {
  std::string model_id;
  std::string path;
  std::string vocab_path;  // empty: beside the model
};

// Parses --model, a comma-separated list of PATH or ID=PATH entries (ID:
// 1-128 bytes of [A-Za-z0-9._-]; default ModelIdFromPath), and --vocab,
// empty or one comma-separated entry per model (an empty entry: the
// default). The first model is the default one. INVALID_ARGUMENT naming
// the flag for an empty entry, an id used twice, a bad id, or a --vocab
// list of another length. An empty --model gives no models.
absl::StatusOr<std::vector<ModelSpec>> ParseModelList(
    const std::string& models, const std::string& vocabs);

// Where the engine runs, from --device.
struct DeviceChoice {
  std::string device;  // "cpu" or "cuda" (engine::ModelOptions::device)
  // --device auto chose cuda: a model the CUDA backend cannot run, or runs
  // on a path not yet verified on a GPU (x060), is loaded on the cpu instead.
  bool cpu_fallback = false;
  std::string why;  // for the log: "--device auto: ..."
};

// --device: "cpu", "cuda" or "auto" (cuda when this build has the CUDA
// backend and a device is present, else cpu). INVALID_ARGUMENT for another
// value; FAILED_PRECONDITION for cuda without a usable CUDA device, saying
// why.
absl::StatusOr<DeviceChoice> ChooseDevice(const std::string& flag);

// What `serve` and `worker` need before loading: --threads and --precision
// checked, and --device chosen (ChooseDevice), the choice logged as
// "statestream ROLE: device ... (why)". An error is a usage error.
absl::StatusOr<DeviceChoice> EngineFlagsAndDevice(absl::string_view role);

// A served model. The scheduler and the session manager are added by
// StartModels; declared last, they are destroyed first.
struct ServedModel {
  std::string model_id;
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::string device;  // where it runs: "cpu" or "cuda"
  std::string note;    // why it runs elsewhere than asked; usually empty
  std::unique_ptr<worker::Scheduler> scheduler;
  std::unique_ptr<worker::SessionManager> sessions;
};

// Loads the checkpoint and its tokenizer: the byte tokenizer for a
// 256-token vocabulary, else `spec.vocab_path` (default:
// rwkv_vocab_v20230424.txt beside the model; a tokenizer.json gives the
// GPT-NeoX tokenizer). NOT_FOUND for a missing file; the loaders' errors
// otherwise, naming the flag and the model.
absl::StatusOr<ServedModel> LoadServedModel(const ModelSpec& spec,
                                            const DeviceChoice& device);

// The tokenizer LoadServedModel pairs with `model` (the byte tokenizer for
// a 256-token vocabulary, else spec.vocab_path or the file beside
// spec.path): the one a session's state fingerprint names.
absl::StatusOr<std::unique_ptr<engine::Tokenizer>> LoadServedTokenizer(
    const engine::Model& model, const ModelSpec& spec);

// One line to stderr: "statestream ROLE: model ID: ARCH, FILE on DEVICE"
// and, when it runs elsewhere than --device asked, why.
void LogServedModel(absl::string_view role, const ServedModel& model,
                    const ModelSpec& spec);

// Every model of a worker process, each with its own scheduler and session
// manager over the one store. Destruction drains them all (in parallel),
// then frees managers, schedulers and models, in that order.
struct ServedModels {
  std::vector<ServedModel> models;
  std::unique_ptr<worker::ModelSet> set;
  ~ServedModels();

  std::vector<worker::Scheduler*> schedulers() const;
};

// Starts a scheduler (`scheduler` options) and a session manager
// (`sessions`, with model_id set per model) for each model. `store` must
// outlive the result. Errors of SessionManager::Create and ModelSet::Create.
absl::StatusOr<std::unique_ptr<ServedModels>> StartModels(
    std::vector<ServedModel> models,
    const worker::SessionManagerOptions& sessions,
    const worker::SchedulerOptions& scheduler, StateStore* store);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_MODEL_LOADING_H_
