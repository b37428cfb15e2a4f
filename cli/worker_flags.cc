// SPDX-License-Identifier: Apache-2.0
#include "cli/worker_flags.h"

#include <utility>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cli/engine_flags.h"
#include "cli/server_flags.h"

ABSL_FLAG(int64_t, checkpoint_tokens, 4096,
          "Append streams commit after this many uncommitted tokens.");
ABSL_FLAG(absl::Duration, checkpoint_interval, absl::Seconds(5),
          "Append streams commit once input has been uncommitted this long "
          "(at least 1ms).");
ABSL_FLAG(int32_t, generate_checkpoint_tokens, 1024,
          "Committing generations also commit (at the request's durability) "
          "every this many generated tokens, so a retry after a failure "
          "continues from there; 0: not by tokens.");
ABSL_FLAG(absl::Duration, generate_checkpoint_interval, absl::Seconds(10),
          "Committing generations also commit after running this long since "
          "their start or last checkpoint; 0: not by time.");
ABSL_FLAG(int64_t, residency_bytes, int64_t{1} << 30,
          "Memory for resident session states; idle sessions beyond it are "
          "evicted (least recently used first).");
ABSL_FLAG(int64_t, max_transfer_bytes, int64_t{1} << 30,
          "State bytes that ExportState/ImportState calls in flight hold at "
          "once (each keeps its whole state until its call ends); beyond, "
          "new ones get RESOURCE_EXHAUSTED/OVERLOADED.");
ABSL_FLAG(int64_t, max_copy_bytes, int64_t{1} << 30,
          "Per model: bytes of the working copies of session states that "
          "Generate and Score calls in flight hold (each runs on a copy); "
          "beyond, new ones get RESOURCE_EXHAUSTED/OVERLOADED.");
ABSL_FLAG(int32_t, max_tasks, 1024,
          "Scheduler admission: tasks (appends, generations, scores) queued "
          "or running before new ones get RESOURCE_EXHAUSTED/OVERLOADED.");
ABSL_FLAG(int64_t, max_queued_tokens, int64_t{1} << 22,
          "Scheduler admission: tokens queued across tasks before new work "
          "gets RESOURCE_EXHAUSTED/OVERLOADED (a call needing more than this "
          "alone gets INVALID_ARGUMENT/MESSAGE_TOO_LARGE).");

namespace statestream::cli {

const char kWorkerFlagsFile[] = __FILE__;

absl::Status ApplyWorkerFlags(worker::SessionManagerOptions* sessions,
                              worker::SchedulerOptions* scheduler) {
  sessions->checkpoint_tokens = absl::GetFlag(FLAGS_checkpoint_tokens);
  sessions->checkpoint_interval = absl::GetFlag(FLAGS_checkpoint_interval);
  sessions->generate_checkpoint_tokens =
      absl::GetFlag(FLAGS_generate_checkpoint_tokens);
  sessions->generate_checkpoint_interval =
      absl::GetFlag(FLAGS_generate_checkpoint_interval);
  sessions->residency_bytes = absl::GetFlag(FLAGS_residency_bytes);
  sessions->max_transfer_bytes = absl::GetFlag(FLAGS_max_transfer_bytes);
  sessions->max_copy_bytes = absl::GetFlag(FLAGS_max_copy_bytes);
  sessions->request_id_window = RequestIdWindowFromFlag();
  scheduler->max_tasks = absl::GetFlag(FLAGS_max_tasks);
  scheduler->max_queued_tokens = absl::GetFlag(FLAGS_max_queued_tokens);
  // The per-step work (sampling) runs on as many threads as the engine:
  // --threads, or the CPUs the process may use.
  if (absl::StatusOr<engine::ModelOptions> engine = EngineOptionsFromFlags();
      engine.ok()) {
    scheduler->step_threads = engine->threads;
  }
  const std::pair<const char*, int64_t> at_least_one[] = {
      {"--checkpoint-tokens", sessions->checkpoint_tokens},
      {"--residency-bytes", sessions->residency_bytes},
      {"--max-transfer-bytes", sessions->max_transfer_bytes},
      {"--max-copy-bytes", sessions->max_copy_bytes},
      {"--max-tasks", scheduler->max_tasks},
      {"--max-queued-tokens", scheduler->max_queued_tokens}};
  for (const auto& [flag, value] : at_least_one) {
    if (value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " must be at least 1 (got ", value, ")"));
    }
  }
  if (sessions->checkpoint_interval < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        "--checkpoint-interval must be at least 1ms");
  }
  if (sessions->generate_checkpoint_tokens < 0 ||
      sessions->generate_checkpoint_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--generate-checkpoint-tokens and --generate-checkpoint-interval "
        "must not be negative (0 turns either off)");
  }
  return absl::OkStatus();
}

}  // namespace statestream::cli
