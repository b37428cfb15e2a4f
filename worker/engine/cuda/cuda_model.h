// SPDX-License-Identifier: Apache-2.0
// The CUDA backend of the engine: an engine::Model whose Forward runs on one
// NVIDIA GPU (see docs/cuda.md). LoadModel() uses it for
// ModelOptions::device == "cuda"; tests and tools that need its extra knobs
// call LoadRwkv7Cuda / LoadRwkv6Cuda directly. Internal to the engine.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_CUDA_MODEL_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_CUDA_MODEL_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/weight_file.h"

namespace statestream::engine {

struct CudaModelOptions {
  // Which weights are held how, exactly as for the CPU engine (so the
  // fingerprint is the same): fp32 matrices compute in fp32 (no TF32), bf16
  // matrices with cuBLAS bf16 tensor-core products.
  WeightPrecision precision = WeightPrecision::kAsStored;
  // For bf16 matrices: false rounds the activations to bf16 (fast, logits
  // within about 1e-2); true multiplies by a bf16 hi + lo split of each fp32
  // activation (twice the math, about fp32 accuracy).
  bool split_activations = false;
  // Rows (tokens of all sequences together) per chunk.
  int max_rows = 1024;
  int device = 0;      // CUDA device ordinal
  bool graphs = true;  // replay a CUDA graph per chunk shape
};

// Loads an x070 checkpoint onto the GPU. Errors: INVALID_ARGUMENT for bad
// files and for head sizes the kernels lack (they take 32, 64 and 128);
// FAILED_PRECONDITION "no CUDA device ..." when the runtime finds no GPU;
// RESOURCE_EXHAUSTED / INTERNAL for CUDA failures.
absl::StatusOr<std::unique_ptr<Model>> LoadRwkv7Cuda(
    std::shared_ptr<const WeightFile> file, const CudaModelOptions& options);

// Loads an x060 checkpoint onto the GPU; same options, errors and
// fingerprint as the CPU engine's LoadModel for that file.
absl::StatusOr<std::unique_ptr<Model>> LoadRwkv6Cuda(
    std::shared_ptr<const WeightFile> file, const CudaModelOptions& options);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_CUDA_MODEL_H_
