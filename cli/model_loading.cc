// SPDX-License-Identifier: Apache-2.0
#include "cli/model_loading.h"

#include <cctype>
#include <filesystem>
#include <iostream>
#include <map>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/engine_flags.h"
#include "cli/model_flag.h"
#include "common/status.h"
#include "worker/request_memo.h"

namespace statestream::cli {
namespace {

bool IsModelIdChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
         c == '-';
}

bool IsModelId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!IsModelIdChar(c)) return false;
  }
  return true;
}

absl::Status BadList(absl::string_view flag, absl::string_view why) {
  return InvalidArgumentError(Reason::kInvalidArgument,
                              absl::StrCat("--", flag, ": ", why));
}

std::vector<std::string> SplitList(const std::string& list) {
  std::vector<std::string> out;
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    out.emplace_back(absl::StripAsciiWhitespace(entry));
  }
  return out;
}

}  // namespace

std::string ModelIdFromPath(const std::string& path) {
  std::string id = std::filesystem::path(path).stem().string();
  for (char& c : id) {
    if (!IsModelIdChar(c)) c = '-';
  }
  return id.empty() ? "model" : id.substr(0, 128);
}

absl::StatusOr<std::vector<ModelSpec>> ParseModelList(
    const std::string& models, const std::string& vocabs) {
  std::vector<ModelSpec> out;
  if (models.empty()) {
    if (!vocabs.empty()) return BadList("vocab", "needs --model");
    return out;
  }
  std::map<std::string, std::string> paths_by_id;
  const std::vector<std::string> entries = SplitList(models);
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string& entry = entries[i];
    if (entry.empty()) {
      return BadList("model", absl::StrCat("entry ", i + 1, " of ",
                                           entries.size(), " is empty"));
    }
    ModelSpec spec;
    // ID=PATH when what precedes the first '=' is an id (a path with a
    // '=' in its first component can be written ./a=b.pth).
    const size_t eq = entry.find('=');
    if (eq != std::string::npos && IsModelId(entry.substr(0, eq))) {
      spec.model_id = entry.substr(0, eq);
      spec.path = entry.substr(eq + 1);
      if (spec.path.empty()) {
        return BadList("model", absl::StrCat("\"", entry, "\" has no path"));
      }
    } else {
      if (eq == 0) {
        return BadList("model", absl::StrCat("\"", entry, "\" has no id"));
      }
      spec.path = entry;
      spec.model_id = ModelIdFromPath(entry);
    }
    auto [it, fresh] = paths_by_id.emplace(spec.model_id, spec.path);
    if (!fresh) {
      return BadList("model",
                     absl::StrCat("two models have the id \"", spec.model_id,
                                  "\" (", it->second, " and ", spec.path,
                                  "); name them with ID=PATH, e.g. ",
                                  spec.model_id, "-2=", spec.path));
    }
    out.push_back(std::move(spec));
  }
  if (!vocabs.empty()) {
    const std::vector<std::string> v = SplitList(vocabs);
    if (v.size() != out.size()) {
      return BadList(
          "vocab",
          absl::StrCat(v.size(), v.size() == 1 ? " entry" : " entries", " for ",
                       out.size(), out.size() == 1 ? " model" : " models",
                       ": give one per --model entry, in the same order (an "
                       "empty entry keeps the default, e.g. --vocab=,v.txt)"));
    }
    for (size_t i = 0; i < v.size(); ++i) {
      // tokenize/detokenize's "bytes" is no file; a served model picks the
      // byte-level tokenizer by itself, from its 256-token vocabulary.
      if (v[i] == "bytes") {
        return BadList("vocab",
                       "\"bytes\" is for tokenize and detokenize; a served "
                       "model with 256 tokens is byte-level by itself (leave "
                       "its entry empty)");
      }
      out[i].vocab_path = v[i];
    }
  }
  return out;
}

absl::StatusOr<DeviceChoice> ChooseDevice(const std::string& flag) {
  DeviceChoice choice;
  if (flag == "cpu") {
    choice.device = "cpu";
    choice.why = "--device cpu";
    return choice;
  }
  if (flag != "cuda" && flag != "auto") {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "--device must be cpu, cuda or auto");
  }
  const absl::Status cuda = engine::CudaDeviceStatus();
  if (flag == "cuda") {
    if (!cuda.ok()) {
      return FailedPreconditionError(
          Reason::kInvalidArgument,
          absl::StrCat("--device cuda: ", cuda.message()));
    }
    choice.device = "cuda";
    choice.why = "--device cuda";
    return choice;
  }
  if (cuda.ok()) {
    choice.device = "cuda";
    choice.cpu_fallback = true;
    choice.why =
        "--device auto: a CUDA device is present (models the CUDA backend "
        "cannot run stay on the cpu)";
  } else {
    choice.device = "cpu";
    choice.why = absl::StrCat("--device auto: ", cuda.message());
  }
  return choice;
}

absl::StatusOr<DeviceChoice> EngineFlagsAndDevice(absl::string_view role) {
  SS_RETURN_IF_ERROR(EngineOptionsFromFlags().status());
  SS_ASSIGN_OR_RETURN(DeviceChoice device, ChooseDevice(DeviceFlagValue()));
  std::cerr << "statestream " << role << ": device " << device.device << " ("
            << device.why << ")\n";
  return device;
}

