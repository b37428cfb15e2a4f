// SPDX-License-Identifier: Apache-2.0
// StateStore: versioned, fenced, checksummed session state (DESIGN.md,
// "Contracts"). Three implementations share this interface and one contract
// test suite (state_store_contract.h):
//   memory_state_store.h  in-process: tests, and `serve` (its default)
//   sqlite_state_store.h  embedded and durable (SQLite WAL): `serve
//                         --data-dir`
//   redis_state_store.h   Redis standalone or Cluster, for the cluster roles
// Documentation: docs/state-store.md.
//
// Model of a session. A session `(tenant, session_id)` is bound at creation
// to one model fingerprint. Its committed states are immutable *versions*
// 1, 2, 3, ...; the *head* is the latest. A commit names the version it
// expects to replace (compare-and-set) and the writer's *fence*; exactly one
// of several concurrent committers of one version wins. The last
// `keep_versions` versions stay loadable (rollback, fork); older ones expire.
// A session and all its data expire `ttl` after the last write (commit,
// lease acquisition or UpdateSession); pinned sessions never expire.
//
// Single writer. AcquireLease grants `owner` the session's lease and bumps
// its fence; every commit must carry the current fence, so a writer whose
// lease was taken over is rejected with FENCED even if it still believes it
// owns the session. An expired lease that nobody took over leaves the fence
// current: its old holder may renew it or keep committing.
//
// Errors (absl::Status code / common/status.h Reason); each method lists
// which of these it returns:
//   INVALID_ARGUMENT / kInvalidArgument  malformed tenant, id, option
//   NOT_FOUND / kSessionNotFound         no such session (or expired)
//   ALREADY_EXISTS / kSessionExists      CreateSession with a taken id
//   FAILED_PRECONDITION / kVersionMismatch  expected_version is not the head
//                                        (metadata head_version)
//   NOT_FOUND / kVersionMismatch         a version that is not kept (metadata
//                                        version, head_version, oldest_version)
//   ABORTED / kFenced                    fence is not current (metadata fence)
//   ABORTED / kSessionBusy               AcquireLease without takeover while
//                                        another owner's lease is live
//   FAILED_PRECONDITION / kModelMismatch snapshot of another model
//   DATA_LOSS / kStateCorrupt            stored bytes fail a check
//   UNAVAILABLE / kStoreUnavailable      the store cannot be reached in time,
//                                        or a commit did not reach the
//                                        requested durability (metadata
//                                        durability_reached, version: the
//                                        version exists at that lower level)
//
// Thread safety: every implementation is safe for concurrent use by any
// number of threads. Nothing returned refers to store-owned memory.
#ifndef STATESTREAM_STATE_STORE_STATE_STORE_H_
#define STATESTREAM_STATE_STORE_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "state_store/state_codec.h"

