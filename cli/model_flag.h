// SPDX-License-Identifier: Apache-2.0
// --model, shared by every command that loads a checkpoint (serve, worker,
// model, ...), and --device (serve, worker). Abseil flags are
// process-global, so a flag used by several commands is defined once, and
// each such command lists its file in Command::flag_files.
#ifndef STATESTREAM_CLI_MODEL_FLAG_H_
#define STATESTREAM_CLI_MODEL_FLAG_H_

#include <string>

namespace statestream::cli {

// __FILE__ of cli/model_flag.cc.
extern const char kModelFlagFile[];
// The value of --model: a checkpoint path (serve, worker: a comma-separated
// list, see ParseModelList in cli/model_loading.h), or empty.
std::string ModelFlagValue();

// __FILE__ of cli/device_flag.cc.
extern const char kDeviceFlagFile[];
// The value of --device: "cpu", "cuda" or "auto" (ChooseDevice).
std::string DeviceFlagValue();

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_MODEL_FLAG_H_
