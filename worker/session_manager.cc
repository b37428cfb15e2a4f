// SPDX-License-Identifier: Apache-2.0
#include "worker/session_manager.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/crc32c.h"
#include "common/session_ids.h"
#include "common/status.h"
#include "state_store/state_codec.h"
#include "worker/engine/utf8.h"
#include "worker/generation_record.h"
#include "worker/metrics.h"
#include "worker/request_memo.h"
#include "worker/tasks.h"

namespace statestream::worker {
namespace {

constexpr size_t kMaxTextBytes = 1 << 20;
constexpr size_t kMaxAppendTokens = 262144;
constexpr size_t kMaxScoreTokens = 65536;
// Log-probabilities in one Score response (the scored tokens' and their
// top alternatives'): ~5.8 MB, inside the 8 MiB message limit.
constexpr size_t kMaxScoreEntries = 524288;

// A fixed pool of threads running closures in FIFO order.
class Executor {
 public:
  explicit Executor(int threads) {
    for (int i = 0; i < std::max(threads, 1); ++i) {
      threads_.emplace_back([this] { Loop(); });
    }
  }
  ~Executor() { Shutdown(); }
  // Runs what is queued (and what that queues), then joins. Idempotent.
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  void Post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

absl::Status Invalid(Reason reason, absl::string_view msg,
                     ErrorMetadata md = {}) {
  return MakeError(absl::StatusCode::kInvalidArgument, reason, msg,
                   std::move(md));
}

absl::Status TooLarge(absl::string_view field, size_t limit) {
  return Invalid(
      Reason::kMessageTooLarge,
      absl::StrCat(field, " is over its limit of ", limit),
      {{"field", std::string(field)}, {"limit", absl::StrCat(limit)}});
}

absl::Status CheckTokens(const std::vector<int32_t>& ids, int vocab,
                         absl::string_view field) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return Invalid(
          Reason::kInvalidToken,
          absl::StrCat("token ", id, " is not below vocab_size ", vocab),
          {{"token", absl::StrCat(id)},
           {"vocab_size", absl::StrCat(vocab)},
           {"field", std::string(field)}});
    }
  }
  return absl::OkStatus();
}

absl::Status NotFound(absl::string_view id) {
  return MakeError(absl::StatusCode::kNotFound, Reason::kSessionNotFound,
                   absl::StrCat("session ", id, " not found"),
                   {{"session_id", std::string(id)}});
}

absl::Status Busy() {
  return MakeError(absl::StatusCode::kAborted, Reason::kSessionBusy,
                   "superseded by a newer writer call on this session");
}

absl::Status Draining() {
  return MakeError(absl::StatusCode::kUnavailable, Reason::kOverloaded,
                   "the worker is draining", {{"retry_after_ms", "100"}});
}

// A write the store kept below the durability asked for
// (DurabilityNotReached): it exists, though the call failed.
bool WrittenBelowDurability(const absl::Status& st) {
  return DurabilityReachedOf(st).has_value();
}

// The version a DurabilityNotReached error says was written (0 if none).
uint64_t WrittenVersionOf(const absl::Status& st) {
  uint64_t version = 0;
  const std::optional<std::string> v = GetErrorMetadata(st, "version");
  if (!v || !absl::SimpleAtoi(*v, &version)) return 0;
  return version;
}

// Session::no_hidden_at when last_hidden is that of the last token.
constexpr uint64_t kHiddenKnown = ~uint64_t{0};

// FAILED_PRECONDITION for logits asked of a state without last_hidden.
absl::Status NoHidden(const char* field) {
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   Reason::kInvalidArgument,
                   "the state has no hidden vector for its last token (saved "
                   "without last_hidden): send input to predict from",
                   {{"field", field}});
}

// The incomplete UTF-8 character at the end of a tokenizer tail: the carry
// of the text so far when the tail holds the whole character.
std::string TailCarry(const std::string& tail) {
  return tail.substr(engine::Utf8CompletePrefixLength(tail));
}

// Bytes of `text` that can start a streamed text: after a reload the UTF-8
// carry is rebuilt from the tokenizer tail, which may be empty (byte
// tokenizer); leading continuation bytes are then accepted once.
size_t LeadingContinuationBytes(absl::string_view text) {
  size_t n = 0;
  while (n < text.size() && n < 3 &&
         (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) {
    ++n;
  }
  return n;
}

// Periodic checkpoints of one committing generation (see Generate): at
// most one commit in flight; a newer checkpoint replaces one still waiting;
// the generation's final step waits for the commit in flight.
struct PendingCheckpoint {
  GenerateCheckpoint cp;
  std::vector<int32_t> tokens;  // the whole output so far
};
struct GenerationCheckpoints {
  absl::Mutex mu;
  bool running ABSL_GUARDED_BY(mu) = false;  // a commit is in flight
  bool over ABSL_GUARDED_BY(mu) = false;     // the generation ended
  std::optional<PendingCheckpoint> waiting ABSL_GUARDED_BY(mu);
  std::function<void()> then ABSL_GUARDED_BY(mu);  // the final step
};

}  // namespace

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
  bool writer_attached ABSL_GUARDED_BY(mu) = false;
  std::function<void(const absl::Status&)> superseded ABSL_GUARDED_BY(mu);
  enum class Gone { kNo, kEvicted, kFenced, kDeleted };
  Gone gone ABSL_GUARDED_BY(mu) = Gone::kNo;
  SessionView view ABSL_GUARDED_BY(mu);

  // Owned by the running operation (the strand).
  EngineState live;
  std::string tail;        // tokenizer tail
  std::string utf8_carry;  // incomplete UTF-8 suffix of the text so far
  bool carry_known = true;
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
  // dirty_since while dirty, else InfiniteFuture: what the renewal loop
  // reads (under mu) to find input waiting for a commit.
  absl::Time dirty_hint ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  absl::Time dirty_since;
  int64_t last_use = 0;  // guarded by the manager's mu_
};

class SessionManager::Writer {
 public:
  std::shared_ptr<Session> session;
  uint64_t gen = 0;
};

