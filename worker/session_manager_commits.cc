// SPDX-License-Identifier: Apache-2.0
// SessionManager: commits and checkpoints of the live state, and the
// writers' Append pipeline.
#include <algorithm>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/throttled_log.h"
#include "common/utf8.h"
#include "worker/metrics.h"
#include "worker/session_manager_internal.h"

namespace statestream::worker {
namespace {

// What an Append request changes in a session besides its live state: kept
// to undo the request when the commit due with it fails.
struct Unapplied {
  uint64_t input_offset;
  std::string tail;
  std::string utf8_carry;
  bool carry_known;
  bool dirty;
  absl::Time dirty_since;
  VersionCause dirty_cause;
  Durability dirty_durability;
  int64_t uncommitted_tokens;
  std::deque<GenerationRecord> records;

  static Unapplied Of(const Session& s) {
    return {s.input_offset,
            s.tail,
            s.utf8_carry,
            s.carry_known,
            s.dirty,
            s.dirty_since,
            s.dirty_cause,
            s.dirty_durability,
            s.uncommitted_tokens,
            s.records};
  }
  // `live`: the state before the request's tokens (null: it had none).
  void Restore(Session* s, std::shared_ptr<EngineState> live) {
    if (live != nullptr) s->live = std::move(*live);
    s->input_offset = input_offset;
    s->tail = std::move(tail);
    s->utf8_carry = std::move(utf8_carry);
    s->carry_known = carry_known;
    s->dirty = dirty;
    s->dirty_since = dirty_since;
    s->dirty_cause = dirty_cause;
    s->dirty_durability = dirty_durability;
    s->uncommitted_tokens = uncommitted_tokens;
    s->records = std::move(records);
  }
};

}  // namespace

StateSnapshot SessionManager::Impl::Snapshot(const Session* s) const {
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
  // The carry's bytes only when the tail cannot give them back; either
  // way that it is known, so the reader is as strict as this worker
  // (LoadInto).
  Utf8Carry carry;
  if (s->utf8_carry != TailCarry(s->tail)) {
    carry = {s->utf8_carry, s->input_offset, true};
  } else if (s->carry_known && s->input_offset > 0) {
    carry = {"", s->input_offset, true};
  }
  snap.sampler_state = EncodeSamplerSideData(s->sampler_state, s->records,
                                             carry, s->history_base);
  snap.state.assign(s->live.state.begin(), s->live.state.end());
  if (s->live.position > 0 && s->live.position != s->no_hidden_at) {
    snap.last_hidden = s->live.last_hidden;
  }
  return snap;
}

absl::Status SessionManager::Impl::Checkpoint(Session* s, Durability d,
                                              const std::string& request_id) {
  // The uncommitted input's commit reaches the highest level its requests
  // asked for, whatever this one asks: a writer drops what a commit covers.
  if (s->dirty) {
    return CommitNow(s, std::max(d, s->dirty_durability), request_id,
                     s->dirty_cause);
  }
  return RaiseHeadDurability(s, d);
}

absl::Status SessionManager::Impl::RaiseHeadDurability(Session* s,
                                                       Durability d) {
  if (s->head.head.durability >= d) return absl::OkStatus();
  auto v = store_->AwaitDurability(s->key, s->head.head.version, d);
  if (GetReason(v.status()) == Reason::kVersionMismatch) {
    // Our head is not in the store: if it went back, write this copy
    // again on top of what it kept.
    auto h = store_->GetHead(s->key);
    if (h.ok() && AdoptOlderHead(s, *h, d, s->head.head.cause)) {
      // As in CommitNow: at least the level the resident input asked.
      return CommitNow(s, std::max(d, s->dirty_durability),
                       /*request_id=*/"", s->dirty_cause, /*retry=*/false);
    }
  }
  const std::optional<Durability> reached =
      v.ok() ? v->durability : DurabilityReachedOf(v.status());
  if (reached && *reached > s->head.head.durability) {
    s->head.head.durability = *reached;
    absl::MutexLock lock(&s->mu);
    RefreshView(s);
  }
  return v.status();
}

absl::StatusOr<Durability> SessionManager::Impl::CreatedDurability(
    const SessionKey& key, uint64_t version, Durability now, Durability d) {
  if (version != 1 || now >= d) return now;
  SS_ASSIGN_OR_RETURN(VersionInfo v, store_->AwaitDurability(key, 1, d));
  return v.durability;
}

absl::Status SessionManager::Impl::CommitNow(Session* s, Durability d,
                                             const std::string& request_id,
                                             VersionCause cause, bool retry) {
  CommitRequest r;
  r.key = s->key;
  r.expected_version = s->head.head.version;
  r.fence = s->fence;
  r.state = Snapshot(s);
  r.durability = d;
  r.cause = cause;
  r.request_id = request_id;
  const absl::Time start = clock_->Now();
  auto res = store_->Commit(r);
  if (opt_.metrics != nullptr) {
    opt_.metrics->ObserveCommit(clock_->Now() - start);
  }
  if (!res.ok()) {
    if (GetReason(res.status()) == Reason::kFenced) {
      Drop(s, Session::Gone::kFenced);
    } else if (GetReason(res.status()) == Reason::kSessionNotFound) {
      // Deleted meanwhile (through another worker, or expired): the copy
      // must not answer for a session of the same id created since.
      Drop(s, Session::Gone::kDeleted);
    } else if (auto h = store_->GetHead(s->key); h.ok()) {
      // A newer head committed under this session's own fence is a commit
      // of ours whose answer never came (written below the durability
      // asked for, or its reply lost — Redis restarted mid-commit, past
      // the retry deadline): nobody else can write with our fence, and it
      // is an earlier snapshot of this same input. Go on from it; with
      // nothing applied since, it is this commit.
      if (h->head.version > s->head.head.version && h->head.fence == s->fence &&
          h->head.input_offset <= s->input_offset) {
        const bool same = h->head.input_offset == s->input_offset &&
                          h->head.position == s->live.position;
        s->head = *h;
        if (same) {
          s->dirty = false;
          s->dirty_durability = Durability::kMemory;
          s->uncommitted_tokens = 0;
          absl::MutexLock lock(&s->mu);
          RefreshView(s);
        } else if (retry &&
                   GetReason(res.status()) == Reason::kVersionMismatch) {
          return CommitNow(s, d, request_id, cause, /*retry=*/false);
        }
        if (same && GetReason(res.status()) == Reason::kVersionMismatch) {
          if (h->head.durability >= d) return absl::OkStatus();
          return DurabilityNotReached(h->head.version, d, h->head.durability);
        }
      } else if (retry && GetReason(res.status()) == Reason::kVersionMismatch &&
                 AdoptOlderHead(s, *h, d, cause)) {
        // At the level clients were told of the lost head (AdoptOlderHead
        // raised dirty_durability to it), not only this request's.
        return CommitNow(s, std::max(d, s->dirty_durability), request_id, cause,
                         /*retry=*/false);
      }
    }
    return res.status();
  }
  s->head = res->session;
  s->dirty = false;
  s->dirty_durability = Durability::kMemory;
  s->uncommitted_tokens = 0;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.commits;
  }
  absl::MutexLock lock(&s->mu);
  RefreshView(s);
  return absl::OkStatus();
}

