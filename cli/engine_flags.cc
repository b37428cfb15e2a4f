// SPDX-License-Identifier: Apache-2.0
#include "cli/engine_flags.h"

#include "absl/flags/flag.h"
#include "common/status.h"

ABSL_FLAG(int, threads, 0,
          "Engine threads (and the scheduler's per-step threads); 0 = one per "
          "CPU this process may use (its affinity, capped by a cgroup CPU "
          "quota).");
ABSL_FLAG(std::string, precision, "as-stored",
          "Weights in memory: as-stored, f32 (or fp32), bf16 or int8 (per-row "
          "scales; CPU only).");
ABSL_FLAG(std::string, bf16_activations, "",
          "Activations of products with bf16 weights: split (two bf16 terms, "
          "16 significant bits; the bf16 goldens hold) or round (rounded to "
          "bf16 like 16-bit engines: 1.7-1.9x faster prefill and 32-session "
          "batches on CPUs without AMX; logits rms ~1e-2, max ~0.2 off "
          "fp32). Default: split on the cpu, round on cuda (docs/cuda.md).");

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
  } else if (p == "f32" || p == "fp32") {  // fp32: as `models` prints it
    o.precision = engine::WeightPrecision::kF32;
  } else if (p == "bf16") {
    o.precision = engine::WeightPrecision::kBF16;
  } else if (p == "int8") {
    o.precision = engine::WeightPrecision::kInt8;
  } else {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        "--precision must be as-stored, f32 (or fp32), bf16 or int8");
  }
  const std::string a = absl::GetFlag(FLAGS_bf16_activations);
  if (a.empty()) {
    o.bf16_activations = engine::Bf16Activations::kDefault;
  } else if (a == "split") {
    o.bf16_activations = engine::Bf16Activations::kSplit;
  } else if (a == "round") {
    o.bf16_activations = engine::Bf16Activations::kRound;
  } else {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "--bf16-activations must be split or round");
  }
  return o;
}

std::string PrecisionFlagValue() { return absl::GetFlag(FLAGS_precision); }

std::string Bf16ActivationsFlagValue() {
  return absl::GetFlag(FLAGS_bf16_activations);
}

}  // namespace statestream::cli
