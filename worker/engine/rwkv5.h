// SPDX-License-Identifier: Apache-2.0
// RWKV-5.2 "x052" (Eagle). Equations: ../shared/testdata/README.md; state
// layout: docs/architectures.md. Internal to the engine; use LoadModel().
#ifndef STATESTREAM_WORKER_ENGINE_RWKV5_H_
#define STATESTREAM_WORKER_ENGINE_RWKV5_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"

namespace statestream::engine {

// True when blocks.0.att.time_faaaa exists and blocks.0.att.time_decay is
// 2-D [H,N] with N > 1 (test after x070 and x060: see LoadModel).
bool LooksLikeRwkv5(const WeightFile& file);

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv5(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_RWKV5_H_
