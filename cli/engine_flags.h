// SPDX-License-Identifier: Apache-2.0
// Flags shared by the commands that load a model in-process (`model`,
// `bench engine`, `serve`, `worker`): --threads, --precision,
// --bf16-activations and --dtype.
#ifndef STATESTREAM_CLI_ENGINE_FLAGS_H_
#define STATESTREAM_CLI_ENGINE_FLAGS_H_

#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"

namespace statestream::cli {

// __FILE__ of cli/engine_flags.cc, for Command::flag_files.
extern const char kEngineFlagsFile[];

// ModelOptions from --threads, --precision (as-stored, f32, bf16, int8) and
// --bf16-activations (split, round).
absl::StatusOr<engine::ModelOptions> EngineOptionsFromFlags();

// --precision as given ("as-stored", "f32", "bf16" or "int8").
std::string PrecisionFlagValue();
// --bf16-activations as given ("split" or "round").
std::string Bf16ActivationsFlagValue();
// __FILE__ of cli/dtype_flag.cc: --dtype, for `model random` and `bench
// engine` only.
extern const char kDtypeFlagFile[];
// The raw --dtype value: a storage dtype for `model random`, a weight
// precision for `bench engine`.
std::string DtypeFlagValue();

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_ENGINE_FLAGS_H_
