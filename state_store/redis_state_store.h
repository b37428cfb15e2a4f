// SPDX-License-Identifier: Apache-2.0
// StateStore on Redis 7 (standalone or Cluster) through hiredis. Key layout,
// commit protocol and durability: docs/state-store.md. Every key of a
// session shares the hash tag {tenant/session}, so each session lives on one
// Cluster shard. States of several MB are malloc-bound: processes that use
// this store should raise glibc's mmap threshold at startup
// (TuneMallocForLargeBuffers(); see docs/state-store.md).
#ifndef STATESTREAM_STATE_STORE_REDIS_STATE_STORE_H_
#define STATESTREAM_STATE_STORE_REDIS_STATE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/state_store.h"

namespace statestream {

struct RedisStateStoreOptions {
  // "host:port" of the server, or of any Cluster nodes (seeds). >= 1.
  std::vector<std::string> addresses;
  // Route by hash slot and follow MOVED/ASK (Redis Cluster).
  bool cluster = false;
  // AUTH: `user` (ACL) and `password`; both empty = no AUTH.
  std::string user;
  std::string password;
  // Every key starts with "<key_prefix>:".
  std::string key_prefix = "ss";
  // Versions kept per session (head included). >= 1.
  int keep_versions = 8;
  // TTL of sessions created with ttl 0.
  absl::Duration default_ttl = kDefaultSessionTtl;
  // Size of the pieces a state is stored in, bytes.
  uint32_t chunk_bytes = 1 << 20;
  // Chunks written by a commit that never swapped the head expire after this.
  absl::Duration pending_chunk_ttl = absl::Minutes(5);
  // Versions beyond keep_versions stay readable this long (in-flight loads).
  absl::Duration dropped_version_grace = absl::Seconds(30);
  // The fence counter outlives its session by this much (a re-created
  // session never reuses a fence within it).
  absl::Duration fence_retention = absl::Hours(24 * 7);
  absl::Duration connect_timeout = absl::Seconds(1);
  // Per command (a 34 MB pipeline counts as one); a pipeline ending in a
  // durability wait gets durability_timeout on top.
  absl::Duration command_timeout = absl::Seconds(5);
  // A call retries connection failures with exponential backoff
  // (backoff_initial doubling up to backoff_max) for at most this long, then
  // fails with UNAVAILABLE/kStoreUnavailable.
  absl::Duration retry_deadline = absl::Seconds(3);
  absl::Duration backoff_initial = absl::Milliseconds(20);
  absl::Duration backoff_max = absl::Milliseconds(500);
  // Longest wait (WAITAOF / WAIT) for FSYNC or REPLICATED durability.
  absl::Duration durability_timeout = absl::Seconds(1);
  // Idle connections kept per Redis node.
  int max_idle_connections_per_node = 8;
  // Sessions one ListSessions call reads (a head each) before it returns
  // what it has with a next_page_token: a label filter that matches
  // nothing must not read a whole tenant's index in one call. >= 1.
  int max_list_scan = 2000;
  // Called at connect with each configuration problem found (a
  // maxmemory-policy other than noeviction); null: not checked.
  std::function<void(const std::string&)> on_warning;
  // Time for created/updated stamps and retry deadlines (TTLs and leases use
  // Redis's own clock). Not owned. nullptr = Clock::Real().
  Clock* clock = nullptr;
};

// Connects (and, for a Cluster, loads the slot map); UNAVAILABLE when no
// address answers, PERMISSION_DENIED when AUTH fails.
absl::StatusOr<std::unique_ptr<StateStore>> NewRedisStateStore(
    const RedisStateStoreOptions& options);

}  // namespace statestream

#endif  // STATESTREAM_STATE_STORE_REDIS_STATE_STORE_H_
