// SPDX-License-Identifier: Apache-2.0
#include "cli/redis_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"

ABSL_FLAG(std::string, redis, "",
          "Redis address(es), HOST:PORT[,HOST:PORT...]: the state store and "
          "the worker registry.");
ABSL_FLAG(bool, redis_cluster, false,
          "--redis names Redis Cluster nodes (seeds): route by hash slot.");
ABSL_FLAG(std::string, redis_user, "", "Redis ACL user (AUTH); optional.");
ABSL_FLAG(std::string, redis_password, "", "Redis password (AUTH); optional.");

namespace statestream::cli {

const char kRedisFlagsFile[] = __FILE__;

RedisStateStoreOptions RedisOptionsFromFlags() {
  RedisStateStoreOptions options;
  for (absl::string_view a :
       absl::StrSplit(absl::GetFlag(FLAGS_redis), ',', absl::SkipEmpty())) {
    options.addresses.emplace_back(a);
  }
  options.cluster = absl::GetFlag(FLAGS_redis_cluster);
  options.user = absl::GetFlag(FLAGS_redis_user);
  options.password = absl::GetFlag(FLAGS_redis_password);
  return options;
}

}  // namespace statestream::cli
