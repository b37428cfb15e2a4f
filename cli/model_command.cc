// SPDX-License-Identifier: Apache-2.0
// `statestream model info|eval|random`: inspect, run and create checkpoints
// from the command line. Output is JSON so scripts and acceptance checks can
// read it; logits are printed as the shortest decimal that parses back to
// the same float32.
#include <charconv>
#include <deque>
#include <fstream>
#include <iostream>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "cli/engine_flags.h"
#include "cli/model_flag.h"
#include "cli/model_loading.h"
#include "common/status.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"
#include "state_store/state_codec.h"
#include "worker/engine/accuracy.h"
#include "worker/engine/model.h"
#include "worker/engine/random_model.h"
#include "worker/engine/weight_writer.h"
#include "worker/generation_record.h"
#include "worker/session_manager.h"

ABSL_FLAG(std::string, positions, "",
          "eval: indices into --tokens whose logits to print (negative counts "
          "from the end); default: the last.");
ABSL_FLAG(std::string, state_in, "",
          "eval: start from this state file (a session's, as `session "
          "export` writes) instead of the initial state.");
ABSL_FLAG(std::string, state_out, "",
          "eval: write the final state to this file, as a session's "
          "(`session import` takes it; docs/state-format.md).");
ABSL_FLAG(std::string, arch, "x070",
          "random: architecture: x070, x060, x052 or v4.");
ABSL_FLAG(int, layers, 2, "random: number of layers.");
ABSL_FLAG(int, embd, 128, "random: width n_embd.");
ABSL_FLAG(int, head_size, 64,
          "random: head size (divides --embd; not for v4).");
ABSL_FLAG(int, ffn, 0, "random: FFN width; 0 = the architecture's default.");
ABSL_FLAG(uint64_t, seed, 1, "random: RNG seed.");
ABSL_FLAG(std::string, out, "",
          "random: output path; .safetensors or .pth by extension.");
ABSL_FLAG(int, length, 1000,
          "compare: tokens in the random sequence (when --tokens is not "
          "given).");

namespace statestream::cli {
namespace {

using engine::Model;
using engine::ModelOptions;

// --threads, --precision and --bf16-activations; bad values are usage
// errors.
absl::StatusOr<ModelOptions> EngineOptions() {
  absl::StatusOr<ModelOptions> options = EngineOptionsFromFlags();
  if (!options.ok()) return AsUsageError(options.status());
  return options;
}

absl::StatusOr<std::unique_ptr<Model>> LoadFlagModel() {
  const std::string path = ModelFlagValue();
  if (path.empty()) return UsageError("--model is required");
  SS_ASSIGN_OR_RETURN(ModelOptions options, EngineOptions());
  return engine::LoadModel(path, options);
}

std::string FloatText(float f) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), f);
  std::string s(buf, r.ptr);
  if (s == "inf" || s == "-inf" || s == "nan" || s == "-nan") {
    return "null";  // JSON has no non-finite numbers
  }
  return s;
}

absl::Status Info() {
  SS_ASSIGN_OR_RETURN(auto model, LoadFlagModel());
  const engine::ModelInfo& i = model->info();
  const engine::ModelConfig& c = i.config;
  nlohmann::ordered_json j;
  j["arch"] = engine::ArchName(c.arch);
  j["n_layer"] = c.n_layer;
  j["n_embd"] = c.n_embd;
  j["n_head"] = c.n_head;
  j["head_size"] = c.head_size;
  j["dim_ffn"] = c.dim_ffn;
  j["vocab"] = c.vocab_size;
  j["params"] = i.params;
  j["state_bytes"] = i.state_floats * 4;
  j["fingerprint"] = i.fingerprint;
  if (c.d_mix != 0) j["lora_mix"] = c.d_mix;
  j["lora"] = {{"decay", c.d_decay},
               {"aaa", c.d_aaa},
               {"mv", c.d_mv},
               {"gate", c.d_gate}};
  j["kernels"] = i.kernels;
  j["weights_dtype"] = i.weights_dtype;
  if (!i.bf16_activations.empty()) j["bf16_activations"] = i.bf16_activations;
  std::cout << j.dump() << "\n";
  return absl::OkStatus();
}

