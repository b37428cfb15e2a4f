// SPDX-License-Identifier: Apache-2.0
// The RWKV-6 "x060" forward pass on one CUDA device, built like the x070
// one (rwkv7_cuda.h; docs/cuda.md): weights in device memory, cuBLAS for
// every projection and LoRA factor (fp32 accumulation), custom kernels for
// the data-dependent token shift, the wkv6 recurrence (fp32 state,
// S[key][value] as docs/state-format.md), GroupNorm and gate, chunks of
// rows over the whole batch, CUDA graphs. Plain C++ interface (runner.h).
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_CUDA_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_CUDA_H_

#include <cstdint>
#include <memory>
#include <string>

#include "worker/engine/cuda/runner.h"

namespace statestream::engine::cuda {

struct Rwkv6Dims {
  int n_layer = 0, n_embd = 0, n_head = 0, head_size = 0, dim_ffn = 0,
      vocab_size = 0;
  int d_mix = 0;    // rank of each of the five time_maa LoRAs
  int d_decay = 0;  // rank of the time_decay LoRA
  int64_t StateFloats() const {
    return static_cast<int64_t>(n_layer) *
           (2 * n_embd + static_cast<int64_t>(n_head) * head_size * head_size);
  }
};

// Per-layer vectors, each n_embd floats (time_faaaa [H][N] flattened).
enum class Vec6 {
  kLn1W,
  kLn1B,
  kLn2W,
  kLn2B,
  kMaaX,
  kMaaW,  // kMaaW..kMaaG: the order of time_maa_w1/w2
  kMaaK,
  kMaaV,
  kMaaR,
  kMaaG,
  kDecay,
  kBonus,
  kLnxW,
  kLnxB,
  kFfnMaaK,
  kFfnMaaR,
  kCount
};

// Per-layer matrices, [out][in]. LoRA factors come transposed (as
// WeightLoader::MatT gives them): kMaaW1 [5*d_mix][C], kDecayW1
// [d_decay][C], kDecayW2 [C][d_decay]; kMaaW2 is the five [C][d_mix]
// transposed time_maa_w2 factors stacked, [5*C][d_mix].
enum class Mat6 {
  kMaaW1,
  kMaaW2,
  kDecayW1,
  kDecayW2,
  kRecept,  // kRecept..: the large matrices (MatMode)
  kKey,
  kValue,
  kGate,
  kOutput,
  kFfnKey,
  kFfnRecept,
  kFfnValue,
  kCount
};

class Rwkv6Runner : public StepRunner {
 public:
  // nullptr and `error` for unsupported head sizes (HeadSizeSupported) and
  // CUDA failures.
  static std::unique_ptr<Rwkv6Runner> Create(const Rwkv6Dims& dims,
                                             const RunnerOptions& options,
                                             std::string* error);

  virtual bool SetLayerVector(int layer, Vec6 which, const float* v,
                              std::string* error) = 0;
  virtual bool SetLayerMatrix(int layer, Mat6 which, const HostMatrix& m,
                              std::string* error) = 0;
  virtual const Rwkv6Dims& dims() const = 0;
};

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_CUDA_H_
