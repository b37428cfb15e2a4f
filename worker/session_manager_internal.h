// SPDX-License-Identifier: Apache-2.0
// SessionManager's internals, shared by its source files:
//   session_manager.cc            the public session calls and creates;
//   session_manager_versions.cc   versions, rollback, export and import;
//   session_manager_residency.cc  loading, eviction, the per-session strand,
//                                 lease renewal, the idle policy and drain;
//   session_manager_commits.cc    commits, checkpoints and the Append
//                                 pipeline (writers);
//   session_manager_generate.cc   Generate and Score.
// Not part of the worker's interface: include only from those files.
#ifndef STATESTREAM_WORKER_SESSION_MANAGER_INTERNAL_H_
#define STATESTREAM_WORKER_SESSION_MANAGER_INTERNAL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/byte_budget.h"
#include "common/status.h"
#include "worker/executor.h"
#include "worker/generation_record.h"
#include "worker/request_memo.h"
#include "worker/session_manager.h"
#include "worker/tasks.h"

namespace statestream::worker {

constexpr size_t kMaxTextBytes = 1 << 20;
// A ListSessions page's heads, estimated (ListSessionsRequest::max_bytes).
constexpr int64_t kMaxListBytes = 2 << 20;
constexpr size_t kMaxAppendTokens = 262144;
constexpr size_t kMaxScoreTokens = 65536;
// Log-probabilities in one Score response (the scored tokens' and their
// top alternatives'): ~5.8 MB, inside the 8 MiB message limit.
constexpr size_t kMaxScoreEntries = 524288;

// Typed errors (docs/errors.md).
absl::Status Invalid(Reason reason, absl::string_view msg,
                     ErrorMetadata md = {});
// INVALID_ARGUMENT/MESSAGE_TOO_LARGE naming the field and its limit.
absl::Status TooLarge(absl::string_view field, size_t limit);
// INVALID_ARGUMENT/INVALID_TOKEN for the first id outside [0, vocab).
absl::Status CheckTokens(const std::vector<int32_t>& ids, int vocab,
                         absl::string_view field);
absl::Status NotFound(absl::string_view id);  // SESSION_NOT_FOUND
absl::Status Busy();      // ABORTED/SESSION_BUSY: a newer writer call
absl::Status Draining();  // UNAVAILABLE/OVERLOADED with retry_after_ms

// A write the store kept below the durability asked for
// (DurabilityNotReached): it exists, though the call failed.
bool WrittenBelowDurability(const absl::Status& st);

// The version a DurabilityNotReached error says was written (0 if none).
uint64_t WrittenVersionOf(const absl::Status& st);

// Session::no_hidden_at when last_hidden is that of the last token.
constexpr uint64_t kHiddenKnown = ~uint64_t{0};

// FAILED_PRECONDITION for logits asked of a state without last_hidden.
absl::Status NoHidden(const char* field);

// FAILED_PRECONDITION/VERSION_MISMATCH (metadata head_version) unless the
// head is the version the caller `expected` (none: any).
absl::Status CheckExpectedHead(std::optional<uint64_t> expected, uint64_t head);

// Whether a session's TTL lets it expire (set, not pinned).
inline bool Expires(absl::Duration ttl) {
  return ttl > absl::ZeroDuration() && ttl < absl::InfiniteDuration();
}

// The incomplete UTF-8 character at the end of a tokenizer tail: the carry
// of the text so far when the tail holds the whole character.
std::string TailCarry(const std::string& tail);

// The UTF-8 carry a stored state says its input left open, as a load
// rebuilds it: the recorded carry when it is for this very input, else the
// tail's. `*known` (optional): whether the state says so for certain;
// `*history_base` (optional): where its input history last restarted
// (Session::history_base). DATA_LOSS / STATE_CORRUPT for malformed side
// data.
absl::StatusOr<std::string> StateCarry(
    const StateSnapshot& snap, std::string* sampler = nullptr,
    std::deque<GenerationRecord>* records = nullptr, bool* known = nullptr,
    uint64_t* history_base = nullptr);

// Periodic checkpoints of one committing generation (see Generate): at
// most one commit in flight; a newer checkpoint replaces one still waiting;
// the generation's final step waits for the commit in flight.
struct PendingCheckpoint {
  GenerateCheckpoint cp;
  std::vector<int32_t> tokens;  // the whole output so far
  // cp.state's bytes in --max-copy-bytes (shared: a PendingCheckpoint
  // rides in a std::function, which must be copyable).
  std::shared_ptr<ByteBudget::Hold> hold;
};
struct GenerationCheckpoints {
  absl::Mutex mu;
  bool running ABSL_GUARDED_BY(mu) = false;  // a commit is in flight
  bool over ABSL_GUARDED_BY(mu) = false;     // the generation ended
  std::optional<PendingCheckpoint> waiting ABSL_GUARDED_BY(mu);
  std::function<void()> then ABSL_GUARDED_BY(mu);  // the final step
};

// One resident session.
struct Session {
  SessionKey key;
  uint64_t fence = 0;  // fixed after load

