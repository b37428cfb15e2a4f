// SPDX-License-Identifier: Apache-2.0
// RWKV-7 "x070" (Goose). Equations: ../shared/testdata/README.md and
// docs/engine.md. Internal to the engine; use LoadModel() in model.h.
#ifndef STATESTREAM_WORKER_ENGINE_RWKV7_H_
#define STATESTREAM_WORKER_ENGINE_RWKV7_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {

// True when the checkpoint's tensor names are those of an x070 model.
bool LooksLikeRwkv7(const WeightFile& file);

// Every x070 dimension, read from tensor shapes (shared by the backends).
absl::StatusOr<ModelConfig> ReadRwkv7Config(const WeightFile& file,
                                            WeightLoader& loader);

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv7(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_RWKV7_H_
