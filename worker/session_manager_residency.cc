// SPDX-License-Identifier: Apache-2.0
// SessionManager: residency (load, evict, drop), the per-session strand,
// and lease renewal with the idle commit policy. The drain is in
// session_manager_drain.cc.
#include <algorithm>
#include <functional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/utf8.h"
#include "worker/metrics.h"
#include "worker/session_manager_internal.h"

namespace statestream::worker {

absl::Status Invalid(Reason reason, absl::string_view msg, ErrorMetadata md) {
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
                   "the worker is draining",
                   {{"retry_after_ms", "100"}, {"stopping", "true"}});
}

bool WrittenBelowDurability(const absl::Status& st) {
  return DurabilityReachedOf(st).has_value();
}

uint64_t WrittenVersionOf(const absl::Status& st) {
  uint64_t version = 0;
  const std::optional<std::string> v = GetErrorMetadata(st, "version");
  if (!v || !absl::SimpleAtoi(*v, &version)) return 0;
  return version;
}

absl::Status NoHidden(const char* field) {
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   Reason::kInvalidArgument,
                   "the state has no hidden vector for its last token (saved "
                   "without last_hidden): send input to predict from",
                   {{"field", field}});
}

absl::Status CheckExpectedHead(std::optional<uint64_t> expected,
                               uint64_t head) {
  if (!expected || *expected == head) return absl::OkStatus();
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   Reason::kVersionMismatch,
                   absl::StrCat("the head is version ", head),
                   {{"head_version", absl::StrCat(head)}});
}

std::string TailCarry(const std::string& tail) {
  return tail.substr(Utf8CompletePrefixLength(tail));
}

absl::StatusOr<std::string> StateCarry(const StateSnapshot& snap,
                                       std::string* sampler,
                                       std::deque<GenerationRecord>* records,
                                       bool* known, uint64_t* history_base) {
  std::string sampler_unused;
  std::deque<GenerationRecord> records_unused;
  Utf8Carry carry;
  uint64_t base = 0;
  SS_RETURN_IF_ERROR(DecodeSamplerSideData(
      snap.sampler_state, sampler != nullptr ? sampler : &sampler_unused,
      records != nullptr ? records : &records_unused, &carry, &base));
  if (base > snap.input_offset) {
    return DataLossError(Reason::kStateCorrupt,
                         "the state's input history restarts past its input");
  }
  if (history_base != nullptr) *history_base = base;
  // Recorded (not the tail's end), and for this very input: a worker that
  // predates the record may have written the value back after more input.
  if (carry.known && carry.input_offset == snap.input_offset) {
    // The carry and the tail both end the input: the shorter is the end of
    // the longer, and neither is longer than the input (a crafted import
    // could name an open character no input left, and the text checked
    // against it would not be the text the tokenizer gets).
    const absl::string_view tail = snap.tokenizer_tail;
    if (!carry.bytes.empty() && (carry.bytes.size() > snap.input_offset ||
                                 !(absl::EndsWith(carry.bytes, tail) ||
                                   absl::EndsWith(tail, carry.bytes)))) {
      return DataLossError(Reason::kStateCorrupt,
                           "the state's open UTF-8 character does not end "
                           "its input");
    }
    if (known != nullptr) *known = true;
    return carry.bytes.empty() ? TailCarry(snap.tokenizer_tail)
                               : std::move(carry.bytes);
  }
  // An empty tail after input: snapshots written before the carry was
  // recorded do not say whether a character was left open.
  if (known != nullptr) {
    *known = !snap.tokenizer_tail.empty() || snap.input_offset == 0;
  }
  return TailCarry(snap.tokenizer_tail);
}

