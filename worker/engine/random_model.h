// SPDX-License-Identifier: Apache-2.0
// Random-weight models with official key names and shapes, for benchmarks,
// demos and tests (`statestream model random`). Scales keep every term of
// the forward pass visible and the state bounded over long runs.
#ifndef STATESTREAM_WORKER_ENGINE_RANDOM_MODEL_H_
#define STATESTREAM_WORKER_ENGINE_RANDOM_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine {

struct RandomModelSpec {
  int n_layer = 2;
  int n_embd = 128;
  int vocab_size = 512;
  int head_size = 64;  // n_embd must be a multiple
  int dim_ffn = 0;     // 0 = 4 * n_embd (x070, v4); int(3.5 * n_embd) rounded
                       // down to a multiple of 32 (x060, x052)
  // LoRA ranks; 0 = the training code's defaults for this width.
  int d_decay = 0, d_aaa = 0, d_mv = 0, d_gate = 0;
  int d_mix = 0;  // x060 time_maa LoRA rank; 0 = 32
  uint64_t seed = 1;
};

// An x070 state dict (without the unused layer-0 v0/v1/v2). INVALID_ARGUMENT
// for impossible dimensions only: it also builds shapes past what the engine
// loads (for tests of the loader's limits); RandomModel refuses those.
absl::StatusOr<std::vector<NamedTensor>> RandomRwkv7(
    const RandomModelSpec& spec);

// A state dict of architecture `arch` ("x070", "x060", "x052" or "v4"; v4
// ignores head_size). INVALID_ARGUMENT for an unknown architecture, or
// dimensions the engine would not load (the limits of
// worker/engine/rwkv_common.h: n_embd <= kMaxEmbd, dim_ffn <= 16 n_embd
// and <= kMaxMatrixInputs,
// vocab_size <= kMaxVocab, head_size <= kMaxHeadSize, LoRA ranks <=
// kMaxLoraRank; at most 512 layers), naming the dimension.
absl::StatusOr<std::vector<NamedTensor>> RandomModel(
    const std::string& arch, const RandomModelSpec& spec);

// RandomModel(arch, spec), loaded with `options`: written (f32) into a fresh
// private directory (mkdtemp, mode 0700, never a name another local user
// could plant a link at) that is removed once the model is loaded (it holds
// its weights). Errors: RandomModel's, the write's, LoadModel's.
absl::StatusOr<std::unique_ptr<Model>> LoadRandomModel(
    const std::string& arch, const RandomModelSpec& spec,
    const ModelOptions& options = {});

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_RANDOM_MODEL_H_