bool SessionManager::Impl::AdoptOlderHead(Session* s, const SessionHead& h,
                                          Durability d, VersionCause cause) {
  if (h.fence != s->fence || h.head.version >= s->head.head.version) {
    return false;
  }
  // Under the session's lock: queued, never waiting on stderr.
  WriteLogLine(absl::StrCat(
      "session ", s->key.tenant, "/", s->key.session_id,
      ": the store's head is version ", h.head.version,
      ", below this worker's ", s->head.head.version,
      " under its lease (the store lost writes); the resident state is "
      "committed over it"));
  if (!s->dirty) {
    s->dirty_since = clock_->Now();
    s->dirty_cause = cause;
  }
  s->dirty = true;
  // At least as durable as what clients were told of the lost head.
  s->dirty_durability =
      std::max({s->dirty_durability, d, s->head.head.durability});
  s->head = h;
  absl::MutexLock lock(&s->mu);
  RefreshView(s);
  return true;
}

absl::Status SessionManager::Impl::JudgeCopy(
    Session* s, const absl::StatusOr<Lease>& lease) {
  if (absl::IsNotFound(lease.status())) {
    Drop(s, Session::Gone::kDeleted);
    return GoneError(s);
  }
  if (!lease.ok() || lease->fence == s->fence) return absl::OkStatus();
  Drop(s, Session::Gone::kFenced);
  return GoneError(s);
}

