// SPDX-License-Identifier: Apache-2.0
// The SQLite StateStore (sqlite_state_store.h), split by concern:
// sqlite_state_store.cc (the StateStore calls and the factory) and
// sqlite_state_store_rows.cc (transactions, the expiry sweep, space
// release, fences and the session and version rows every call reads and
// writes). The schema and statements it shares with its tests are in
// internal/sqlite_db.h and internal/store_util.h; the layout is described
// in docs/state-store.md. Not part of the public interface.
#ifndef STATESTREAM_STATE_STORE_INTERNAL_SQLITE_STORE_H_
#define STATESTREAM_STATE_STORE_INTERNAL_SQLITE_STORE_H_

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/internal/sqlite_db.h"
#include "state_store/sqlite_state_store.h"
#include "state_store/state_store.h"

namespace statestream::store_internal {

class SqliteStateStore final : public StateStore {
 public:
  SqliteStateStore(const SqliteStateStoreOptions& o, sqlite3* db)
      : options_(o), clock_(o.clock ? o.clock : Clock::Real()), db_(db) {}
  ~SqliteStateStore() override { sqlite3_close(db_); }

  absl::StatusOr<CommitResult> CreateSession(
      const CreateSessionRequest& r) override;

  absl::StatusOr<SessionHead> GetHead(const SessionKey& key) override;

  absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& key,
                                            uint64_t version) override;

  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override;

  // One file on one host: REPLICATED is never reached.
  Durability MaxDurability() const override { return Durability::kFsync; }

  // FSYNC: a synchronous (synchronous=FULL) write transaction marking the
  // version, whose commit fsyncs the log with every earlier commit in it.
  absl::StatusOr<VersionInfo> AwaitDurability(const SessionKey& key,
                                              uint64_t version,
                                              Durability wanted) override;

  absl::StatusOr<CommitResult> Rollback(const SessionKey& key,
                                        uint64_t expected_version,
                                        uint64_t fence, uint64_t version,
                                        Durability durability,
                                        const std::string& request_id) override;

  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const SessionKey& key) override;

  absl::StatusOr<int64_t> CountSessionsBound(
      const std::string& tenant) override;

  absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& r) override;

  absl::StatusOr<SessionHead> UpdateSession(const SessionKey& key,
                                            const SessionUpdate& u) override;

  absl::Status DeleteSession(const SessionKey& key) override;

  absl::StatusOr<Lease> AcquireLease(const SessionKey& key,
                                     const std::string& owner,
                                     absl::Duration ttl,
                                     bool takeover) override;

  absl::StatusOr<Lease> RenewLease(const SessionKey& key,
                                   const std::string& owner, uint64_t fence,
                                   absl::Duration ttl) override;

  absl::Status ReleaseLease(const SessionKey& key, const std::string& owner,
                            uint64_t fence) override;

  absl::StatusOr<Lease> GetOwner(const SessionKey& key) override;

  absl::StatusOr<bool> RegisterWorker(const WorkerInfo& info,
                                      absl::Duration ttl) override;

  absl::Status UnregisterWorker(const std::string& worker_id) override;

  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override;

 private:
  // Rolls back unless Commit() was called.
  class Txn {
   public:
    explicit Txn(SqliteStateStore* s) : s_(s) {}
    ~Txn() {
      if (!done_) sqlite3_exec(s_->db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    absl::Status Commit() {
      done_ = true;
      const int rc = sqlite3_exec(s_->db_, "COMMIT", nullptr, nullptr, nullptr);
      if (rc != SQLITE_OK) {
        const absl::Status st = SqliteError(
            rc, absl::StrCat("sqlite commit: ", sqlite3_errmsg(s_->db_)));
        sqlite3_exec(s_->db_, "ROLLBACK", nullptr, nullptr, nullptr);
        return st;
      }
      return absl::OkStatus();
    }

   private:
    SqliteStateStore* s_;
    bool done_ = false;
  };

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Sets the sync level for `durability` and opens a write transaction.
  absl::Status Begin(Durability durability) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A read-only transaction (ended by a Txn's rollback): reads that take
  // several statements see one snapshot even while another process on the
  // same file commits between them.
  absl::Status BeginRead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Deletes sessions whose TTL ran out (and their versions), on a create,
  // in a transaction of its own, kSweepBatch at a time and no more than
  // options_.sweep_bytes of state (the first session whatever its size):
  // an expired session nobody touches again would otherwise stay in the
  // file forever. Once a minute, and on every create while more are
  // waiting, so the sweep keeps up with any rate of expiry below a batch a
  // create. Their fences go too: the file's one counter keeps a re-created
  // id from reusing one.
  static constexpr int kSweepBatch = 1000;
  absl::Status SweepExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // After a write: gives the file's free pages past `keep_bytes` back to
  // the file system, at most kReleaseMaxBytes of them (SQLite moves
  // pages from the file's end into free ones, then cuts the end; the file
  // shrinks when the log is next checkpointed). A no-op in a file an older
  // build created (auto_vacuum off). Best effort: what is not released
  // now is at a later write, and commits reuse free pages anyway.
  void ReleaseFreePages(int64_t keep_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Live sessions of `tenant` (CreateSession's limit).
  absl::StatusOr<int64_t> LiveSessions(const std::string& tenant,
                                       absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Whether the session exists and is live; drops it if it expired.
  absl::StatusOr<bool> Live(const SessionKey& key, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The next fence of the file's one counter, recorded as `key`'s. Above
  // the id's own fence too: one bumped per id (by a build before the
  // counter, on the same file) still never comes back.
  absl::StatusOr<uint64_t> BumpFence(const SessionKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status DropSession(const SessionKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::StatusOr<SessionHead> Head(const SessionKey& key, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Inserts `v`, makes it the head, drops old versions, commits `txn`.
  absl::StatusOr<CommitResult> Install(const SessionKey& key, VersionInfo v,
                                       const std::string& bytes,
                                       Durability wanted, absl::Time now,
                                       Txn* txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SqliteStateStoreOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  absl::Time last_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // ReleaseFreePages': the page size of a file with auto_vacuum=INCREMENTAL,
  // -1 for another file (nothing to release), 0 until it looked.
  int64_t page_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace statestream::store_internal

#endif  // STATESTREAM_STATE_STORE_INTERNAL_SQLITE_STORE_H_
