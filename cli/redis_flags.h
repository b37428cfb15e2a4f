// SPDX-License-Identifier: Apache-2.0
// --redis and friends, shared by the cluster roles (worker, gateway).
#ifndef STATESTREAM_CLI_REDIS_FLAGS_H_
#define STATESTREAM_CLI_REDIS_FLAGS_H_

#include "state_store/redis_state_store.h"

namespace statestream::cli {

// __FILE__ of cli/redis_flags.cc, for Command::flag_files.
extern const char kRedisFlagsFile[];

// Options from --redis, --redis-cluster, --redis-user, --redis-password;
// addresses is empty when --redis is not given.
RedisStateStoreOptions RedisOptionsFromFlags();

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_REDIS_FLAGS_H_
