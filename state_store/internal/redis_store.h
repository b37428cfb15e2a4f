// SPDX-License-Identifier: Apache-2.0
// The Redis StateStore (redis_state_store.h), split by concern:
// redis_state_store.cc (setup, scripts, reads and the factory),
// redis_state_store_versions.cc (creates, commits, loads, durability and
// the version history), redis_state_store_sessions.cc (heads, listings,
// updates, deletes, leases and the worker registry), and
// internal/redis_replies.cc (the scripts' replies and arguments). The keys
// and scripts are described in internal/redis_scripts.h and
// docs/state-store.md. Not part of the public interface.
#ifndef STATESTREAM_STATE_STORE_INTERNAL_REDIS_STORE_H_
#define STATESTREAM_STATE_STORE_INTERNAL_REDIS_STORE_H_

#include <hiredis/hiredis.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/internal/redis_client.h"
#include "state_store/redis_state_store.h"
#include "state_store/state_codec.h"
#include "state_store/state_store.h"

namespace statestream::store_internal {

// The smallest RedisStateStoreOptions::chunk_bytes (NewRedisStateStore).
constexpr uint64_t kMinChunkBytes = 1024;
// The largest keep_versions, and the most chunks a version is written in
// (a 64 GiB state at the default 1 MiB chunks, above the codec's largest).
// The scripts check what they read back against the same bounds
// (MAX_KEPT and MAX_CHUNKS in internal/redis_scripts.h): beyond them a
// hash is damaged. A damaged count within them costs a script at most
// ~130k steps.
constexpr int kMaxKeptVersions = 65536;
constexpr uint64_t kMaxVersionChunks = uint64_t{1} << 16;
// What LoadVersion asks for in one pipeline: chunks of about this many
// bytes in all (by the recorded size over the recorded count), and at
// least 64. Memory is committed as they arrive, never for a recorded size
// alone.
constexpr uint64_t kLoadBytesPerRound = 64 << 20;
constexpr uint32_t kMinLoadChunksPerRound = 64;
// Index entries PruneIndexSample checks a create, and the most creates
// waiting for it.
constexpr int kIndexPruneSamples = 3;
// Entries a create at its tenant's limit checks before it is refused, and
// how often at most it lists the whole tenant instead (ReserveInIndex).
constexpr int kFullIndexSamples = 64;
constexpr absl::Duration kFullIndexPruneInterval = absl::Seconds(10);
constexpr size_t kMaxPruneQueue = 4096;

// A hash's fields, as HGETALL (or a script) returns them in pairs.
using Fields = std::map<std::string, std::string>;

// The Lua scripts, loaded by SHA at Init (EVAL again on NOSCRIPT).
enum Script {
  kCreate,
  kCommit,
  kRead,
  kVersions,
  kUpdate,
  kDelete,
  kAcquire,
  kRenew,
  kRelease,
  kRegisterWorker,
  kUnregisterWorker,
  kListWorkers,
  kRecordDurability,
  kAwaitDurability,
  kReserveInIndex,
  kAcquireSlot,
  kRenewSlots,
  kCountSlots,
  kScriptCount
};

// kLuaPrelude followed by `s`'s body.
std::string ScriptSource(Script s);

// A reply's text: strings, statuses, errors and integers; "" otherwise.
std::string Str(const redisReply* r);
// An array of name, value, name, value... as Fields.
Fields Pairs(const redisReply* r);
// Whether each `INFO server` text (one per primary) says Redis 7.2 or
// later, which has WAITAOF. False for none, or for a text without a
// readable redis_version: in a Cluster mid-upgrade one older primary would
// refuse WAITAOF, so the store reads the fsync settings instead.
bool AllHaveWaitaof(const std::vector<std::string>& info_server);
// A field as a number; 0 when absent. A value that is no number (or
// does not fit) is damage: DATA_LOSS/STATE_CORRUPT naming `where`, the hash
// it is in ("version 3", "the head").
absl::StatusOr<uint64_t> U64(const Fields& f, const std::string& k,
                             absl::string_view where);
absl::StatusOr<int64_t> I64(const Fields& f, const std::string& k,
                            absl::string_view where);
// A field's text; "" when absent.
std::string Get(const Fields& f, const std::string& k);

int64_t Ms(absl::Duration d);
// A TTL in ms as the scripts take it: -1 for none, at least 1 otherwise.
int64_t TtlMs(absl::Duration ttl);

// 128 random bits: two writers of one version never share chunk keys.
std::string NewNonce();
// The write of one chunk before its commit: SET key chunk PX pending_ms NX.
// A pipeline resent after a timeout can still have its first copy reach
// Redis later (bytes the kernel held): without NX that late SET would put
// the pending TTL back on a chunk the commit has since made part of the
// head, and the head would expire with it. (A chunk's bytes never change
// for its key: the key holds the attempt's nonce.)
Command PendingChunkWrite(absl::string_view key, absl::string_view chunk,
                          absl::string_view pending_ms);
// Sent after each write when chunks are written again (after a CHUNKS
// answer: some vanished, nothing was committed): PEXPIRE key pending_ms GT
// renews a chunk that survived, and can never shorten a committed one's
// TTL (GT; a key without one counts as infinite).
Command PendingChunkRenewal(absl::string_view key,
                            absl::string_view pending_ms);
// A limited create's in-flight mark (CreateSession): its nonce in the set
// `marks` ("<prefix>creates"), which lasts ttl_ms from the latest mark,
// and its removal. Each is the same if sent twice (a pipeline resent
// after a lost reply): a count added twice kept a failed create's
// reservation from being pruned, and one taken back twice unmarked
// another create of the id, whose reservation a listing then pruned.
std::vector<Command> CreateMark(absl::string_view marks,
                                absl::string_view nonce,
                                absl::string_view ttl_ms);
Command CreateUnmark(absl::string_view marks, absl::string_view nonce);
// 10 random bits added to the server's clock in a new fence (kLuaPrelude's
// next_fence): two grants in one millisecond rarely collide even when the
// counter went back.
std::string FenceSalt();

// A version's hash (STATE_CORRUPT when a number in it is none), and back.
absl::StatusOr<VersionInfo> ParseVersion(const Fields& f);
std::vector<std::string> VersionFields(const VersionInfo& v,
                                       const std::string& nonce);

class RedisStateStore final : public StateStore {
 public:
  RedisStateStore(const RedisStateStoreOptions& o,
                  std::unique_ptr<RedisClient> client)
      : options_(o),
        clock_(o.clock ? o.clock : Clock::Real()),
        client_(std::move(client)) {}
  ~RedisStateStore() override;  // stops the index pruner
  absl::Status Init();