class SessionManager::Impl {
 public:
  Impl(const SessionManagerOptions& o, engine::Model* model,
       const engine::Tokenizer* tok, Scheduler* sched, StateStore* store)
      : opt_(o),
        clock_(o.clock ? o.clock : Clock::Real()),
        memo_(o.request_memo != nullptr
                  ? o.request_memo
                  : std::make_shared<RequestMemo>(
                        o.request_id_window, o.max_create_request_ids, clock_)),
        model_(model),
        tok_(tok),
        sched_(sched),
        store_(store),
        vocab_(model->info().config.vocab_size),
        fingerprint_(
            absl::StrCat(model->info().fingerprint, "+", tok->fingerprint())),
        session_bytes_(
            (model->info().state_floats + model->info().config.n_embd) *
            int64_t{sizeof(float)}),
        pool_(o.threads),
        rng_(std::random_device{}()) {
    renewer_ = std::thread([this] { RenewLoop(); });
  }
  ~Impl() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    renewer_.join();
    Drain();
    // Queued operations run now, while the members they touch exist.
    pool_.Shutdown();
  }

  SessionManagerOptions opt_;
  Clock* clock_;
  std::shared_ptr<RequestMemo> memo_;
  engine::Model* model_;
  const engine::Tokenizer* tok_;
  Scheduler* sched_;
  StateStore* store_;
  const int vocab_;
  const std::string fingerprint_;
  const int64_t session_bytes_;
  Executor pool_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> resident_
      ABSL_GUARDED_BY(mu_);
  int64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
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

  static std::string MapKey(const SessionKey& k) {
    return absl::StrCat(k.tenant, "/", k.session_id);
  }

  Durability Dur(std::optional<Durability> d) const {
    return d.value_or(opt_.default_durability);
  }

  // --- Residency ------------------------------------------------------------

  absl::StatusOr<std::shared_ptr<Session>> Resident(const SessionKey& key) {
    const std::string mk = MapKey(key);
    {
      absl::MutexLock lock(&mu_);
      if (draining_) return Draining();
      auto it = resident_.find(mk);
      if (it != resident_.end()) {
        it->second->last_use = ++tick_;
        return it->second;
      }
    }
    absl::MutexLock load(&load_mu_);
    {
      absl::MutexLock lock(&mu_);
      auto it = resident_.find(mk);
      if (it != resident_.end()) return it->second;
    }
    const absl::Time load_start = clock_->Now();
    SS_ASSIGN_OR_RETURN(SessionHead head, store_->GetHead(key));
    if (head.model_fingerprint != fingerprint_) {
      return MakeError(absl::StatusCode::kFailedPrecondition,
                       Reason::kModelMismatch,
                       "the session belongs to a model this worker does not "
                       "serve",
                       {{"expected_fingerprint", head.model_fingerprint},
                        {"actual_fingerprint", fingerprint_}});
    }
    SS_ASSIGN_OR_RETURN(Lease lease,
                        store_->AcquireLease(key, opt_.owner, opt_.lease_ttl,
                                             /*takeover=*/true));
    auto loaded = store_->LoadVersion(key, 0);
    if (!loaded.ok()) {
      store_->ReleaseLease(key, opt_.owner, lease.fence).IgnoreError();
      return loaded.status();
    }
    auto s = std::make_shared<Session>();
    s->key = key;
    s->fence = lease.fence;
    if (absl::Status st = LoadInto(s.get(), *loaded, &head); !st.ok()) {
      // Not loadable here (another model's state, corrupt side data): the
      // lease goes back, so the session is not held by nobody for a TTL.
      store_->ReleaseLease(key, opt_.owner, lease.fence).IgnoreError();
      return st;
    }
    if (opt_.metrics != nullptr) {
      opt_.metrics->ObserveStateLoad(clock_->Now() - load_start);
      if (!head.owner.empty() && head.owner != opt_.owner &&
          head.lease_expires_at > load_start) {
        opt_.metrics->IncLeaseTakeover();
      }
    }
    std::vector<std::shared_ptr<Session>> victims;
    {
      absl::MutexLock lock(&mu_);
      s->last_use = ++tick_;
      resident_[mk] = s;
      ++stats_.loads;
      victims = PickVictims(s.get());
    }
    for (auto& v : victims) Evict(v);
    return s;
  }

  // Fills the strand-owned fields from a loaded version. Needs the strand
  // (or exclusive ownership).
  absl::Status LoadInto(Session* s, const LoadedVersion& v,
                        const SessionHead* head) {
    const StateSnapshot& snap = v.state;
    SS_RETURN_IF_ERROR(CheckStateMatchesModel(snap, fingerprint_,
                                              model_->info().state_floats));
    s->live.state.assign(snap.state.begin(), snap.state.end());
    s->live.position = snap.position;
    const size_t n_embd = model_->info().config.n_embd;
    if (snap.last_hidden.size() == n_embd) {
      s->live.last_hidden = snap.last_hidden;
      s->no_hidden_at = kHiddenKnown;
    } else {
      s->live.last_hidden.assign(n_embd, 0.0f);
      s->no_hidden_at = snap.position > 0 ? snap.position : kHiddenKnown;
    }
    s->tail = snap.tokenizer_tail;
    s->input_offset = snap.input_offset;
    Utf8Carry carry;
    SS_RETURN_IF_ERROR(DecodeSamplerSideData(
        snap.sampler_state, &s->sampler_state, &s->records, &carry));
    // Recorded (not the tail's end), and for this very input: a worker that
    // predates the record may have written the value back after more input.
    if (!carry.bytes.empty() && carry.input_offset == snap.input_offset) {
      s->utf8_carry = std::move(carry.bytes);
      s->carry_known = true;
    } else {
      s->utf8_carry = TailCarry(s->tail);
      // An empty tail after input: snapshots written before the carry was
      // recorded do not say whether a character was left open.
      s->carry_known = !s->tail.empty() || snap.input_offset == 0;
    }
    if (head != nullptr) s->head = *head;
    s->head.head = v.version;
    s->dirty = false;
    s->uncommitted_tokens = 0;
    absl::MutexLock lock(&s->mu);
    RefreshView(s);
    return absl::OkStatus();
  }

  // On the strand, after its state or commit status changed.
  void RefreshView(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) {
    s->dirty_hint = s->dirty ? s->dirty_since : absl::InfiniteFuture();
    SessionView v = ViewOfHead(s->head);
    // UpdateSession wrote newer labels and TTL into the view than the head
    // this session last read from the store (its next commit reads them).
    if (s->view.update_time >= v.update_time) {
      v.labels = s->view.labels;
      v.ttl = s->view.ttl;
      v.update_time = s->view.update_time;
    }
    v.position = s->live.position;
    v.input_offset = s->input_offset;
    v.pending_bytes = static_cast<uint32_t>(s->tail.size());
    s->view = std::move(v);
  }

  SessionView ViewOfHead(const SessionHead& h) const {
    SessionView v;
    v.session_id = h.key.session_id;
    v.model_id = h.model_id;
    v.model_fingerprint = h.model_fingerprint;
    v.position = h.head.position;
    v.input_offset = h.head.input_offset;
    v.pending_bytes = h.head.tail_bytes;
    v.version = h.head.version;
    v.committed_position = h.head.position;
    v.committed_input_offset = h.head.input_offset;
    v.durability = h.head.durability;
    v.labels = h.labels;
    v.ttl = h.ttl;
    v.create_time = h.created_at;
    v.update_time = h.updated_at;
    v.parent_session_id = h.parent_session_id;
    v.parent_version = h.parent_version;
    v.state_bytes = h.head.state_bytes;
    return v;
  }

  // Never `loading` (the session being loaded for its caller: with a
  // budget below one session, evicting it would load it again forever).
  std::vector<std::shared_ptr<Session>> PickVictims(const Session* loading)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<std::shared_ptr<Session>> out;
    int64_t bytes = static_cast<int64_t>(resident_.size()) * session_bytes_;
    if (bytes <= opt_.residency_bytes) return out;
    std::vector<std::shared_ptr<Session>> all;
    for (auto& [k, s] : resident_) all.push_back(s);
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      return a->last_use < b->last_use;
    });
    for (auto& s : all) {
      if (bytes <= opt_.residency_bytes) break;
      if (s.get() == loading) continue;
      absl::MutexLock lock(&s->mu);
      if (s->busy || s->writer_attached || !s->ops.empty()) continue;
      out.push_back(s);
      bytes -= session_bytes_;
    }
    return out;
  }

  // Evicts `s` if it is still idle: claims its strand (so it runs inline,
  // on the caller's thread), commits if dirty, releases the lease, unmaps.
  // An operation queued meanwhile finds the session gone (UNAVAILABLE,
  // retry) once the strand is released.
  void Evict(const std::shared_ptr<Session>& s) {
    {
      absl::MutexLock lock(&s->mu);
      if (s->busy || !s->ops.empty() || s->writer_attached ||
          s->gone != Session::Gone::kNo) {
        return;
      }
      s->busy = true;
    }
    if (s->dirty) {
      absl::Status st = CommitNow(s.get(), opt_.default_durability, "");
      if (!st.ok() && GetReason(st) != Reason::kFenced) {
        Release(s);  // keep it: its input would be lost
        return;
      }
    }
    Drop(s.get(), Session::Gone::kEvicted);
    store_->ReleaseLease(s->key, opt_.owner, s->fence).IgnoreError();
    {
      absl::MutexLock lock(&mu_);
      ++stats_.evictions;
    }
    Release(s);
  }

  // After a write that replaces the live state (Rollback, Import) failed
  // other than by the fence: the store may hold it anyway (written below
  // the durability asked for, or its reply lost). A resident session left
  // on the head the store replaced could never commit again (every commit
  // VERSION_MISMATCH, so never evicted either), so it follows the store's
  // head; if that cannot be read, it is dropped and the next call loads it
  // afresh. Either way the live input was what the failed call replaced.
  void FollowStoreHead(Session* s) {
    auto h = store_->GetHead(s->key);
    if (h.ok() && h->head.version == s->head.head.version) return;
    if (h.ok()) {
      auto v = store_->LoadVersion(s->key, h->head.version);
      if (v.ok() && LoadInto(s, *v, &*h).ok()) return;
    }
    Drop(s, Session::Gone::kEvicted);
    store_->ReleaseLease(s->key, opt_.owner, s->fence).IgnoreError();
  }

  // Unmaps `s` (if still mapped) and marks it gone.
  void Drop(Session* s, Session::Gone why) {
    {
      absl::MutexLock lock(&mu_);
      auto it = resident_.find(MapKey(s->key));
      if (it != resident_.end() && it->second.get() == s) resident_.erase(it);
      if (why == Session::Gone::kFenced) {
        ++stats_.fenced;
        if (opt_.metrics != nullptr) opt_.metrics->IncFencedCommit();
      }
    }
    {
      absl::MutexLock lock(&s->mu);
      s->gone = why;
    }
    // The attached writer's call ends now, with why, instead of at its next
    // request (a committing generation would run to its end first).
    EndWriter(s, GoneError(s));
  }

  // Ends the call attached as the session's writer now, with `why`, ahead
  // of what the strand still runs: a delete would otherwise wait (holding
  // a service thread) for a committing generation to run to its end.
  void EndWriter(Session* s, absl::Status why) {
    std::function<void(const absl::Status&)> superseded;
    {
      absl::MutexLock lock(&s->mu);
      superseded = std::move(s->superseded);
      s->superseded = nullptr;
    }
    if (superseded) {
      pool_.Post([superseded = std::move(superseded), why = std::move(why)] {
        superseded(why);
      });
    }
  }

  absl::Status GoneError(Session* s) {
    Session::Gone gone;
    {
      absl::MutexLock lock(&s->mu);
      gone = s->gone;
    }
    if (gone == Session::Gone::kEvicted) {
      // A drain evicts every session: say so, and a gateway moves the call
      // to another worker instead of failing it (Gateway::ShouldFailover).
      absl::MutexLock lock(&mu_);
      if (draining_) return Draining();
    }
    switch (gone) {
      case Session::Gone::kNo:
        return absl::OkStatus();
      case Session::Gone::kDeleted:
        return NotFound(s->key.session_id);
      case Session::Gone::kFenced:
        return MakeError(absl::StatusCode::kAborted, Reason::kFenced,
                         "this worker lost the session's lease");
      case Session::Gone::kEvicted:
        return MakeError(absl::StatusCode::kUnavailable, Reason::kOverloaded,
                         "the session was evicted; retry",
                         {{"retry_after_ms", "10"}});
    }
    return absl::OkStatus();
  }

  bool IsCurrent(Session* s, uint64_t gen) {
    absl::MutexLock lock(&s->mu);
    return s->writer_gen == gen;
  }

  // --- The strand -----------------------------------------------------------

  // Runs `op` on the pool once every earlier op of `s` has released; `op`
  // must call Release(s) exactly once (possibly later, from a callback).
  void RunOp(const std::shared_ptr<Session>& s, std::function<void()> op) {
    bool start = false;
    {
      absl::MutexLock lock(&s->mu);
      s->ops.push_back(std::move(op));
      if (!s->busy) start = s->busy = true;
    }
    if (start) pool_.Post([this, s] { RunNext(s); });
  }
  void RunNext(const std::shared_ptr<Session>& s) {
    std::function<void()> op;
    {
      absl::MutexLock lock(&s->mu);
      op = std::move(s->ops.front());
      s->ops.pop_front();
    }
    op();
  }
  void Release(const std::shared_ptr<Session>& s) {
    bool more = false;
    {
      absl::MutexLock lock(&s->mu);
      more = !s->ops.empty();
      if (!more) s->busy = false;
    }
    if (more) pool_.Post([this, s] { RunNext(s); });
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

  StateSnapshot Snapshot(const Session* s) const {
    const auto& cfg = model_->info().config;
    StateSnapshot snap;
    snap.model_fingerprint = fingerprint_;
    snap.architecture = engine::ArchName(cfg.arch);
    snap.n_layer = cfg.n_layer;
    snap.n_embd = cfg.n_embd;
    snap.n_head = cfg.n_head;
    snap.head_size = cfg.head_size;
    snap.position = s->live.position;
    snap.input_offset = s->input_offset;
    snap.parent_session_id = s->head.parent_session_id;
    snap.parent_version = s->head.parent_version;
    snap.tokenizer_tail = s->tail;
    // The carry only when the tail cannot give it back (LoadInto).
    Utf8Carry carry;
    if (s->utf8_carry != TailCarry(s->tail)) {
      carry = {s->utf8_carry, s->input_offset};
    }
    snap.sampler_state =
        EncodeSamplerSideData(s->sampler_state, s->records, carry);
    snap.state.assign(s->live.state.begin(), s->live.state.end());
    if (s->live.position > 0 && s->live.position != s->no_hidden_at) {
      snap.last_hidden = s->live.last_hidden;
    }
    return snap;
  }

  // What a checkpoint asked for at durability `d` needs: a commit of what
  // is not committed, or, with everything committed but below `d` (a
  // policy commit at the default level, or a commit the store kept below
  // the level asked), the head version raised to `d` in place (no new
  // version: a retry that fails again writes nothing) — an OK answer always
  // means `d` was reached.
  absl::Status Checkpoint(Session* s, Durability d,
                          const std::string& request_id) {
    if (s->dirty) return CommitNow(s, d, request_id);
    return RaiseHeadDurability(s, d);
  }
  // The head version at durability `d` or more, raised in place if needed.
  absl::Status RaiseHeadDurability(Session* s, Durability d) {
    if (s->head.head.durability >= d) return absl::OkStatus();
    auto v = store_->AwaitDurability(s->key, s->head.head.version, d);
    const std::optional<Durability> reached =
        v.ok() ? v->durability : DurabilityReachedOf(v.status());
    if (reached && *reached > s->head.head.durability) {
      s->head.head.durability = *reached;
      absl::MutexLock lock(&s->mu);
      RefreshView(s);
    }
    return v.status();
  }

  // The durability of a created session's first version, which a retry of
  // its create found: raised in place to `d` if the first attempt was kept
  // below it (later versions are other requests' business).
  absl::StatusOr<Durability> CreatedDurability(const SessionKey& key,
                                               uint64_t version, Durability now,
                                               Durability d) {
    if (version != 1 || now >= d) return now;
    SS_ASSIGN_OR_RETURN(VersionInfo v, store_->AwaitDurability(key, 1, d));
    return v.durability;
  }

  // Commits the live state (strand). FENCED drops the session; a commit
  // that exists below the requested durability resyncs the head.
  // `retry`: go on once from a head adopted below (one of ours whose
  // answer never came).

  absl::Status CommitNow(Session* s, Durability d,
                         const std::string& request_id, bool retry = true) {
    CommitRequest r;
    r.key = s->key;
    r.expected_version = s->head.head.version;
    r.fence = s->fence;
    r.state = Snapshot(s);
    r.durability = d;
    const absl::Time start = clock_->Now();
    auto res = store_->Commit(r);
    if (opt_.metrics != nullptr) {
      opt_.metrics->ObserveCommit(clock_->Now() - start);
    }
    if (!res.ok()) {
      if (GetReason(res.status()) == Reason::kFenced) {
        Drop(s, Session::Gone::kFenced);
      } else if (auto h = store_->GetHead(s->key); h.ok()) {
        // A newer head committed under this session's own fence is a commit
        // of ours whose answer never came (written below the durability
        // asked for, or its reply lost — Redis restarted mid-commit, past
        // the retry deadline): nobody else can write with our fence, and it
        // is an earlier snapshot of this same input. Go on from it; with
        // nothing applied since, it is this commit.
        if (h->head.version > s->head.head.version &&
            h->head.fence == s->fence &&
            h->head.input_offset <= s->input_offset) {
          const bool same = h->head.input_offset == s->input_offset &&
                            h->head.position == s->live.position;
          s->head = *h;
          if (same) {
            s->dirty = false;
            s->uncommitted_tokens = 0;
            absl::MutexLock lock(&s->mu);
            RefreshView(s);
          } else if (retry &&
                     GetReason(res.status()) == Reason::kVersionMismatch) {
            return CommitNow(s, d, request_id, /*retry=*/false);
          }
          if (same && GetReason(res.status()) == Reason::kVersionMismatch) {
            if (h->head.durability >= d) return absl::OkStatus();
            return DurabilityNotReached(h->head.version, d, h->head.durability);
          }
        }
      }
      return res.status();
    }
    s->head = res->session;
    s->dirty = false;
    s->uncommitted_tokens = 0;
    {
      absl::MutexLock lock(&mu_);
      ++stats_.commits;
    }
    absl::MutexLock lock(&s->mu);
    RefreshView(s);
    return absl::OkStatus();
  }

  AppendAck Ack(Session* s, const std::string& request_id) {
    AppendAck a;
    a.request_id = request_id;
    a.position = s->live.position;
    a.input_offset = s->input_offset;
    a.pending_bytes = static_cast<uint32_t>(s->tail.size());
    a.version = s->head.head.version;
    a.committed_input_offset = s->head.head.input_offset;
    a.durability = s->head.head.durability;
    return a;
  }

  absl::Status PositionMismatch(Session* s, uint64_t expected) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
        absl::StrCat("expected_input_offset ", expected,
                     " is not the session's input_offset ", s->input_offset),
        {{"expected_input_offset", absl::StrCat(expected)},
         {"actual_input_offset", absl::StrCat(s->input_offset)},
         {"actual_position", absl::StrCat(s->live.position)},
         {"committed_input_offset", absl::StrCat(s->head.head.input_offset)}});
  }

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
                                Durability d, bool final) {
    EngineState before = std::move(s->live);
    const std::string tail = s->tail, sampler_before = s->sampler_state;
    const uint64_t offset = s->input_offset;
    const std::deque<GenerationRecord> records = s->records;
    const std::string request_id = rec.request_id;
    s->live = std::move(state);
    s->tail.clear();
    s->utf8_carry.clear();
    s->input_offset = input_offset;
    s->sampler_state = sampler.Serialize();
    DropInProgressRecords(&s->records);
    AddGenerationRecord(std::move(rec), opt_.generation_records,
                        opt_.generation_record_tokens, opt_.request_id_window,
                        clock_->Now(), &s->records);
    absl::Status cs = CommitNow(s, d, request_id);
    if (!cs.ok() && s->head.head.input_offset != s->input_offset) {
      // Not written as far as this session knows. Only a store that still
      // has the head it knew says so for sure; then the session goes back
      // to the state before. With the outcome unknown (its reply lost, and
      // the store unreadable since), going back could leave the session
      // behind a head the store did write, where every later commit fails:
      // - a periodic checkpoint keeps its state, applied but uncommitted;
      //   the next commit (the generation's, or any later one) finds the
      //   head under the session's own fence and adopts it if it was
      //   written, or writes it;
      // - the final commit drops the cached state; the next call reads the
      //   store.
      auto h = store_->GetHead(s->key);
      if (h.ok() && h->head.version == s->head.head.version) {
        s->live = std::move(before);
        s->tail = tail;
        s->sampler_state = sampler_before;
        s->records = records;
        s->input_offset = offset;
        absl::MutexLock lock(&s->mu);
        RefreshView(s);
      } else if (!final) {
        if (!s->dirty) s->dirty_since = clock_->Now();
        s->dirty = true;
        absl::MutexLock lock(&s->mu);
        RefreshView(s);
      } else if (GoneError(s).ok()) {
        Drop(s, Session::Gone::kEvicted);
        store_->ReleaseLease(s->key, opt_.owner, s->fence).IgnoreError();
      }
    }
    return cs;
  }

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
                      PendingCheckpoint p) {
    for (;;) {
      if (IsCurrent(s.get(), gen) && GoneError(s.get()).ok()) {
        GenerationRecord rec = tmpl;
        rec.committed_at = clock_->Now();
        rec.finish = kGenerationInProgress;
        rec.input_tokens = input_tokens;
        rec.tokens = std::move(p.tokens);
        CommitGeneration(s.get(), std::move(p.cp.state), p.cp.sampler,
                         base_offset + p.cp.generated, std::move(rec), d,
                         /*final=*/false)
            .IgnoreError();
      }
      std::function<void()> then;
      {
        absl::MutexLock lock(&cps->mu);
        if (cps->waiting.has_value() && !cps->over) {
          p = std::move(*cps->waiting);
          cps->waiting.reset();
          continue;
        }
        cps->running = false;
        then = std::move(cps->then);
      }
      if (then) then();
      return;
    }
  }

  // --- Append
  // -----------------------------------------------------------------

  void AppendOp(std::shared_ptr<Writer> w, AppendInput in,
                std::function<void(absl::StatusOr<AppendAck>)> done) {
    const std::shared_ptr<Session>& s = w->session;
    auto fail = [&](absl::Status st) {
      Release(s);
      done(std::move(st));
    };
    if (absl::Status g = GoneError(s.get()); !g.ok()) return fail(g);
    if (!IsCurrent(s.get(), w->gen)) return fail(Busy());
    const uint64_t units =
        in.kind == AppendInput::Kind::kText ? in.text.size() : in.tokens.size();
    const uint64_t at = s->input_offset;
    if (in.expected_input_offset != at) {
      if (in.expected_input_offset + units <= at &&
          in.expected_input_offset <= at) {
        AppendAck ack = Ack(s.get(), in.request_id);
        ack.duplicate = true;
        const bool uncovered = s->dirty && s->head.head.input_offset <
                                               in.expected_input_offset + units;
        if (in.checkpoint) {
          absl::Status st =
              uncovered ? CommitNow(s.get(), Dur(in.durability), "")
                        : RaiseHeadDurability(s.get(), Dur(in.durability));
          if (!st.ok()) return fail(st);
          ack = Ack(s.get(), in.request_id);
          ack.duplicate = true;
        }
        Release(s);
        return done(ack);
      }
      return fail(PositionMismatch(s.get(), in.expected_input_offset));
    }
    // Text validity: the stream so far plus this chunk.
    std::string carry = s->utf8_carry;
    bool flush = in.flush || in.kind == AppendInput::Kind::kTokens;
    if (in.kind == AppendInput::Kind::kText) {
      absl::string_view text = in.text;
      size_t skip = 0;
      if (!s->carry_known && carry.empty()) {
        skip = LeadingContinuationBytes(text);
      }
      const std::string joined = carry + std::string(text.substr(skip));
      const size_t complete = engine::Utf8CompletePrefixLength(joined);
      if (!engine::IsValidUtf8(absl::string_view(joined).substr(0, complete))) {
        return fail(Invalid(
            Reason::kInvalidUtf8, "text_utf8 is not valid UTF-8",
            {{"input_offset", absl::StrCat(at)}, {"field", "text_utf8"}}));
      }
      carry = joined.substr(complete);
    }
    if (flush && !carry.empty()) {
      return fail(Invalid(Reason::kInvalidUtf8,
                          "text ends inside a UTF-8 character at a flush",
                          {{"input_offset", absl::StrCat(at + units)},
                           {"field", "text_utf8"}}));
    }
    std::vector<int32_t> tokens;
    std::string new_tail = s->tail;
    if (in.kind == AppendInput::Kind::kText || flush) {
      engine::StreamEncodeResult r = tok_->EncodeStream(
          s->tail,
          in.kind == AppendInput::Kind::kText ? absl::string_view(in.text)
                                              : absl::string_view(),
          flush);
      tokens = std::move(r.tokens);
      new_tail = std::move(r.tail);
    }
    if (in.kind == AppendInput::Kind::kTokens) {
      if (absl::Status st = CheckTokens(in.tokens, vocab_, "tokens.ids");
          !st.ok()) {
        return fail(st);
      }
      tokens.insert(tokens.end(), in.tokens.begin(), in.tokens.end());
    }
    auto finish = [this, s, w, in, units, carry, new_tail,
                   done](uint32_t consumed) {
      s->input_offset += units;
      s->tail = new_tail;
      s->utf8_carry = carry;
      if (units > 0) s->carry_known = true;
      if (units > 0 || consumed > 0) {
        if (!s->dirty) s->dirty_since = clock_->Now();
        s->dirty = true;
        // A checkpointed generation cannot be continued past new input.
        DropInProgressRecords(&s->records);
      }
      s->uncommitted_tokens += consumed;
      {
        absl::MutexLock lock(&s->mu);
        RefreshView(s.get());
      }
      const bool policy =
          s->dirty &&
          (s->uncommitted_tokens >= opt_.checkpoint_tokens ||
           clock_->Now() - s->dirty_since >= opt_.checkpoint_interval);
      if (in.checkpoint || policy) {
        absl::Status st =
            Checkpoint(s.get(), Dur(in.durability), in.request_id);
        if (!st.ok()) {
          Release(s);
          return done(st);
        }
      }
      AppendAck ack = Ack(s.get(), in.request_id);
      ack.tokens_consumed = consumed;
      Release(s);
      done(ack);
    };
    if (tokens.empty()) return finish(0);
    auto work = std::make_shared<EngineState>(s->live);
    const uint32_t n = static_cast<uint32_t>(tokens.size());
    if (opt_.metrics != nullptr) opt_.metrics->AddTokensIn(n);
    auto task = std::make_shared<IngestTask>(
        work.get(), std::move(tokens),
        [this, s, work, n, finish, done](const absl::Status& st) {
          pool_.Post([this, s, work, n, st, finish, done] {
            if (!st.ok()) {
              Release(s);
              return done(st);
            }
            s->live = std::move(*work);
            finish(n);
          });
        });
    if (absl::Status st = sched_->Submit(task); !st.ok()) return fail(st);
  }

  // --- Lease renewal and the time policy -----------------------------------

  // Renews every resident session's lease each lease_ttl / 3, and commits
  // input that waited checkpoint_interval in an idle session (a writer that
  // stopped sending, or went away): the time half of the checkpoint policy
  // is otherwise checked only when a request arrives.
  void RenewLoop() {
    const absl::Duration renew_every = opt_.lease_ttl / 3;
    const bool sweep = opt_.checkpoint_interval > absl::ZeroDuration() &&
                       opt_.checkpoint_interval < absl::InfiniteDuration();
    const absl::Duration every =
        sweep ? std::min(renew_every, std::max(opt_.checkpoint_interval / 2,
                                               absl::Milliseconds(50)))
              : renew_every;
    absl::Time next_renewal = absl::Now() + renew_every;
    // Renewals run at the last tick before next_renewal, never after it.
    for (;;) {
      std::vector<std::shared_ptr<Session>> all;
      {
        absl::MutexLock lock(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(&stop_), every);
        if (stop_) return;
        for (auto& [k, s] : resident_) all.push_back(s);
      }
      if (sweep) {
        for (auto& s : all) CommitIfWaited(s);
      }
      if (absl::Now() + every <= next_renewal) continue;
      next_renewal = absl::Now() + renew_every;
      for (auto& s : all) {
        auto r =
            store_->RenewLease(s->key, opt_.owner, s->fence, opt_.lease_ttl);
        if (!r.ok() && (GetReason(r.status()) == Reason::kFenced ||
                        r.status().code() == absl::StatusCode::kNotFound)) {
          Drop(s.get(), r.status().code() == absl::StatusCode::kNotFound
                            ? Session::Gone::kDeleted
                            : Session::Gone::kFenced);
        }
      }
    }
  }

  // Queues a policy commit on an idle session whose input has waited
  // (none running or queued: a running operation checks the policy when it
  // ends).
  void CommitIfWaited(const std::shared_ptr<Session>& s) {
    {
      absl::MutexLock lock(&mu_);
      if (draining_ || stop_) return;
    }
    {
      absl::MutexLock lock(&s->mu);
      if (s->busy || !s->ops.empty() || s->gone != Session::Gone::kNo ||
          clock_->Now() - s->dirty_hint < opt_.checkpoint_interval) {
        return;
      }
    }
    RunOp(s, [this, s] {
      if (GoneError(s.get()).ok() && s->dirty &&
          clock_->Now() - s->dirty_since >= opt_.checkpoint_interval) {
        // A failure leaves it dirty: the next sweep or request tries again.
        CommitNow(s.get(), opt_.default_durability, "").IgnoreError();
      }
      Release(s);
    });
  }

  void Drain() {
    std::vector<std::shared_ptr<Session>> all;
    {
      absl::MutexLock lock(&mu_);
      if (draining_) return;
      draining_ = true;
      for (auto& [k, s] : resident_) all.push_back(s);
      for (auto& t : generating_) t->RequestStop();
    }
    for (auto& s : all) {
      RunSync<bool>(s, [this, &s] {
        if (GoneError(s.get()).ok()) {
          if (s->dirty) {
            CommitNow(s.get(), opt_.default_durability, "").IgnoreError();
          }
          store_->ReleaseLease(s->key, opt_.owner, s->fence).IgnoreError();
          Drop(s.get(), Session::Gone::kEvicted);
        }
        return true;
      });
    }
    // Side-branch generations released their session at once; told to
    // stop after their next token above, they end now: wait for that, so
    // their answers go out before the pool stops (bounded, in case the
    // scheduler no longer steps).
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](std::set<std::shared_ptr<GenerateTask>>* g) {
                               return g->empty();
                             },
                             &generating_),
                         absl::Seconds(30));
  }

  // The answer to a retry of the finished generation `rec` (on the strand):
  // its head raised to the durability asked if it is below (its commit may
  // have been kept below it), then the recorded output again.
  absl::StatusOr<GenerateOutcome> ReplayFinished(
      Session* s, const GenerationRecord& rec, Durability d,
      const std::function<void(const GeneratedPiece&)>& emit) {
    SS_RETURN_IF_ERROR(RaiseHeadDurability(s, d));
    GenerateOutcome o = Replay(rec, emit);
    o.committed = true;
    o.replayed = true;
    {
      absl::MutexLock lock(&s->mu);
      o.position = s->view.position;
      o.input_offset = s->view.input_offset;
      o.version = s->view.version;
      o.durability = s->view.durability;
    }
    if (opt_.metrics != nullptr) opt_.metrics->IncReplayedGeneration();
    return o;
  }

  // What the checks of a Generate request say before it runs (strand):
  // `refused` if it cannot run here (another request's id, a stale
  // expected_input_offset — unless it continues its own record, whose
  // offset moved on with it —, too many tokens, bad sampling); and for a
  // committing request its record, if it has one (finished: replay it; in
  // progress: continue it).
  struct GenerateChecks {
    absl::Status refused;
    const GenerationRecord* record = nullptr;
  };
  GenerateChecks CheckGenerate(Session* s, const GenerateInput& in) {
    GenerateChecks c;
    if (in.commit) {
      c.record = FindGenerationRecord(s->records, in.request_id,
                                      opt_.request_id_window, clock_->Now());
    }
    if (c.record != nullptr && c.record->digest != in.content_digest) {
      c.refused = DuplicateRequest(in.request_id);
    } else if (c.record != nullptr &&
               c.record->finish != kGenerationInProgress) {
      // Replayed as it was.
    } else if (c.record == nullptr && in.expected_input_offset &&
               *in.expected_input_offset != s->input_offset) {
      c.refused = PositionMismatch(s, *in.expected_input_offset);
    } else if (MaxTokens(in) > opt_.max_generate_tokens) {
      c.refused = TooLarge("max_tokens", opt_.max_generate_tokens);
    } else {
      c.refused = engine::Validate(in.sampling, vocab_);
    }
    return c;
  }
  int MaxTokens(const GenerateInput& in) const {
    return in.max_tokens == 0 ? opt_.default_generate_tokens : in.max_tokens;
  }
  // The checks of a Generate prompt that need no session (too large, not
  // UTF-8, tokens outside the vocabulary): made before a committing request
  // takes the writer slot, so a malformed one does not end a live Append.
  absl::Status CheckPrompt(const GenerateInput& in) const {
    if (in.prompt_kind == GenerateInput::Prompt::kText) {
      if (in.prompt_text.size() > kMaxTextBytes) {
        return TooLarge("prompt_text_utf8", kMaxTextBytes);
      }
      if (!engine::IsValidUtf8(in.prompt_text)) {
        return Invalid(Reason::kInvalidUtf8,
                       "prompt_text_utf8 is not valid UTF-8",
                       {{"field", "prompt_text_utf8"}});
      }
    } else if (in.prompt_kind == GenerateInput::Prompt::kTokens) {
      if (in.prompt_tokens.size() > kMaxAppendTokens) {
        return TooLarge("prompt_tokens.ids", kMaxAppendTokens);
      }
      return CheckTokens(in.prompt_tokens, vocab_, "prompt_tokens.ids");
    }
    return absl::OkStatus();
  }

  // Emits a recorded generation's output as pieces (text held back to
  // complete UTF-8, like the live task) and returns its outcome (the
  // session fields are the caller's). `text_out`/`emitted_out` (optional):
  // the output bytes and how many of them were emitted.
  GenerateOutcome Replay(const GenerationRecord& rec,
                         const std::function<void(const GeneratedPiece&)>& emit,
                         std::string* text_out = nullptr,
                         size_t* emitted_out = nullptr) {
    std::string text;
    size_t emitted = 0;
    for (int32_t token : rec.tokens) {
      GeneratedPiece p;
      p.token = token;
      if (token >= 0 && token < vocab_) {
        const absl::string_view bytes = tok_->TokenBytes(token);
        text.append(bytes.data(), bytes.size());
      }
      const absl::string_view pending = absl::string_view(text).substr(emitted);
      const size_t complete = engine::Utf8CompletePrefixLength(pending);
      p.text = std::string(pending.substr(0, complete));
      emitted += complete;
      emit(p);
    }
    GenerateOutcome o;
    o.finish = static_cast<GenerateOutcome::Finish>(rec.finish);
    o.stop_token = rec.stop_token;
    o.stop_string = rec.stop_string;
    o.input_tokens = rec.input_tokens;
    o.output_tokens = static_cast<uint32_t>(rec.tokens.size());
    o.held_back = text.substr(emitted);
    if (text_out != nullptr) *text_out = std::move(text);
    if (emitted_out != nullptr) *emitted_out = emitted;
    return o;
  }

  // Creates `r` and remembers it under `request_id`. With `derived` (r.key's
  // id derives from the request id) a session that exists under it is this
  // request's if created within the window with the same model, labels and
  // TTL (unless changed since), parent and what `same` checks: an attempt
  // that failed over from another worker. It is returned at the durability
  // asked; other content is DUPLICATE_REQUEST. A session older than the
  // window belongs to an earlier request that reused the id: this one is
  // created under a fresh id.
  absl::StatusOr<SessionView> CreateOnce(
      CreateSessionRequest r, bool derived, const std::string& request_id,
      uint64_t digest,
      const std::function<absl::StatusOr<bool>(
          const SessionHead&, const CreateSessionRequest&)>& same) {
    const std::string tenant = r.key.tenant;
    auto res = store_->CreateSession(r);
    if (derived && GetReason(res.status()) == Reason::kSessionExists) {
      SS_ASSIGN_OR_RETURN(SessionHead h, store_->GetHead(r.key));
      if (clock_->Now() - h.created_at <= opt_.request_id_window) {
        const bool updated = h.updated_at > h.created_at;
        bool alike =
            h.model_id == r.model_id &&
            (updated || (h.labels == r.labels &&
                         (r.ttl == absl::ZeroDuration() || h.ttl == r.ttl))) &&
            h.parent_session_id == r.parent_session_id;
        if (alike) {
          SS_ASSIGN_OR_RETURN(alike, same(h, r));
        }
        if (!alike) return DuplicateRequest(request_id);
        Remember(tenant, request_id, r.key.session_id, digest, 1);
        SS_ASSIGN_OR_RETURN(h.head.durability,
                            CreatedDurability(r.key, h.head.version,
                                              h.head.durability, r.durability));
        return ViewOfHead(h);
      }
      r.key.session_id = NewSessionId();
      res = store_->CreateSession(r);
    }
    if (!res.ok()) {
      // A create the store wrote below the durability asked for is this
      // request's: a retry returns it. (A session that merely exists under
      // the id may be another request's.)
      if (WrittenBelowDurability(res.status())) {
        Remember(tenant, request_id, r.key.session_id, digest, 1);
      }
      return res.status();
    }
    Remember(tenant, request_id, r.key.session_id, digest, 1);
    return ViewOfHead(res->session);
  }

  // Whether `key`'s first version holds `snap`'s state (true when that
  // version is no longer kept: nothing is left to tell them apart).
  absl::StatusOr<bool> FirstVersionHolds(const SessionKey& key,
                                         const StateSnapshot& snap) {
    auto v = store_->LoadVersion(key, 1);
    if (IsVersionNotKept(v.status())) return true;
    if (!v.ok()) return v.status();
    const StateSnapshot& got = v->state;
    return got.position == snap.position &&
           got.input_offset == snap.input_offset &&
           got.tokenizer_tail == snap.tokenizer_tail &&
           got.sampler_state == snap.sampler_state && got.state == snap.state &&
           got.last_hidden == snap.last_hidden;
  }

  std::string NewSessionId() {
    absl::MutexLock lock(&mu_);
    std::string id(kGeneratedSessionIdLength, '0');
    for (char& c : id) c = kSessionIdAlphabet[rng_() % 32];
    return id;
  }
};

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SessionManager>> SessionManager::Create(
    const SessionManagerOptions& options, engine::Model* model,
    const engine::Tokenizer* tokenizer, Scheduler* scheduler,
    StateStore* store) {
  if (tokenizer->vocab_size() != model->info().config.vocab_size) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
        absl::StrCat("the tokenizer has ", tokenizer->vocab_size(),
                     " ids but the model ", model->info().config.vocab_size));
  }
  return std::unique_ptr<SessionManager>(new SessionManager(
      std::make_unique<Impl>(options, model, tokenizer, scheduler, store)));
}

