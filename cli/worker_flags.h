// SPDX-License-Identifier: Apache-2.0
// Flags of the worker service shared by `serve` and `worker`: checkpoint
// policy, residency budget, scheduler admission and the request-id window.
#ifndef STATESTREAM_CLI_WORKER_FLAGS_H_
#define STATESTREAM_CLI_WORKER_FLAGS_H_

#include "absl/status/status.h"
#include "worker/scheduler.h"
#include "worker/session_manager.h"

namespace statestream::cli {

// __FILE__ of cli/worker_flags.cc, for Command::flag_files.
extern const char kWorkerFlagsFile[];

// Copies the flags into the options (other fields are left alone);
// INVALID_ARGUMENT naming the flag for a value out of range (a count or
// interval of 0 that would make every call fail or a loop spin).
absl::Status ApplyWorkerFlags(worker::SessionManagerOptions* sessions,
                              worker::SchedulerOptions* scheduler);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_WORKER_FLAGS_H_