// `snapshot` after a token append of `tokens`, as a worker applies one:
// the undecided text bytes (tokenizer tail) are flushed into tokens first,
// and refused as INVALID_UTF8 when they end inside a character; a
// generation checkpointed mid-run is dropped (it cannot go on past new
// input); input_offset counts one unit per token given. Returns the tokens
// to run: the flushed ones, then `tokens`.
absl::StatusOr<std::vector<int32_t>> ApplyTokenAppend(
    const engine::Tokenizer& tokenizer, const std::vector<int32_t>& tokens,
    StateSnapshot* snapshot) {
  std::string sampler;
  std::deque<worker::GenerationRecord> records;
  worker::Utf8Carry carry;
  SS_RETURN_IF_ERROR(worker::DecodeSamplerSideData(snapshot->sampler_state,
                                                   &sampler, &records, &carry));
  const std::string& tail = snapshot->tokenizer_tail;
  const std::string open =
      carry.known && carry.input_offset == snapshot->input_offset &&
              !carry.bytes.empty()
          ? carry.bytes
          : tail.substr(Utf8CompletePrefixLength(tail));
  if (!open.empty()) {
    return MakeError(
        absl::StatusCode::kInvalidArgument, Reason::kInvalidUtf8,
        "the state's text ends inside a UTF-8 character, so tokens cannot "
        "follow it (the service refuses that append too)",
        {{"input_offset", absl::StrCat(snapshot->input_offset - open.size())}});
  }
  std::vector<int32_t> run = tokenizer.EncodeStream(tail, "", true).tokens;
  run.insert(run.end(), tokens.begin(), tokens.end());
  snapshot->tokenizer_tail.clear();
  worker::DropInProgressRecords(&records);
  snapshot->input_offset += tokens.size();
  snapshot->position += run.size();
  snapshot->sampler_state = worker::EncodeSamplerSideData(
      sampler, records, {"", snapshot->input_offset, true});
  return run;
}

absl::Status Eval() {
  SS_ASSIGN_OR_RETURN(std::vector<int32_t> tokens,
                      ParseIntList(TokensFlagValue(), "--tokens"));
  if (tokens.empty()) return UsageError("--tokens needs at least one token id");
  SS_ASSIGN_OR_RETURN(
      std::vector<int32_t> requested,
      ParseIntList(absl::GetFlag(FLAGS_positions), "--positions"));
  if (requested.empty()) requested.push_back(-1);
  const int n = static_cast<int>(tokens.size());
  std::vector<int32_t> positions;
  for (int32_t p : requested) {
    const int32_t q = p < 0 ? p + n : p;
    if (q < 0 || q >= n) {
      return UsageError(absl::StrCat("--positions: position ", p,
                                     " is outside the ", n, " tokens"));
    }
    positions.push_back(q);
  }
  SS_ASSIGN_OR_RETURN(auto model, LoadFlagModel());
  const engine::ModelInfo& info = model->info();
  const std::string in = absl::GetFlag(FLAGS_state_in);
  const std::string out = absl::GetFlag(FLAGS_state_out);
  if (!out.empty() && WritesToStdout(out)) {
    // The logits lines go there: the state would be mixed into them.
    return UsageError(
        "--state-out: stdout holds the logits lines; give a file");
  }
  StateSnapshot snapshot;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  if (!in.empty() || !out.empty()) {
    // A state file is a session's: it names the tokenizer `serve` pairs
    // with this model, so files move between eval and the service.
    ModelSpec spec;
    spec.model_id = ModelIdFromPath(ModelFlagValue());
    spec.path = ModelFlagValue();
    spec.vocab_path = VocabFlagValue();
    SS_ASSIGN_OR_RETURN(tokenizer, LoadServedTokenizer(*model, spec));
    snapshot.model_fingerprint =
        worker::SessionStateFingerprint(*model, *tokenizer);
  }
  snapshot.architecture = engine::ArchName(info.config.arch);
  snapshot.n_layer = info.config.n_layer;
  snapshot.n_embd = info.config.n_embd;
  snapshot.n_head = info.config.n_head;
  snapshot.head_size = info.config.head_size;
  snapshot.state.assign(info.state_floats, 0.0f);
  model->InitState(snapshot.state.data());
  if (!in.empty()) {
    SS_ASSIGN_OR_RETURN(std::string bytes, ReadFile(in));
    const std::string fingerprint = snapshot.model_fingerprint;
    SS_ASSIGN_OR_RETURN(snapshot, DecodeState(bytes));
    // Files `model eval` wrote before states named their tokenizer carry
    // the model's fingerprint alone (and never undecided text).
    if (snapshot.model_fingerprint == info.fingerprint) {
      snapshot.model_fingerprint = fingerprint;
    }
    SS_RETURN_IF_ERROR(
        CheckStateMatchesModel(snapshot, fingerprint, info.state_floats));
    // As an import checks them: the file written after would carry the
    // shape fields (a wrong n_embd beside this model's last_hidden never
    // decodes), and the counters need room for more input.
    SS_RETURN_IF_ERROR(worker::CheckStateShape(snapshot, info, fingerprint));
    snapshot.architecture = engine::ArchName(info.config.arch);
    snapshot.n_layer = info.config.n_layer;
    snapshot.n_embd = info.config.n_embd;
    snapshot.n_head = info.config.n_head;
    snapshot.head_size = info.config.head_size;
  }
  // What the model runs: with a state file, as the service applies a token
  // append (the state's undecided text first); else just --tokens.
  std::vector<int32_t> run = tokens;
  if (tokenizer != nullptr) {
    SS_ASSIGN_OR_RETURN(run, ApplyTokenAppend(*tokenizer, tokens, &snapshot));
    const int32_t flushed = static_cast<int32_t>(run.size() - tokens.size());
    for (int32_t& p : positions) p += flushed;
  }
  const int V = info.config.vocab_size;
  std::vector<float> logits(positions.size() * V);
  // The last token's hidden vector goes into --state-out, so that a
  // session imported from it can predict without another token.
  std::vector<float> hidden(info.config.n_embd);
  engine::SequenceWork work{run, snapshot.state.data(), positions,
                            logits.data(), hidden.data()};
  SS_RETURN_IF_ERROR(model->Forward({&work, 1}));
  snapshot.last_hidden = std::move(hidden);
  std::string line;
  const int32_t flushed = static_cast<int32_t>(run.size() - tokens.size());
  for (size_t j = 0; j < positions.size(); ++j) {
    // Indices into --tokens, whatever undecided text ran before them.
    line = absl::StrCat("{\"position\": ", positions[j] - flushed,
                        ", \"logits\": [");
    for (int v = 0; v < V; ++v) {
      if (v) line += ", ";
      line += FloatText(logits[j * V + v]);
    }
    line += "]}\n";
    std::cout << line;
  }
  if (!out.empty()) {
    SS_RETURN_IF_ERROR(WriteFileAtomically(out, EncodeState(snapshot)));
  }
  return absl::OkStatus();
}

