// SPDX-License-Identifier: Apache-2.0
// Streams.Generate on a worker (streams_service.cc has the service).
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
#include "worker/streams_internal.h"
#include "worker/worker_service.h"

namespace statestream::worker::streams_internal {
namespace {

// The most a chunk holds (PieceBytes): a fraction of the 4 MiB a stock
// gRPC client receives.
constexpr size_t kMaxChunkBytes = 256 << 10;

// A bound on the encoded bytes one generated piece adds to a chunk: the
// token, its text, and its logprob with the alternatives.
size_t PieceBytes(const GeneratedPiece& p) {
  size_t bytes = 6 + p.text.size();
  if (p.has_logprob) bytes += 14 + 14 * p.top.size();
  return bytes;
}

class GenerateReactor final
    : public grpc::ServerWriteReactor<v1::GenerateResponse> {
  using ThisReactor = GenerateReactor;

 public:
  GenerateReactor(ModelSet* models, const CallerPolicy* policy,
                  ClientStalls* stalls, grpc::CallbackServerContext* ctx,
                  const v1::GenerateRequest* req)
      : models_(models),
        policy_(policy),
        stall_(stalls->Watch(ctx, "Generate")) {
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
    stall_->Moved();
    writes_.pop_front();
    if (!ok) {
      if (job_) job_->Cancel();
      writes_.clear();  // the client is gone
      SetFinishLocked(absl::CancelledError("the client went away"));
    }
    // After an error the rest is dropped; after OK everything goes out.
    if (!writes_.empty() && (!finish_ || finish_->ok())) {
      stall_->Waiting();
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
    if (p.temperature > engine::kMaxApiTemperature) {
      return BadField("sampling.temperature", "at most 100");
    }
    if (sp.has_top_p()) p.top_p = sp.top_p();
    // Any k: one at least the vocabulary's size keeps every token.
    p.top_k = static_cast<int>(
        std::min<uint32_t>(sp.top_k(), static_cast<uint32_t>(INT32_MAX)));
    p.min_p = sp.min_p();
    // (NaN too: the sampler's own check allows 1.)
    if (!(p.min_p >= 0 && p.min_p < 1)) {
      return BadField("sampling.min_p", "must be in [0, 1)");
    }
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
      if (s.size() > 256) {  // a limit: MESSAGE_TOO_LARGE, as the count's
        return MakeError(absl::StatusCode::kInvalidArgument,
                         Reason::kMessageTooLarge,
                         "a stop string is at most 256 bytes",
                         {{"field", "stop_strings"}, {"limit", "256"}});
      }
      if (s.empty()) {
        return BadField("stop_strings", "each 1-256 bytes");
      }
      in.stop_strings.push_back(s);
    }
    in.max_tokens =
        static_cast<int>(std::min<uint32_t>(r.max_tokens(), 1 << 30));
    in.commit = r.commit();
    SS_ASSIGN_OR_RETURN(
        in.durability,
        // Only a commit asks the store for anything (a side branch writes
        // nothing); an unknown level is refused either way.
        DurabilityFromProto(r.durability(), r.commit()
                                                ? models_->max_durability()
                                                : Durability::kReplicated));
    in.logprobs = r.logprobs();
    if (r.top_logprobs() > 20) return BadField("top_logprobs", "0-20");
    if (r.top_logprobs() > 0 && !r.logprobs()) {
      return BadField("top_logprobs", "needs logprobs");
    }
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
    models_->ForSessionAsync(
        tenant, r.session_id(),
        [this, tenant, session_id = r.session_id(),
         in = std::move(in)](absl::StatusOr<SessionManager*> m) mutable {
          if (!m.ok()) return Unrouted(m.status());
          Run(**m, tenant, session_id, std::move(in));
        });
    return absl::OkStatus();
  }

  // The session's model could not be looked up: no job ever runs.
  void Unrouted(const absl::Status& why) {
    Locked<ThisReactor> lock(this);
    routed_ = job_done_ = true;
    SetFinishLocked(why);
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
    // parallel to all its tokens or absent (replayed tokens have none), or
    // it is full: a slow reader's tokens once all went into one message,
    // megabytes with top_logprobs, past what a client receives.
    const size_t bytes = PieceBytes(p);
    v1::GenerateChunk* chunk = nullptr;
    if ((writes_.size() > 1 || (!writes_.empty() && !writing_)) &&
        (writes_.back().chunk().logprobs_size() > 0) == p.has_logprob &&
        last_chunk_bytes_ + bytes <= kMaxChunkBytes) {
      chunk = writes_.back().mutable_chunk();
      last_chunk_bytes_ += bytes;
    } else {
      writes_.emplace_back();
      chunk = writes_.back().mutable_chunk();
      chunk->set_index(emitted_);
      last_chunk_bytes_ = bytes;
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
    stall_->Waiting();
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
  // Cuts the call off when its client leaves a message unread too long:
  // the tokens it generates meanwhile pile up in writes_.
  const std::unique_ptr<ClientStalls::Call> stall_;
  absl::Mutex mu_;
  // The tenant's stream slot (null without limits) until the call ends.
  std::unique_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  // Set once Run() has handed the request to the manager (or given up).
  bool routed_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<SessionManager::Job> job_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::GenerateResponse> writes_ ABSL_GUARDED_BY(mu_);
  // PieceBytes of what writes_.back()'s chunk holds.
  size_t last_chunk_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool job_done_ ABSL_GUARDED_BY(mu_) = false;
  uint32_t emitted_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<absl::Status> finish_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Set once, under mu_; Locked calls Finish with it after unlocking.
  std::optional<grpc::Status> finish_now_ ABSL_GUARDED_BY(mu_);
  template <typename R>
  friend class streams_internal::Locked;
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* NewGenerateReactor(
    ModelSet* models, const CallerPolicy* policy, ClientStalls* stalls,
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) {
  return new GenerateReactor(models, policy, stalls, ctx, req);
}

}  // namespace statestream::worker::streams_internal
