// SPDX-License-Identifier: Apache-2.0
// What every architecture's CUDA runner shares (rwkv7_cuda.h, rwkv6_cuda.h):
// the options, the batch description and StepRunner, the part of a runner
// that cuda_model.cc and the benchmark drive once the weights are uploaded.
// Plain C++ with no CUDA or Abseil types; errors are `false` plus a message.
// A runner is not thread-safe: one caller at a time (cuda_model.cc
// serialises).
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_RUNNER_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_RUNNER_H_

#include <cstdint>
#include <string>

namespace statestream::engine::cuda {

// Head sizes the recurrence kernels are instantiated for (x070 and x060).
bool HeadSizeSupported(int head_size);

// How the large matrices (receptance/key/value/gate/output, FFN, head) are
// held and multiplied. LoRA factors are always fp32.
enum class MatMode {
  kF32,        // fp32 weights and activations (no TF32): CPU-level accuracy
  kBF16,       // bf16 weights, activations rounded to bf16 (tensor cores)
  kBF16Split,  // bf16 weights; activations as bf16 hi + lo parts, two
               // products (about fp32 accuracy at twice the math)
};
const char* MatModeName(MatMode mode);

struct RunnerOptions {
  MatMode mode = MatMode::kBF16;
  // Rows per chunk; scratch memory grows linearly (about 100 floats * C per
  // row plus F-sized FFN buffers).
  int max_rows = 1024;
  int device = 0;
  // Replay a CUDA graph per chunk shape (rows, segments, logit rows) instead
  // of launching kernels one by one.
  bool graphs = true;
};

// Vectors outside the layers, the same for every architecture.
enum GlobalVec { kLn0W, kLn0B, kLnOutW, kLnOutB, kGlobalVecCount };

// A host [rows][cols] matrix, exactly one of f32 / bf16 set.
struct HostMatrix {
  int rows = 0, cols = 0;
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
};

// One sequence of a batch. `state` is a device pointer; `logits` a host or
// device pointer (see Forward) for n_positions * vocab floats; `last_hidden`
// (optional, same kind of memory) receives the residual stream after the
// last layer for the last token (n_embd floats).
struct SeqWork {
  const int32_t* tokens = nullptr;
  int64_t n_tokens = 0;
  float* state = nullptr;
  const int32_t* positions = nullptr;
  int64_t n_positions = 0;
  float* logits = nullptr;
  float* last_hidden = nullptr;
};

// Number of CUDA devices, 0 when there is none or no usable driver (then
// `why` says what the runtime reported).
int DeviceCount(std::string* why);
std::string DeviceName(int device);

class StepRunner {
 public:
  virtual ~StepRunner() = default;

  // Weight upload (host -> device) of what every architecture has. Token
  // and vocabulary-sized matrices: emb [V][C] (kept as given), head [V][C]
  // (converted to the mode).
  virtual bool SetGlobalVector(GlobalVec which, const float* v,
                               std::string* error) = 0;
  virtual bool SetEmbedding(const HostMatrix& m, std::string* error) = 0;
  virtual bool SetHead(const HostMatrix& m, std::string* error) = 0;
  // Fills every weight on the device with random values at the scales of
  // random_model.cc (for benchmarks: no host copy of the weights).
  virtual bool Randomize(uint64_t seed, std::string* error) = 0;
  // Bytes of weights read per forward pass (all matrices except the
  // embedding table): the numerator of the bandwidth roofline.
  virtual int64_t WeightBytesPerPass() const = 0;
  // Floats of one state in the canonical layout (docs/state-format.md).
  virtual int64_t StateFloats() const = 0;

  // Device memory for `count` states (zeroed); nullptr on failure.
  virtual float* AllocStates(int64_t count, std::string* error) = 0;
  virtual void FreeStates(float* states) = 0;
  // Any other device buffer of `floats` floats (zeroed); free with
  // FreeStates.
  virtual float* AllocFloats(int64_t floats, std::string* error) = 0;
  // Copies `floats` floats between host and device state memory (sync).
  virtual bool Upload(float* device_dst, const float* host_src, int64_t floats,
                      std::string* error) = 0;
  virtual bool Download(float* host_dst, const float* device_src,
                        int64_t floats, std::string* error) = 0;

  // Runs the batch (tokens already validated by the caller; each state used
  // by at most one sequence). Logits go to host memory when
  // `logits_on_host`, else to device memory. Returns when done.
  virtual bool Forward(const SeqWork* seqs, int n, bool logits_on_host,
                       std::string* error) = 0;

  // logits[rows][vocab] from hidden[rows][n_embd] (ln_out + head), host
  // memory. Matches Forward's logits bit for bit when Forward computed the
  // same number of logit rows in its chunk (cuBLAS may pick another
  // algorithm for another row count), else within rounding.
  virtual bool Logits(const float* hidden, int rows, float* logits,
                      std::string* error) = 0;
};

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_RUNNER_H_
