// SPDX-License-Identifier: Apache-2.0
// --client-stall-timeout, shared by `gateway` and `serve` (declared in
// cli/server_flags.h). Its own file: Command::flag_files lists files, and
// a worker does not take it (its clients are gateways, which cut their own
// clients off).
#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "cli/server_flags.h"

ABSL_FLAG(absl::Duration, client_stall_timeout, absl::Seconds(60),
          "A client that holds the server's buffers and does not move this "
          "long is cut off (CANCELLED): an Append client that leaves an ack "
          "unread, an import client that sends nothing more, an export or "
          "Generate client that leaves a message unread.");

namespace statestream::cli {

const char kClientStallFlagFile[] = __FILE__;

absl::StatusOr<absl::Duration> ClientStallTimeoutFromFlag() {
  const absl::Duration timeout = absl::GetFlag(FLAGS_client_stall_timeout);
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--client-stall-timeout must be positive");
  }
  return timeout;
}

}  // namespace statestream::cli
