// SPDX-License-Identifier: Apache-2.0
// --redis and friends, shared by the cluster roles (worker, gateway).
#ifndef STATESTREAM_CLI_REDIS_FLAGS_H_
#define STATESTREAM_CLI_REDIS_FLAGS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "state_store/redis_state_store.h"

namespace statestream::cli {

// __FILE__ of cli/redis_flags.cc, for Command::flag_files.
extern const char kRedisFlagsFile[];

// Options from --redis, --redis-cluster, --redis-user, --redis-password,
// --redis-command-timeout; addresses is empty when --redis is not given.
// INVALID_ARGUMENT for a value out of range (a usage error).
absl::StatusOr<RedisStateStoreOptions> RedisOptionsFromFlags();

// NewRedisStateStore, retried while Redis is UNAVAILABLE for up to
// --redis-connect-timeout (a role started before its Redis, or during a
// restart, waits for it instead of exiting), each failure logged to stderr
// as "statestream ROLE: ...". Other errors (AUTH) at once; CANCELLED if
// a ShutdownSignals() one is pending (RunServer blocks them while it
// builds).
absl::StatusOr<std::unique_ptr<StateStore>> ConnectRedis(
    const RedisStateStoreOptions& options, absl::string_view role);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_REDIS_FLAGS_H_
