// SPDX-License-Identifier: Apache-2.0
// SessionManager: Generate (with its replay of recorded generations and
// periodic checkpoints) and Score.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/session_ids.h"
#include "common/utf8.h"
#include "worker/metrics.h"
#include "worker/session_manager_internal.h"

namespace statestream::worker {

namespace {

// Generate and Score flush the pending text first; they cannot while its
// last character is open. `input_offset`: the session's; `open`: the bytes
// of that character it holds. The error's input_offset is the character's
// first byte, as an Append's flush reports it.
absl::Status OpenCharacterError(uint64_t input_offset, size_t open) {
  return Invalid(
      Reason::kInvalidUtf8,
      "the session's pending text ends inside a UTF-8 character",
      {{"input_offset",
        absl::StrCat(input_offset - std::min<uint64_t>(open, input_offset))},
       {"field", "text_utf8"}});
}

}  // namespace

static_assert(static_cast<uint8_t>(GenerateOutcome::Finish::kCancelled) ==
                  kLastFinish,
              "a record's finish is a GenerateOutcome::Finish");

absl::StatusOr<GenerateOutcome> SessionManager::Impl::ReplayFinished(
    Session* s, const GenerationRecord& rec, Durability d,
    const std::function<void(const GeneratedPiece&)>& emit) {
  // Answered committed only with nothing of the session left uncommitted:
  // a final commit that adopted an older head (the store lost writes) and
  // then failed keeps the generation's state, its record included, as
  // uncommitted input; the head alone would not hold the output.
  // That commit carries this request's id only if what it commits is this
  // generation's (its final commit's copy); input appended since is a
  // policy commit's, as a sweep would make it.
  const bool own = s->dirty && s->dirty_cause == VersionCause::kGenerate &&
                   !s->records.empty() &&
                   s->records.back().request_id == rec.request_id;
  SS_RETURN_IF_ERROR(Checkpoint(s, d, own ? rec.request_id : ""));
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

SessionManager::Impl::GenerateChecks SessionManager::Impl::CheckGenerate(
    Session* s, const GenerateInput& in) {
  GenerateChecks c;
  if (in.commit) {
    c.record = FindGenerationRecord(s->records, in.request_id,
                                    opt_.request_id_window, clock_->Now());
  }
  if (c.record != nullptr && c.record->digest != in.content_digest) {
    c.refused = DuplicateRequest(in.request_id);
  } else if (c.record != nullptr && c.record->finish != kGenerationInProgress) {
    // Replayed as it was.
  } else if (c.record == nullptr && in.expected_input_offset &&
             *in.expected_input_offset != s->input_offset) {
    c.refused = PositionMismatch(s, *in.expected_input_offset);
  } else if (c.record == nullptr) {
    // What the session's state refuses. The prompt is empty exactly when
    // there is no pending text to flush and the request brings none: the
    // tokenizer gives a non-empty flush or valid text at least one token.
    const bool no_prompt =
        s->tail.empty() &&
        (in.prompt_kind == GenerateInput::Prompt::kText
             ? in.prompt_text.empty()
             : in.prompt_kind != GenerateInput::Prompt::kTokens ||
                   in.prompt_tokens.empty());
    if (!s->utf8_carry.empty()) {
      c.refused = OpenCharacterError(s->input_offset, s->utf8_carry.size());
    } else if (s->live.position == 0 && no_prompt) {
      c.refused = MakeError(absl::StatusCode::kFailedPrecondition,
                            Reason::kInvalidArgument,
                            "nothing consumed yet to generate from: send a "
                            "prompt",
                            {{"field", "prompt"}});
    } else if (s->live.position == s->no_hidden_at && no_prompt) {
      c.refused = NoHidden("prompt");
    }
  }
  return c;
}

absl::Status SessionManager::Impl::CheckRequest(const GenerateInput& in) const {
  if (MaxTokens(in) > opt_.max_generate_tokens) {
    return TooLarge("max_tokens", opt_.max_generate_tokens);
  }
  SS_RETURN_IF_ERROR(engine::Validate(in.sampling, vocab_));
  if (in.prompt_kind == GenerateInput::Prompt::kText) {
    if (in.prompt_text.size() > kMaxTextBytes) {
      return TooLarge("prompt_text_utf8", kMaxTextBytes);
    }
    if (const size_t bad = FirstInvalidUtf8Byte(in.prompt_text);
        bad != in.prompt_text.size()) {
      return Invalid(
          Reason::kInvalidUtf8, "prompt_text_utf8 is not valid UTF-8",
          {{"field", "prompt_text_utf8"}, {"byte_offset", absl::StrCat(bad)}});
    }
  } else if (in.prompt_kind == GenerateInput::Prompt::kTokens) {
    if (in.prompt_tokens.size() > kMaxAppendTokens) {
      return TooLarge("prompt_tokens.ids", kMaxAppendTokens);
    }
    return CheckTokens(in.prompt_tokens, vocab_, "prompt_tokens.ids");
  }
  return absl::OkStatus();
}

GenerateOutcome SessionManager::Impl::Replay(
    const GenerationRecord& rec,
    const std::function<void(const GeneratedPiece&)>& emit,
    std::string* text_out, size_t* emitted_out) {
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
    const size_t complete = Utf8CompletePrefixLength(pending);
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
    if (absl::Status st = m.CheckRequest(in); !st.ok()) return done(st);
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
      auto r = m.CurrentResident({tenant, session_id});
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
        // (The prompt itself was checked before the strand, CheckRequest;
        // what the session's state refuses by CheckGenerate.)
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
        if (!in.has_seed) {
          uint64_t h = kFnvBasis;
          h = Fnv1a(h, s->key.session_id);
          h = Fnv1a(h, absl::StrCat("/", s->input_offset, "/"));
          h = Fnv1a(h, in.request_id);
          spec.params.seed = h;
        }
        input_tokens = static_cast<uint32_t>(prompt.size());
        spec.prompt = std::move(prompt);
      }
      // What the engine consumes for this call (a resumed generation's
      // prompt ran before).
      const uint32_t prompt_tokens = resume ? 0 : input_tokens;
      spec.max_tokens = max_tokens;
      spec.stop_strings = in.stop_strings;
      spec.logprobs = in.logprobs;
      spec.top_logprobs = in.top_logprobs;
      spec.clock = m.clock_;
      // Generation time: from the turn, not the arrival (a call queued
      // behind a committing generation would otherwise sample one token).
      if (in.max_duration) spec.stop_at = m.clock_->Now() + *in.max_duration;
      // Only a drain stops a task mid-prompt: retry on another worker
      // (nothing was committed: checkpoints come after the prompt).
      spec.stopped_in_prompt = Draining();
      if (in.commit) m.KeepForWrite(s.get());
      absl::StatusOr<std::shared_ptr<EngineState>> copy =
          m.WorkingCopy(&s->live);
      if (!copy.ok()) return fail(copy.status());
      std::shared_ptr<EngineState> work = *std::move(copy);
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
          PendingCheckpoint p{std::move(cp), *out_tokens, nullptr};
          {
            absl::MutexLock lock(&cps->mu);
            if (cps->over) return;
            // The state's copy (one in flight, one waiting) is held
            // against --max-copy-bytes like the working copy: a newer one
            // takes the place, and the bytes, of one still waiting; else
            // it needs room, or is skipped (the next checkpoint, or the
            // final commit, covers its tokens).
            if (cps->running && cps->waiting.has_value()) {
              p.hold = std::move(cps->waiting->hold);
            } else {
              absl::StatusOr<ByteBudget::Hold> hold =
                  m.copies_->Acquire(m.session_bytes_);
              if (!hold.ok()) return;
              // The deleter keeps the budget alive: a task (and so a
              // waiting checkpoint) may outlive the manager, as a working
              // copy may.
              p.hold = std::shared_ptr<ByteBudget::Hold>(
                  new ByteBudget::Hold(*std::move(hold)),
                  [budget = m.copies_](ByteBudget::Hold* h) { delete h; });
            }
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
          [&m, emit, text, out_tokens, timing, start_offset,
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
            GeneratedPiece p;
            // Nothing replayed before it: the output's first token.
            if (out_tokens->empty()) p.start_input_offset = start_offset;
            out_tokens->push_back(t.id);
            text->append(t.text);
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
      // Counted once the engine has the prompt (a refused or cancelled
      // call consumed nothing).
      if (m.opt_.metrics != nullptr) m.opt_.metrics->AddTokensIn(prompt_tokens);
    });
  };
  const SessionKey key{tenant, session_id};
  if (!in.commit) {
    m.PostFinding(key, /*reads_store=*/false, std::move(run));
    return job;
  }
  // A committing generation takes the session's writer slot, which ends a
  // live Append call. A retry that only replays a finished generation, or a
  // request that fails at once, must not: they are answered first, on the
  // session's strand, without the slot (the run re-checks what can change).
  auto answer_first = [&m, job, tenant, session_id, in = std::move(in), emit,
                       done, run = std::move(run)]() mutable {
    // A call that went away while this waited (maybe on the loaders behind
    // a slow store) loads nothing.
    if (job->cancelled()) return done(CancelledError());
    // The request's fields before anything of the session (the proto's
    // order of checks: a malformed request with a stale offset is the
    // field's refusal, not POSITION_MISMATCH), and before a load takes
    // the session's lease for a request that is refused anyway.
    if (absl::Status st = m.CheckRequest(in); !st.ok()) return done(st);
    // Current: a copy another worker took over would stream output from an
    // older state until its first commit was fenced (and answer refusals
    // with its older offsets).
    auto r = m.CurrentResident({tenant, session_id});
    if (!r.ok()) return done(r.status());
    std::shared_ptr<Session> s = *r;
    // Something runs on the session (a committing generation holds it to
    // its end): a new writer call supersedes it at once, as always. (run
    // takes s->mu itself: not under the lock.)
    bool busy = false;
    {
      absl::MutexLock lock(&s->mu);
      busy = s->busy;
    }
    if (busy) return run();
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
        } else if (checks.record == nullptr) {
          // A new generation the scheduler would refuse now (too large, or
          // no room: at least max_tokens and the prompt's ids).
          const size_t ids = in.prompt_kind == GenerateInput::Prompt::kTokens
                                 ? in.prompt_tokens.size()
                                 : 0;
          absl::Status room =
              m.sched_->CheckRoom(static_cast<int64_t>(ids) + m.MaxTokens(in));
          if (!room.ok()) {
            answer = std::move(room);
            answered = true;
          }
        }
      }
      m.Release(s);
      if (answered) return done(std::move(answer));
      run();
    });
  };
  m.PostFinding(key, /*reads_store=*/false, std::move(answer_first));
  return job;
}

