// SPDX-License-Identifier: Apache-2.0
// The engine's one seam: a loaded model is a pure step over explicit state,
//   (weights, state, tokens) -> (logits, new state).
// Weights are read-only after loading; a session's state is a plain fp32
// array owned by the caller, so saving it is copying bytes. One Model serves
// any number of sessions; Forward processes a batch of them in one pass,
// reading each weight matrix once per pass.
//
// Determinism: for the same tokens from the same state, Forward produces
// bit-identical logits and states whether the tokens come in one call or
// many, in chunks of any size, alone or batched with other sessions, on any
// thread count and on any of the CPU kernel builds. docs/engine.md explains
// how the kernels guarantee it.
#ifndef STATESTREAM_WORKER_ENGINE_MODEL_H_
#define STATESTREAM_WORKER_ENGINE_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/engine/weight_file.h"

namespace statestream::engine {

enum class Arch { kRwkv7, kRwkv6, kRwkv5, kRwkv4 };

// "x070", "x060", "x052" (RWKV-5.2) or "v4" (the names used by the official
// code and the golden files).
const char* ArchName(Arch arch);

// Dimensions, all read from tensor shapes.
struct ModelConfig {
  Arch arch = Arch::kRwkv7;
  int n_layer = 0;
  int n_embd = 0;     // C
  int n_head = 0;     // H (0 for v4, which has no heads)
  int head_size = 0;  // N; C == H * N
  int dim_ffn = 0;
  int vocab_size = 0;
  // LoRA ranks (x070): decay, in-context learning rate, value residual, gate.
  // x060 uses d_decay (time_decay_w1) and d_mix (time_maa_w1, per mix).
  int d_decay = 0, d_aaa = 0, d_mv = 0, d_gate = 0;
  int d_mix = 0;
};

// How weight matrices are held in memory. Compute is fp32 either way.
enum class WeightPrecision {
  kAsStored,  // fp32 and bf16 as in the file (no copy when possible); fp16 ->
              // fp32
  kF32,       // everything fp32
  kBF16,      // large matrices rounded to bf16 (halves memory and bandwidth)
  kInt8,      // large matrices as int8 with one fp32 scale per output row
              // (a quarter of fp32's bytes; accuracy in docs/engine-kernels.md)
};

// The activations of products with bf16 weights.
enum class Bf16Activations {
  // The backend's own: kSplit on the CPU, kRound on CUDA (docs/cuda.md).
  kDefault,
  // Two bf16 terms, hi and lo (16 significant bits): the bf16 goldens hold
  // at 1e-4 and the logit error is the bf16 weights' own.
  kSplit,
  // Rounded to bf16 (8 significant bits), as 16-bit engines and the
  // reference's bf16 mode compute: half the arithmetic of batched decode
  // and prefill, at an accuracy cost measured in docs/engine-kernels.md.
  kRound,
};

struct ModelOptions {
  WeightPrecision precision = WeightPrecision::kAsStored;
  Bf16Activations bf16_activations = Bf16Activations::kDefault;
  // Engine threads including the caller's; 0 = one per hardware thread.
  int threads = 0;
  // Kernel build: "" = best for this CPU, or "avx512" / "avx2" / "scalar".
  std::string kernels;
  // Debug hook for locating numerical differences: when set, called with
  // the intermediate vectors of the first row of every chunk (layer -1 for
  // "x_after_ln0"; names as in ../shared/testdata/README.md's trace).
  // Feed one token per call to trace a position. Leave empty in serving.
  std::function<void(int layer, const char* name, const float* values, int n)>
      trace;
  // Backend: "" or "cpu", or "cuda" (GPU 0; needs a build with
  // STATESTREAM_CUDA and a device, else FAILED_PRECONDITION). The CUDA
  // backend matches the CPU one within tolerance, not bit for bit
  // (docs/cuda.md); `threads`, `kernels` and `trace` do not apply to it.
  std::string device;
  // With device "cuda": refuse (FAILED_PRECONDITION) architectures whose
  // CUDA path has not yet passed its tests on a GPU — x060 today
  // (docs/cuda.md) — so `--device auto` keeps them on the cpu while an
  // explicit `--device cuda` still runs them.
  bool cuda_verified_only = false;
};

struct ModelInfo {
  ModelConfig config;
  int64_t params = 0;        // number of weights in the checkpoint
  int64_t state_floats = 0;  // length of one session's state
  // Architecture, dimensions and a digest (XXH3-128) of the weights exactly
  // as the engine computes with them, e.g. "x070-L2-C128-H2-F512-V512-<hex>".
  // A state is only valid for a model with the same fingerprint.
  std::string fingerprint;
  std::string kernels;  // the kernel build in use
  // The element type most matrix weights are held in: "fp32", "bf16" or
  // "int8" (fp16 files are widened to fp32).
  std::string weights_dtype;
  // With bf16 matrices, how their products take the activations: "split"
  // (two bf16 terms) or "round" (Bf16Activations); else empty.
  std::string bf16_activations;
};

// One session's work in a batch. `state` (info().state_floats floats, in the
// canonical layout of docs/state-format.md) is read and updated in place.
// For each entry p of `logit_positions` (an index into `tokens`), the logits
// after tokens[p] are written to logits[j * vocab_size ...] where j is the
// entry's index. When `last_hidden` is set, the residual stream after the
// last layer for the last token (n_embd floats) is written there: keep it
// with a checkpoint and Logits() recreates the next-token logits without
// re-running a token.
struct SequenceWork {
  absl::Span<const int32_t> tokens;
  float* state = nullptr;
  absl::Span<const int32_t> logit_positions;
  float* logits = nullptr;
  float* last_hidden = nullptr;
};

// Thread-safe: Forward may be called concurrently (calls share the thread
// pool and are serialised inside it), but two concurrent calls must not
// share a state buffer.
class Model {
 public:
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelInfo& info() const { return info_; }