SessionManager::Impl::Impl(const SessionManagerOptions& o, engine::Model* model,
                           const engine::Tokenizer* tok, Scheduler* sched,
                           StateStore* store)
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
      fingerprint_(SessionStateFingerprint(*model, *tok)),
      session_bytes_(
          (model->info().state_floats + model->info().config.n_embd) *
          int64_t{sizeof(float)}),
      pool_(o.threads),
      rng_(std::random_device{}()) {
  {
    // The renewal thread's first wait is at most this long: a session
    // loaded before it began that needs a sweep sooner wakes it.
    absl::MutexLock lock(&mu_);
    sweep_at_ = clock_->Now() + opt_.lease_ttl / 3;
  }
  renewer_ = std::thread([this] { RenewLoop(); });
}

SessionManager::Impl::~Impl() { Shutdown(); }

void SessionManager::Impl::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  renew_wake_.Notify();
  // Checks still queued answer at once (the copy serves, as when the store
  // is slow): a hung store must not hold the exit for each of them.
  checks_stopped_ = true;
  if (renewer_.joinable()) renewer_.join();
  Drain();
  // Queued operations run now, while the members they touch exist (the
  // loaders' first: they queue operations on pool_).
  loaders_.Shutdown();
  pool_.Shutdown();
  checkers_.Shutdown();
}

void SessionManager::Impl::PostFinding(const SessionKey& key, bool reads_store,
                                       std::function<void()> fn) {
  bool resident = false;
  if (!reads_store) {
    absl::MutexLock lock(&mu_);
    resident = resident_.contains(MapKey(key));
  }
  if (resident) {
    pool_.Post(std::move(fn));
  } else {
    loaders_.Post(std::move(fn));
  }
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Impl::Resident(
    const SessionKey& key, bool may_load, bool* did_load) {
  if (did_load != nullptr) *did_load = false;
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
  if (!may_load) return nullptr;
  // Held through the victims' evictions too: a load that picked victims
  // while others were still being evicted (busy, so skipped, but still
  // counted) would evict one session too many, maybe the one just loaded.
  absl::MutexLock load(&load_mu_);
  {
    absl::MutexLock lock(&mu_);
    // A drain that began while this load waited its turn: the session may
    // be another worker's by now, and the takeover below would fence it.
    if (draining_) return Draining();
    auto it = resident_.find(mk);
    if (it != resident_.end()) return it->second;
  }
  const absl::Time load_start = clock_->Now();
  // Every attempt, failed ones too: a hung store's loads (each failing
  // after the command timeout) are what an operator looks for here.
  absl::Cleanup observe = [this, load_start] {
    if (opt_.metrics != nullptr) {
      opt_.metrics->ObserveStateLoad(clock_->Now() - load_start);
    }
  };
  absl::StatusOr<SessionHead> found = store_->GetHead(key);
  if (absl::IsNotFound(found.status())) {
    std::move(observe).Cancel();  // no session, no load
    return found.status();
  }
  SS_ASSIGN_OR_RETURN(SessionHead head, std::move(found));
  if (absl::Status st = CheckHeadModel(head); !st.ok()) {
    std::move(observe).Cancel();
    return st;
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
  std::move(observe).Invoke();
  if (opt_.metrics != nullptr && !head.owner.empty() &&
      head.owner != opt_.owner && head.lease_expires_at > load_start) {
    opt_.metrics->IncLeaseTakeover();
  }
  std::vector<std::shared_ptr<Session>> victims;
  bool draining;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
    if (!draining) {
      s->last_use = ++tick_;
      resident_[mk] = s;
      SweepSoonFor(head.ttl);
      ++stats_.loads;
      victims = PickVictims(s.get());
    }
  }
  if (draining) {
    // The drain began during the load and did not see this session: it is
    // not kept (nothing of it is dirty), and the lease goes back.
    store_->ReleaseLease(key, opt_.owner, lease.fence).IgnoreError();
    return Draining();
  }
  for (auto& v : victims) Evict(v);
  if (did_load != nullptr) *did_load = true;
  return s;
}

absl::Status SessionManager::Impl::CheckHeadModel(
    const SessionHead& head) const {
  if (head.model_fingerprint == fingerprint_) return absl::OkStatus();
  // Every model served here (this one first), as the import's refusal
  // names them: which the caller may pick.
  std::vector<std::string> served = {fingerprint_};
  {
    absl::MutexLock lock(&beside_mu_);
    served.insert(served.end(), beside_.begin(), beside_.end());
  }
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   Reason::kModelMismatch,
                   "the session belongs to a model this worker does not serve",
                   {{"expected_fingerprint", absl::StrJoin(served, ",")},
                    {"actual_fingerprint", head.model_fingerprint}});
}

