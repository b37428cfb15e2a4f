// SPDX-License-Identifier: Apache-2.0
// The RWKV-7 forward pass on one CUDA device: weights in device memory,
// cuBLAS for every projection (fp32 accumulation), custom kernels for the
// token shift, norms, LoRA activations and the wkv7 recurrence. States are
// device buffers in the canonical layout (docs/state-format.md); the caller
// owns them. Compiled by nvcc; the interface is plain C++ with no CUDA or
// Abseil types (runner.h), so absl-using code (cuda_model.cc) and the
// benchmark talk to it without including CUDA headers.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_RWKV7_CUDA_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_RWKV7_CUDA_H_

#include <cstdint>
#include <memory>
#include <string>

#include "worker/engine/cuda/runner.h"

namespace statestream::engine::cuda {

struct Dims {
  int n_layer = 0, n_embd = 0, n_head = 0, head_size = 0, dim_ffn = 0,
      vocab_size = 0;
  int d_decay = 0, d_aaa = 0, d_mv = 0, d_gate = 0;
  int64_t StateFloats() const {
    return static_cast<int64_t>(n_layer) *
           (2 * n_embd + static_cast<int64_t>(n_head) * head_size * head_size);
  }
};

enum LayerVec {
  kLn1W,
  kLn1B,
  kLn2W,
  kLn2B,
  kXr,
  kXw,
  kXk,
  kXv,
  kXa,
  kXg,
  kW0,
  kA0,
  kV0,
  kKk,
  kKa,
  kRk,
  kLnxW,
  kLnxB,
  kFfnXk,
  kLayerVecCount
};
// LoRA factors are given transposed, [out][in] like the Linear weights.
enum LayerMat {
  kW1,
  kW2,
  kA1,
  kA2,
  kV1,
  kV2,
  kG1,
  kG2,
  kRecept,
  kKey,
  kValue,
  kOutput,
  kFfnKey,
  kFfnValue,
  kLayerMatCount
};

// The x070 runner: the shared StepRunner plus the x070 layer tensors.
class Runner : public StepRunner {
 public:
  static std::unique_ptr<Runner> Create(const Dims& dims,
                                        const RunnerOptions& options,
                                        std::string* error);

  virtual bool SetLayerVector(int layer, LayerVec which, const float* v,
                              std::string* error) = 0;
  virtual bool SetLayerMatrix(int layer, LayerMat which, const HostMatrix& m,
                              std::string* error) = 0;
  virtual const Dims& dims() const = 0;
};

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_RWKV7_CUDA_H_
