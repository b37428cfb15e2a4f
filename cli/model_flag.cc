// SPDX-License-Identifier: Apache-2.0
#include "cli/model_flag.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, model, "", "Checkpoint to load (.pth or .safetensors).");

namespace statestream::cli {

const char kModelFlagFile[] = __FILE__;

std::string ModelFlagValue() { return absl::GetFlag(FLAGS_model); }

}  // namespace statestream::cli
