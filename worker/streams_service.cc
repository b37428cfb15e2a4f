// SPDX-License-Identifier: Apache-2.0
// statestream.v1.Streams over the session managers of the worker's models
// (ModelSet routes each call to the manager of its session's model). The
// reactors never call the engine: they hand requests to the manager and
// write what its callbacks (manager or scheduler threads) deliver. Each
// reactor keeps one write in flight and queues the rest; it finishes only
// once no routing or manager callback is outstanding, so OnDone (which
// deletes it) comes last.
#include <grpcpp/grpcpp.h>

#include <deque>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/api_convert.h"
#include "worker/executor.h"
#include "worker/model_set.h"
#include "worker/worker_service.h"

namespace statestream::worker {
namespace {

absl::Status BadField(absl::string_view field, absl::string_view why) {
  return MakeError(absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
                   absl::StrCat(field, ": ", why),
                   {{"field", std::string(field)}});
}

// INVALID_TOKEN for an id beyond int32, which no vocabulary holds (smaller
// ones are checked against the model's vocabulary downstream), reported as
// sent.
absl::Status WideToken(uint32_t id, absl::string_view field) {
  return MakeError(
      absl::StatusCode::kInvalidArgument, Reason::kInvalidToken,
      absl::StrCat(field, ": token ", id, " is outside the vocabulary"),
      {{"token", absl::StrCat(id)}, {"field", std::string(field)}});
}

absl::StatusOr<std::vector<int32_t>> Ids(const v1::Tokens& t,
                                         absl::string_view field) {
  std::vector<int32_t> out;
  out.reserve(t.ids_size());
  for (uint32_t id : t.ids()) {
    if (id > INT32_MAX) return WideToken(id, field);
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

// Outlives the reactor, so late "superseded" notifications are harmless.
template <typename R>
struct Link {
  absl::Mutex mu;
  R* reactor ABSL_GUARDED_BY(mu) = nullptr;
};

// Holds a reactor's mu_; on release calls Finish if the locked section
// decided to finish. Finish must not be called under mu_: OnDone (which
// deletes the reactor, mutex included) may run at once on another thread.
// Nothing may touch the reactor after a Locked that finished it.
template <typename R>
class Locked {
 public:
  explicit Locked(R* r) ABSL_NO_THREAD_SAFETY_ANALYSIS : r_(r) {
    r_->mu_.Lock();
  }
  ~Locked() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::optional<grpc::Status> finish = std::move(r_->finish_now_);
    r_->finish_now_.reset();
    R* r = r_;
    r->mu_.Unlock();
    if (finish) r->Finish(*finish);
  }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  R* r_;
};

class AppendReactor final
    : public grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse> {
  using ThisReactor = AppendReactor;

 public:
  AppendReactor(ModelSet* models, const CallerPolicy* policy, Executor* pool,
                grpc::CallbackServerContext* ctx)
      : models_(models),
        pool_(pool),
        link_(std::make_shared<Link<AppendReactor>>()) {
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = this;
    }
    auto tenant = TenantOf(*ctx, *policy);
    if (!tenant.ok()) {
      Fail(tenant.status());
      return;
    }
    tenant_ = *tenant;
    auto slot = HoldStream(*policy, tenant_);
    if (!slot.ok()) {
      Fail(slot.status());
      return;
    }
    slot_ = *std::move(slot);
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // Half-close: commit what is uncommitted and end with OK.
      if (writer_ == nullptr) return Fail(absl::OkStatus());
      if (!BeginOp()) return;  // already finished: OnDone abandons the writer
      m_->CloseWriter(writer_, durability_, [this](absl::Status st) {
        Locked<ThisReactor> lock(this);
        op_pending_ = false;
        closed_ = true;
        SetFinishLocked(st);
      });
      return;
    }
    absl::Status st = Handle();
    if (!st.ok()) Fail(st);
  }

  void OnWriteDone(bool ok) override {
    Locked<ThisReactor> lock(this);
    writes_.pop_front();
    if (!ok) {
      writes_.clear();  // the client is gone
      ClientGoneLocked();
    }
    // Acks queued before an error still go out, then the error.
    if (!writes_.empty()) {
      StartWrite(&writes_.front());
    } else {
      writing_ = false;
      MaybeFinishLocked();
    }
    // The client reads its acks again: so does the call its requests.
    if (read_paused_ && !finish_ &&
        writes_.size() < static_cast<size_t>(kMaxUnreadAcks)) {
      read_paused_ = false;
      StartRead(&req_);
    }
  }