absl::Status SessionManager::Impl::StillOurs(Session* s) {
  return JudgeCopy(s, store_->GetOwner(s->key));
}

absl::Status SessionManager::Impl::CheckCopy(Session* s) {
  if (copy_checks_.fetch_add(1) >= kMaxCopyChecks) {
    // The store is slow to answer the ones in flight: it would be too.
    copy_checks_.fetch_sub(1);
    return absl::OkStatus();
  }
  struct Check {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    // Its reader stopped waiting: a read not yet sent is not sent (a hung
    // store would otherwise work through every abandoned one, and new
    // checks would queue behind them, and a shutdown run them all).
    bool abandoned ABSL_GUARDED_BY(mu) = false;
    absl::StatusOr<Lease> lease ABSL_GUARDED_BY(mu);
    SteadyWaiter answered;  // told when done is set
  };
  auto check = std::make_shared<Check>();
  checkers_.Post([this, check, key = s->key] {
    bool skip = checks_stopped_.load();
    if (!skip) {
      absl::MutexLock lock(&check->mu);
      skip = check->abandoned;
    }
    absl::StatusOr<Lease> lease =
        skip ? absl::StatusOr<Lease>(absl::CancelledError())
             : store_->GetOwner(key);
    copy_checks_.fetch_sub(1);
    {
      absl::MutexLock lock(&check->mu);
      check->lease = std::move(lease);
      check->done = true;
    }
    check->answered.Notify();
  });
  absl::StatusOr<Lease> lease;
  {
    absl::MutexLock lock(&check->mu);
    // On the steady clock: a wall clock stepped back must not hold the
    // call for as long.
    if (!check->answered.Await(
            &check->mu,
            [&check]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(check->mu) {
              return check->done;
            },
            opt_.copy_check_wait)) {
      check->abandoned = true;
      return absl::OkStatus();
    }
    lease = std::move(check->lease);
  }
  return JudgeCopy(s, lease);
}

absl::Status SessionManager::Impl::CheckExpectedVersion(
    Session* s, std::optional<uint64_t> expected) {
  absl::Status mismatch = CheckExpectedHead(expected, s->head.head.version);
  if (mismatch.ok()) return mismatch;
  SS_RETURN_IF_ERROR(StillOurs(s));
  return mismatch;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Impl::CurrentResident(
    const SessionKey& key) {
  bool loaded = false;
  SS_ASSIGN_OR_RETURN(std::shared_ptr<Session> s,
                      Resident(key, /*may_load=*/true, &loaded));
  if (!loaded) SS_RETURN_IF_ERROR(CheckCopy(s.get()));
  return s;
}

AppendAck SessionManager::Impl::Ack(Session* s, const std::string& request_id) {
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

absl::Status SessionManager::Impl::PositionMismatch(Session* s,
                                                    uint64_t expected) {
  return MakeError(
      absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
      absl::StrCat("expected_input_offset ", expected,
                   " is not the session's input_offset ", s->input_offset),
      {{"expected_input_offset", absl::StrCat(expected)},
       {"actual_input_offset", absl::StrCat(s->input_offset)},
       {"actual_position", absl::StrCat(s->live.position)},
       {"committed_input_offset", absl::StrCat(s->head.head.input_offset)}});
}

absl::Status SessionManager::Impl::CommitGeneration(
    Session* s, EngineState state, const engine::SamplerState& sampler,
    uint64_t input_offset, GenerationRecord rec, Durability d, bool final) {
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
  const uint64_t version_before = s->head.head.version;
  // With the input before it, at the level that input asked for too.
  absl::Status cs = CommitNow(s, std::max(d, s->dirty_durability), request_id,
                              VersionCause::kGenerate);
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
    } else if (!final || s->head.head.version < version_before) {
      // (A final commit's copy is kept too when it adopted an older head
      // of a store that went back: it alone holds what the store lost.)
      if (!s->dirty) s->dirty_since = clock_->Now();
      s->dirty = true;
      s->dirty_cause = VersionCause::kGenerate;
      absl::MutexLock lock(&s->mu);
      RefreshView(s);
    } else if (GoneError(s).ok()) {
      DropAndRelease(s, Session::Gone::kEvicted).IgnoreError();
    }
  }
  return cs;
}