absl::Status Random() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return UsageError("--out is required");
  engine::DType dtype;
  const std::string d = DtypeFlagValue();
  if (d.empty() || d == "f32" || d == "fp32") {
    dtype = engine::DType::kF32;
  } else if (d == "bf16") {
    dtype = engine::DType::kBF16;
  } else if (d == "f16") {
    dtype = engine::DType::kF16;
  } else {
    return UsageError("--dtype must be f32 (or fp32), bf16 or f16");
  }
  engine::RandomModelSpec spec;
  spec.n_layer = absl::GetFlag(FLAGS_layers);
  spec.n_embd = absl::GetFlag(FLAGS_embd);
  if (!absl::SimpleAtoi(VocabFlagValue(), &spec.vocab_size)) {
    return UsageError("random: --vocab must be the vocabulary size");
  }
  spec.head_size = absl::GetFlag(FLAGS_head_size);
  spec.dim_ffn = absl::GetFlag(FLAGS_ffn);
  spec.seed = absl::GetFlag(FLAGS_seed);
  // RandomModel refuses what the engine could not load (dimensions past
  // its limits, an unknown architecture): bad flag values, like the rest.
  // Within them, dimensions may still multiply past this machine's memory.
  try {
    absl::StatusOr<std::vector<engine::NamedTensor>> tensors =
        engine::RandomModel(absl::GetFlag(FLAGS_arch), spec);
    if (!tensors.ok()) {
      return tensors.status().code() == absl::StatusCode::kInvalidArgument
                 ? AsUsageError(tensors.status())
                 : tensors.status();
    }
    return engine::WriteCheckpoint(out, *tensors, dtype);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "not enough memory for a model of these dimensions (--layers, "
        "--embd, --vocab, --ffn)");
  }
}

