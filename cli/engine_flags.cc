// SPDX-License-Identifier: Apache-2.0
#include "cli/engine_flags.h"

#include "absl/flags/flag.h"
#include "common/status.h"

ABSL_FLAG(int, threads, 0, "Engine threads; 0 = one per CPU.");
ABSL_FLAG(std::string, precision, "as-stored",
          "Weights in memory: as-stored, f32, bf16 or int8 (per-row "
          "scales; CPU only).");
ABSL_FLAG(std::string, dtype, "",
          "model random: stored dtype f32 (default), bf16 or f16; bench "
          "engine: weights in memory fp32 (default), bf16 or int8.");

namespace statestream::cli {

const char kEngineFlagsFile[] = __FILE__;

absl::StatusOr<engine::ModelOptions> EngineOptionsFromFlags() {
  engine::ModelOptions o;
  o.threads = absl::GetFlag(FLAGS_threads);
  if (o.threads < 0 || o.threads > 1024) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "--threads must be in [0, 1024]");
  }
  const std::string p = absl::GetFlag(FLAGS_precision);
  if (p == "as-stored") {
    o.precision = engine::WeightPrecision::kAsStored;
  } else if (p == "f32") {
    o.precision = engine::WeightPrecision::kF32;
  } else if (p == "bf16") {
    o.precision = engine::WeightPrecision::kBF16;
  } else if (p == "int8") {
    o.precision = engine::WeightPrecision::kInt8;
  } else {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        "--precision must be as-stored, f32, bf16 or int8");
  }
  return o;
}

std::string PrecisionFlagValue() { return absl::GetFlag(FLAGS_precision); }

std::string DtypeFlagValue() { return absl::GetFlag(FLAGS_dtype); }

}  // namespace statestream::cli