namespace statestream {

// How durable a commit is. Numbers match statestream.v1.Durability.
enum class Durability {
  kMemory = 1,      // the store process holds it
  kFsync = 2,       // written and fsynced by the store's host
  kReplicated = 3,  // at least one replica holds it
};
// "MEMORY", "FSYNC", "REPLICATED".
const char* DurabilityName(Durability d);
// A level a store recorded as a number: kMemory (the least) when it is no
// level this build knows, so damage never reports a level not reached.
inline constexpr Durability RecordedDurability(int64_t value) {
  return value >= 1 && value <= static_cast<int64_t>(Durability::kReplicated)
             ? static_cast<Durability>(value)
             : Durability::kMemory;
}
// The error of a write that exists at `reached` only, below the `wanted`
// durability: UNAVAILABLE/STORE_UNAVAILABLE, metadata durability_reached
// and version. Stores return it; callers may treat the write as done.
absl::Status DurabilityNotReached(uint64_t version, Durability wanted,
                                  Durability reached);
// The level `st` says its write reached, if it is a DurabilityNotReached
// error (the write exists at that level); nullopt otherwise.
std::optional<Durability> DurabilityReachedOf(const absl::Status& st);
// Whether `st` says a version is no longer kept (NOT_FOUND/VERSION_MISMATCH:
// newer versions pushed it out).
bool IsVersionNotKept(const absl::Status& st);

// The idle TTL of a session created without one (the public API's
// default, statestream.proto), and what UpdateSession's unset ttl sets.
inline constexpr absl::Duration kDefaultSessionTtl = absl::Hours(24 * 7);

// Tenant: 1-64 bytes of [a-z0-9_-]. Session id: 1-128 bytes of
// [A-Za-z0-9._-], first byte alphanumeric (as in the public API).
struct SessionKey {
  std::string tenant;
  std::string session_id;
};

// What made a version; the numbers of statestream.v1.VersionCause.
enum class VersionCause {
  kUnspecified = 0,  // not recorded (a version written by an older build)
  kCreate = 1,
  kFork = 2,
  kAppend = 3,  // committed input (a checkpoint, by request or by policy)
  kGenerate = 4,
  kRollback = 5,
  kImport = 6,
};

// `value` as a VersionCause; kUnspecified when out of range (a stored
// value this build does not know).
inline VersionCause VersionCauseOf(int64_t value) {
  return value >= 0 && value <= static_cast<int64_t>(VersionCause::kImport)
             ? static_cast<VersionCause>(value)
             : VersionCause::kUnspecified;
}

// One committed, immutable version.
struct VersionInfo {
  uint64_t version = 0;
  uint64_t position = 0;      // StateSnapshot::position
  uint64_t input_offset = 0;  // StateSnapshot::input_offset
  uint32_t tail_bytes = 0;    // size of StateSnapshot::tokenizer_tail
  uint64_t fence = 0;         // the fence the commit carried
  uint64_t state_bytes = 0;   // size of the encoded snapshot
  uint32_t chunk_count = 0;   // pieces it is stored in (Redis; else 1)
  uint32_t state_crc32c = 0;  // the encoded snapshot's trailing CRC-32C
  // When set, this version is a rollback: a copy of that version's state.
  uint64_t rolled_back_from = 0;
  // What made it and the API request that did ("" when none or unknown),
  // as the writer said (CommitRequest, CreateSessionRequest, Rollback).
  VersionCause cause = VersionCause::kUnspecified;
  std::string request_id;
  Durability durability = Durability::kMemory;  // reached when committed
  absl::Time committed_at;
};

// The mutable head record of a session plus its live lease.
struct SessionHead {
  SessionKey key;
  std::string model_id;           // as given at creation
  std::string model_fingerprint;  // bound at creation, never changes
  VersionInfo head;               // the latest committed version
  uint64_t oldest_version = 0;    // oldest version still loadable
  // Where a fork came from (empty / 0 when not a fork).
  std::string parent_session_id;
  uint64_t parent_version = 0;
  std::map<std::string, std::string> labels;
  // Time to live after the last write; absl::InfiniteDuration() = pinned.
  absl::Duration ttl;
  absl::Time created_at;
  absl::Time updated_at;
  // CreateSessionRequest::request_id and request_digest ("" and 0 for a
  // session created without, or by a version that did not record them).
  std::string create_request_id;
  uint64_t create_digest = 0;
  // The current fence (bumped by every lease grant and by creation) and the
  // live lease's holder ("" when no lease is live) and its expiry.
  uint64_t fence = 0;
  std::string owner;
  absl::Time lease_expires_at = absl::InfinitePast();
};

struct CreateSessionRequest {
  SessionKey key;
  std::string model_id;
  std::string parent_session_id;  // informational; the caller copies state
  uint64_t parent_version = 0;
  std::map<std::string, std::string> labels;
  // 0 = the store's Options::default_ttl; InfiniteDuration = pinned.
  absl::Duration ttl = absl::ZeroDuration();
  // Version 1. Its model_fingerprint binds the session.
  StateSnapshot initial_state;
  Durability durability = Durability::kMemory;
  // The API request that creates the session (empty: none) and a digest of
  // its content, kept with the head (SessionHead::create_request_id) so a
  // retry of that request finds its session on any worker. Version 1
  // records the request id too, with `cause`.
  std::string request_id;
  uint64_t request_digest = 0;
  VersionCause cause = VersionCause::kCreate;  // or kFork, kImport
  // > 0: the tenant may hold at most this many sessions. A create that
  // would make one more is RESOURCE_EXHAUSTED/kTenantLimit (metadata
  // limit=max_sessions, max), decided atomically with other creates (in
  // Redis, by reserving the id in the tenant's index), so concurrent
  // creates through any number of gateways and workers do not overshoot
  // (Redis: but for a create re-using the id of an index entry whose
  // session is gone while a listing prunes it, docs/state-store.md).
  // A session that exists under the id already does not count again.
  int64_t max_tenant_sessions = 0;
};

struct CommitRequest {
  SessionKey key;
  uint64_t expected_version = 0;  // the current head; the new one is +1
  uint64_t fence = 0;             // from AcquireLease (or CreateSession)
  StateSnapshot state;            // must carry the session's fingerprint
  Durability durability = Durability::kMemory;
  // Recorded in VersionInfo::rolled_back_from; Rollback sets it.
  uint64_t rolled_back_from = 0;
  // Recorded in VersionInfo (Rollback sets kRollback).
  VersionCause cause = VersionCause::kUnspecified;
  std::string request_id;
};

struct CommitResult {
  VersionInfo version;  // the new version (durability = level reached)
  SessionHead session;  // the head after the commit
};

struct LoadedVersion {
  VersionInfo version;
  StateSnapshot state;  // decoded and checksum-verified
};

struct ListSessionsRequest {
  std::string tenant;
  int page_size = 100;     // 1..1000
  std::string page_token;  // "" = first page; else a next_page_token
  // Only sessions whose labels include every pair here.
  std::map<std::string, std::string> label_filter;
  // Only sessions bound to this model; "" = any.
  std::string model_filter;
  // When > 0, a page also ends before the session that would take the
  // heads' estimated encoded size past this (it holds one at least), so a
  // page of sessions with many labels fits in a response.
  int64_t max_bytes = 0;
};

struct ListSessionsPage {
  std::vector<SessionHead> sessions;  // ordered by session_id
  std::string next_page_token;        // "" = no more
  int64_t bytes = 0;                  // the heads' estimated encoded size
};

struct SessionUpdate {
  std::optional<std::map<std::string, std::string>> labels;  // replaces all
  // 0 = the store's Options::default_ttl; InfiniteDuration pins.
  std::optional<absl::Duration> ttl;
};

struct Lease {
  std::string owner;
  uint64_t fence = 0;
  absl::Time expires_at;
};

struct WorkerInfo {
  std::string worker_id;  // 1-128 bytes of [A-Za-z0-9._:-]
  std::string address;    // host:port of its gRPC server
  std::vector<std::string> model_fingerprints;
  double load = 0;        // worker-defined, e.g. queued tokens / capacity
  absl::Time expires_at;  // set by the store on read
};

class StateStore {
 public:
  virtual ~StateStore() = default;
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // Creates the session with version 1 = `initial_state` and bumps its fence
  // (the returned head's fence is usable for commits until someone acquires
  // the lease). ALREADY_EXISTS/kSessionExists; INVALID_ARGUMENT; UNAVAILABLE.
  virtual absl::StatusOr<CommitResult> CreateSession(
      const CreateSessionRequest& request) = 0;