SessionManager::SessionManager(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
SessionManager::~SessionManager() = default;

const SessionManagerOptions& SessionManager::options() const {
  return impl_->opt_;
}
const std::string& SessionManager::fingerprint() const {
  return impl_->fingerprint_;
}
const engine::Model& SessionManager::model() const { return *impl_->model_; }
const engine::Tokenizer& SessionManager::tokenizer() const {
  return *impl_->tok_;
}

absl::StatusOr<SessionView> SessionManager::CreateSession(
    const std::string& tenant, const CreateParams& p) {
  Impl& m = *impl_;
  if (!p.model_id.empty() && p.model_id != m.opt_.model_id) {
    return MakeError(absl::StatusCode::kNotFound, Reason::kModelNotFound,
                     absl::StrCat("model ", p.model_id, " is not served here"),
                     {{"model_id", p.model_id}});
  }
  uint64_t digest = kFnvBasis;
  digest = Fnv1a(digest, absl::StrCat(p.session_id.size(), ":", p.session_id,
                                      p.model_id.size(), ":", p.model_id));
  for (const auto& [k, v] : p.labels) {
    digest = Fnv1a(digest, absl::StrCat(k.size(), ":", k, v.size(), ":", v));
  }
  digest = Fnv1a(digest, absl::StrCat("ttl", absl::ToInt64Milliseconds(p.ttl)));
  if (p.fork_from) {
    digest = Fnv1a(digest,
                   absl::StrCat("fork", p.fork_from->first.size(), ":",
                                p.fork_from->first, "@", p.fork_from->second));
  }
  if (p.durability) {
    digest = Fnv1a(digest, absl::StrCat("d", static_cast<int>(*p.durability)));
  }
  {
    absl::MutexLock lock(&m.mu_);
    if (m.draining_) return Draining();
  }
  std::string existing;
  SS_ASSIGN_OR_RETURN(bool seen,
                      m.Seen(tenant, p.request_id, digest, &existing));
  if (seen) {
    // The first attempt's session, at the durability asked (a create kept
    // below it is remembered too).
    SS_ASSIGN_OR_RETURN(SessionView view, GetSession(tenant, existing));
    SS_ASSIGN_OR_RETURN(
        view.durability,
        m.CreatedDurability({tenant, existing}, view.version, view.durability,
                            m.Dur(p.durability)));
    return view;
  }
  CreateSessionRequest r;
  const bool derived = p.session_id.empty() && !p.request_id.empty();
  r.key = {tenant, derived ? DerivedSessionId(tenant, p.request_id)
                   : p.session_id.empty() ? m.NewSessionId()
                                          : p.session_id};
  r.model_id = m.opt_.model_id;
  r.labels = p.labels;
  r.ttl = p.ttl;
  r.durability = m.Dur(p.durability);
  if (p.fork_from) {
    SS_ASSIGN_OR_RETURN(LoadedVersion src,
                        m.store_->LoadVersion({tenant, p.fork_from->first},
                                              p.fork_from->second));
    if (src.state.model_fingerprint != m.fingerprint_) {
      return MakeError(absl::StatusCode::kFailedPrecondition,
                       Reason::kModelMismatch,
                       "the fork source belongs to another model",
                       {{"expected_fingerprint", m.fingerprint_},
                        {"actual_fingerprint", src.state.model_fingerprint}});
    }
    r.initial_state = std::move(src.state);
    // A fork starts with no generation records of its own.
    std::string sampler;
    Utf8Carry carry;
    std::deque<GenerationRecord> records;
    SS_RETURN_IF_ERROR(DecodeSamplerSideData(r.initial_state.sampler_state,
                                             &sampler, &records, &carry));
    r.initial_state.sampler_state = EncodeSamplerSideData(sampler, {}, carry);
    r.parent_session_id = p.fork_from->first;
    r.parent_version = src.version.version;
    r.initial_state.parent_session_id = r.parent_session_id;
    r.initial_state.parent_version = r.parent_version;
  } else {
    Session blank;
    blank.live = EngineState::Initial(*m.model_);
    r.initial_state = m.Snapshot(&blank);
  }
  const bool exact_fork = p.fork_from && p.fork_from->second != 0;
  return m.CreateOnce(
      std::move(r), derived, p.request_id, digest,
      [&](const SessionHead& h,
          const CreateSessionRequest& req) -> absl::StatusOr<bool> {
        return !exact_fork || h.parent_version == req.parent_version;
      });
}

absl::StatusOr<SessionView> SessionManager::GetSession(
    const std::string& tenant, const std::string& session_id) {
  Impl& m = *impl_;
  const SessionKey key{tenant, session_id};
  std::shared_ptr<Session> resident;
  {
    absl::MutexLock lock(&m.mu_);
    auto it = m.resident_.find(Impl::MapKey(key));
    if (it != m.resident_.end()) resident = it->second;
  }
  if (resident != nullptr) {
    // Another worker may have taken the session over since our last
    // renewal; then our copy is stale (a client resuming from it would skip
    // input). A newer fence in the store says so: drop the copy and answer
    // from the store. If the store cannot be asked, the copy is the best
    // answer there is.
    auto lease = m.store_->GetOwner(key);
    if (!lease.ok() || lease->fence == resident->fence) {
      absl::MutexLock l2(&resident->mu);
      return resident->view;
    }
    m.Drop(resident.get(), Session::Gone::kFenced);
  }
  SS_ASSIGN_OR_RETURN(SessionHead h, m.store_->GetHead(key));
  return m.ViewOfHead(h);
}

absl::StatusOr<std::pair<std::vector<SessionView>, std::string>>
SessionManager::ListSessions(const std::string& tenant, int page_size,
                             const std::string& page_token,
                             const std::map<std::string, std::string>& labels,
                             const std::string& model_id) {
  ListSessionsRequest r;
  r.tenant = tenant;
  r.page_size = page_size <= 0 ? 50 : std::min(page_size, 1000);
  r.page_token = page_token;
  r.label_filter = labels;
  SS_ASSIGN_OR_RETURN(ListSessionsPage page, impl_->store_->ListSessions(r));
  std::pair<std::vector<SessionView>, std::string> out;
  for (const SessionHead& h : page.sessions) {
    if (!model_id.empty() && h.model_id != model_id) continue;
    out.first.push_back(impl_->ViewOfHead(h));
  }
  out.second = page.next_page_token;
  return out;
}

absl::StatusOr<SessionView> SessionManager::UpdateSession(
    const std::string& tenant, const std::string& session_id,
    const SessionUpdate& update) {
  Impl& m = *impl_;
  const SessionKey key{tenant, session_id};
  SS_ASSIGN_OR_RETURN(SessionHead h, m.store_->UpdateSession(key, update));
  absl::MutexLock lock(&m.mu_);
  auto it = m.resident_.find(Impl::MapKey(key));
  if (it != m.resident_.end()) {
    absl::MutexLock l2(&it->second->mu);
    it->second->view.labels = h.labels;
    it->second->view.ttl = h.ttl;
    it->second->view.update_time = h.updated_at;
    return it->second->view;
  }
  return m.ViewOfHead(h);
}

absl::Status SessionManager::DeleteSession(const std::string& tenant,
                                           const std::string& session_id,
                                           bool allow_missing,
                                           const std::string& request_id) {
  // A retry of a delete that succeeded succeeds (proto: DeleteSession).
  const uint64_t digest = Fnv1a(kFnvBasis, absl::StrCat("delete:", session_id));
  SS_ASSIGN_OR_RETURN(bool seen,
                      impl_->Seen(tenant, request_id, digest, nullptr));
  if (seen) return absl::OkStatus();
  absl::Status st = DeleteOnce(tenant, session_id, allow_missing);
  if (st.ok()) impl_->Remember(tenant, request_id, session_id, digest);
  return st;
}

absl::Status SessionManager::DeleteOnce(const std::string& tenant,
                                        const std::string& session_id,
                                        bool allow_missing) {
  Impl& m = *impl_;
  const SessionKey key{tenant, session_id};
  std::shared_ptr<Session> s;
  {
    absl::MutexLock lock(&m.mu_);
    auto it = m.resident_.find(Impl::MapKey(key));
    if (it != m.resident_.end()) s = it->second;
  }
  absl::Status st;
  if (s != nullptr) {
    // The live writer (an Append, or a committing generation) ends first,
    // ABORTED: the delete may still fail, so not NOT_FOUND yet; its retry
    // gets NOT_FOUND once the session is gone.
    m.EndWriter(s.get(),
                MakeError(absl::StatusCode::kAborted, Reason::kSessionBusy,
                          "the session is being deleted"));
    st = m.RunSync<absl::Status>(s, [&] {
      m.Drop(s.get(), Session::Gone::kDeleted);
      return m.store_->DeleteSession(key);
    });
  } else {
    st = m.store_->DeleteSession(key);
  }
  if (allow_missing && absl::IsNotFound(st)) return absl::OkStatus();
  return st;
}

absl::StatusOr<SessionView> SessionManager::Retried(
    const std::string& tenant, const std::string& session_id, uint64_t version,
    Durability durability) {
  Impl& m = *impl_;
  // No lease is needed to raise a version's durability (and taking one
  // would fence a writer that holds the session elsewhere by now).
  std::optional<Durability> reached;
  if (version != 0) {
    auto v =
        m.store_->AwaitDurability({tenant, session_id}, version, durability);
    // A version no longer kept was followed by others: the session went on
    // from it, which is all a retry can still ask.
    if (!v.ok() && !IsVersionNotKept(v.status())) {
      return v.status();
    }
    if (v.ok()) reached = v->durability;
  }
  SS_ASSIGN_OR_RETURN(SessionView view, GetSession(tenant, session_id));
  // A resident copy learns the level at its next commit or checkpoint; the
  // answer says it now.
  if (reached && view.version == version && *reached > view.durability) {
    view.durability = *reached;
  }
  return view;
}

absl::StatusOr<std::vector<VersionInfo>> SessionManager::ListVersions(
    const std::string& tenant, const std::string& session_id) {
  SS_ASSIGN_OR_RETURN(std::vector<VersionInfo> v,
                      impl_->store_->ListVersions({tenant, session_id}));
  std::reverse(v.begin(), v.end());
  return v;
}

absl::StatusOr<SessionView> SessionManager::Rollback(
    const std::string& tenant, const std::string& session_id, uint64_t version,
    std::optional<uint64_t> expected, std::optional<Durability> durability,
    const std::string& request_id) {
  Impl& m = *impl_;
  // A retry of a rollback that was committed (even one that failed below
  // the durability asked for) returns the session instead of rolling back
  // again, which would discard input applied since.
  const uint64_t digest = Fnv1a(
      kFnvBasis, absl::StrCat("rollback:", session_id, "@", version, "?",
                              expected ? absl::StrCat(*expected) : "-", "d",
                              durability ? static_cast<int>(*durability) : -1));
  uint64_t committed = 0;
  SS_ASSIGN_OR_RETURN(bool seen,
                      m.Seen(tenant, request_id, digest, nullptr, &committed));
  if (seen) return Retried(tenant, session_id, committed, m.Dur(durability));
  SS_ASSIGN_OR_RETURN(std::shared_ptr<Session> s,
                      m.Resident({tenant, session_id}));
  return m.RunSync<absl::StatusOr<SessionView>>(
      s, [&]() -> absl::StatusOr<SessionView> {
        SS_RETURN_IF_ERROR(m.GoneError(s.get()));
        const uint64_t head = s->head.head.version;
        if (expected && *expected != head) {
          return MakeError(absl::StatusCode::kFailedPrecondition,
                           Reason::kVersionMismatch,
                           absl::StrCat("the head is version ", head),
                           {{"head_version", absl::StrCat(head)}});
        }
        auto res = m.store_->Rollback(s->key, head, s->fence, version,
                                      m.Dur(durability));
        if (!res.ok()) {
          if (GetReason(res.status()) == Reason::kFenced) {
            m.Drop(s.get(), Session::Gone::kFenced);
          } else {
            m.FollowStoreHead(s.get());
            // Only a rollback the store wrote (below the durability asked
            // for) is this one; a head that moved otherwise is not.
            if (WrittenBelowDurability(res.status())) {
              m.Remember(tenant, request_id, session_id, digest,
                         WrittenVersionOf(res.status()));
            }
          }
          return res.status();
        }
        m.Remember(tenant, request_id, session_id, digest,
                   res->version.version);
        auto v = m.store_->LoadVersion(s->key, res->version.version);
        absl::Status loaded =
            v.ok() ? m.LoadInto(s.get(), *v, &res->session) : v.status();
        if (!loaded.ok()) {
          m.FollowStoreHead(s.get());
          return loaded;
        }
        absl::MutexLock lock(&s->mu);
        return s->view;
      });
}

absl::StatusOr<ExportedState> SessionManager::Export(
    const std::string& tenant, const std::string& session_id,
    uint64_t version) {
  SS_ASSIGN_OR_RETURN(LoadedVersion v, impl_->store_->LoadVersion(
                                           {tenant, session_id}, version));
  ExportedState out;
  out.session_id = session_id;
  out.version = v.version.version;
  out.position = v.state.position;
  out.input_offset = v.state.input_offset;
  out.pending_bytes = static_cast<uint32_t>(v.state.tokenizer_tail.size());
  out.blob = EncodeState(v.state);
  return out;
}

absl::StatusOr<SessionView> SessionManager::Import(
    const std::string& tenant, const std::string& blob, bool new_version,
    const CreateParams& params, std::optional<uint64_t> expected) {
  Impl& m = *impl_;
  SS_ASSIGN_OR_RETURN(StateSnapshot snap, DecodeState(blob));
  SS_RETURN_IF_ERROR(CheckStateMatchesModel(snap, m.fingerprint_,
                                            m.model_->info().state_floats));
  if (!snap.last_hidden.empty() &&
      snap.last_hidden.size() !=
          static_cast<size_t>(m.model_->info().config.n_embd)) {
    return DataLossError(Reason::kStateCorrupt, "last_hidden has a bad size");
  }
  // A retry with the request id of an import that was committed (even one
  // that failed below the durability asked for) returns the session
  // instead of importing twice.
  uint64_t digest = Fnv1a(
      kFnvBasis,
      absl::StrCat(
          "import:", new_version ? "version:" : "create:", params.session_id,
          "@", Crc32c(0, blob.data(), blob.size()), "?",
          expected ? absl::StrCat(*expected) : "-", "d",
          params.durability ? static_cast<int>(*params.durability) : -1));
  for (const auto& [k, v] : params.labels) {
    digest = Fnv1a(digest, absl::StrCat(k.size(), ":", k, v.size(), ":", v));
  }
  digest =
      Fnv1a(digest, absl::StrCat("ttl", absl::ToInt64Milliseconds(params.ttl)));
  std::string seen_id;
  uint64_t committed = 0;
  SS_ASSIGN_OR_RETURN(bool seen, m.Seen(tenant, params.request_id, digest,
                                        &seen_id, &committed));
  if (seen) {
    return Retried(tenant, seen_id, committed, m.Dur(params.durability));
  }
  if (!new_version) {
    // A generated id derives from the request id, as for CreateSession.
    const bool derived =
        params.session_id.empty() && !params.request_id.empty();
    CreateSessionRequest r;
    r.key = {tenant, derived ? DerivedSessionId(tenant, params.request_id)
                     : params.session_id.empty() ? m.NewSessionId()
                                                 : params.session_id};
    r.model_id = m.opt_.model_id;
    r.labels = params.labels;
    r.ttl = params.ttl;
    r.durability = m.Dur(params.durability);
    snap.parent_session_id.clear();
    snap.parent_version = 0;
    r.initial_state = std::move(snap);
    return m.CreateOnce(
        std::move(r), derived, params.request_id, digest,
        [&](const SessionHead& h, const CreateSessionRequest& req) {
          return m.FirstVersionHolds(h.key, req.initial_state);
        });
  }
  SS_ASSIGN_OR_RETURN(std::shared_ptr<Session> s,
                      m.Resident({tenant, params.session_id}));
  return m.RunSync<absl::StatusOr<SessionView>>(
      s, [&]() -> absl::StatusOr<SessionView> {
        SS_RETURN_IF_ERROR(m.GoneError(s.get()));
        const uint64_t head = s->head.head.version;
        if (expected && *expected != head) {
          return MakeError(absl::StatusCode::kFailedPrecondition,
                           Reason::kVersionMismatch,
                           absl::StrCat("the head is version ", head),
                           {{"head_version", absl::StrCat(head)}});
        }
        snap.parent_session_id = s->head.parent_session_id;
        snap.parent_version = s->head.parent_version;
        CommitRequest r;
        r.key = s->key;
        r.expected_version = head;
        r.fence = s->fence;
        r.state = snap;
        r.durability = m.Dur(params.durability);
        auto res = m.store_->Commit(r);
        if (!res.ok()) {
          if (GetReason(res.status()) == Reason::kFenced) {
            m.Drop(s.get(), Session::Gone::kFenced);
          } else {
            m.FollowStoreHead(s.get());
            if (WrittenBelowDurability(res.status())) {
              m.Remember(tenant, params.request_id, params.session_id, digest,
                         WrittenVersionOf(res.status()));
            }
          }
          return res.status();
        }
        m.Remember(tenant, params.request_id, params.session_id, digest,
                   res->version.version);
        LoadedVersion v{res->version, std::move(snap)};
        SS_RETURN_IF_ERROR(m.LoadInto(s.get(), v, &res->session));
        absl::MutexLock lock(&s->mu);
        return s->view;
      });
}

absl::StatusOr<std::shared_ptr<SessionManager::Writer>>
SessionManager::OpenWriter(
    const std::string& tenant, const std::string& session_id,
    std::function<void(const absl::Status&)> superseded) {
  Impl& m = *impl_;
  for (;;) {
    SS_ASSIGN_OR_RETURN(std::shared_ptr<Session> s,
                        m.Resident({tenant, session_id}));
    std::function<void(const absl::Status&)> old;
    auto w = std::make_shared<Writer>();
    {
      absl::MutexLock lock(&s->mu);
      // Gone sessions are already unmapped: the next Resident() reloads.
      if (s->gone != Session::Gone::kNo) continue;
      old = std::move(s->superseded);
      s->superseded = std::move(superseded);
      w->gen = ++s->writer_gen;
      s->writer_attached = true;
    }
    w->session = s;
    if (old) m.pool_.Post([old = std::move(old)] { old(Busy()); });
    return w;
  }
}

void SessionManager::Append(
    const std::shared_ptr<Writer>& w, AppendInput in,
    std::function<void(absl::StatusOr<AppendAck>)> done) {
  Impl& m = *impl_;
  if (in.kind == AppendInput::Kind::kText && in.text.size() > kMaxTextBytes) {
    m.pool_.Post([done] { done(TooLarge("text_utf8", kMaxTextBytes)); });
    return;
  }
  if (in.kind == AppendInput::Kind::kTokens &&
      in.tokens.size() > kMaxAppendTokens) {
    m.pool_.Post([done] { done(TooLarge("tokens.ids", kMaxAppendTokens)); });
    return;
  }
  m.RunOp(w->session, [&m, w, in = std::move(in), done = std::move(done)] {
    m.AppendOp(w, std::move(in), std::move(done));
  });
}

void SessionManager::CloseWriter(const std::shared_ptr<Writer>& w,
                                 std::optional<Durability> durability,
                                 std::function<void(absl::Status)> done) {
  Impl& m = *impl_;
  auto s = w->session;
  m.RunOp(s, [&m, w, s, durability, done] {
    absl::Status st = m.GoneError(s.get());
    bool current;
    {
      absl::MutexLock lock(&s->mu);
      current = s->writer_gen == w->gen;
    }
    if (st.ok() && !current) st = Busy();
    if (st.ok()) st = m.Checkpoint(s.get(), m.Dur(durability), "");
    {
      absl::MutexLock lock(&s->mu);
      if (s->writer_gen == w->gen) {
        s->writer_attached = false;
        s->superseded = nullptr;
      }
    }
    m.Release(s);
    done(st);
  });
}

void SessionManager::AbandonWriter(const std::shared_ptr<Writer>& w) {
  auto& s = w->session;
  absl::MutexLock lock(&s->mu);
  if (s->writer_gen == w->gen) {
    s->writer_attached = false;
    s->superseded = nullptr;
  }
}

namespace {

class JobImpl : public SessionManager::Job {
 public:
  void Cancel() override {
    std::shared_ptr<Task> t;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      t = task_.lock();
    }
    if (t) t->Cancel();
  }
  // Ends the job with `why` (a newer writer, or the session gone).
  void Supersede(const absl::Status& why) {
    {
      absl::MutexLock lock(&mu_);
      if (superseded_.ok()) superseded_ = why;
    }
    Cancel();
  }
  // False if already cancelled (then the task is not run).
  bool SetTask(std::shared_ptr<Task> t) {
    absl::MutexLock lock(&mu_);
    task_ = std::move(t);
    return !cancelled_;
  }
  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  // OK unless superseded.
  absl::Status superseded() {
    absl::MutexLock lock(&mu_);
    return superseded_;
  }

 private:
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status superseded_ ABSL_GUARDED_BY(mu_);
  // Weak: the task's callbacks hold the job, and the scheduler holds the
  // task while it runs; a strong reference here would be a cycle (a leak).
  std::weak_ptr<Task> task_ ABSL_GUARDED_BY(mu_);
};

absl::Status CancelledError() {
  return absl::CancelledError("the call was cancelled");
}

// Per-call timing for the latency metrics; touched on the scheduler thread
// only (emit), after the strand set it up.
struct GenerateTiming {
  absl::Time arrival;
  absl::Time last;
  bool first = true;
};

}  // namespace

