// SPDX-License-Identifier: Apache-2.0
// RWKV-4 (Pile / Raven). Equations: ../shared/testdata/README.md; state
// layout: docs/architectures.md. Internal to the engine; use LoadModel().
#ifndef STATESTREAM_WORKER_ENGINE_RWKV4_H_
#define STATESTREAM_WORKER_ENGINE_RWKV4_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"

namespace statestream::engine {

// True when the checkpoint has blocks.0.att.time_first (test after x070,
// x060 and x052: see LoadModel).
bool LooksLikeRwkv4(const WeightFile& file);

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv4(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_RWKV4_H_