  // Runs every sequence of `batch` from its state. Validates the whole batch
  // first: an out-of-range token (INVALID_ARGUMENT, kInvalidToken), a bad
  // position or a null buffer (INVALID_ARGUMENT) changes no state. Sequences
  // with no tokens are left untouched.
  virtual absl::Status Forward(absl::Span<const SequenceWork> batch) = 0;

  // Logits for `rows` hidden vectors (each n_embd floats, as written to
  // SequenceWork::last_hidden) into logits[rows * vocab_size]. Bit-identical
  // to the logits Forward returned for the same token.
  virtual absl::Status Logits(const float* hidden, int rows, float* logits) = 0;

  // Writes the initial state of a session into `state`: all zeros, except
  // where an architecture says otherwise (RWKV-4: pp = -1e30).
  virtual void InitState(float* state) const;

 protected:
  explicit Model(ModelInfo info) : info_(std::move(info)) {}
  absl::Status ValidateBatch(absl::Span<const SequenceWork> batch) const;
  // For loaders, which learn the parameter count and digest last.
  ModelInfo& mutable_info() { return info_; }

 private:
  ModelInfo info_;
};

// Detects the architecture from the tensor names and loads it. The model
// keeps `file` alive: weights used as stored are read from its mapping.
// Errors: INVALID_ARGUMENT / kInvalidModelFile for missing tensors, wrong
// shapes or an unknown architecture.
absl::StatusOr<std::unique_ptr<Model>> LoadModel(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options = {});
// OK when LoadModel can use device "cuda" here; otherwise
// FAILED_PRECONDITION saying why (built without CUDA, or "no CUDA device").
absl::Status CudaDeviceStatus();

// Opens `path` (.pth or .safetensors) and loads it.
absl::StatusOr<std::unique_ptr<Model>> LoadModel(
    const std::string& path, const ModelOptions& options = {});

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_MODEL_H_