  absl::StatusOr<CommitResult> CreateSession(
      const CreateSessionRequest& r) override;

  // PING on every primary, instead of the default's probe-session read.
  absl::Status Ping() override;
  void Interrupt() override { client_->Close(); }
  bool CountsTenantSlots() const override { return true; }
  absl::StatusOr<bool> AcquireTenantSlot(const std::string& tenant,
                                         const std::string& slot, int max,
                                         absl::Duration ttl) override;
  absl::Status RenewTenantSlots(const std::string& tenant,
                                const std::vector<std::string>& slots,
                                absl::Duration ttl) override;
  absl::Status ReleaseTenantSlot(const std::string& tenant,
                                 const std::string& slot) override;
  absl::StatusOr<int64_t> CountTenantSlots(const std::string& tenant) override;

  absl::StatusOr<SessionHead> GetHead(const SessionKey& key) override;

  absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& key,
                                            uint64_t version) override;

  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override;

  // What a commit reaches depends on the servers' configuration at the
  // time (state-store.md, "Durability").
  Durability MaxDurability() const override { return Durability::kReplicated; }

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

  absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& req) override;

  // ZCARD of the tenant's index.
  absl::StatusOr<int64_t> CountSessionsBound(
      const std::string& tenant) override;

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

  // Pipelined (RedisClient::RunEach): one round trip per 256 leases on
  // each node.
  std::vector<absl::StatusOr<Lease>> RenewLeases(
      const std::string& owner, const std::vector<LeaseToRenew>& leases,
      absl::Duration ttl) override;

  absl::Status ReleaseLease(const SessionKey& key, const std::string& owner,
                            uint64_t fence) override;

  absl::StatusOr<Lease> GetOwner(const SessionKey& key) override;

  absl::StatusOr<bool> RegisterWorker(const WorkerInfo& info,
                                      absl::Duration ttl) override;

  absl::Status UnregisterWorker(const std::string& worker_id) override;

  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override;

 private:
  // Every session key has a TTL, so under any volatile-* or allkeys-*
  // policy a Redis at maxmemory drops committed states silently; with
  // noeviction it refuses writes (STORE_UNAVAILABLE/OOM) instead. CONFIG
  // forbidden by ACLs: no warning (nothing known).
  void WarnIfEvicting();

  // The level every write reaches before its reply. Without WAITAOF
  // (Redis < 7.2) FSYNC when every primary fsyncs each write first:
  // appendonly yes, appendfsync always, and no-appendfsync-on-rewrite no
  // (else a rewrite skips the fsyncs). Read again at most once a second, as
  // CONFIG SET or a failover to a differently configured node changes it;
  // CONFIG forbidden by ACLs counts as not. One caller reads at a time:
  // the others take the last answer meanwhile (older than a second while
  // a read hangs), so a hung primary stalls that one write (for the
  // command timeout), not every write to every shard. With WAITAOF, MEMORY:
  // what WAITAOF answers is what counts.
  Durability BaseDurability();

  std::string Prefix(const SessionKey& k) const;
  // The keys every session script declares, in order (EvalThen and
  // EvalEach): head, fence, lease under the session's `prefix`.
  static std::vector<std::string> SessionScriptKeys(const std::string& prefix);

  std::string HeadKey(const SessionKey& k) const;

  std::string ChunkKey(const SessionKey& k, uint64_t version,
                       const std::string& nonce, uint32_t i) const;

  std::string IndexKey(const std::string& tenant) const;

  std::string WorkersKey() const;

  // `tenant`'s slots (its index's hash slot).
  std::string SlotsKey(const std::string& tenant) const;
  // Runs a slot script on `tenant`'s slots with ttl ms and `args`; its
  // reply, or the error of one that is not {'OK', ...} / {'FULL', ...}.
  absl::StatusOr<Reply> EvalSlots(const std::string& tenant, Script script,
                                  absl::Duration ttl,
                                  const std::vector<std::string>& args);

  // The stored chunks of a version: the encoding cut into pieces of at most
  // chunk_bytes, referencing the snapshot's floats (nothing is copied).
  // Loads concatenate them, so any cut is valid; the header and the CRC
  // table travel as their own small chunks.
  std::vector<absl::string_view> ChunkViews(
      const EncodedStateParts& parts) const;
  // MESSAGE_TOO_LARGE past kMaxVersionChunks chunks (of a `bytes` state).
  absl::Status CheckChunkCount(size_t chunks, size_t bytes) const;

  absl::Status Unexpected(absl::string_view what);

  // A reply that is not what the store asked for. A server refusing writes
  // for now — out of memory under noeviction (OOM), a failing RDB save
  // (MISCONF), a replica (READONLY), a slow script (BUSY), too few
  // replicas (NOREPLICAS) — is the store being unavailable: retryable, and
  // the caller's state is untouched. A script's SSCORRUPT (a damaged
  // count in the session's hashes) is DATA_LOSS / STATE_CORRUPT, nothing
  // written. Anything else is a bug. (TRYAGAIN,
  // LOADING, CLUSTERDOWN and MASTERDOWN never get here: the client retries
  // them until its deadline.)
  absl::Status BadReply(const redisReply* r);
  // The lease kRenew's reply `r` grants (`owner`, `fence`, renewed at
  // `start` for `ttl`), or its error.
  absl::StatusOr<Lease> RenewedLease(const SessionKey& key, const redisReply* r,
                                     const std::string& owner, uint64_t fence,
                                     absl::Time start, absl::Duration ttl);

  absl::Status AddToIndex(const SessionKey& key);
  // After a create of `tenant`'s: queues PruneIndexSample for the pruner
  // thread (started on first use), so no create waits for it (in a
  // Cluster a drawn session's shard may be down for seconds). A full queue
  // drops it: best effort.
  void QueueIndexPrune(const std::string& tenant);
  // Drops from `tenant`'s index the entries of a few sessions drawn at
  // random that no longer exist (Redis expired them; nothing else removes
  // an entry but a delete or a listing that meets it). Best effort, errors
  // ignored. With kIndexPruneSamples draws a create, the index holds at
  // most about 1 / kIndexPruneSamples stale entries a live one in steady
  // state, instead of growing forever.
  // `samples` entries drawn instead of kIndexPruneSamples (the whole index
  // when it holds no more). Returns whether any drawn had no head.
  bool PruneIndexSample(const std::string& tenant,
                        int samples = kIndexPruneSamples);
  void PruneLoop();

  // AddToIndex for a create limited to `max` sessions of the tenant
  // (kReserveInIndex). At the limit, prunes kFullIndexSamples entries drawn
  // at random and, if any had no head, tries again; then, at most once per
  // tenant every kFullIndexPruneInterval across the store's users (a mark,
  // "<prefix>:{t:<tenant>}:pruned"), lists the whole tenant (pruning every
  // entry without a head) and tries once more; then kTenantLimit. A tenant
  // retrying creates at its limit so costs a sample each, not a read of
  // its every session.
  absl::Status ReserveInIndex(const SessionKey& key, int64_t max);
  // How long a limited create's in-flight mark ("<prefix>creates":
  // CreateMark) keeps its reservation from being pruned if the creator
  // dies midway.
  static constexpr absl::Duration kCreateInFlight = absl::Seconds(60);

  // Removes a session without a head from the tenant's index. The index
  // and the head live in different slots, so this cannot be one script: a
  // create (or a re-create after a delete) may write its head meanwhile.
  // Creates add to the index before and after writing the head, and this
  // looks at the head after removing: whichever runs last re-adds it, so a
  // live session never stays out of the index.
  absl::Status DropFromIndex(const SessionKey& key);

  // Runs `script` with `keys` and the common + `args` arguments, then
  // `extra` commands on the same connection. EVALSHA, or EVAL on NOSCRIPT.
  absl::StatusOr<std::vector<Reply>> RunScript(
      absl::string_view routing, Script script,
      const std::vector<std::string>& keys,
      const std::vector<absl::string_view>& args,
      const std::vector<Command>& extra);

  absl::StatusOr<Reply> Eval(const SessionKey& key, Script script,
                             std::vector<std::string> args);

  // Eval of `script` for each of `keys` (valid keys) with its `args`,
  // pipelined (RedisClient::RunEach): one round trip per node for all of
  // them. A node whose script cache was flushed (a restart, a failover)
  // answers NOSCRIPT: the first such call runs alone through Eval, which
  // loads the script, and the rest are pipelined again; any still NOSCRIPT
  // (another node's cache) then go one by one. A reply that is not the
  // script's answer is its error (BadReply), as Eval's. One result per
  // key, in order.
  std::vector<absl::StatusOr<Reply>> EvalEach(
      Script script, const std::vector<SessionKey>& keys,
      const std::vector<std::vector<std::string>>& args);

  // Eval, then `extra` commands on the same connection: all the replies.
  absl::StatusOr<std::vector<Reply>> EvalThen(
      const SessionKey& key, Script script, std::vector<std::string> args,
      const std::vector<Command>& extra);

  // VERSION_MISMATCH/NOT_FOUND for `version`, from a script's
  // {'NOTKEPT', head, oldest}.
  static absl::Status NotKept(const redisReply* r, uint64_t version);
  // In a Cluster, a slot moves key by key: a read can find some of a
  // session's keys on the new node before the others. Sleeps before retry
  // `attempt` (25 ms doubling, ~1.6 s over six) and returns true, or false
  // when there is no Cluster or the tries are spent.
  bool WaitForSlotMove(int attempt);
  // One try of LoadVersion: nullopt when the version it read was replaced
  // before its chunks were (the session deleted and created again, or the
  // number reused after Redis lost writes): its chunks are gone.
  absl::StatusOr<std::optional<LoadedVersion>> LoadVersionOnce(
      const SessionKey& key, uint64_t version);

  absl::StatusOr<Reply> EvalWorkers(Script script,
                                    std::vector<std::string> args);

  // Writes `chunks` (invisible: they expire unless the
  // script links them), then runs `script` (kCreate or kCommit), followed
  // on the same connection by the wait for `wanted` durability; updates
  // *reached. Returns the script's reply.
  absl::StatusOr<Reply> WriteVersion(
      const SessionKey& key, Script script, uint64_t version,
      const std::string& nonce, const std::vector<absl::string_view>& chunks,
      const std::vector<std::string>& args, Durability wanted,
      Durability* reached);

  // The wait that follows a write for `wanted` durability (none for MEMORY,
  // nor for FSYNC on a server without WAITAOF: see fsync_always_).
  // (Commands are views: the timeout text lives in wait_timeout_.)
  std::vector<Command> WaitCommands(Durability wanted) const;

  // Raises *reached by the reply of a WaitCommands command.
  static void ReadWait(const redisReply* w, Durability* reached);

  // Reports the commit of `written` (as the commit script wrote it) with the
  // durability reached, first recording it in the version if the wait
  // raised it above the level the script wrote, so ListVersions and GetHead
  // report it too.
  absl::StatusOr<CommitResult> Finish(const SessionKey& key,
                                      const VersionInfo& written,
                                      const std::string& nonce,
                                      Durability wanted, Durability reached);

  // The head (and the fields of `version`: 0 = head, -1 = head only).
  absl::StatusOr<std::pair<SessionHead, Fields>> Read(const SessionKey& key,
                                                      int64_t version);
  // Read's answer from kLuaRead's reply `r`.
  absl::StatusOr<std::pair<SessionHead, Fields>> ParseRead(
      const SessionKey& key, int64_t version, const redisReply* r);
  // GetHead of each of `keys` (valid keys), pipelined (EvalEach): one round
  // trip per node for all of them instead of one per session. A head read
  // mid slot move is read again alone through Read, which waits the move
  // out.
  std::vector<absl::StatusOr<SessionHead>> GetHeads(
      const std::vector<SessionKey>& keys);

  const RedisStateStoreOptions options_;
  Clock* const clock_;
  std::unique_ptr<RedisClient> client_;
  std::string sha_[kScriptCount];
  bool have_waitaof_ = false;
  // options_.durability_timeout in ms, as WAIT / WAITAOF take it.
  const std::string wait_timeout_ =
      absl::StrCat(Ms(options_.durability_timeout));
  absl::Mutex prune_mu_;
  std::deque<std::string> prune_queue_ ABSL_GUARDED_BY(prune_mu_);
  bool prune_stop_ ABSL_GUARDED_BY(prune_mu_) = false;
  std::thread pruner_ ABSL_GUARDED_BY(prune_mu_);
  absl::Mutex fsync_mu_;
  bool fsync_always_ ABSL_GUARDED_BY(fsync_mu_) = false;
  bool fsync_checking_ ABSL_GUARDED_BY(fsync_mu_) = false;  // a read runs
  absl::Time fsync_checked_at_ ABSL_GUARDED_BY(fsync_mu_) =
      absl::InfinitePast();
};

}  // namespace statestream::store_internal

#endif  // STATESTREAM_STATE_STORE_INTERNAL_REDIS_STORE_H_