void SessionManager::Impl::RunCheckpoints(
    const std::shared_ptr<GenerationCheckpoints>& cps,
    const std::shared_ptr<Session>& s, uint64_t gen, uint64_t base_offset,
    uint32_t input_tokens, const GenerationRecord& tmpl, Durability d,
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

void SessionManager::Impl::AppendOp(
    std::shared_ptr<Writer> w, AppendInput in,
    std::function<void(absl::StatusOr<AppendAck>)> done) {
  const std::shared_ptr<Session>& s = w->session;
  auto fail = [&](absl::Status st) {
    Release(s);
    done(std::move(st));
  };
  if (absl::Status g = GoneError(s.get()); !g.ok()) return fail(g);
  absl::Status ended;  // nothing of an ended writer's request applies
  bool replaced;
  {
    absl::MutexLock lock(&s->mu);
    ended = s->WriterEnded(w->gen);
    replaced = s->replaced != w->replaced;
  }
  if (!ended.ok()) return fail(ended);
  const uint64_t units =
      in.kind == AppendInput::Kind::kText ? in.text.size() : in.tokens.size();
  const uint64_t at = s->input_offset;
  if (in.expected_input_offset != at) {
    // A resend, or input for a new session of the same id sent to a copy
    // that outlived the old one (deleted, or taken over, since our last
    // lease renewal): acknowledged as a duplicate it would be lost, and
    // refused its offset would be told the old session's. The store tells
    // them apart, once a call.
    if (!w->lease_checked) {
      w->lease_checked = true;
      if (absl::Status st = StillOurs(s.get()); !st.ok()) return fail(st);
    }
    if (!replaced && in.expected_input_offset >= s->history_base &&
        in.expected_input_offset + units <= at &&
        in.expected_input_offset <= at) {
      AppendAck ack = Ack(s.get(), in.request_id);
      ack.duplicate = true;
      const bool uncovered = s->dirty && s->head.head.input_offset <
                                             in.expected_input_offset + units;
      if (in.checkpoint) {
        absl::Status st =
            uncovered ? Checkpoint(s.get(), Dur(in.durability), in.request_id)
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
    const size_t complete = Utf8CompletePrefixLength(joined);
    const size_t bad =
        FirstInvalidUtf8Byte(absl::string_view(joined).substr(0, complete));
    if (bad != complete) {
      // The input offset of the first invalid byte: the carry is the tail
      // of earlier input, this request's text starts at `at`.
      const uint64_t carried = std::min<uint64_t>(carry.size(), at);
      const uint64_t bad_at =
          bad < carry.size() ? at - carried + std::min<uint64_t>(bad, carried)
                             : at + skip + (bad - carry.size());
      // Said plainly when the session's text ends inside a character
      // this text does not continue: every text but its rest is refused.
      return fail(Invalid(
          Reason::kInvalidUtf8,
          !carry.empty() && bad < carry.size()
              ? absl::StrCat(
                    "text_utf8 does not continue the incomplete UTF-8 "
                    "character the session's text ends with (",
                    carry.size(), " bytes from input_offset ", at - carried,
                    "): send the rest of that character first, or roll "
                    "the session back")
              : std::string("text_utf8 is not valid UTF-8"),
          {{"input_offset", absl::StrCat(bad_at)}, {"field", "text_utf8"}}));
    }
    carry = joined.substr(complete);
  }
  if (flush && !carry.empty()) {
    // The open character's first byte: the carry ends where the request's
    // text does (a token request adds no text).
    const uint64_t text_end =
        in.kind == AppendInput::Kind::kText ? at + units : at;
    return fail(Invalid(
        Reason::kInvalidUtf8, "text ends inside a UTF-8 character at a flush",
        {{"input_offset",
          absl::StrCat(text_end - std::min<uint64_t>(carry.size(), text_end))},
         {"field", "text_utf8"}}));
  }
  KeepForWrite(s.get());
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
    tokens.insert(tokens.end(), in.tokens.begin(), in.tokens.end());
  }
  // `before_live`: the state before the request's tokens (null when it
  // consumed none), to go back to if its commit surely did not happen.
  auto finish = [this, s, w, in, units, carry, new_tail, done](
                    uint32_t consumed,
                    std::shared_ptr<EngineState> before_live) {
    // With a commit due (asked for, or the policy's), what the request
    // changes is kept, so that a commit that fails leaves nothing of the
    // request applied (a request is applied atomically: payload, flush,
    // checkpoint) where the store shows it did not happen.
    const absl::Time now = clock_->Now();
    const bool changes = units > 0 || consumed > 0;
    // The policy's commit: after checkpoint_tokens or checkpoint_interval
    // of uncommitted input (sooner with a short TTL: CommitDue), this
    // request's included.
    bool due;
    {
      absl::MutexLock lock(&s->mu);
      due = now >= CommitDue(s.get(), s->dirty ? s->dirty_since : now);
    }
    const bool policy =
        (s->dirty || changes) &&
        (s->uncommitted_tokens + consumed >= opt_.checkpoint_tokens || due);
    std::optional<Unapplied> before;
    if (in.checkpoint || policy) before = Unapplied::Of(*s);
    s->input_offset += units;
    s->tail = new_tail;
    s->utf8_carry = carry;
    if (units > 0) s->carry_known = true;
    if (changes) {
      if (!s->dirty) s->dirty_since = now;
      s->dirty = true;
      s->dirty_cause = VersionCause::kAppend;
      s->dirty_durability = std::max(s->dirty_durability, Dur(in.durability));
      // A checkpointed generation cannot be continued past new input.
      DropInProgressRecords(&s->records);
    }
    s->uncommitted_tokens += consumed;
    {
      absl::MutexLock lock(&s->mu);
      RefreshView(s.get());
    }
    if (before) {
      // A checkpoint by policy is no request's. At the level this input's
      // requests asked for (Checkpoint: the earlier ones' too).
      const uint64_t version_before = s->head.head.version;
      absl::Status st = Checkpoint(s.get(), Dur(in.durability),
                                   in.checkpoint ? in.request_id : "");
      if (!st.ok()) {
        // Surely not written only while the store still has the head this
        // session knew (as a failed generation's commit): then back to
        // before the request. Else (the store unreadable: its outcome
        // unknown) the request stays applied, uncommitted, and a resend
        // is a duplicate; the next commit adopts or writes it.
        if (GoneError(s.get()).ok() && s->dirty &&
            s->head.head.version == version_before) {
          auto h = store_->GetHead(s->key);
          if (h.ok() && h->head.version == version_before) {
            before->Restore(s.get(), std::move(before_live));
            absl::MutexLock lock(&s->mu);
            RefreshView(s.get());
          }
        }
        Release(s);
        return done(st);
      }
    }
    AppendAck ack = Ack(s.get(), in.request_id);
    ack.tokens_consumed = consumed;
    Release(s);
    done(ack);
  };
  if (tokens.empty()) return finish(0, nullptr);
  auto work = std::make_shared<EngineState>(s->live);
  const uint32_t n = static_cast<uint32_t>(tokens.size());
  auto task = std::make_shared<IngestTask>(
      work.get(), std::move(tokens),
      [this, s, w, work, n, finish, done](const absl::Status& st) {
        pool_.Post([this, s, w, work, n, st, finish, done] {
          if (!st.ok()) {
            // Why, before the strand moves on (to a delete's Drop).
            const absl::Status why =
                absl::IsCancelled(st) ? WhyCancelled(s.get(), w->gen) : st;
            Release(s);
            return done(why);
          }
          std::swap(s->live, *work);  // `work`: the state before
          finish(n, work);
        });
      });
  absl::Status refused;
  {
    absl::MutexLock lock(&s->mu);
    // Ended since the checks above (superseded, abandoned, a delete or the
    // drain): not run for nobody.
    refused = s->WriterEnded(w->gen);
    if (refused.ok()) s->ingest = task;
  }
  if (!refused.ok()) return fail(refused);
  if (absl::Status st = sched_->Submit(task); !st.ok()) return fail(st);
  if (opt_.metrics != nullptr) opt_.metrics->AddTokensIn(n);
}

absl::Status SessionManager::Impl::WhyCancelled(Session* s, uint64_t gen) {
  {
    absl::MutexLock lock(&s->mu);
    if (absl::Status barred = s->BarredWhy(gen); !barred.ok()) return barred;
  }
  if (absl::Status gone = GoneError(s); !gone.ok()) return gone;
  SS_RETURN_IF_ERROR(Admitting());
  if (!IsCurrent(s, gen)) return Busy();
  return absl::CancelledError("the call went away");
}

absl::Status SessionManager::CheckAppend(const AppendInput& in) const {
  if (in.kind == AppendInput::Kind::kText && in.text.size() > kMaxTextBytes) {
    return TooLarge("text_utf8", kMaxTextBytes);
  }
  if (in.kind != AppendInput::Kind::kTokens) return absl::OkStatus();
  if (in.tokens.size() > kMaxAppendTokens) {
    return TooLarge("tokens.ids", kMaxAppendTokens);
  }
  return CheckTokens(in.tokens, impl_->vocab_, "tokens.ids");
}

absl::StatusOr<std::shared_ptr<SessionManager::Writer>>
SessionManager::OpenWriter(const std::string& tenant,
                           const std::string& session_id,
                           std::function<void(const absl::Status&)> superseded,
                           bool may_load,
                           const std::function<bool()>& cancelled) {
  Impl& m = *impl_;
  for (;;) {
    SS_ASSIGN_OR_RETURN(std::shared_ptr<Session> s,
                        m.Resident({tenant, session_id}, may_load));
    if (s == nullptr) return nullptr;  // not resident, and not to be loaded
    // A call that went away while the session loaded must not end the
    // live writer (its own reconnect's, maybe) for nobody.
    if (cancelled && cancelled()) {
      return absl::CancelledError(
          "the call went away while its session loaded");
    }
    std::function<void(const absl::Status&)> old;
    auto w = std::make_shared<Writer>();
    {
      absl::MutexLock lock(&s->mu);
      // Gone sessions are already unmapped: the next Resident() reloads.
      if (s->gone != Session::Gone::kNo) continue;
      old = std::move(s->superseded);
      s->superseded = std::move(superseded);
      w->gen = ++s->writer_gen;
      w->replaced = s->replaced;
      s->writer_attached = true;
      s->CancelIngest();  // the old writer's: its call ends
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
  if (absl::Status st = CheckAppend(in); !st.ok()) {
    m.pool_.Post([done, st] { done(st); });
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
    s->CancelIngest();
  }
}

void SessionManager::Impl::KeepForWrite(Session* s) {
  {
    absl::MutexLock lock(&s->mu);
    if (!Expires(s->view.ttl) ||
        clock_->Now() < s->view.update_time + s->view.ttl / 2) {
      return;
    }
  }
  // Unfenced: on a copy taken over (or a session made again under its id)
  // it refreshes the store's session, harmlessly; the copy's commit is
  // refused all the same.
  absl::StatusOr<SessionHead> h = store_->UpdateSession(s->key, {});
  if (!h.ok() || h->fence > s->fence) return;  // the commit will tell
  s->head.updated_at = h->updated_at;
  absl::MutexLock lock(&s->mu);
  s->view.update_time = h->updated_at;
}

}  // namespace statestream::worker
