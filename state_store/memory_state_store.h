// SPDX-License-Identifier: Apache-2.0
// In-process StateStore: everything lives in this object and dies with it.
// For tests and for a single process that needs no durability. Every commit
// reaches Durability::kMemory only (FSYNC/REPLICATED requests commit and
// then fail with UNAVAILABLE, as state_store.h describes).
#ifndef STATESTREAM_STATE_STORE_MEMORY_STATE_STORE_H_
#define STATESTREAM_STATE_STORE_MEMORY_STATE_STORE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/state_store.h"

namespace statestream {

struct MemoryStateStoreOptions {
  // Time source for TTLs and leases. Not owned; must outlive the store.
  // nullptr = Clock::Real().
  Clock* clock = nullptr;
  // Versions kept per session (head included); older ones are dropped. >= 1.
  int keep_versions = 8;
  // TTL of sessions created with ttl 0.
  absl::Duration default_ttl = kDefaultSessionTtl;
};

absl::StatusOr<std::unique_ptr<StateStore>> NewMemoryStateStore(
    const MemoryStateStoreOptions& options);

}  // namespace statestream

#endif  // STATESTREAM_STATE_STORE_MEMORY_STATE_STORE_H_