  void OnCancel() override {
    Locked<ThisReactor> lock(this);
    ClientGoneLocked();
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = nullptr;
    }
    bool abandon;
    {
      absl::MutexLock lock(&mu_);
      abandon = writer_ != nullptr && !closed_ && !abandoned_;
    }
    if (abandon) m_->AbandonWriter(writer_);
    delete this;
  }

 private:
  absl::Status Handle() {
    const v1::AppendRequest& r = req_;
    // The request is checked whole before a first one opens the writer: a
    // malformed first request must not end the session's live writer.
    if (!r.request_id().empty())
      SS_RETURN_IF_ERROR(CheckRequestId(r.request_id()));
    AppendInput in;
    in.request_id = r.request_id();
    in.expected_input_offset = r.expected_input_offset();
    if (r.has_text_utf8()) {
      in.kind = AppendInput::Kind::kText;
      in.text = r.text_utf8();
    } else if (r.has_tokens()) {
      in.kind = AppendInput::Kind::kTokens;
      SS_ASSIGN_OR_RETURN(in.tokens, Ids(r.tokens(), "tokens.ids"));
    }
    in.flush = r.flush();
    in.checkpoint = r.checkpoint();
    SS_ASSIGN_OR_RETURN(in.durability, DurabilityFromProto(r.durability()));
    if (writer_ == nullptr) {
      SS_RETURN_IF_ERROR(CheckSessionId(r.session_id(), "session_id"));
      session_id_ = r.session_id();
      // Opening the writer may load the session (store I/O, one load at a
      // time per model): then on the service's pool, not on gRPC's thread;
      // a resident session's at once. No read is started until the request
      // is acked.
      if (!BeginOp()) return absl::OkStatus();  // finished meanwhile
      SessionManager* resident = nullptr;
      for (SessionManager* m : models_->managers()) {
        if (m->IsResident(tenant_, session_id_)) resident = m;
      }
      auto open = [this, resident, in = std::move(in)]() mutable {
        {
          // The call ended while this waited: it must not take the
          // session's writer slot (ending a live writer) for nobody.
          Locked<ThisReactor> lock(this);
          if (finish_) {
            op_pending_ = false;
            return MaybeFinishLocked();
          }
        }
        SessionManager* m = resident;
        std::shared_ptr<SessionManager::Writer> writer;
        absl::Status st = OpenWriter(in, &m, &writer);
        {
          Locked<ThisReactor> lock(this);
          m_ = m;
          writer_ = std::move(writer);
          if (!st.ok() || finish_) {  // failed, or the call ended meanwhile
            op_pending_ = false;      // (OnDone abandons the writer)
            if (!st.ok()) return SetFinishLocked(st);
            return MaybeFinishLocked();
          }
        }
        AppendNow(std::move(in));
      };
      if (resident != nullptr) {
        open();
      } else {
        pool_->Post(std::move(open));
      }
      return absl::OkStatus();
    }
    if (!r.session_id().empty() && r.session_id() != session_id_) {
      return BadField("session_id", "differs from the call's session");
    }
    if (!BeginOp()) return absl::OkStatus();  // finished meanwhile
    AppendNow(std::move(in));
    return absl::OkStatus();
  }

  // The first request's writer (and model, unless *m is given), once the
  // request is checked whole against that model. No reactor state is
  // touched (it may run on the pool).
  absl::Status OpenWriter(const AppendInput& in, SessionManager** m,
                          std::shared_ptr<SessionManager::Writer>* writer) {
    if (*m == nullptr) *m = &models_->ForSession(tenant_, session_id_);
    SS_RETURN_IF_ERROR((*m)->CheckAppend(in));
    std::weak_ptr<Link<AppendReactor>> weak = link_;
    SS_ASSIGN_OR_RETURN(
        *writer,
        (*m)->OpenWriter(tenant_, session_id_, [weak](const absl::Status& why) {
          auto link = weak.lock();
          if (link == nullptr) return;
          absl::MutexLock lock(&link->mu);
          if (link->reactor != nullptr) link->reactor->Superseded(why);
        }));
    return absl::OkStatus();
  }

