// SPDX-License-Identifier: Apache-2.0
#include "absl/flags/flag.h"
#include "cli/model_flag.h"

ABSL_FLAG(std::string, device, "auto",
          "Where the engine runs: cpu, cuda (exit 2 without a usable CUDA "
          "device) or auto (cuda when this build has the CUDA backend and a "
          "device is present, else cpu; models the CUDA backend cannot run "
          "stay on the cpu).");

namespace statestream::cli {

const char kDeviceFlagFile[] = __FILE__;

std::string DeviceFlagValue() { return absl::GetFlag(FLAGS_device); }

}  // namespace statestream::cli