  absl::Mutex mu;
  // The operation queue (strand).
  std::deque<std::function<void()>> ops ABSL_GUARDED_BY(mu);
  bool busy ABSL_GUARDED_BY(mu) = false;
  // Current writer call.
  uint64_t writer_gen ABSL_GUARDED_BY(mu) = 0;
  // Rollbacks and imports applied to this copy: each replaced the input
  // history, so a writer opened before it cannot take input below the
  // session's offset for its own (Writer::replaced).
  uint64_t replaced ABSL_GUARDED_BY(mu) = 0;
  bool writer_attached ABSL_GUARDED_BY(mu) = false;
  std::function<void(const absl::Status&)> superseded ABSL_GUARDED_BY(mu);
  enum class Gone { kNo, kEvicted, kFenced, kDeleted };
  Gone gone ABSL_GUARDED_BY(mu) = Gone::kNo;
  // Held across a lease renewal and across the release of a dropped
  // session's lease, so a renewal that read `gone` before the drop cannot
  // revive the lease after its release (it would keep other workers out
  // for one more TTL). Taken before `mu`, never under it.
  absl::Mutex lease_mu;
  SessionView view ABSL_GUARDED_BY(mu);

  // Owned by the running operation (the strand).
  EngineState live;
  std::string tail;        // tokenizer tail
  std::string utf8_carry;  // incomplete UTF-8 suffix of the text so far
  bool carry_known = true;
  // The input offset where the last rollback or import (on any worker:
  // stored with each version) restarted the input history. Input below it
  // was another history's: a request below it is no resend of input this
  // session holds, whichever writer sends it (Writer::replaced covers
  // only the writers open at the replacement, and only on this copy).
  uint64_t history_base = 0;
  // The position of a snapshot loaded without last_hidden (an import or a
  // `model eval --state-out` file): until a token is consumed there are no
  // logits for the last token, so Generate needs a prompt and Score input.
  uint64_t no_hidden_at = kHiddenKnown;
  uint64_t input_offset = 0;
  std::string sampler_state;
  // Recent committed generations, oldest first; committed with the state.
  std::deque<GenerationRecord> records;
  SessionHead head;
  int64_t uncommitted_tokens = 0;
  bool dirty = false;
  // What made the uncommitted state (its version's cause): kGenerate when
  // a generation's checkpoint could not be committed and nothing came
  // after it, else kAppend.
  VersionCause dirty_cause = VersionCause::kAppend;
  // The highest durability the requests of the uncommitted input asked
  // for: commits by policy (idle, eviction, drain) reach it too, since a
  // writer drops what a commit covers.
  Durability dirty_durability = Durability::kMemory;
  // dirty_since while dirty, else InfiniteFuture: what the renewal loop
  // reads (under mu) to find input due for a commit (Impl::CommitDue).
  absl::Time dirty_hint ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  absl::Time dirty_since;
  int64_t last_use = 0;  // guarded by the manager's mu_

