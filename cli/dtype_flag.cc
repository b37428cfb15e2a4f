// SPDX-License-Identifier: Apache-2.0
// --dtype, a flag of `model random` and `bench engine` only (serve and
// worker choose weights with --precision).
#include "absl/flags/flag.h"
#include "cli/engine_flags.h"

ABSL_FLAG(std::string, dtype, "",
          "model random: stored dtype f32 (default), bf16 or f16; bench "
          "engine: weights in memory fp32 (default), bf16 or int8.");

namespace statestream::cli {

const char kDtypeFlagFile[] = __FILE__;

std::string DtypeFlagValue() { return absl::GetFlag(FLAGS_dtype); }

}  // namespace statestream::cli