std::shared_ptr<SessionManager::Job> SessionManager::Generate(
    const std::string& tenant, const std::string& session_id, GenerateInput in,
    std::function<void(const GeneratedPiece&)> emit,
    std::function<void(absl::StatusOr<GenerateOutcome>)> done) {
  Impl& m = *impl_;
  auto job = std::make_shared<JobImpl>();
  auto timing = std::make_shared<GenerateTiming>();
  timing->arrival = m.clock_->Now();
  auto run = [this, &m, job, timing, tenant, session_id, in, emit,
              done]() mutable {
    // Before a committing request takes the writer slot (which ends the
    // session's live Append): a malformed prompt or a call already gone.
    if (absl::Status st = m.CheckPrompt(in); !st.ok()) return done(st);
    if (job->cancelled()) return done(CancelledError());
    std::shared_ptr<Writer> w;
    std::shared_ptr<Session> s;
    if (in.commit) {
      auto wr = OpenWriter(tenant, session_id, [job](const absl::Status& why) {
        job->Supersede(why);
      });
      if (!wr.ok()) return done(wr.status());
      w = *wr;
      s = w->session;
    } else {
      auto r = m.Resident({tenant, session_id});
      if (!r.ok()) return done(r.status());
      s = *r;
    }
    m.RunOp(s, [this, &m, job, timing, s, w, in = std::move(in), emit,
                done]() mutable {
      auto fail = [&](absl::Status st) {
        if (w) AbandonWriter(w);
        m.Release(s);
        done(std::move(st));
      };
      if (absl::Status g = m.GoneError(s.get()); !g.ok()) return fail(g);
      if (w && !m.IsCurrent(s.get(), w->gen)) return fail(Busy());
      // A committing retry finds its record: a finished generation is
      // replayed; one checkpointed while it ran is replayed and continued.
      const Impl::GenerateChecks checks = m.CheckGenerate(s.get(), in);
      if (!checks.refused.ok()) return fail(checks.refused);
      std::optional<GenerationRecord> resume;
      if (checks.record != nullptr) {
        if (checks.record->finish != kGenerationInProgress) {
          auto o = m.ReplayFinished(s.get(), *checks.record,
                                    m.Dur(in.durability), emit);
          AbandonWriter(w);
          m.Release(s);
          return done(std::move(o));
        }
        resume = *checks.record;
      }
      int max_tokens = m.MaxTokens(in);
      GenerateSpec spec;
      spec.params = in.sampling;
      uint64_t prompt_units = 0;
      uint32_t input_tokens = 0;
      // The output so far (a continued generation's replayed part).
      auto text = std::make_shared<std::string>();
      auto out_tokens = std::make_shared<std::vector<int32_t>>();
      if (resume) {
        // The session is exactly as the checkpoint left it (any later
        // change drops the record): continue with its sampler state.
        auto sampler = engine::SamplerState::Parse(s->sampler_state);
        if (!sampler.ok()) return fail(sampler.status());
        const int done_tokens = static_cast<int>(resume->tokens.size());
        if (done_tokens >= max_tokens) {
          return fail(DataLossError(Reason::kStateCorrupt,
                                    "a checkpointed generation is longer than "
                                    "its max_tokens"));
        }
        std::string replayed;
        size_t emitted = 0;
        m.Replay(*resume, emit, &replayed, &emitted);
        spec.sampler = *std::move(sampler);
        max_tokens -= done_tokens;
        input_tokens = resume->input_tokens;
        *text = replayed.substr(0, emitted);
        *out_tokens = resume->tokens;
        spec.prior_text = std::move(replayed);
        spec.prior_text_emitted = emitted;
      } else {
        std::vector<int32_t> prompt;
        if (!s->utf8_carry.empty()) {
          return fail(Invalid(Reason::kInvalidUtf8,
                              "the session's pending text ends inside a UTF-8 "
                              "character",
                              {{"input_offset", absl::StrCat(s->input_offset)},
                               {"field", "text_utf8"}}));
        }
        // (The prompt itself was checked before the strand: CheckPrompt.)
        if (in.prompt_kind == GenerateInput::Prompt::kText) {
          prompt = m.tok_->EncodeStream(s->tail, in.prompt_text, true).tokens;
          prompt_units = in.prompt_text.size();
        } else {
          prompt = m.tok_->EncodeStream(s->tail, "", true).tokens;
          if (in.prompt_kind == GenerateInput::Prompt::kTokens) {
            prompt.insert(prompt.end(), in.prompt_tokens.begin(),
                          in.prompt_tokens.end());
            prompt_units = in.prompt_tokens.size();
          }
        }
        if (s->live.position == 0 && prompt.empty()) {
          return fail(MakeError(absl::StatusCode::kFailedPrecondition,
                                Reason::kInvalidArgument,
                                "nothing consumed yet to generate from: send "
                                "a prompt",
                                {{"field", "prompt"}}));
        }
        if (s->live.position == s->no_hidden_at && prompt.empty()) {
          return fail(NoHidden("prompt"));
        }
        if (!in.has_seed) {
          uint64_t h = kFnvBasis;
          h = Fnv1a(h, s->key.session_id);
          h = Fnv1a(h, absl::StrCat("/", s->input_offset, "/"));
          h = Fnv1a(h, in.request_id);
          spec.params.seed = h;
        }
        if (m.opt_.metrics != nullptr) {
          m.opt_.metrics->AddTokensIn(prompt.size());
        }
        input_tokens = static_cast<uint32_t>(prompt.size());
        spec.prompt = std::move(prompt);
      }
      spec.max_tokens = max_tokens;
      spec.stop_strings = in.stop_strings;
      spec.logprobs = in.logprobs;
      spec.top_logprobs = in.top_logprobs;
      spec.clock = m.clock_;
      if (in.max_duration) spec.stop_at = timing->arrival + *in.max_duration;
      auto work = std::make_shared<EngineState>(s->live);
      const uint64_t start_offset = s->input_offset;
      std::shared_ptr<GenerationCheckpoints> cps;
      if (in.commit &&
          (m.opt_.generate_checkpoint_tokens > 0 ||
           m.opt_.generate_checkpoint_interval > absl::ZeroDuration())) {
        cps = std::make_shared<GenerationCheckpoints>();
        spec.checkpoint_tokens = m.opt_.generate_checkpoint_tokens;
        spec.checkpoint_interval =
            m.opt_.generate_checkpoint_interval > absl::ZeroDuration()
                ? m.opt_.generate_checkpoint_interval
                : absl::InfiniteDuration();
        GenerationRecord tmpl;
        tmpl.request_id = in.request_id;
        tmpl.digest = in.content_digest;
        const uint64_t base = start_offset + prompt_units;
        const Durability d = m.Dur(in.durability);
        const uint64_t gen = w->gen;
        // Scheduler thread, like emit: out_tokens is current here.
        spec.on_checkpoint = [&m, cps, s, gen, base, input_tokens, tmpl, d,
                              out_tokens](GenerateCheckpoint cp) {
          PendingCheckpoint p{std::move(cp), *out_tokens};
          {
            absl::MutexLock lock(&cps->mu);
            if (cps->over) return;
            if (cps->running) {
              cps->waiting = std::move(p);
              return;
            }
            cps->running = true;
          }
          m.pool_.Post([&m, cps, s, gen, base, input_tokens, tmpl, d,
                        p = std::move(p)]() mutable {
            m.RunCheckpoints(cps, s, gen, base, input_tokens, tmpl, d,
                             std::move(p));
          });
        };
      }
      if (!in.commit) m.Release(s);  // side branch: the copy is enough
      auto task = std::make_shared<GenerateTask>(
          work.get(), m.vocab_, m.tok_, std::move(spec),
          [&m, emit, text, out_tokens, timing,
           logprobs = in.logprobs](const GeneratedToken& t) {
            if (WorkerMetrics* metrics = m.opt_.metrics) {
              const absl::Time now = m.clock_->Now();
              if (timing->first) {
                metrics->ObserveTimeToFirstToken(now - timing->arrival);
              } else {
                metrics->ObserveInterToken(now - timing->last);
              }
              metrics->AddTokensOut(1);
              timing->first = false;
              timing->last = now;
            }
            out_tokens->push_back(t.id);
            text->append(t.text);
            GeneratedPiece p;
            p.token = t.id;
            p.text = t.text;
            p.has_logprob = logprobs;
            p.logprob = t.logprob;
            p.top = t.top;
            emit(p);
          },
          [this, &m, job, s, w, work, in, done, text, out_tokens, input_tokens,
           prompt_units, start_offset,
           cps](const absl::Status& st, const GenerateResult& r) {
            std::function<void()> final_step = [this, &m, job, s, w, work, in,
                                                done, text, out_tokens,
                                                input_tokens, prompt_units,
                                                start_offset, st, r] {
              {
                absl::MutexLock lock(&m.mu_);
                for (auto it = m.generating_.begin(); it != m.generating_.end();
                     ++it) {
                  if ((*it)->state() == work->state.data()) {
                    m.generating_.erase(it);
                    break;
                  }
                }
              }
              auto finish = [&](absl::StatusOr<GenerateOutcome> out) {
                if (in.commit) {
                  AbandonWriter(w);
                  m.Release(s);
                }
                done(std::move(out));
              };
              if (!st.ok()) {
                absl::Status why = job->superseded();
                return finish(why.ok() ? st : why);
              }
              GenerateOutcome o;
              o.finish = static_cast<GenerateOutcome::Finish>(r.finish);
              o.input_tokens = input_tokens;
              o.output_tokens = static_cast<uint32_t>(out_tokens->size());
              o.held_back = r.held_back;
              if (r.finish == FinishReason::kStopToken &&
                  !out_tokens->empty()) {
                o.stop_token = out_tokens->back();
              }
              if (r.finish == FinishReason::kStopString) {
                const std::string all = *text + r.held_back;
                for (const std::string& stop : in.stop_strings) {
                  if (!stop.empty() && all.find(stop) != std::string::npos) {
                    o.stop_string = stop;
                    break;
                  }
                }
              }
              if (!in.commit) {
                {
                  absl::MutexLock lock(&s->mu);
                  o.position = s->view.position;
                  o.input_offset = s->view.input_offset;
                  o.version = s->view.version;
                  o.durability = s->view.durability;
                }
                return finish(o);
              }
              if (!m.IsCurrent(s.get(), w->gen)) return finish(Busy());
              if (absl::Status g = m.GoneError(s.get()); !g.ok()) {
                return finish(g);
              }
              // Commit atomically: swap in, commit, or restore on failure.
              GenerationRecord rec;
              rec.request_id = in.request_id;
              rec.digest = in.content_digest;
              rec.committed_at = m.clock_->Now();
              rec.finish = static_cast<uint8_t>(o.finish);
              rec.stop_token = o.stop_token;
              rec.stop_string = o.stop_string;
              rec.input_tokens = input_tokens;
              rec.tokens = *out_tokens;
              absl::Status cs =
                  m.CommitGeneration(s.get(), std::move(*work), r.sampler,
                                     start_offset + prompt_units + r.generated,
                                     std::move(rec), m.Dur(in.durability),
                                     /*final=*/true);
              if (!cs.ok()) return finish(cs);
              o.committed = true;
              o.position = s->live.position;
              o.input_offset = s->input_offset;
              o.version = s->head.head.version;
              o.durability = s->head.head.durability;
              finish(o);
            };
            // After a periodic checkpoint still being committed.
            if (cps != nullptr) {
              absl::MutexLock lock(&cps->mu);
              cps->over = true;
              cps->waiting.reset();
              if (cps->running) {
                cps->then = std::move(final_step);
                return;
              }
            }
            m.pool_.Post(std::move(final_step));
          });
      if (!job->SetTask(task)) {
        if (in.commit) {
          AbandonWriter(w);
          m.Release(s);
        }
        // Superseded (a live client: say why) or cancelled by the client.
        absl::Status why = job->superseded();
        return done(why.ok() ? CancelledError() : why);
      }
      {
        absl::MutexLock lock(&m.mu_);
        m.generating_.insert(task);
        if (m.draining_) task->RequestStop();
      }
      if (absl::Status st = m.sched_->Submit(task); !st.ok()) {
        {
          absl::MutexLock lock(&m.mu_);
          m.generating_.erase(task);
        }
        if (in.commit) {
          AbandonWriter(w);
          m.Release(s);
        }
        return done(st);
      }
    });
  };
  if (!in.commit) {
    m.pool_.Post(std::move(run));
    return job;
  }
  // A committing generation takes the session's writer slot, which ends a
  // live Append call. A retry that only replays a finished generation, or a
  // request that fails at once, must not: they are answered first, on the
  // session's strand, without the slot (the run re-checks what can change).
  m.pool_.Post([&m, tenant, session_id, in = std::move(in), emit, done,
                run = std::move(run)]() mutable {
    auto r = m.Resident({tenant, session_id});
    if (!r.ok()) return done(r.status());
    std::shared_ptr<Session> s = *r;
    {
      // Something runs on the session (a committing generation holds it to
      // its end): a new writer call supersedes it at once, as always.
      absl::MutexLock lock(&s->mu);
      if (s->busy) return run();
    }
    m.RunOp(s, [&m, s, in = std::move(in), emit, done,
                run = std::move(run)]() mutable {
      absl::StatusOr<GenerateOutcome> answer = absl::UnknownError("");
      bool answered = false;
      if (m.GoneError(s.get()).ok()) {
        const Impl::GenerateChecks checks = m.CheckGenerate(s.get(), in);
        if (!checks.refused.ok()) {
          answer = checks.refused;
          answered = true;
        } else if (checks.record != nullptr &&
                   checks.record->finish != kGenerationInProgress) {
          answer = m.ReplayFinished(s.get(), *checks.record,
                                    m.Dur(in.durability), emit);
          answered = true;
        }
      }
      m.Release(s);
      if (answered) return done(std::move(answer));
      run();
    });
  });
  return job;
}