  // The running Append's ingest (on a copy of the live state, so stopping
  // it changes nothing), cancelled when its writer is superseded,
  // abandoned or ended, or the worker drains: it would otherwise hold the
  // strand (and a delete or drain behind it) for up to 262,144 tokens.
  std::weak_ptr<Task> ingest ABSL_GUARDED_BY(mu);
  void CancelIngest() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (std::shared_ptr<Task> t = ingest.lock()) t->Cancel();
    ingest.reset();
  }
  // Writers up to a bar's generation start no ingest (and a cancelled one
  // answers its reason): those a delete ended (EndWriter; the delete may
  // still fail, and later writers go on), all once the session is gone or
  // the worker drains. An op past its checks when that happens would
  // otherwise submit after CancelIngest found nothing to cancel. Each
  // writer keeps the first reason that barred it (one a delete ended still
  // hears "being deleted" when the drain follows), so `bars` holds ranges:
  // (through, why) with `through` rising, each covering the generations
  // above the one before. A refused delete adds one (consecutive ones with
  // the same reason merge), and a full bar (through = ~0) ends the list.
  std::vector<std::pair<uint64_t, absl::Status>> bars ABSL_GUARDED_BY(mu);
  // Why writer `gen` is barred; OK if it is not.
  absl::Status BarredWhy(uint64_t gen) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (const auto& [through, why] : bars) {
      if (gen <= through) return why;
    }
    return absl::OkStatus();
  }
  // Why writer `gen` may do nothing more (OK if it may): barred (a delete
  // or the drain), superseded, or its call gone (abandoned).
  absl::Status WriterEnded(uint64_t gen) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (absl::Status barred = BarredWhy(gen); !barred.ok()) return barred;
    if (writer_gen != gen || !writer_attached) return Busy();
    return absl::OkStatus();
  }
  // `why` is never OK.
  void BarIngest(uint64_t through, absl::Status why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const uint64_t last = bars.empty() ? 0 : bars.back().first;
    if (through > last) {
      if (!bars.empty() && bars.back().second == why) {
        bars.back().first = through;
      } else {
        bars.emplace_back(through, std::move(why));
      }
    }
    CancelIngest();
  }
};

class SessionManager::Writer {
 public:
  std::shared_ptr<Session> session;
  uint64_t gen = 0;
  // Set (on the strand) once a resent request made this call ask the store
  // whether the copy is still the session's (Impl::StillOurs).
  bool lease_checked = false;
  // Session::replaced when the writer opened. Once a rollback or an import
  // has replaced the state, a request below the session's input offset is
  // POSITION_MISMATCH, not a duplicate: that offset names other input now.
  // (An import that moved the offset past the writer's had its next
  // requests acknowledged as duplicates and never applied.)
  uint64_t replaced = 0;
};

class SessionManager::Impl {
 public:
  Impl(const SessionManagerOptions& o, engine::Model* model,
       const engine::Tokenizer* tok, Scheduler* sched, StateStore* store);
  ~Impl();
  // Stops the renewer, drains, runs what is queued and stops the pool;
  // again, it does nothing. ~SessionManager calls it while impl_ is still
  // set: queued operations' callbacks may call SessionManager methods.
  void Shutdown();