absl::StatusOr<CommitResult> SessionManager::Impl::WriteOverUnloadableHead(
    const SessionKey& key, std::optional<uint64_t> expected,
    const HeadWrite& write) {
  // With loads held off, nothing makes the session resident meanwhile.
  absl::MutexLock load(&load_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return Draining();
    if (resident_.contains(MapKey(key))) {
      // Loaded since its head failed to (a newer one was written): the
      // call's ordinary path applies; the client retries.
      return MakeError(absl::StatusCode::kUnavailable, Reason::kOverloaded,
                       "the session's head changed meanwhile; retry",
                       {{"retry_after_ms", "0"}});
    }
  }
  SS_ASSIGN_OR_RETURN(SessionHead head, store_->GetHead(key));
  SS_RETURN_IF_ERROR(CheckHeadModel(head));
  SS_RETURN_IF_ERROR(CheckExpectedHead(expected, head.head.version));
  SS_ASSIGN_OR_RETURN(Lease lease,
                      store_->AcquireLease(key, opt_.owner, opt_.lease_ttl,
                                           /*takeover=*/true));
  absl::StatusOr<CommitResult> written = write(head, lease.fence);
  store_->ReleaseLease(key, opt_.owner, lease.fence).IgnoreError();
  return written;
}

absl::StatusOr<SessionView> SessionManager::Impl::AnswerHeadWrite(
    const std::string& tenant, const std::string& session_id,
    const std::string& request_id, uint64_t digest,
    const absl::StatusOr<CommitResult>& written) {
  if (!written.ok()) {
    if (WrittenBelowDurability(written.status())) {
      Remember(tenant, request_id, session_id, digest,
               WrittenVersionOf(written.status()));
    }
    return written.status();
  }
  Remember(tenant, request_id, session_id, digest, written->version.version);
  SessionHead head = written->session;
  head.head = written->version;
  return ViewOfHead(head);
}

absl::Status SessionManager::Impl::LoadInto(Session* s, const LoadedVersion& v,
                                            const SessionHead* head) {
  const StateSnapshot& snap = v.state;
  SS_RETURN_IF_ERROR(
      CheckStateMatchesModel(snap, fingerprint_, model_->info().state_floats));
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
  SS_ASSIGN_OR_RETURN(s->utf8_carry,
                      StateCarry(snap, &s->sampler_state, &s->records,
                                 &s->carry_known, &s->history_base));
  // A rollback's or an import's version restarts the history where it
  // is (the store wrote it from another version's state, or the
  // client's, whose side data cannot say so); later versions carry the
  // base in their side data.
  if (v.version.cause == VersionCause::kRollback ||
      v.version.cause == VersionCause::kImport) {
    s->history_base = std::max(s->history_base, snap.input_offset);
  }
  if (head != nullptr) s->head = *head;
  s->head.head = v.version;
  s->dirty = false;
  s->dirty_durability = Durability::kMemory;
  s->uncommitted_tokens = 0;
  absl::MutexLock lock(&s->mu);
  RefreshView(s);
  return absl::OkStatus();
}