  // Hands `in` to the manager (the op is begun); OnAck ends it.
  void AppendNow(AppendInput in) {
    durability_ = in.durability;
    m_->Append(writer_, std::move(in), [this](absl::StatusOr<AppendAck> ack) {
      OnAck(std::move(ack));
    });
  }

  void OnAck(absl::StatusOr<AppendAck> ack) {
    Locked<ThisReactor> lock(this);
    op_pending_ = false;
    if (!ack.ok()) return SetFinishLocked(ack.status());
    if (finish_) return MaybeFinishLocked();
    v1::AppendResponse resp;
    resp.set_request_id(ack->request_id);
    resp.set_duplicate(ack->duplicate);
    resp.set_tokens_consumed(ack->tokens_consumed);
    resp.set_position(ack->position);
    resp.set_input_offset(ack->input_offset);
    resp.set_pending_bytes(ack->pending_bytes);
    resp.set_version(ack->version);
    resp.set_committed_input_offset(ack->committed_input_offset);
    resp.set_durability(DurabilityToProto(ack->durability));
    writes_.push_back(std::move(resp));
    if (!writing_) {
      writing_ = true;
      StartWrite(&writes_.front());
    }
    // A client that does not read its acks gets no more requests read:
    // they wait in its flow-control window instead of in this queue.
    if (writes_.size() >= static_cast<size_t>(kMaxUnreadAcks)) {
      read_paused_ = true;
      return;
    }
    StartRead(&req_);
  }

  // Marks a manager call outstanding, so the reactor cannot finish (and be
  // deleted) before its callback. False when it has already finished — a
  // newer writer superseded it, or the client went away — and the call must
  // not be made: OnDone may run at any moment, and a callback would then
  // touch a deleted reactor.
  bool BeginOp() {
    Locked<ThisReactor> lock(this);
    if (finished_) return false;
    op_pending_ = true;
    return true;
  }

  // A newer writer call took the session (ABORTED/SESSION_BUSY), or the
  // session left this worker (fenced, deleted, evicted, draining).
  void Superseded(const absl::Status& why) {
    Locked<ThisReactor> lock(this);
    SetFinishLocked(why);
  }

  void Fail(const absl::Status& st) {
    Locked<ThisReactor> lock(this);
    SetFinishLocked(st);
  }

  // The client cancelled or went away: the call ends, and the request in
  // flight stops too (its ingest is cancelled: the call cannot finish
  // before it ends, and a delete or drain would wait for all its tokens).
  void ClientGoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    slot_.reset();  // the client's stream is over: its reconnect may come
    SetFinishLocked(absl::CancelledError("the client went away"));
    if (writer_ != nullptr && !abandoned_) {
      abandoned_ = true;
      m_->AbandonWriter(writer_);
    }
  }

  void SetFinishLocked(const absl::Status& st)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!finish_) finish_ = st;
    MaybeFinishLocked();
  }
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!finish_ || finished_ || writing_ || op_pending_) return;
    finished_ = true;
    CountError(models_->default_manager(), *finish_);
    finish_now_ = ToGrpcStatus(*finish_);
    slot_.reset();  // free before the client sees the call end
  }

  ModelSet* const models_;
  Executor* const pool_;
  // The tenant's stream slot (null without limits) until the call ends.
  std::unique_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  // The session's model's manager; set with writer_.
  SessionManager* m_ = nullptr;
  std::shared_ptr<Link<AppendReactor>> link_;
  std::string tenant_, session_id_;
  v1::AppendRequest req_;  // one read at a time
  // Set under mu_ (on the pool) with m_; read by the reactor's callbacks.
  std::shared_ptr<SessionManager::Writer> writer_;
  std::optional<Durability> durability_;
  bool closed_ = false;
  bool abandoned_ ABSL_GUARDED_BY(mu_) = false;

  // Acks queued for a client that is not reading them, at most.
  static constexpr int kMaxUnreadAcks = 64;

  absl::Mutex mu_;
  std::deque<v1::AppendResponse> writes_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool op_pending_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> finish_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Set once, under mu_; Locked calls Finish with it after unlocking.
  std::optional<grpc::Status> finish_now_ ABSL_GUARDED_BY(mu_);
  template <typename R>
  friend class Locked;
};

