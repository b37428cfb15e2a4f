// SPDX-License-Identifier: Apache-2.0
// The host half of LoadRwkv6Cuda, exposed so tests can check it without a
// GPU: the configuration and the weights read exactly as rwkv6.cc reads
// them (same checks, same WeightLoader calls in the same order, hence the
// same fingerprint), laid out for Rwkv6Runner. Internal to the CUDA backend.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_CUDA_MODEL_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_CUDA_MODEL_H_

#include <vector>

#include "absl/status/status.h"
#include "worker/engine/cuda/rwkv6_cuda.h"
#include "worker/engine/model.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine::cuda_internal {

// Host copies (or views into the file mapping: keep the WeightFile alive)
// of every weight, indexed by the runner's enums.
struct Rwkv6Host {
  struct Layer {
    std::vector<float> vec[static_cast<int>(cuda::Vec6::kCount)];
    Matrix mat[static_cast<int>(cuda::Mat6::kCount)];
    std::vector<float>& v(cuda::Vec6 w) { return vec[static_cast<int>(w)]; }
    Matrix& m(cuda::Mat6 w) { return mat[static_cast<int>(w)]; }
  };
  Matrix emb, head;
  std::vector<float> gvec[cuda::kGlobalVecCount];
  std::vector<Layer> layers;
};

// LoadRwkv6's configuration: dimensions from shapes, INVALID_ARGUMENT
// (kInvalidModelFile) for a missing or misshapen tensor.
absl::Status ReadRwkv6Config(const WeightFile& file, WeightLoader& ld,
                             ModelConfig* config);
// Every weight, in rwkv6.cc's load order; afterwards
// rwkv::Fingerprint(config, ld) is the CPU engine's fingerprint.
absl::Status LoadRwkv6Host(const ModelConfig& config, WeightLoader& ld,
                           Rwkv6Host* host);

}  // namespace statestream::engine::cuda_internal

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_RWKV6_CUDA_MODEL_H_
