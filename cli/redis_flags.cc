// SPDX-License-Identifier: Apache-2.0
#include "cli/redis_flags.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/server_flags.h"

ABSL_FLAG(std::string, redis, "",
          "Redis address(es), HOST:PORT[,HOST:PORT...]: the state store and "
          "the worker registry.");
ABSL_FLAG(bool, redis_cluster, false,
          "--redis names Redis Cluster nodes (seeds): route by hash slot.");
ABSL_FLAG(std::string, redis_user, "", "Redis ACL user (AUTH); optional.");
ABSL_FLAG(std::string, redis_password, "",
          "Redis password (AUTH); optional. Default: the environment "
          "variable STATESTREAM_REDIS_PASSWORD (which, unlike a flag, does "
          "not show in the process list).");
ABSL_FLAG(absl::Duration, redis_connect_timeout, absl::Seconds(60),
          "At startup, how long to keep trying while Redis does not answer "
          "before giving up (exit 1).");

ABSL_FLAG(absl::Duration, redis_command_timeout, absl::Seconds(5),
          "How long the Redis client waits on Redis (each read or write on a "
          "connection; 1 s more, as for every command, for durability "
          "waits) before the call fails UNAVAILABLE; failures found within "
          "3 s of a call's start are retried on a fresh connection. Raise it "
          "for a distant or heavily loaded Redis; a worker's lease renewal "
          "that waits longer than --lease-ttl loses the lease (fences keep "
          "that safe). A stopping gateway does not wait it out: once "
          "--shutdown-grace is over, its Redis calls end at once.");

ABSL_FLAG(absl::Duration, redis_fence_retention, absl::Hours(24 * 7),
          "How long a deleted or expired session's fence counter (one key of "
          "~90 bytes per session id) stays in Redis (at least 1h): Redis "
          "holds one for every session created in that time. A re-created "
          "id continues its fences within it; after it, a new fence still "
          "starts above the old ones by Redis's clock (docs/state-store.md), "
          "so shortening it saves memory, not safety.");

namespace statestream::cli {

const char kRedisFlagsFile[] = __FILE__;

absl::StatusOr<RedisStateStoreOptions> RedisOptionsFromFlags() {
  RedisStateStoreOptions options;
  for (absl::string_view a :
       absl::StrSplit(absl::GetFlag(FLAGS_redis), ',', absl::SkipEmpty())) {
    // HOST:PORT (the host may be a name or an address, IPv6 included: the
    // port follows the last colon): a typo is bad usage, not an outage.
    const size_t colon = a.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(a.substr(colon + 1), &port) || port < 1 ||
        port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--redis ", a, ": want HOST:PORT"));
    }
    options.addresses.emplace_back(a);
  }
  options.cluster = absl::GetFlag(FLAGS_redis_cluster);
  options.user = absl::GetFlag(FLAGS_redis_user);
  options.password = absl::GetFlag(FLAGS_redis_password);
  if (options.password.empty()) {
    if (const char* env = std::getenv("STATESTREAM_REDIS_PASSWORD")) {
      options.password = env;
    }
  }
  options.command_timeout = absl::GetFlag(FLAGS_redis_command_timeout);
  if (options.command_timeout <= absl::ZeroDuration() ||
      options.command_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        "--redis-command-timeout must be positive and finite");
  }
  options.fence_retention = absl::GetFlag(FLAGS_redis_fence_retention);
  if (options.fence_retention < absl::Hours(1) ||
      options.fence_retention == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        "--redis-fence-retention must be at least 1h and finite");
  }
  return options;
}

absl::StatusOr<std::unique_ptr<StateStore>> ConnectRedis(
    const RedisStateStoreOptions& options, absl::string_view role) {
  const absl::Time deadline =
      absl::Now() + absl::GetFlag(FLAGS_redis_connect_timeout);
  absl::Duration backoff = absl::Milliseconds(250);
  for (;;) {
    absl::StatusOr<std::unique_ptr<StateStore>> store =
        NewRedisStateStore(options);
    if (store.ok() || store.status().code() != absl::StatusCode::kUnavailable ||
        absl::Now() >= deadline) {
      return store;
    }
    std::cerr << "statestream " << role << ": " << store.status().message()
              << "; retrying for up to "
              << absl::FormatDuration(absl::Trunc(deadline - absl::Now(),
                                                  absl::Milliseconds(100)))
              << "\n";
    if (ShutdownSignalPending()) {
      return absl::CancelledError("stopped while waiting for Redis");
    }
    // The last try at the deadline, not a backoff before it: a Redis that
    // comes up within the timeout is found.
    absl::SleepFor(std::min(backoff, deadline - absl::Now()));
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

}  // namespace statestream::cli