// The checkpoint at --precision beside the same checkpoint in fp32 over one
// sequence: --tokens, or --length random ids drawn with --seed.
absl::Status Compare() {
  SS_ASSIGN_OR_RETURN(ModelOptions options, EngineOptions());
  if (options.precision == engine::WeightPrecision::kAsStored ||
      options.precision == engine::WeightPrecision::kF32) {
    return UsageError(
        "compare: --precision must be bf16 or int8 (the reference is f32)");
  }
  SS_ASSIGN_OR_RETURN(auto candidate, LoadFlagModel());
  ModelOptions ref_options = options;
  ref_options.precision = engine::WeightPrecision::kF32;
  SS_ASSIGN_OR_RETURN(auto reference,
                      engine::LoadModel(ModelFlagValue(), ref_options));
  SS_ASSIGN_OR_RETURN(std::vector<int32_t> tokens,
                      ParseIntList(TokensFlagValue(), "--tokens"));
  const int V = reference->info().config.vocab_size;
  if (tokens.empty()) {
    const int length = absl::GetFlag(FLAGS_length);
    if (length < 1 || length > (1 << 20)) {
      return UsageError("--length must be in [1, 2^20]");
    }
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
    tokens.resize(length);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % V);
  }
  SS_ASSIGN_OR_RETURN(engine::AccuracyReport r,
                      engine::CompareLogits(*reference, *candidate, tokens));
  nlohmann::ordered_json j;
  j["precision"] = PrecisionFlagValue();
  if (const std::string& a = candidate->info().bf16_activations; !a.empty()) {
    j["bf16_activations"] = a;
  }
  j["reference"] = "f32";
  j["positions"] = r.positions;
  j["max_abs_logit_error"] = r.max_abs_logit_error;
  j["rms_logit_error"] = r.rms_logit_error;
  j["max_abs_reference_logit"] = r.max_abs_reference_logit;
  j["top1_agreement"] = r.top1_agreement;
  j["mean_kl_nats"] = r.mean_kl;
  j["fingerprint"] = candidate->info().fingerprint;
  std::cout << j.dump() << "\n";
  return absl::OkStatus();
}

int RunModel(const std::vector<std::string>& args) {
  const std::string verb = args.empty() ? "" : args[0];
  if (verb != "info" && verb != "eval" && verb != "random" &&
      verb != "compare") {
    return ReportUsageError("expected a verb: info, eval, random or compare");
  }
  if (args.size() > 1) {
    // Every verb takes its inputs from flags (--model, --tokens, --out).
    return ReportStatus(UsageError(absl::StrCat(
        "model ", verb, " takes no arguments after the verb (got \"", args[1],
        "\"); see statestream model --help")));
  }
  absl::Status status;
  if (verb == "info") {
    status = Info();
  } else if (verb == "eval") {
    status = Eval();
  } else if (verb == "random") {
    status = Random();
  } else {
    status = Compare();
  }
  // Usage errors exit 2, other failures 1; so does output that did not
  // reach stdout (a full disk).
  if (status.ok()) status = FlushStdout();
  return ReportStatus(status);
}

}  // namespace

const Command& ModelCommand() {
  static const Command kCommand{
      "model",
      "Inspect, evaluate, create or compare model checkpoints.",
      "info|eval|random|compare [flags]\n\n"
      "  model info   --model PATH [--precision P] [--bf16-activations A]\n"
      "      JSON: arch, n_layer, n_embd, n_head, head_size, dim_ffn, vocab,\n"
      "      params, state_bytes, fingerprint, lora (and lora_mix), kernels,\n"
      "      weights_dtype and, with bf16 weights, bf16_activations.\n"
      "  model eval   --model PATH --tokens 1,2,3 [--positions 0,7,-1]\n"
      "               [--state-in F] [--state-out F] [--vocab F]\n"
      "               [--threads N]\n"
      "      One JSON line {\"position\": p, \"logits\": [...]} per position.\n"
      "      State files are sessions' (session export/import), named by\n"
      "      the model and the tokenizer serve pairs with it (--vocab, else\n"
      "      rwkv_vocab_v20230424.txt beside the model; none for 256 tokens).\n"
      "  model random --arch x070|x060|x052|v4 --layers L --embd C --vocab V\n"
      "               [--head-size 64] [--ffn F] [--seed S] [--dtype f32]\n"
      "               --out PATH\n"
      "      Writes a random-weight model with official key names.\n"
      "  model compare --model PATH --precision bf16|int8 [--length N]\n"
      "               [--bf16-activations split|round]\n"
      "               [--seed S | --tokens 1,2,3]\n"
      "      The model at that precision beside the same checkpoint in f32,\n"
      "      logits after every token: max/rms logit error, top-1 agreement\n"
      "      and mean KL divergence, as one JSON line.",
      {__FILE__, kModelFlagFile, kTokenFlagsFile, kVocabFlagFile,
       kEngineFlagsFile, kDtypeFlagFile},
      &RunModel};
  return kCommand;
}

}  // namespace statestream::cli
