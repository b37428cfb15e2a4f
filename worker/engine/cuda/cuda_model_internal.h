// SPDX-License-Identifier: Apache-2.0
// What the per-architecture CUDA loaders (cuda_model.cc for x070,
// rwkv6_cuda_model.cc for x060) share: the engine::Model over a runner and
// the small steps every loader takes. Internal to the CUDA backend.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_CUDA_MODEL_INTERNAL_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_CUDA_MODEL_INTERNAL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "worker/engine/cuda/cuda_model.h"
#include "worker/engine/cuda/runner.h"
#include "worker/engine/model.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine::cuda_internal {

// INTERNAL "CUDA backend: <what>: <detail>".
absl::Status CudaError(absl::string_view what, const std::string& detail);
// INVALID_ARGUMENT (kInvalidModelFile) for head sizes the kernels lack.
absl::Status CheckHeadSize(int head_size);

// A view of a loaded matrix (fp32 or bf16; never int8 on this backend).
cuda::HostMatrix View(const Matrix& m);
// Uploads emb, head and the kGlobalVecCount vectors `gvec`.
bool UploadGlobals(const Matrix& emb, const Matrix& head,
                   const std::vector<float>* gvec, cuda::StepRunner& r,
                   std::string* err);

// bf16 products only when every large matrix is bf16 (`all_bf16`); a mixed
// file computes in fp32 (its bf16 matrices upcast exactly).
cuda::RunnerOptions MakeRunnerOptions(const CudaModelOptions& options,
                                      bool all_bf16);
// ModelInfo::kernels, e.g. "cuda-bf16 (NVIDIA H200)".
std::string BackendName(const cuda::RunnerOptions& ro);
// ModelInfo::kernels, weights_dtype and bf16_activations as the device
// computes: fp32 weights (upcast) unless the products are bf16, which take
// the activations rounded (kBF16) or split (kBF16Split).
void DescribeBackend(const cuda::RunnerOptions& ro, ModelInfo* info);

// The engine::Model: Forward copies each session's host state to the
// device, runs the batch and copies it back; calls are serialised.
std::unique_ptr<Model> MakeCudaModel(ModelInfo info,
                                     std::unique_ptr<cuda::StepRunner> runner);

}  // namespace statestream::engine::cuda_internal

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_CUDA_MODEL_INTERNAL_H_