  // NOT_FOUND/kSessionNotFound; UNAVAILABLE.
  virtual absl::StatusOr<SessionHead> GetHead(const SessionKey& key) = 0;

  // Loads `version` (0 = head). NOT_FOUND/kSessionNotFound,
  // NOT_FOUND/kVersionMismatch, DATA_LOSS/kStateCorrupt, UNAVAILABLE.
  virtual absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& key,
                                                    uint64_t version) = 0;

  // Compare-and-set of the head. Writes the new version invisibly first;
  // readers see either the old head or the complete new one. Errors:
  // kSessionNotFound, FAILED_PRECONDITION/kVersionMismatch, ABORTED/kFenced,
  // kModelMismatch, UNAVAILABLE (also when the requested durability was not
  // reached: the version then exists, see the file comment).
  virtual absl::StatusOr<CommitResult> Commit(const CommitRequest& request) = 0;

  // The highest durability this store can ever reach: memory MEMORY,
  // SQLite FSYNC, Redis REPLICATED (whether a Redis commit reaches FSYNC or
  // REPLICATED depends on the servers' configuration, which can change at
  // run time: a commit below what it asked for fails UNAVAILABLE). A request
  // asking for more is refused before anything is written (the service:
  // FAILED_PRECONDITION, field durability), not retried in vain.
  virtual Durability MaxDurability() const = 0;