class GenerateReactor final
    : public grpc::ServerWriteReactor<v1::GenerateResponse> {
  using ThisReactor = GenerateReactor;

 public:
  GenerateReactor(ModelSet* models, const CallerPolicy* policy,
                  grpc::CallbackServerContext* ctx,
                  const v1::GenerateRequest* req)
      : models_(models), policy_(policy) {
    absl::Status st = Start(ctx, *req);
    if (!st.ok()) {
      Locked<ThisReactor> lock(this);
      routed_ = true;
      job_done_ = true;
      SetFinishLocked(st);
    }
  }

  void OnWriteDone(bool ok) override {
    Locked<ThisReactor> lock(this);
    writes_.pop_front();
    if (!ok) {
      if (job_) job_->Cancel();
      writes_.clear();  // the client is gone
      SetFinishLocked(absl::CancelledError("the client went away"));
    }
    // After an error the rest is dropped; after OK everything goes out.
    if (!writes_.empty() && (!finish_ || finish_->ok())) {
      StartWrite(&writes_.front());
    } else {
      writes_.clear();
      writing_ = false;
      MaybeFinishLocked();
    }
  }

  void OnCancel() override {
    Locked<ThisReactor> lock(this);
    if (job_) job_->Cancel();  // else Run() sees finish_
    slot_.reset();  // the client's stream is over: its reconnect may come
    SetFinishLocked(absl::CancelledError("the client went away"));
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Start(grpc::CallbackServerContext* ctx,
                     const v1::GenerateRequest& r) {
    SS_ASSIGN_OR_RETURN(std::string tenant, TenantOf(*ctx, *policy_));
    {
      SS_ASSIGN_OR_RETURN(auto slot, HoldStream(*policy_, tenant));
      Locked<ThisReactor> lock(this);
      slot_ = std::move(slot);
    }
    SS_RETURN_IF_ERROR(CheckSessionId(r.session_id(), "session_id"));
    SS_RETURN_IF_ERROR(CheckRequestId(r.request_id()));
    GenerateInput in;
    in.request_id = r.request_id();
    if (r.has_expected_input_offset()) {
      in.expected_input_offset = r.expected_input_offset();
    }
    if (r.has_prompt_text_utf8()) {
      in.prompt_kind = GenerateInput::Prompt::kText;
      in.prompt_text = r.prompt_text_utf8();
    } else if (r.has_prompt_tokens()) {
      in.prompt_kind = GenerateInput::Prompt::kTokens;
      SS_ASSIGN_OR_RETURN(in.prompt_tokens,
                          Ids(r.prompt_tokens(), "prompt_tokens.ids"));
    }
    const v1::SamplingParams& sp = r.sampling();
    engine::SamplingParams& p = in.sampling;
    if (sp.has_temperature()) p.temperature = sp.temperature();
    if (p.temperature > 100)
      return BadField("sampling.temperature", "at most 100");
    if (sp.has_top_p()) p.top_p = sp.top_p();
    if (sp.top_k() > static_cast<uint32_t>(INT32_MAX)) {
      return BadField("sampling.top_k", "too large");
    }
    p.top_k = static_cast<int>(sp.top_k());
    p.min_p = sp.min_p();
    if (p.min_p >= 1) return BadField("sampling.min_p", "must be in [0, 1)");
    p.presence_penalty = sp.presence_penalty();
    p.frequency_penalty = sp.frequency_penalty();
    if (sp.has_penalty_decay()) p.penalty_decay = sp.penalty_decay();
    if (sp.logit_bias_size() > 1024) {
      return MakeError(absl::StatusCode::kInvalidArgument,
                       Reason::kMessageTooLarge, "at most 1024 logit_bias",
                       {{"field", "sampling.logit_bias"}, {"limit", "1024"}});
    }
    for (const auto& [token, bias] : sp.logit_bias()) {
      if (token > INT32_MAX) return WideToken(token, "sampling.logit_bias");
      p.logit_bias.emplace_back(static_cast<int32_t>(token),
                                bias <= -1e9f ? -INFINITY : bias);
    }
    std::sort(p.logit_bias.begin(), p.logit_bias.end());
    if (sp.has_seed()) {
      p.seed = sp.seed();
      in.has_seed = true;
    }
    if (r.stop_tokens_size() > 64) {
      return MakeError(absl::StatusCode::kInvalidArgument,
                       Reason::kMessageTooLarge, "at most 64 stop_tokens",
                       {{"field", "stop_tokens"}, {"limit", "64"}});
    }
    for (uint32_t t : r.stop_tokens()) {
      if (t > INT32_MAX) return WideToken(t, "stop_tokens");
      p.stop_tokens.push_back(static_cast<int32_t>(t));
    }
    if (r.stop_strings_size() > 16) {
      return MakeError(absl::StatusCode::kInvalidArgument,
                       Reason::kMessageTooLarge, "at most 16 stop_strings",
                       {{"field", "stop_strings"}, {"limit", "16"}});
    }
    for (const std::string& s : r.stop_strings()) {
      if (s.empty() || s.size() > 256) {
        return BadField("stop_strings", "each 1-256 bytes");
      }
      in.stop_strings.push_back(s);
    }
    in.max_tokens =
        static_cast<int>(std::min<uint32_t>(r.max_tokens(), 1 << 30));
    in.commit = r.commit();
    SS_ASSIGN_OR_RETURN(in.durability, DurabilityFromProto(r.durability()));
    in.logprobs = r.logprobs();
    if (r.top_logprobs() > 20) return BadField("top_logprobs", "0-20");
    in.top_logprobs = static_cast<int>(r.top_logprobs());
    if (r.has_max_duration()) {
      const auto& d = r.max_duration();
      if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() >= 1000000000 ||
          d.seconds() > 315576000000) {
        return BadField("max_duration", "must be a non-negative duration");
      }
      in.max_duration =
          absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
    }
    in.content_digest = ContentDigest(r);
    models_->ForSessionAsync(tenant, r.session_id(),
                             [this, tenant, session_id = r.session_id(),
                              in = std::move(in)](SessionManager& m) mutable {
                               Run(m, tenant, session_id, std::move(in));
                             });
    return absl::OkStatus();
  }

  // Once routed (maybe on another thread, after the constructor).
  void Run(SessionManager& m, const std::string& tenant,
           const std::string& session_id, GenerateInput in) {
    {
      Locked<ThisReactor> lock(this);
      if (finish_) {  // the client left while the session was looked up
        routed_ = job_done_ = true;
        MaybeFinishLocked();
        return;
      }
    }
    auto job = m.Generate(
        tenant, session_id, std::move(in),
        [this](const GeneratedPiece& p) { OnToken(p); },
        [this](absl::StatusOr<GenerateOutcome> o) { OnOutcome(std::move(o)); });
    Locked<ThisReactor> lock(this);
    job_ = std::move(job);
    routed_ = true;
    if (finish_ && !finish_->ok()) job_->Cancel();
    MaybeFinishLocked();
  }

  void OnToken(const GeneratedPiece& p) {
    Locked<ThisReactor> lock(this);
    if (finish_) return;
    // Group tokens into the last queued chunk unless it is being written,
    // or unless it differs in carrying logprobs: a chunk's logprobs are
    // parallel to all its tokens or absent (replayed tokens have none).
    v1::GenerateChunk* chunk = nullptr;
    if ((writes_.size() > 1 || (!writes_.empty() && !writing_)) &&
        (writes_.back().chunk().logprobs_size() > 0) == p.has_logprob) {
      chunk = writes_.back().mutable_chunk();
    } else {
      writes_.emplace_back();
      chunk = writes_.back().mutable_chunk();
      chunk->set_index(emitted_);
    }
    if (p.start_input_offset) {
      chunk->set_start_input_offset(*p.start_input_offset);
    }
    ++emitted_;
    chunk->add_tokens(static_cast<uint32_t>(p.token));
    chunk->mutable_text_utf8()->append(p.text);
    if (p.has_logprob) {
      auto* lp = chunk->add_logprobs();
      lp->set_token(static_cast<uint32_t>(p.token));
      lp->set_logprob(p.logprob);
      for (const auto& t : p.top) {
        auto* top = lp->add_top();
        top->set_token(static_cast<uint32_t>(t.id));
        top->set_logprob(t.logprob);
      }
    }
    KickLocked();
  }

  void OnOutcome(absl::StatusOr<GenerateOutcome> o) {
    Locked<ThisReactor> lock(this);
    job_done_ = true;
    if (!o.ok()) return SetFinishLocked(o.status());
    if (!o->held_back.empty()) {
      if (writes_.size() > 1 || (!writes_.empty() && !writing_)) {
        writes_.back().mutable_chunk()->mutable_text_utf8()->append(
            o->held_back);
      } else {
        writes_.emplace_back();
        writes_.back().mutable_chunk()->set_index(emitted_);
        writes_.back().mutable_chunk()->set_text_utf8(o->held_back);
      }
    }
    v1::GenerateResponse done;
    auto* d = done.mutable_done();
    switch (o->finish) {
      case GenerateOutcome::Finish::kStopToken:
        d->set_finish_reason(v1::FINISH_REASON_STOP_TOKEN);
        d->set_stop_token(static_cast<uint32_t>(o->stop_token));
        break;
      case GenerateOutcome::Finish::kStopString:
        d->set_finish_reason(v1::FINISH_REASON_STOP_STRING);
        d->set_stop_string(o->stop_string);
        break;
      case GenerateOutcome::Finish::kMaxTokens:
        d->set_finish_reason(v1::FINISH_REASON_MAX_TOKENS);
        break;
      case GenerateOutcome::Finish::kCancelled:
        d->set_finish_reason(v1::FINISH_REASON_CANCELLED);
        break;
    }
    d->set_replayed(o->replayed);
    d->mutable_usage()->set_input_tokens(o->input_tokens);
    d->mutable_usage()->set_output_tokens(o->output_tokens);
    d->set_committed(o->committed);
    d->set_position(o->position);
    d->set_input_offset(o->input_offset);
    d->set_version(o->version);
    d->set_durability(DurabilityToProto(o->durability));
    writes_.push_back(std::move(done));
    KickLocked();
    SetFinishLocked(absl::OkStatus());
  }

  void KickLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || writes_.empty()) return;
    writing_ = true;
    StartWrite(&writes_.front());
  }
  void SetFinishLocked(const absl::Status& st)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!finish_) finish_ = st;
    MaybeFinishLocked();
  }
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // OK finishes after every queued write; errors drop what is queued.
    if (!finish_ || finished_ || writing_ || !routed_ || !job_done_) return;
    if (finish_->ok() && !writes_.empty()) return;
    finished_ = true;
    CountError(models_->default_manager(), *finish_);
    finish_now_ = ToGrpcStatus(*finish_);
    slot_.reset();  // free before the client sees the call end
  }

  ModelSet* const models_;
  const CallerPolicy* const policy_;
  absl::Mutex mu_;
  // The tenant's stream slot (null without limits) until the call ends.
  std::unique_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  // Set once Run() has handed the request to the manager (or given up).
  bool routed_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<SessionManager::Job> job_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::GenerateResponse> writes_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool job_done_ ABSL_GUARDED_BY(mu_) = false;
  uint32_t emitted_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<absl::Status> finish_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Set once, under mu_; Locked calls Finish with it after unlocking.
  std::optional<grpc::Status> finish_now_ ABSL_GUARDED_BY(mu_);
  template <typename R>
  friend class Locked;
};