  SessionManagerOptions opt_;
  Clock* clock_;
  std::shared_ptr<RequestMemo> memo_;
  engine::Model* model_;
  const engine::Tokenizer* tok_;
  Scheduler* sched_;
  StateStore* store_;
  const int vocab_;
  const std::string fingerprint_;
  // SetServedBeside's.
  mutable absl::Mutex beside_mu_;
  std::vector<std::string> beside_ ABSL_GUARDED_BY(beside_mu_);
  const int64_t session_bytes_;
  Executor pool_;
  // Calls that must find their session first, when that may read the
  // store (PostFinding): a slow store holds these, never pool_, which runs
  // the operations of the sessions already resident. Loads take load_mu_
  // one at a time, so two threads keep one ready behind the one loading.
  Executor loaders_{2};
  // CheckCopy's store reads, so that a read on pool_ can stop waiting for
  // one (a hung store holds these threads, never pool_'s).
  static constexpr int kMaxCopyChecks = 64;
  std::atomic<int> copy_checks_{0};
  std::atomic<bool> checks_stopped_{false};  // Shutdown: none sent after
  Executor checkers_{2};
  // Working copies of session states (Generate, Score): max_copy_bytes.
  // Shared with each copy: a copy may outlive this manager (a finished
  // task the scheduler has not retired yet still holds one).
  const std::shared_ptr<ByteBudget> copies_ =
      std::make_shared<ByteBudget>(opt_.max_copy_bytes, "--max-copy-bytes");
  // A working copy of `from` (a state with no hidden vector when null),
  // its bytes held in copies_ until the last reference to it is gone;
  // RESOURCE_EXHAUSTED/OVERLOADED past the budget (one always fits).
  absl::StatusOr<std::shared_ptr<EngineState>> WorkingCopy(
      const EngineState* from) {
    SS_ASSIGN_OR_RETURN(ByteBudget::Hold hold,
                        copies_->Acquire(session_bytes_));
    auto held = std::make_shared<ByteBudget::Hold>(std::move(hold));
    return std::shared_ptr<EngineState>(
        from != nullptr ? new EngineState(*from) : new EngineState(),
        [held, budget = copies_](EngineState* s) {
          delete s;
          // Here, while `budget` is surely alive: a lambda's captures are
          // destroyed in no set order.
          held->Release();
        });
  }

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> resident_
      ABSL_GUARDED_BY(mu_);
  int64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // RenewLeasesNow asked the renewal thread for a round at once.
  bool renew_now_ ABSL_GUARDED_BY(mu_) = false;
  // When the renewal thread sweeps next for input due, and whether a
  // session loaded (or given a shorter TTL) since needs it sooner
  // (SweepSoonFor).
  absl::Time sweep_at_ ABSL_GUARDED_BY(mu_);
  bool sweep_now_ ABSL_GUARDED_BY(mu_) = false;
  // A session of idle TTL `ttl` is resident: the sweep must look at it at
  // least every ttl / 4 (see CommitIfWaited).
  void SweepSoonFor(absl::Duration ttl) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (Expires(ttl) && clock_->Now() + ttl / 4 < sweep_at_) {
      sweep_now_ = true;
      renew_wake_.Notify();
    }
  }
  // Wakes RenewLoop's wait (on the steady clock) after stop_, renew_now_
  // or sweep_now_ is set.
  SteadyWaiter renew_wake_;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  // Running generations, stopped gracefully by Drain().
  std::set<std::shared_ptr<GenerateTask>> generating_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  absl::Mutex load_mu_;  // one load at a time (a second would fence the first)
  std::thread renewer_;

  // Request-id idempotency: the process's memo when the options share one
  // (every model's manager), else this manager's own.
  absl::StatusOr<bool> Seen(const std::string& tenant,
                            const std::string& request_id, uint64_t digest,
                            std::string* session_id = nullptr,
                            uint64_t* version = nullptr) {
    return memo_->Seen(tenant, request_id, digest, session_id, version);
  }
  void Remember(const std::string& tenant, const std::string& request_id,
                const std::string& session_id, uint64_t digest,
                uint64_t version = 0) {
    memo_->Remember(tenant, request_id, session_id, digest, version);
  }

  // A retry the memo does not know (another worker served it, this one
  // restarted, or the memo dropped it) found in the store instead: the
  // kept version of `key` that `cause` made for `request_id` within the
  // idempotency window, if any (then remembered under `digest`).
  // DUPLICATE_REQUEST when that version is not what this request would
  // have made (`same` says no). A rollback or NEW_VERSION import applied
  // again would discard what was committed since (Append input included).
  // A store that cannot list the versions (a damaged record among them)
  // finds none: the call goes on as before this lookup, so a rollback
  // stays the way out of a damaged session.
  absl::StatusOr<std::optional<uint64_t>> CommittedInStore(
      const SessionKey& key, const std::string& request_id, VersionCause cause,
      uint64_t digest, const std::function<bool(const VersionInfo&)>& same) {
    if (request_id.empty()) return std::nullopt;
    absl::StatusOr<std::vector<VersionInfo>> versions =
        store_->ListVersions(key);
    if (!versions.ok()) return std::nullopt;
    const absl::Time since = clock_->Now() - opt_.request_id_window;
    for (const VersionInfo& v : *versions) {
      if (v.cause != cause || v.request_id != request_id ||
          v.committed_at < since) {
        continue;
      }
      if (!same(v)) return DuplicateRequest(request_id);
      Remember(key.tenant, request_id, key.session_id, digest, v.version);
      return v.version;
    }
    return std::nullopt;
  }

  static std::string MapKey(const SessionKey& k) {
    return absl::StrCat(k.tenant, "/", k.session_id);
  }

  // UNAVAILABLE/OVERLOADED once Drain() began: nothing new starts.
  absl::Status Admitting() {
    absl::MutexLock lock(&mu_);
    return draining_ ? Draining() : absl::OkStatus();
  }

  Durability Dur(std::optional<Durability> d) const {
    return d.value_or(opt_.default_durability);
  }

  // --- Residency ------------------------------------------------------------

  // The session's resident copy, loaded first if need be; without
  // `may_load`, nullptr when not resident (nothing read from the store).
  // `did_load` (when given): whether this call loaded it (so it is the
  // store's current state, and CheckCopy would only repeat the read).
  absl::StatusOr<std::shared_ptr<Session>> Resident(const SessionKey& key,
                                                    bool may_load = true,
                                                    bool* did_load = nullptr);
  // Runs `fn` (which finds `key`'s session, or with `reads_store` reads
  // the store itself) on pool_ when the session is resident and nothing
  // else reads the store, else on loaders_.
  void PostFinding(const SessionKey& key, bool reads_store,
                   std::function<void()> fn);
  // Resident, for a call answered from the copy (Score, Generate): a copy
  // held from before is first checked against the store (CheckCopy); one
  // this call loaded is the store's current state already.
  absl::StatusOr<std::shared_ptr<Session>> CurrentResident(
      const SessionKey& key);

  // Fills the strand-owned fields from a loaded version. Needs the strand
  // (or exclusive ownership).
  absl::Status LoadInto(Session* s, const LoadedVersion& v,
                        const SessionHead* head);

  // On the strand, after its state or commit status changed.
  void RefreshView(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu);

  // For a session whose head this worker cannot load (Resident answered
  // STATE_CORRUPT: a chunk lost, side data that does not decode), the
  // writes that need nothing of the head's state (a rollback, an import as
  // the next version) run without it, so the documented way out works:
  // under a lease of their own (taken over, as a load does) `write(head,
  // fence)` runs, then the lease goes back and the next call loads the new
  // head. `expected`: the head version the caller expects.
  using HeadWrite = std::function<absl::StatusOr<CommitResult>(
      const SessionHead& head, uint64_t fence)>;
  absl::StatusOr<CommitResult> WriteOverUnloadableHead(
      const SessionKey& key, std::optional<uint64_t> expected,
      const HeadWrite& write);
  // The answer to such a write: the new head's view, the request id
  // remembered (`digest`) for a write the store made, even below the
  // durability asked for (then its error).
  absl::StatusOr<SessionView> AnswerHeadWrite(
      const std::string& tenant, const std::string& session_id,
      const std::string& request_id, uint64_t digest,
      const absl::StatusOr<CommitResult>& written);
  // FAILED_PRECONDITION/MODEL_MISMATCH unless `head` is of this model.
  absl::Status CheckHeadModel(const SessionHead& head) const;

  SessionView ViewOfHead(const SessionHead& h) const;

  // Never `loading` (the session being loaded for its caller: with a
  // budget below one session, evicting it would load it again forever).
  std::vector<std::shared_ptr<Session>> PickVictims(const Session* loading)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Evicts `s` if it is still idle: claims its strand (so it runs inline,
  // on the caller's thread), commits if dirty, releases the lease, unmaps.
  // An operation queued meanwhile finds the session gone (UNAVAILABLE,
  // retry) once the strand is released.
  void Evict(const std::shared_ptr<Session>& s);

  // After a write that replaces the live state (Rollback, Import) failed
  // other than by the fence: the store may hold it anyway (written below
  // the durability asked for, or its reply lost). A resident session left
  // on the head the store replaced could never commit again (every commit
  // VERSION_MISMATCH, so never evicted either), so it follows the store's
  // head (a new history for open writers, as Replaced says); if that cannot
  // be read, it is dropped and the next call loads it afresh. Either way
  // the live input was what the failed call replaced.
  void FollowStoreHead(Session* s);

  // Unmaps `s` (if still mapped) and marks it gone.
  void Drop(Session* s, Session::Gone why);

  // Drop(s, why), then releases its lease: after any renewal in flight,
  // and no renewal starts after it (RenewLoop skips sessions gone). The
  // release's answer (the drain counts unanswered ones).
  absl::Status DropAndRelease(Session* s, Session::Gone why);

  // Renews the leases of those of `all` not gone (their leases are
  // released or being released), kRenewBatch at a time, each batch one
  // store call (pipelined on Redis) holding the batch's lease_mu; drops a
  // session if the store says another worker owns it or it was deleted.
  void RenewLeasesOf(const std::vector<std::shared_ptr<Session>>& all);
  static constexpr size_t kRenewBatch = 512;

  // Ends the call attached as the session's writer now, with `why`, ahead
  // of what the strand still runs: a delete would otherwise wait (holding
  // a service thread) for a committing generation to run to its end.
  // Every writer of the Session object is barred (it is gone), or with
  // `current_only` the ones opened so far (a delete that may still fail:
  // the next writer may go on).
  void EndWriter(Session* s, absl::Status why, bool current_only = false);
  // A rollback or an import wrote the session's new head: writers open now
  // take no input below its offset for theirs (Writer::replaced).
  void Replaced(Session* s) {
    absl::MutexLock lock(&s->mu);
    ++s->replaced;
  }

  absl::Status GoneError(Session* s);

  bool IsCurrent(Session* s, uint64_t gen) {
    absl::MutexLock lock(&s->mu);
    return s->writer_gen == gen;
  }

  // --- The strand -----------------------------------------------------------

  // Runs `op` on the pool once every earlier op of `s` has released; `op`
  // must call Release(s) exactly once (possibly later, from a callback).
  void RunOp(const std::shared_ptr<Session>& s, std::function<void()> op);
  void RunNext(const std::shared_ptr<Session>& s);
  void Release(const std::shared_ptr<Session>& s);
  // Runs `fn` in the session's turn on the pool, then `done` with its
  // result (after the strand is released: `done` may queue more).
  template <typename T>
  void RunAsync(const std::shared_ptr<Session>& s, std::function<T()> fn,
                std::function<void(T)> done) {
    RunOp(s, [this, s, fn = std::move(fn), done = std::move(done)] {
      T out = fn();
      Release(s);
      done(std::move(out));
    });
  }

  // Runs `fn` in the strand and waits for it. Not from pool threads.
  template <typename T>
  T RunSync(const std::shared_ptr<Session>& s, std::function<T()> fn) {
    std::optional<T> out;
    absl::Notification done;
    RunOp(s, [&] {
      out.emplace(fn());
      Release(s);
      done.Notify();
    });
    done.WaitForNotification();
    return std::move(*out);
  }

  // --- Commits
  // ----------------------------------------------------------------

  StateSnapshot Snapshot(const Session* s) const;

  // What a checkpoint asked for at durability `d` needs: a commit of what
  // is not committed, or, with everything committed but below `d` (a
  // policy commit at the default level, or a commit the store kept below
  // the level asked), the head version raised to `d` in place (no new
  // version: a retry that fails again writes nothing) — an OK answer always
  // means `d` was reached.
  absl::Status Checkpoint(Session* s, Durability d,
                          const std::string& request_id);
  // The head version at durability `d` or more, raised in place if needed.
  absl::Status RaiseHeadDurability(Session* s, Durability d);

  // The durability of a created session's first version, which a retry of
  // its create found: raised in place to `d` if the first attempt was kept
  // below it (later versions are other requests' business).
  absl::StatusOr<Durability> CreatedDurability(const SessionKey& key,
                                               uint64_t version, Durability now,
                                               Durability d);

  // Commits the live state (strand). FENCED drops the session; a commit
  // that exists below the requested durability resyncs the head; a store
  // head below ours (AdoptOlderHead) is written over with the live state.
  // `retry`: go on once from a head adopted (one of ours whose answer never
  // came, or the store's older one).
  // `request_id` and `cause` are recorded with the version (VersionInfo); a
  // commit of whatever is dirty passes s->dirty_cause.
  absl::Status CommitNow(Session* s, Durability d,
                         const std::string& request_id, VersionCause cause,
                         bool retry = true);

  AppendAck Ack(Session* s, const std::string& request_id);
  // The store went back (it restarted without our latest versions) when
  // its head `h` is below ours while the lease is still ours (h.fence): no
  // head goes down otherwise, a rollback being a new version, and nobody
  // else can write with our fence. Then the copy, which holds everything
  // it acknowledged, takes `h` as its head and is marked dirty (`cause`,
  // at least `d`) to be committed over it, and this returns true.
  bool AdoptOlderHead(Session* s, const SessionHead& h, Durability d,
                      VersionCause cause);
  // For a clean copy about to be released (evicted, drained): reads the
  // store's head and adopts it if the store went back, so the copy is
  // committed, not lost. (A dirty copy's commit finds out by itself.)
  void AdoptIfStoreWentBack(Session* s);
  // Whether the store still has this copy's session under its fence (a
  // lease renewal asks the same, every lease_ttl / 3). No: the copy is
  // dropped, and the error is SESSION_NOT_FOUND (deleted) or FENCED (taken
  // over). A store that cannot answer leaves the copy standing (OK).
  absl::Status StillOurs(Session* s);
  // StillOurs's verdict on the store's answer `lease`.
  absl::Status JudgeCopy(Session* s, const absl::StatusOr<Lease>& lease);
  // StillOurs for a call served from a resident copy (Score, Generate):
  // another worker may have taken the session over since the
  // last renewal, and the copy would answer with an older state. The
  // store's answer is awaited at most opt_.copy_check_wait on checkers_
  // (at most kMaxCopyChecks at once); a store slower than that, or one
  // that cannot answer, leaves the copy serving, as StillOurs does.
  absl::Status CheckCopy(Session* s);
  // A write's expected_version against the copy's head: on a mismatch the
  // store is asked first (StillOurs), as a copy taken over since the last
  // lease renewal would refuse what the owner holds (VERSION_MISMATCH
  // where FENCED sends a gateway to the owner).
  absl::Status CheckExpectedVersion(Session* s,
                                    std::optional<uint64_t> expected);

  absl::Status PositionMismatch(Session* s, uint64_t expected);

  // Commits a committing generation's progress (strand, held by the
  // generation): the session takes `state`, `sampler` and `input_offset`
  // (its tail was flushed into the prompt), in-progress records are
  // dropped and `rec` added. If the commit fails and the version does not
  // exist at a lower durability, the session is restored.
  // `final`: the generation's last commit (else a periodic checkpoint,
  // which a later commit of the same generation adopts if it was written).
  absl::Status CommitGeneration(Session* s, EngineState state,
                                const engine::SamplerState& sampler,
                                uint64_t input_offset, GenerationRecord rec,
                                Durability d, bool final);

  // Commits `p`, a periodic checkpoint of the committing generation of
  // writer `gen` (strand, held by it; on the pool), then any checkpoint
  // that arrived meanwhile, then the generation's final step if it waits.
  // `base_offset`: the session's input_offset after the prompt. A failed
  // checkpoint changes nothing (a FENCED one drops the session); the final
  // commit reports.
  void RunCheckpoints(const std::shared_ptr<GenerationCheckpoints>& cps,
                      const std::shared_ptr<Session>& s, uint64_t gen,
                      uint64_t base_offset, uint32_t input_tokens,
                      const GenerationRecord& tmpl, Durability d,
                      PendingCheckpoint p);

  // --- Append
  // -----------------------------------------------------------------

  // Why an Append's ingest was cancelled (by CancelIngest): the session
  // gone, the worker draining, a newer writer, or the call gone.
  absl::Status WhyCancelled(Session* s, uint64_t gen);
  void AppendOp(std::shared_ptr<Writer> w, AppendInput in,
                std::function<void(absl::StatusOr<AppendAck>)> done);

  // --- Lease renewal and the time policy -----------------------------------

  // Renews every resident session's lease each lease_ttl / 3, and commits
  // input that waited checkpoint_interval in an idle session (a writer that
  // stopped sending, or went away): the time half of the checkpoint policy
  // is otherwise checked only when a request arrives.
  void RenewLoop();

  // Queues a policy commit on an idle session whose input is due (none
  // running or queued: a running operation checks the policy when it
  // ends). Returns when its input will be due (InfiniteFuture: none
  // waits, or it was queued now).
  absl::Time CommitIfWaited(const std::shared_ptr<Session>& s);

  // When uncommitted input that began at `dirty_since` (InfiniteFuture:
  // none) is due for a commit by policy: checkpoint_interval later or,
  // sooner, half the session's TTL after its last write. The store
  // expires a session `ttl` after its last write, and input held here is
  // none: a writer's stream must not outlive its session. (s->mu: the
  // view's TTL and update time, which UpdateSession sets.)
  absl::Time CommitDue(const Session* s, absl::Time dirty_since) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) {
    if (dirty_since == absl::InfiniteFuture()) return dirty_since;
    absl::Time due = dirty_since + opt_.checkpoint_interval;
    if (Expires(s->view.ttl)) {
      due = std::min(due, s->view.update_time + s->view.ttl / 2);
    }
    return due;
  }

  // Before an operation on `s` that writes it when it ends (an Append's
  // ingest, a committing generation) and may take a while: once half the
  // session's TTL has passed since the store's last write, the store's TTL
  // is refreshed first (an empty UpdateSession), so an operation shorter
  // than half the TTL never finds its session expired under it (CommitDue
  // makes input due at that point, but the policy is checked only as the
  // operation ends). Best effort: a failure is left to the operation's own
  // commit to meet. Called by the operation's owner (s->busy).
  void KeepForWrite(Session* s);

  void Drain();
  // Commits dirty `s` for a drain: a refusal for now (UNAVAILABLE) is
  // retried with backoff until `deadline`; a commit that never lands is
  // counted and reported (strand). *level_short: a commit of the drain fell
  // short of its durability, so the rest do not wait for theirs.
  // False when the commit failed and the store did not answer
  // (UNAVAILABLE): the session is reported (ReportNotStored).
  bool CommitForDrain(Session* s, absl::Time deadline, bool* level_short);
  // Counts and logs a session the drain could not commit: its input past
  // the head's offset, for clients to resend.
  void ReportNotStored(const Session* s, const absl::Status& why);
  // The durability of a commit by policy of `s` (strand): the default, or
  // more if the uncommitted input's requests asked for more.
  Durability PolicyDurability(const Session* s) const {
    return std::max(opt_.default_durability, s->dirty_durability);
  }

  // The answer to a retry of the finished generation `rec` (on the strand):
  // its head raised to the durability asked if it is below (its commit may
  // have been kept below it), then the recorded output again.
  absl::StatusOr<GenerateOutcome> ReplayFinished(
      Session* s, const GenerationRecord& rec, Durability d,
      const std::function<void(const GeneratedPiece&)>& emit);

  // What the checks of a Generate request say before it runs (strand):
  // `refused` if it cannot run here (another request's id, a stale
  // expected_input_offset — unless it continues its own record, whose
  // offset moved on with it —; CheckRequest made the rest); and for a
  // committing request its record, if it has one (finished: replay it; in
  // progress: continue it).
  struct GenerateChecks {
    absl::Status refused;
    const GenerationRecord* record = nullptr;
  };
  GenerateChecks CheckGenerate(Session* s, const GenerateInput& in);
  int MaxTokens(const GenerateInput& in) const {
    return in.max_tokens == 0 ? opt_.default_generate_tokens : in.max_tokens;
  }
  // The checks of a Generate that need no session (a prompt too large, not
  // UTF-8 or with tokens outside the vocabulary; max_tokens over the limit;
  // bad sampling parameters): made before a committing request takes the
  // writer slot, so a malformed one does not end a live Append.
  absl::Status CheckRequest(const GenerateInput& in) const;

  // Emits a recorded generation's output as pieces (text held back to
  // complete UTF-8, like the live task) and returns its outcome (the
  // session fields are the caller's). `text_out`/`emitted_out` (optional):
  // the output bytes and how many of them were emitted.
  GenerateOutcome Replay(const GenerationRecord& rec,
                         const std::function<void(const GeneratedPiece&)>& emit,
                         std::string* text_out = nullptr,
                         size_t* emitted_out = nullptr);

  // Creates `r`, recording `request_id` and `digest` with its head, and
  // remembers it under `request_id`. A session that exists under r.key and
  // was created within the window by this request id (an attempt that
  // failed over from another worker, or ran before a restart) is returned
  // at the durability asked if `digest` matches, else DUPLICATE_REQUEST.
  // A head that records no request (written before heads did) counts as
  // this request's when `derived` (r.key's id derives from the request id)
  // and it has the same model, labels and TTL (unless changed since),
  // parent and what `same` checks. With `derived`, a session under the id
  // that is not this request's (another request's, or older than the
  // window) leaves this one to be created under a fresh id.
  absl::StatusOr<SessionView> CreateOnce(
      CreateSessionRequest r, bool derived, const std::string& request_id,
      uint64_t digest,
      const std::function<absl::StatusOr<bool>(
          const SessionHead&, const CreateSessionRequest&)>& same);

  // The session an earlier attempt of create request `request_id` made at
  // `key` within the window, found by the request id its head records (at
  // the durability asked; DUPLICATE_REQUEST if `digest` differs); nullopt
  // when there is none (UNAVAILABLE when the store does not answer). For a
  // fork whose source can no longer be read, before giving that error.
  absl::StatusOr<std::optional<SessionView>> CreatedBefore(
      const SessionKey& key, const std::string& request_id, uint64_t digest,
      Durability asked);
  // What CreateOnce and CreatedBefore return for `h`, the session an
  // earlier attempt of create `request_id` made at `key` (`alike`: for the
  // same request): remembered, at the durability asked; DUPLICATE_REQUEST
  // when not alike.
  absl::StatusOr<SessionView> EarlierCreate(const SessionKey& key,
                                            SessionHead h, bool alike,
                                            const std::string& request_id,
                                            uint64_t digest, Durability asked);

  // Whether `key`'s first version holds `snap`'s state (true when that
  // version is no longer kept: nothing is left to tell them apart).
  absl::StatusOr<bool> FirstVersionHolds(const SessionKey& key,
                                         const StateSnapshot& snap);

  std::string NewSessionId();
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_SESSION_MANAGER_INTERNAL_H_
