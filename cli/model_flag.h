// SPDX-License-Identifier: Apache-2.0
// --model, shared by every command that loads a checkpoint (serve, worker,
// model, ...). Abseil flags are process-global, so a flag used by several
// commands is defined once, here, and each such command lists
// kModelFlagFile in its Command::flag_files.
#ifndef STATESTREAM_CLI_MODEL_FLAG_H_
#define STATESTREAM_CLI_MODEL_FLAG_H_

#include <string>

namespace statestream::cli {

// __FILE__ of cli/model_flag.cc.
extern const char kModelFlagFile[];
// The value of --model: a checkpoint path, or empty.
std::string ModelFlagValue();

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_MODEL_FLAG_H_