void SessionManager::Impl::RefreshView(Session* s) {
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

SessionView SessionManager::Impl::ViewOfHead(const SessionHead& h) const {
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

std::vector<std::shared_ptr<Session>> SessionManager::Impl::PickVictims(
    const Session* loading) {
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

void SessionManager::Impl::Evict(const std::shared_ptr<Session>& s) {
  {
    absl::MutexLock lock(&s->mu);
    if (s->busy || !s->ops.empty() || s->writer_attached ||
        s->gone != Session::Gone::kNo) {
      return;
    }
    s->busy = true;
  }
  AdoptIfStoreWentBack(s.get());
  if (s->dirty) {
    absl::Status st =
        CommitNow(s.get(), PolicyDurability(s.get()), "", s->dirty_cause);
    // (Written below the durability asked for: stored all the same.)
    if (!st.ok() && GetReason(st) != Reason::kFenced && s->dirty) {
      Release(s);  // keep it: its input would be lost
      return;
    }
  }
  bool wanted = false;
  {
    // A writer may have attached (an Append or a committing Generate
    // opened) or an operation queued while the commit ran, on the session
    // still mapped: keep it for them rather than end their calls "evicted".
    // Marked gone here, under the lock they take, so none attaches after.
    absl::MutexLock lock(&s->mu);
    if (s->gone == Session::Gone::kNo) {
      wanted = s->writer_attached || !s->ops.empty();
      if (!wanted) s->gone = Session::Gone::kEvicted;
    }
  }
  if (wanted) {
    Release(s);
    return;
  }
  DropAndRelease(s.get(), Session::Gone::kEvicted).IgnoreError();
  {
    absl::MutexLock lock(&mu_);
    ++stats_.evictions;
  }
  Release(s);
}

void SessionManager::Impl::AdoptIfStoreWentBack(Session* s) {
  if (s->dirty) return;  // its commit finds out
  auto h = store_->GetHead(s->key);
  if (h.ok()) {
    AdoptOlderHead(s, *h, opt_.default_durability, s->head.head.cause);
  }
}

void SessionManager::Impl::FollowStoreHead(Session* s) {
  auto h = store_->GetHead(s->key);
  if (h.ok() && h->head.version == s->head.head.version) return;
  // A store that went back: keep the copy, to be committed over its head.
  if (h.ok() &&
      AdoptOlderHead(s, *h, opt_.default_durability, s->head.head.cause)) {
    return;
  }
  if (h.ok()) {
    auto v = store_->LoadVersion(s->key, h->head.version);
    if (v.ok() && LoadInto(s, *v, &*h).ok()) {
      // A new history, as after a replacement that answered: an open
      // writer's requests below its offset are no duplicates of it.
      Replaced(s);
      return;
    }
  }
  DropAndRelease(s, Session::Gone::kEvicted).IgnoreError();
}

absl::Status SessionManager::Impl::DropAndRelease(Session* s,
                                                  Session::Gone why) {
  Drop(s, why);
  absl::MutexLock lease_lock(&s->lease_mu);
  return store_->ReleaseLease(s->key, opt_.owner, s->fence);
}

void SessionManager::Impl::RenewLeasesOf(
    const std::vector<std::shared_ptr<Session>>& all) {
  for (size_t at = 0; at < all.size(); at += kRenewBatch) {
    const size_t end = std::min(all.size(), at + kRenewBatch);
    // Only this thread holds several lease_mu at once; it takes them in
    // address order, so no two renewals order them differently (Abseil's
    // deadlock detection would stop the process on the cycle).
    std::vector<Session*> slice;
    for (size_t i = at; i < end; ++i) slice.push_back(all[i].get());
    std::sort(slice.begin(), slice.end(), std::less<Session*>());
    std::vector<Session*> batch;
    std::vector<StateStore::LeaseToRenew> leases;
    for (Session* s : slice) {
      s->lease_mu.Lock();
      bool live;
      {
        absl::MutexLock lock(&s->mu);
        live = s->gone == Session::Gone::kNo;
      }
      if (!live) {
        s->lease_mu.Unlock();
        continue;
      }
      batch.push_back(s);
      leases.push_back({s->key, s->fence});
    }
    std::vector<absl::StatusOr<Lease>> r =
        store_->RenewLeases(opt_.owner, leases, opt_.lease_ttl);
    for (Session* s : batch) s->lease_mu.Unlock();
    // A store that answered none of them (down): the rest of the round
    // would wait as long for nothing; the next round tries again.
    const bool down =
        !r.empty() && std::all_of(r.begin(), r.end(), [](const auto& x) {
          return x.status().code() == absl::StatusCode::kUnavailable;
        });
    // Any other failure keeps the copy (a lease that lapsed with nobody
    // taking over still lets this owner commit), counted for operators: a
    // store refusing renewals for a TTL lets other workers take over.
    int64_t failed = batch.size() > r.size() ? batch.size() - r.size() : 0;
    for (size_t k = 0; k < batch.size() && k < r.size(); ++k) {
      const absl::Status& st = r[k].status();
      if (GetReason(st) == Reason::kFenced ||
          st.code() == absl::StatusCode::kNotFound) {
        Drop(batch[k], st.code() == absl::StatusCode::kNotFound
                           ? Session::Gone::kDeleted
                           : Session::Gone::kFenced);
      } else if (!st.ok()) {
        ++failed;
      }
    }
    // A store down for this batch is not asked for the rest of the round:
    // their leases are not renewed either.
    if (down) failed += static_cast<int64_t>(all.size() - end);
    if (failed > 0 && opt_.metrics != nullptr) {
      opt_.metrics->AddLeaseRenewalFailures(failed);
    }
    if (down) return;
  }
}

void SessionManager::Impl::Drop(Session* s, Session::Gone why) {
  // The first reason stands: an eviction whose commit was fenced stays
  // fenced (its queued operations are told ABORTED/FENCED, not "evicted;
  // retry"), and a takeover seen by both a renewal and a commit, or by a
  // renewal of a copy evicted meanwhile, is counted once or not at all.
  bool first = false;
  {
    absl::MutexLock lock(&s->mu);
    first = s->gone == Session::Gone::kNo;
    if (first) s->gone = why;
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = resident_.find(MapKey(s->key));
    if (it != resident_.end() && it->second.get() == s) resident_.erase(it);
    if (first && why == Session::Gone::kFenced) {
      ++stats_.fenced;
      if (opt_.metrics != nullptr) opt_.metrics->IncFencedCommit();
    }
  }
  // The attached writer's call ends now, with why, instead of at its next
  // request (a committing generation would run to its end first).
  if (first) EndWriter(s, GoneError(s));
}

void SessionManager::Impl::EndWriter(Session* s, absl::Status why,
                                     bool current_only) {
  std::function<void(const absl::Status&)> superseded;
  {
    absl::MutexLock lock(&s->mu);
    superseded = std::move(s->superseded);
    s->superseded = nullptr;
    s->BarIngest(current_only ? s->writer_gen : ~uint64_t{0}, why);
  }
  if (superseded) {
    pool_.Post([superseded = std::move(superseded), why = std::move(why)] {
      superseded(why);
    });
  }
}

absl::Status SessionManager::Impl::GoneError(Session* s) {
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

void SessionManager::Impl::RunOp(const std::shared_ptr<Session>& s,
                                 std::function<void()> op) {
  bool start = false;
  {
    absl::MutexLock lock(&s->mu);
    s->ops.push_back(std::move(op));
    if (!s->busy) start = s->busy = true;
  }
  if (start) pool_.Post([this, s] { RunNext(s); });
}

void SessionManager::Impl::RunNext(const std::shared_ptr<Session>& s) {
  std::function<void()> op;
  {
    absl::MutexLock lock(&s->mu);
    op = std::move(s->ops.front());
    s->ops.pop_front();
  }
  op();
}

void SessionManager::Impl::Release(const std::shared_ptr<Session>& s) {
  bool more = false;
  {
    absl::MutexLock lock(&s->mu);
    more = !s->ops.empty();
    if (!more) s->busy = false;
  }
  if (more) pool_.Post([this, s] { RunNext(s); });
}

void SessionManager::Impl::RenewLoop() {
  const absl::Duration renew_every = opt_.lease_ttl / 3;
  // The sweep for input due by policy runs at least this often, and
  // sooner when a session's input falls due before (a short TTL).
  const bool by_interval = opt_.checkpoint_interval > absl::ZeroDuration() &&
                           opt_.checkpoint_interval < absl::InfiniteDuration();
  const absl::Duration every =
      by_interval ? std::min(renew_every, std::max(opt_.checkpoint_interval / 2,
                                                   absl::Milliseconds(50)))
                  : renew_every;
  // Renewals are scheduled on the steady clock, and the loop waits on it:
  // a wall clock stepped back must not hold them (the leases would lapse
  // and other workers take the sessions over).
  absl::Time next_renewal = SteadyNow() + renew_every;
  absl::Duration wait = every;
  // Renewals run at the last tick before next_renewal, never after it.
  auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || renew_now_ || sweep_now_;
  };
  for (;;) {
    std::vector<std::shared_ptr<Session>> all;
    bool now = false;
    {
      absl::MutexLock lock(&mu_);
      sweep_at_ = clock_->Now() + wait;
      renew_wake_.Await(&mu_, woken, wait);
      if (stop_) return;
      now = renew_now_;
      renew_now_ = sweep_now_ = false;
      for (auto& [k, s] : resident_) all.push_back(s);
    }
    wait = every;
    // A renewal asked for at once sweeps too: skipped, the next sweep came
    // a whole period on, past a short TTL's due input.
    absl::Time next_due = absl::InfiniteFuture();
    for (auto& s : all) next_due = std::min(next_due, CommitIfWaited(s));
    if (next_due != absl::InfiniteFuture()) {
      wait =
          std::clamp(next_due - clock_->Now(), absl::Milliseconds(10), every);
    }
    if (!now && SteadyNow() + wait <= next_renewal) continue;
    next_renewal = SteadyNow() + renew_every;
    RenewLeasesOf(all);
  }
}

absl::Time SessionManager::Impl::CommitIfWaited(
    const std::shared_ptr<Session>& s) {
  {
    absl::MutexLock lock(&mu_);
    if (draining_ || stop_) return absl::InfiniteFuture();
  }
  // Input may come any moment and be due half a TTL after the last
  // write: with a short TTL, the sweep looks again a quarter on (so also
  // after a commit queued now, or a busy session's).
  absl::Time look_again = absl::InfiniteFuture();
  {
    absl::MutexLock lock(&s->mu);
    if (s->gone != Session::Gone::kNo) return absl::InfiniteFuture();
    if (Expires(s->view.ttl)) look_again = clock_->Now() + s->view.ttl / 4;
    const absl::Time due = CommitDue(s.get(), s->dirty_hint);
    if (due == absl::InfiniteFuture()) return look_again;  // nothing waits
    if (clock_->Now() < due) return due;
    // A busy session's operation checks the policy as it ends.
    if (s->busy || !s->ops.empty()) return look_again;
  }
  RunOp(s, [this, s] {
    bool due = false;
    if (GoneError(s.get()).ok() && s->dirty) {
      absl::MutexLock lock(&s->mu);
      due = clock_->Now() >= CommitDue(s.get(), s->dirty_since);
    }
    if (due) {
      // A failure leaves it dirty: the next sweep or request tries again.
      CommitNow(s.get(), PolicyDurability(s.get()), "", s->dirty_cause)
          .IgnoreError();
    }
    Release(s);
  });
  return look_again;
}

}  // namespace statestream::worker
