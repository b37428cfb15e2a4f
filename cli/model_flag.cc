// SPDX-License-Identifier: Apache-2.0
#include "cli/model_flag.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, model, "",
          "Checkpoint to load (.pth or .safetensors). serve and worker: one "
          "or more, comma-separated, each PATH or ID=PATH (the model id "
          "sessions name; default: the file's stem); the first is the "
          "default model.");

namespace statestream::cli {

const char kModelFlagFile[] = __FILE__;

std::string ModelFlagValue() { return absl::GetFlag(FLAGS_model); }

}  // namespace statestream::cli