absl::StatusOr<ServedModel> LoadServedModel(const ModelSpec& spec,
                                            const DeviceChoice& device) {
  ServedModel out;
  out.model_id = spec.model_id;
  out.device = device.device;
  // --threads and --precision (cli/engine_flags.h) apply to every model.
  SS_ASSIGN_OR_RETURN(engine::ModelOptions options, EngineOptionsFromFlags());
  options.device = device.device;
  options.cuda_verified_only = device.cpu_fallback;  // --device auto
  auto model = engine::LoadModel(spec.path, options);
  // Under --device auto, a model the GPU cannot run (FAILED_PRECONDITION)
  // or cannot hold (RESOURCE_EXHAUSTED: out of device memory) runs on the
  // CPU.
  if (!model.ok() && device.cpu_fallback &&
      (model.status().code() == absl::StatusCode::kFailedPrecondition ||
       model.status().code() == absl::StatusCode::kResourceExhausted)) {
    out.device = "cpu";
    out.note = std::string(model.status().message());
    options.device = "cpu";
    model = engine::LoadModel(spec.path, options);
  }
  if (!model.ok()) {
    // With its reason (INVALID_MODEL_FILE, ...); the path once: a file's
    // errors start with it, the loader's (a missing tensor) do not.
    const absl::string_view message = model.status().message();
    return WithMessage(model.status(), absl::StartsWith(message, spec.path)
                                           ? absl::StrCat("--model ", message)
                                           : absl::StrCat("--model ", spec.path,
                                                          ": ", message));
  }
  out.model = *std::move(model);
  SS_ASSIGN_OR_RETURN(out.tokenizer, LoadServedTokenizer(*out.model, spec));
  return out;
}

absl::StatusOr<std::unique_ptr<engine::Tokenizer>> LoadServedTokenizer(
    const engine::Model& model, const ModelSpec& spec) {
  if (model.info().config.vocab_size == 256) {
    return engine::MakeByteTokenizer();
  }
  std::string vocab = spec.vocab_path;
  if (vocab.empty()) {
    vocab = (std::filesystem::path(spec.path).parent_path() /
             "rwkv_vocab_v20230424.txt")
                .string();
  }
  auto tokenizer = engine::LoadTokenizerFile(vocab);
  if (!tokenizer.ok()) {
    return absl::Status(
        tokenizer.status().code(),
        absl::StrCat("--vocab ", vocab, " (model ", spec.model_id,
                     "): ", tokenizer.status().message()));
  }
  // Text would tokenize to ids the model has no row for, and its samples
  // to ids the tokenizer cannot spell.
  const int model_vocab = model.info().config.vocab_size;
  if ((*tokenizer)->vocab_size() != model_vocab) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
        absl::StrCat(
            "--vocab ", vocab, " has ", (*tokenizer)->vocab_size(),
            " token ids but model ", spec.model_id, " has ", model_vocab,
            spec.vocab_path.empty()
                ? " (no --vocab given: the World vocabulary beside the model "
                  "was tried; give the model's own with --vocab, or serve a "
                  "byte-level model of 256 ids, which needs none)"
                : " (give the model's own vocabulary)"));
  }
  return tokenizer;
}

void LogServedModel(absl::string_view role, const ServedModel& model,
                    const ModelSpec& spec) {
  std::cerr << "statestream " << role << ": model " << model.model_id << ": "
            << engine::ArchName(model.model->info().config.arch) << ", "
            << spec.path << " on " << model.device << ", "
            << model.model->info().kernels << " kernels";
  if (PrecisionFlagValue() != "as-stored") {
    std::cerr << ", " << PrecisionFlagValue() << " weights";
  }
  if (!Bf16ActivationsFlagValue().empty()) {
    std::cerr << ", bf16 activations " << Bf16ActivationsFlagValue();
  }
  if (!model.note.empty()) std::cerr << " (" << model.note << ")";
  std::cerr << "\n";
}

ServedModels::~ServedModels() {
  if (set != nullptr) set->Drain();  // commit, release leases
  set.reset();
  for (ServedModel& m : models) m.sessions.reset();
  for (ServedModel& m : models) m.scheduler.reset();
}

std::vector<worker::Scheduler*> ServedModels::schedulers() const {
  std::vector<worker::Scheduler*> out;
  for (const ServedModel& m : models) out.push_back(m.scheduler.get());
  return out;
}

absl::StatusOr<std::unique_ptr<ServedModels>> StartModels(
    std::vector<ServedModel> models,
    const worker::SessionManagerOptions& sessions,
    const worker::SchedulerOptions& scheduler, StateStore* store) {
  auto out = std::make_unique<ServedModels>();
  out->models = std::move(models);
  std::vector<worker::SessionManager*> managers;
  // One request-id memo for all models: a retried delete of a session of a
  // later model lands on the first model's manager once the session is gone.
  auto memo = sessions.request_memo != nullptr
                  ? sessions.request_memo
                  : std::make_shared<worker::RequestMemo>(
                        sessions.request_id_window,
                        sessions.max_create_request_ids, sessions.clock);
  for (ServedModel& m : out->models) {
    // Its step pool and loop thread start here: out of threads or address
    // space is an error like the model's own pool (LoadModel), not an
    // abort.
    try {
      m.scheduler =
          std::make_unique<worker::Scheduler>(m.model.get(), scheduler);
    } catch (const std::system_error& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("model ", m.model_id,
                       ": cannot start the scheduler's threads: ", e.what()));
    }
    worker::SessionManagerOptions options = sessions;
    options.request_memo = memo;
    options.model_id = m.model_id;
    auto manager = worker::SessionManager::Create(
        options, m.model.get(), m.tokenizer.get(), m.scheduler.get(), store);
    if (!manager.ok()) {
      return absl::Status(
          manager.status().code(),
          absl::StrCat("model ", m.model_id, ": ", manager.status().message()));
    }
    m.sessions = *std::move(manager);
    managers.push_back(m.sessions.get());
  }
  auto set = worker::ModelSet::Create(std::move(managers), store);
  if (!set.ok()) return set.status();
  out->set = *std::move(set);
  return out;
}

}  // namespace statestream::cli