// Score, cancelled when the client goes away (OnCancel).
class ScoreReactor final : public grpc::ServerUnaryReactor {
 public:
  ScoreReactor(ModelSet* models, const CallerPolicy* policy,
               grpc::CallbackServerContext* ctx, const v1::ScoreRequest* req,
               v1::ScoreResponse* out)
      : models_(models) {
    auto tenant = TenantOf(*ctx, *policy);
    absl::Status st = tenant.status();
    if (st.ok()) st = CheckSessionId(req->session_id(), "session_id");
    if (st.ok() && req->top_logprobs() > 20) {
      st = BadField("top_logprobs", "0-20");
    }
    if (st.ok() && !req->has_text_utf8() && !req->has_tokens()) {
      st = BadField("continuation", "required");
    }
    if (!st.ok()) {
      CountError(models_->default_manager(), st);
      Finish(ToGrpcStatus(st));
      return;
    }
    ScoreInput in;
    in.version = req->version();
    if (req->has_expected_input_offset()) {
      in.expected_input_offset = req->expected_input_offset();
    }
    in.is_text = req->has_text_utf8();
    in.text = req->text_utf8();
    if (req->has_tokens()) {
      auto ids = Ids(req->tokens(), "tokens.ids");
      if (!ids.ok()) {
        CountError(models_->default_manager(), ids.status());
        Finish(ToGrpcStatus(ids.status()));
        return;
      }
      in.tokens = *std::move(ids);
    }
    in.top_logprobs = static_cast<int>(req->top_logprobs());
    models_->ForSessionAsync(
        *tenant, req->session_id(),
        [this, out, tenant = *tenant, session_id = req->session_id(),
         in = std::move(in)](SessionManager& m) mutable {
          Run(m, tenant, session_id, std::move(in), out);
        });
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (job_) job_->Cancel();
  }
  void OnDone() override { delete this; }