  // Raises the durability of an existing `version` to `wanted` without
  // writing another: waits for what the store needs (Redis: WAIT/WAITAOF
  // after a marker write on the version; SQLite: a synchronous commit,
  // which fsyncs every earlier one) and records the level reached, so
  // ListVersions and GetHead report it. Returns the version as recorded.
  // For a version committed below the durability a caller wants now (a
  // checkpoint asking FSYNC of input a policy commit wrote at MEMORY).
  // Errors: kSessionNotFound, NOT_FOUND/kVersionMismatch (not kept), and
  // DurabilityNotReached when `wanted` is not reached.
  virtual absl::StatusOr<VersionInfo> AwaitDurability(const SessionKey& key,
                                                      uint64_t version,
                                                      Durability wanted) = 0;

  // Commits version head+1 whose state is a copy of `version`'s (position,
  // input_offset and tail move back; the version number moves forward).
  // Same errors as Commit and LoadVersion.
  // `request_id` (may be empty) is recorded with the new version.
  virtual absl::StatusOr<CommitResult> Rollback(
      const SessionKey& key, uint64_t expected_version, uint64_t fence,
      uint64_t version, Durability durability,
      const std::string& request_id) = 0;

  // Kept versions, oldest first. kSessionNotFound; UNAVAILABLE.
  virtual absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const SessionKey& key) = 0;

  // The tenant's live sessions. INVALID_ARGUMENT (bad token or page size).
  virtual absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& request) = 0;

  // At least the number of the tenant's live sessions, in one cheap read
  // (a tenant limit checks it before each create, and lists the sessions
  // only at the limit). Redis counts the tenant's index, which also holds
  // creates in flight and sessions expired or deleted that no listing has
  // pruned yet; the in-memory and SQLite stores count exactly.
  // INVALID_ARGUMENT (bad tenant); UNAVAILABLE.
  virtual absl::StatusOr<int64_t> CountSessionsBound(
      const std::string& tenant) = 0;

  // Labels and TTL (pinning); refreshes the TTL of every key.
  // kSessionNotFound; INVALID_ARGUMENT; UNAVAILABLE.
  virtual absl::StatusOr<SessionHead> UpdateSession(
      const SessionKey& key, const SessionUpdate& update) = 0;

  // Removes the session and every version. A re-created session never
  // reuses a fence: the fence counter survives the delete (Redis: per id;
  // memory and SQLite: one counter for all sessions, nothing kept per id).
  // kSessionNotFound; UNAVAILABLE.
  virtual absl::Status DeleteSession(const SessionKey& key) = 0;

  // Grants `owner` the lease for `ttl` and returns the new (bumped) fence.
  // With `takeover` false, another owner's live lease is ABORTED/
  // kSessionBusy (metadata owner); with true it is taken over, fencing out
  // its holder. Refreshes the session's TTL. kSessionNotFound; UNAVAILABLE.
  virtual absl::StatusOr<Lease> AcquireLease(const SessionKey& key,
                                             const std::string& owner,
                                             absl::Duration ttl,
                                             bool takeover) = 0;

  // Extends the lease of `owner` holding `fence` (re-creating it if it had
  // expired and the fence is still current). ABORTED/kFenced when the fence
  // is no longer current or another owner holds the lease.
  virtual absl::StatusOr<Lease> RenewLease(const SessionKey& key,
                                           const std::string& owner,
                                           uint64_t fence,
                                           absl::Duration ttl) = 0;

  // RenewLease for each of `leases` (a session and the fence `owner`
  // holds it with), one result per entry in order. A worker renews all its
  // resident sessions' leases every ttl / 3: the Redis store pipelines
  // them (one round trip per few hundred on each node, not one each), so
  // tens of thousands renew well inside the ttl. This default calls
  // RenewLease for each. Whole-call failures (UNAVAILABLE) are reported
  // per entry.
  struct LeaseToRenew {
    SessionKey key;
    uint64_t fence = 0;
  };
  virtual std::vector<absl::StatusOr<Lease>> RenewLeases(
      const std::string& owner, const std::vector<LeaseToRenew>& leases,
      absl::Duration ttl) {
    std::vector<absl::StatusOr<Lease>> out;
    out.reserve(leases.size());
    for (const LeaseToRenew& l : leases) {
      out.push_back(RenewLease(l.key, owner, l.fence, ttl));
    }
    return out;
  }

  // Drops the lease if `owner` holds it with `fence`; OK (no-op) otherwise.
  // The fence stays, so the releasing owner may still commit until another
  // owner acquires the lease.
  virtual absl::Status ReleaseLease(const SessionKey& key,
                                    const std::string& owner,
                                    uint64_t fence) = 0;

  // The live lease; an empty owner (fence = the current fence) when none.
  // kSessionNotFound; UNAVAILABLE.
  virtual absl::StatusOr<Lease> GetOwner(const SessionKey& key) = 0;

  // Worker registry: announces or refreshes (heartbeat) `info` for `ttl`.
  // Returns whether the entry was listed just before: false for the first
  // announcement, after UnregisterWorker, and for a heartbeat that came too
  // late (the entry expired: the worker was paused or cut off) or found
  // the entry lost with the store's data (a restart without persistence).
  // INVALID_ARGUMENT; UNAVAILABLE.
  virtual absl::StatusOr<bool> RegisterWorker(const WorkerInfo& info,
                                              absl::Duration ttl) = 0;
  virtual absl::Status UnregisterWorker(const std::string& worker_id) = 0;
  // Live workers, ordered by worker_id.
  virtual absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() = 0;

  // Cheap reachability probe for readiness checks: OK when the store
  // answers, its error (UNAVAILABLE/kStoreUnavailable when it cannot be
  // reached in time) otherwise. The default reads the head of a probe
  // session ("statestream-probe"/"ping") and takes NOT_FOUND as an answer;
  // an implementation may override it with something cheaper.
  virtual absl::Status Ping() {
    absl::StatusOr<SessionHead> head = GetHead({"statestream-probe", "ping"});
    if (head.ok() || absl::IsNotFound(head.status())) return absl::OkStatus();
    return head.status();
  }

  // Tenant slots: a tenant's concurrent streams counted across every
  // process that shares this store (each gateway). A slot is named by its
  // holder (unique per process and stream: "<process>:<n>", 1-256 bytes)
  // and lives `ttl` past its last acquire or renewal, so the slots of a
  // process that died free themselves. Stores that only one process uses
  // (embedded) do not count them: CountsTenantSlots() is false and the
  // other calls are UNIMPLEMENTED; their callers count in-process.
  virtual bool CountsTenantSlots() const { return false; }
  // Takes `slot` among `tenant`'s unless `max` unexpired ones are held
  // already: true when taken (or held already: renewed), false at the
  // limit.
  virtual absl::StatusOr<bool> AcquireTenantSlot(const std::string& /*tenant*/,
                                                 const std::string& /*slot*/,
                                                 int /*max*/,
                                                 absl::Duration /*ttl*/) {
    return absl::UnimplementedError("this store counts no tenant slots");
  }
  // Renews `tenant`'s `slots` for `ttl`, re-adding any that expired
  // meanwhile (a stream that outlived a store outage is still open, so it
  // counts even if that puts the tenant over its limit for a while).
  virtual absl::Status RenewTenantSlots(
      const std::string& /*tenant*/, const std::vector<std::string>& /*slots*/,
      absl::Duration /*ttl*/) {
    return absl::UnimplementedError("this store counts no tenant slots");
  }
  // Frees `slot` (OK if it is not held).
  virtual absl::Status ReleaseTenantSlot(const std::string& /*tenant*/,
                                         const std::string& /*slot*/) {
    return absl::UnimplementedError("this store counts no tenant slots");
  }
  // Unexpired slots of `tenant`.
  virtual absl::StatusOr<int64_t> CountTenantSlots(
      const std::string& /*tenant*/) {
    return absl::UnimplementedError("this store counts no tenant slots");
  }

  // For a process that is stopping: the calls waiting on a networked
  // backend, and every later call, fail at once with UNAVAILABLE/
  // kStoreUnavailable instead of waiting out its timeouts, so a hung
  // backend cannot hold up the shutdown. Irreversible. Embedded stores,
  // which wait on no network, ignore it.
  virtual void Interrupt() {}

 protected:
  StateStore() = default;
};

}  // namespace statestream

#endif  // STATESTREAM_STATE_STORE_STATE_STORE_H_
