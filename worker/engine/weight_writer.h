// SPDX-License-Identifier: Apache-2.0
// Writes checkpoints that WeightFile (and PyTorch / safetensors) can read:
// `.pth` as torch.save(state_dict) lays it out (a stored zip with a pickled
// dict of _rebuild_tensor_v2 calls) and `.safetensors`. Used by
// `statestream model random` and by tests that need odd files.
#ifndef STATESTREAM_WORKER_ENGINE_WEIGHT_WRITER_H_
#define STATESTREAM_WORKER_ENGINE_WEIGHT_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/weight_file.h"

namespace statestream::engine {

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;  // row-major, numel(shape) values
};

// `dtype` is the on-disk type (kF32, kBF16 rounds to nearest even, kF16).
// Tensors are written in the given order.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<NamedTensor>& tensors,
                              DType dtype);
absl::Status WritePth(const std::string& path,
                      const std::vector<NamedTensor>& tensors, DType dtype);
// Chooses the format by extension: ".safetensors", else ".pth".
absl::Status WriteCheckpoint(const std::string& path,
                             const std::vector<NamedTensor>& tensors,
                             DType dtype);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_WEIGHT_WRITER_H_