 private:
  // Once routed (maybe on another thread, after the constructor returned:
  // then nothing holds a Finish back, so Done defers it until job_ is set).
  void Run(SessionManager& m, const std::string& tenant,
           const std::string& session_id, ScoreInput in,
           v1::ScoreResponse* out) {
    auto job = m.Score(tenant, session_id, std::move(in),
                       [this, out](absl::StatusOr<ScoreOutcome> o) {
                         if (o.ok()) Fill(*o, out);
                         CountError(models_->default_manager(), o.status());
                         Done(ToGrpcStatus(o.status()));
                       });
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      job_ = std::move(job);
      if (cancelled_) job_->Cancel();
      finish = std::move(deferred_);
    }
    if (finish) Finish(*finish);  // the last use of `this`
  }

  void Done(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (job_ == nullptr) {
        deferred_ = status;
        return;
      }
    }
    Finish(status);
  }

  static void Fill(const ScoreOutcome& o, v1::ScoreResponse* out) {
    double sum = 0;
    bool all = true;
    for (size_t i = 0; i < o.tokens.size(); ++i) {
      auto* t = out->add_tokens();
      t->set_token(static_cast<uint32_t>(o.tokens[i]));
      t->set_logprob(o.logprobs[i]);
      t->set_greedy(o.greedy[i]);
      if (i < o.top.size()) {
        for (const auto& top : o.top[i]) {
          auto* lp = t->add_top();
          lp->set_token(static_cast<uint32_t>(top.id));
          lp->set_logprob(top.logprob);
        }
      }
      sum += o.logprobs[i];
      all = all && o.greedy[i];
    }
    out->set_sum_logprob(sum);
    out->set_all_greedy(all);
    out->set_position(o.position);
    out->set_input_offset(o.input_offset);
    out->set_version(o.version);
  }

  ModelSet* const models_;
  absl::Mutex mu_;
  // Set once Score() returns; until then Done keeps its status here and
  // Run finishes with it (OnDone, which deletes this, follows Finish).
  std::shared_ptr<SessionManager::Job> job_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> deferred_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

class StreamsService final : public v1::Streams::CallbackService {
 public:
  StreamsService(ModelSet* models, std::shared_ptr<const CallerPolicy> policy)
      : models_(models), policy_(std::move(policy)), pool_(8) {}

  grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>* Append(
      grpc::CallbackServerContext* ctx) override {
    return new AppendReactor(models_, policy_.get(), &pool_, ctx);
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx,
      const v1::GenerateRequest* req) override {
    return new GenerateReactor(models_, policy_.get(), ctx, req);
  }

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx,
                                  const v1::ScoreRequest* req,
                                  v1::ScoreResponse* out) override {
    return new ScoreReactor(models_, policy_.get(), ctx, req, out);
  }

 private:
  ModelSet* const models_;
  const std::shared_ptr<const CallerPolicy> policy_;  // outlives the reactors
  // Opens Append calls' writers (session loads); outlives the reactors
  // (the server stops first).
  Executor pool_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewStreamsService(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy) {
  return std::make_unique<StreamsService>(models, std::move(policy));
}

}  // namespace statestream::worker