std::shared_ptr<SessionManager::Job> SessionManager::Score(
    const std::string& tenant, const std::string& session_id, ScoreInput in,
    std::function<void(absl::StatusOr<ScoreOutcome>)> done) {
  Impl& m = *impl_;
  auto job = std::make_shared<JobImpl>();
  const bool reads_store = in.version != 0;  // an older version's state
  auto score_call = [&m, job, tenant, session_id, in = std::move(in), done] {
    if (absl::Status st = m.Admitting(); !st.ok()) return done(st);
    if (job->cancelled()) return done(CancelledError());
    // Validate the continuation first.
    std::vector<int32_t> cont;
    if (in.is_text) {
      if (in.text.size() > kMaxTextBytes) {
        return done(TooLarge("text_utf8", kMaxTextBytes));
      }
      if (const size_t bad = FirstInvalidUtf8Byte(in.text);
          bad != in.text.size()) {
        return done(Invalid(
            Reason::kInvalidUtf8, "text_utf8 is not valid UTF-8",
            {{"field", "text_utf8"}, {"byte_offset", absl::StrCat(bad)}}));
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
    absl::StatusOr<std::shared_ptr<EngineState>> copy = m.WorkingCopy(nullptr);
    if (!copy.ok()) return done(copy.status());
    std::shared_ptr<EngineState> work = *std::move(copy);
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
        if (absl::Status st = m.sched_->Submit(task); !st.ok()) return done(st);
        if (m.opt_.metrics != nullptr) m.opt_.metrics->AddTokensIn(cont.size());
      };
      if (flushed.empty()) return score();
      const size_t flushed_tokens = flushed.size();
      auto ingest = std::make_shared<IngestTask>(
          work.get(), std::move(flushed),
          [&m, score, done](const absl::Status& st) {
            if (!st.ok()) return done(st);
            m.pool_.Post(score);
          });
      if (!job->SetTask(ingest)) return done(CancelledError());
      if (absl::Status st = m.sched_->Submit(ingest); !st.ok()) return done(st);
      if (m.opt_.metrics != nullptr)
        m.opt_.metrics->AddTokensIn(flushed_tokens);
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
      // As for the head: that version's pending text is flushed first.
      auto carry = StateCarry(v->state);
      if (!carry.ok()) return done(carry.status());
      if (!carry->empty()) {
        return done(OpenCharacterError(v->state.input_offset, carry->size()));
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
    auto r = m.CurrentResident(key);
    if (!r.ok()) return done(r.status());
    std::shared_ptr<Session> s = *r;
    m.RunOp(s, [&m, s, in, work, tail, out, hidden, run, done] {
      absl::Status g = m.GoneError(s.get());
      if (g.ok() && in.expected_input_offset &&
          *in.expected_input_offset != s->input_offset) {
        g = m.PositionMismatch(s.get(), *in.expected_input_offset);
      }
      if (g.ok() && !s->utf8_carry.empty()) {
        // As Generate: the pending text is flushed before the
        // continuation, and cannot be while a character is open.
        g = OpenCharacterError(s->input_offset, s->utf8_carry.size());
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
  };
  m.PostFinding({tenant, session_id}, reads_store, std::move(score_call));
  return job;
}

}  // namespace statestream::worker
