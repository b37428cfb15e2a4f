// SPDX-License-Identifier: Apache-2.0
// Embedded, durable StateStore: one SQLite database file in WAL mode
// (Debian's libsqlite3). The single-machine default of `statestream serve`:
// sessions survive a restart of the process. Several stores (threads or
// processes) may open one file. Why SQLite: docs/state-store.md.
//
// Durability: a kMemory commit is written with synchronous=NORMAL (it
// survives a crash of the process, not of the host); a kFsync commit with
// synchronous=FULL (the WAL is fsynced before Commit returns). There are no
// replicas: kReplicated commits at kFsync and then fails with UNAVAILABLE.
#ifndef STATESTREAM_STATE_STORE_SQLITE_STATE_STORE_H_
#define STATESTREAM_STATE_STORE_SQLITE_STATE_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/state_store.h"

namespace statestream {

struct SqliteStateStoreOptions {
  // The database file; created (with its directory's -wal/-shm files) if
  // missing. Required.
  std::string path;
  // Versions kept per session (head included). >= 1.
  int keep_versions = 8;
  // TTL of sessions created with ttl 0.
  absl::Duration default_ttl = kDefaultSessionTtl;
  // How long a write waits for another connection's write lock.
  absl::Duration busy_timeout = absl::Seconds(10);
  // Time source for TTLs and leases. Not owned. nullptr = Clock::Real().
  Clock* clock = nullptr;
  // Session heads one ListSessions call reads at most (as the Redis
  // store's): a label filter that matches little returns short pages with
  // a token instead of holding the store's lock over every session.
  int max_list_scan = 2000;
  // Bytes of state one expiry sweep deletes at most (always one session's
  // at least; the rest waits for the next create). A sweep is one
  // transaction under the store's lock, whose log holds every page it
  // frees: 1000 expired 0.1B-model sessions of 8 versions wrote ~19 GB of
  // log, and failed SQLITE_FULL on a smaller disk, again every minute. >= 1.
  int64_t sweep_bytes = int64_t{256} << 20;
};

// Opens (or creates) the database. INVALID_ARGUMENT for bad options;
// UNAVAILABLE/kStoreUnavailable when the file cannot be opened;
// DATA_LOSS/kStateCorrupt when it is not a sound database.
absl::StatusOr<std::unique_ptr<StateStore>> NewSqliteStateStore(
    const SqliteStateStoreOptions& options);

}  // namespace statestream

#endif  // STATESTREAM_STATE_STORE_SQLITE_STATE_STORE_H_