std::shared_ptr<SessionManager::Job> SessionManager::Score(
    const std::string& tenant, const std::string& session_id, ScoreInput in,
    std::function<void(absl::StatusOr<ScoreOutcome>)> done) {
  Impl& m = *impl_;
  auto job = std::make_shared<JobImpl>();
  m.pool_.Post([&m, job, tenant, session_id, in = std::move(in), done] {
    // Validate the continuation first.
    std::vector<int32_t> cont;
    if (in.is_text) {
      if (in.text.size() > kMaxTextBytes) {
        return done(TooLarge("text_utf8", kMaxTextBytes));
      }
      if (!engine::IsValidUtf8(in.text)) {
        return done(Invalid(Reason::kInvalidUtf8,
                            "text_utf8 is not valid UTF-8",
                            {{"field", "text_utf8"}}));
      }
      cont = m.tok_->Encode(in.text);
      if (cont.size() > kMaxScoreTokens) {
        return done(TooLarge("text_utf8 (tokens)", kMaxScoreTokens));
      }
    } else {
      if (in.tokens.size() > kMaxScoreTokens) {
        return done(TooLarge("tokens.ids", kMaxScoreTokens));
      }
      if (absl::Status st = CheckTokens(in.tokens, m.vocab_, "tokens.ids");
          !st.ok()) {
        return done(st);
      }
      cont = in.tokens;
    }
    if (cont.empty()) {
      return done(Invalid(Reason::kInvalidArgument, "the continuation is empty",
                          {{"field", "continuation"}}));
    }
    // The response holds a log-probability per token plus top_logprobs
    // more, ~11 bytes each: refuse before computing what could not be sent
    // (the message limit is 8 MiB).
    const size_t entries = cont.size() * (1 + std::max(in.top_logprobs, 0));
    if (entries > kMaxScoreEntries) {
      return done(TooLarge("tokens x (1 + top_logprobs)", kMaxScoreEntries));
    }
    auto work = std::make_shared<EngineState>();
    auto tail = std::make_shared<std::string>();
    auto out = std::make_shared<ScoreOutcome>();
    // Whether work->last_hidden is that of its last token.
    auto hidden = std::make_shared<bool>(true);
    auto run = [&m, job, work, tail, out, hidden, cont, in, done]() {
      std::vector<int32_t> flushed =
          m.tok_->EncodeStream(*tail, "", true).tokens;
      out->position = work->position + flushed.size();
      if (out->position == 0) {
        return done(MakeError(absl::StatusCode::kFailedPrecondition,
                              Reason::kInvalidArgument,
                              "nothing consumed yet to predict from",
                              {{"field", "continuation"}}));
      }
      if (!*hidden && flushed.empty()) return done(NoHidden("continuation"));
      out->tokens = cont;
      const int top_n = in.top_logprobs;
      auto score = [&m, job, work, out, cont, top_n, done]() {
        if (m.opt_.metrics != nullptr) m.opt_.metrics->AddTokensIn(cont.size());
        auto holder = std::make_shared<ScoreTask*>(nullptr);
        auto task = std::make_shared<ScoreTask>(
            work.get(), m.vocab_, cont,
            [work, out, holder, done](const absl::Status& st,
                                      const std::vector<float>& lp,
                                      const std::vector<bool>& greedy) {
              if (!st.ok()) return done(st);
              out->logprobs = lp;
              out->greedy = greedy;
              out->top = (*holder)->top();
              done(*out);
            });
        *holder = task.get();
        task->set_top_logprobs(top_n);
        if (!job->SetTask(task)) return done(CancelledError());
        if (absl::Status st = m.sched_->Submit(task); !st.ok()) done(st);
      };
      if (flushed.empty()) return score();
      auto ingest = std::make_shared<IngestTask>(
          work.get(), std::move(flushed),
          [&m, score, done](const absl::Status& st) {
            if (!st.ok()) return done(st);
            m.pool_.Post(score);
          });
      if (!job->SetTask(ingest)) return done(CancelledError());
      if (absl::Status st = m.sched_->Submit(ingest); !st.ok()) done(st);
    };
    const SessionKey key{tenant, session_id};
    if (in.version != 0) {
      auto v = m.store_->LoadVersion(key, in.version);
      if (!v.ok()) return done(v.status());
      if (absl::Status st = CheckStateMatchesModel(
              v->state, m.fingerprint_, m.model_->info().state_floats);
          !st.ok()) {
        return done(st);
      }
      work->state.assign(v->state.state.begin(), v->state.state.end());
      work->position = v->state.position;
      work->last_hidden = v->state.last_hidden;
      *hidden = work->last_hidden.size() ==
                static_cast<size_t>(m.model_->info().config.n_embd);
      work->last_hidden.resize(m.model_->info().config.n_embd);
      *tail = v->state.tokenizer_tail;
      out->input_offset = v->state.input_offset;
      out->version = v->version.version;
      return run();
    }
    auto r = m.Resident(key);
    if (!r.ok()) return done(r.status());
    std::shared_ptr<Session> s = *r;
    m.RunOp(s, [&m, s, in, work, tail, out, hidden, run, done] {
      absl::Status g = m.GoneError(s.get());
      if (g.ok() && in.expected_input_offset &&
          *in.expected_input_offset != s->input_offset) {
        g = m.PositionMismatch(s.get(), *in.expected_input_offset);
      }
      if (!g.ok()) {
        m.Release(s);
        return done(g);
      }
      *work = s->live;
      *hidden = s->live.position != s->no_hidden_at;
      *tail = s->tail;
      out->input_offset = s->input_offset;
      out->version = s->head.head.version;
      m.Release(s);
      run();
    });
  });
  return job;
}

void SessionManager::Drain() { impl_->Drain(); }

SessionManager::Stats SessionManager::stats() const {
  absl::MutexLock lock(&impl_->mu_);
  Stats s = impl_->stats_;
  s.resident = static_cast<int>(impl_->resident_.size());
  for (const auto& [k, session] : impl_->resident_) {
    absl::MutexLock l2(&session->mu);
    if (session->busy || session->writer_attached) ++s.active;
  }
  s.resident_bytes = s.resident * impl_->session_bytes_;
  return s;
}

bool SessionManager::IsResident(const std::string& tenant,
                                const std::string& session_id) const {
  absl::MutexLock lock(&impl_->mu_);
  return impl_->resident_.contains(Impl::MapKey({tenant, session_id}));
}

}  // namespace statestream::worker
