// SPDX-License-Identifier: Apache-2.0
#include "worker/tasks.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/string_view.h"
#include "common/utf8.h"

namespace statestream::worker {

absl::Status IngestTask::CheckInput(int vocab_size) const {
  return engine::ValidateTokenIds(tokens_, vocab_size);
}

absl::Status GenerateTask::CheckInput(int vocab_size) const {
  return engine::ValidateTokenIds(spec_.prompt, vocab_size);
}

absl::Status ScoreTask::CheckInput(int vocab_size) const {
  return engine::ValidateTokenIds(tokens_, std::min(vocab_size, vocab_size_));
}

EngineState EngineState::Initial(const engine::Model& model) {
  const engine::ModelInfo& info = model.info();
  EngineState s;
  s.state.resize(info.state_floats);
  model.InitState(s.state.data());  // not all zeros for every architecture
  s.last_hidden.assign(info.config.n_embd, 0.0f);
  return s;
}

// --- IngestTask ------------------------------------------------------------

IngestTask::IngestTask(EngineState* state, std::vector<int32_t> tokens,
                       std::function<void(const absl::Status&)> done)
    : st_(state), tokens_(std::move(tokens)), done_(std::move(done)) {
  queued_tokens = static_cast<int64_t>(tokens_.size());
}

StepRequest IngestTask::NextStep(int max_tokens) {
  StepRequest r;
  const size_t n = std::min(tokens_.size() - next_,
                            static_cast<size_t>(std::max(max_tokens, 0)));
  r.tokens = absl::MakeConstSpan(tokens_).subspan(next_, n);
  r.prefill = true;
  return r;
}

void IngestTask::OnStep(int fed, float*) {
  next_ += static_cast<size_t>(fed);
  st_->position += static_cast<uint64_t>(fed);
}

// --- GenerateTask ----------------------------------------------------------

GenerateTask::GenerateTask(
    EngineState* state, int vocab_size, const engine::Tokenizer* tokenizer,
    GenerateSpec spec, std::function<void(const GeneratedToken&)> emit,
    std::function<void(const absl::Status&, const GenerateResult&)> done)
    : st_(state),
      vocab_size_(vocab_size),
      tokenizer_(tokenizer),
      spec_(std::move(spec)),
      sampler_(spec_.params, spec_.sampler),
      emit_(std::move(emit)),
      done_(std::move(done)),
      phase_(spec_.prompt.empty() ? Phase::kFirstLogits : Phase::kPrompt) {
  queued_tokens = static_cast<int64_t>(spec_.prompt.size()) + spec_.max_tokens;
  if (spec_.max_tokens <= 0 && spec_.prompt.empty()) finished_ = true;
  text_ = std::move(spec_.prior_text);
  text_emitted_ = std::min(spec_.prior_text_emitted, text_.size());
  if (spec_.on_checkpoint) {
    checkpointed_at_ = (spec_.clock ? spec_.clock : Clock::Real())->Now();
  }
}

StepRequest GenerateTask::NextStep(int max_tokens) {
  StepRequest r;
  switch (phase_) {
    case Phase::kPrompt: {
      const size_t n = std::min(spec_.prompt.size() - prompt_next_,
                                static_cast<size_t>(std::max(max_tokens, 0)));
      r.tokens = absl::MakeConstSpan(spec_.prompt).subspan(prompt_next_, n);
      r.prefill = true;
      r.want_logits = prompt_next_ + n == spec_.prompt.size();
      break;
    }
    case Phase::kFirstLogits:
      r.logits_from_hidden = true;
      break;
    case Phase::kDecode:
      r.tokens = absl::MakeConstSpan(&last_token_, 1);
      r.want_logits = true;
      break;
    case Phase::kFeedLast:
      r.tokens = absl::MakeConstSpan(&last_token_, 1);
      break;
  }
  return r;
}

void GenerateTask::OnStep(int fed, float* logits) {
  switch (phase_) {
    case Phase::kPrompt:
      prompt_next_ += static_cast<size_t>(fed);
      st_->position += static_cast<uint64_t>(fed);
      if (prompt_next_ < spec_.prompt.size()) {
        if (stop_requested_.load()) stopped_in_prompt_ = finished_ = true;
        return;
      }
      if (spec_.max_tokens <= 0) {
        finished_ = true;
        return;
      }
      Sample(logits);
      return;
    case Phase::kFirstLogits:
      Sample(logits);
      return;
    case Phase::kDecode:
      st_->position += 1;
      MaybeCheckpoint();
      Sample(logits);
      return;
    case Phase::kFeedLast:
      st_->position += 1;
      finished_ = true;
      return;
  }
}

void GenerateTask::Sample(float* logits) {
  // The sampler uses its input as scratch (the logits are this task's).
  engine::LogprobResult lp;
  const bool want_lp = spec_.logprobs;
  std::vector<float> raw;
  if (want_lp) raw.assign(logits, logits + vocab_size_);
  const int32_t token = sampler_.Sample(absl::MakeSpan(logits, vocab_size_));
  if (want_lp) lp = engine::ComputeLogprobs(raw, token, spec_.top_logprobs);
  last_token_ = token;
  ++result_.generated;
  Emit(token, want_lp ? &lp : nullptr);
  if (sampler_.IsStop(token)) {
    result_.finish = FinishReason::kStopToken;
    phase_ = Phase::kFeedLast;
    return;
  }
  // A match the last token made ends past stop_scanned_ (the text the
  // previous check saw, without one): each step searches only where such
  // a match can start, not the whole output again (quadratic in it).
  for (const std::string& stop : spec_.stop_strings) {
    if (stop.empty()) continue;
    const size_t from =
        stop_scanned_ >= stop.size() ? stop_scanned_ - stop.size() + 1 : 0;
    if (absl::string_view(text_).find(stop, from) != absl::string_view::npos) {
      result_.finish = FinishReason::kStopString;
      phase_ = Phase::kFeedLast;
      return;
    }
  }
  stop_scanned_ = text_.size();
  if (result_.generated >= spec_.max_tokens) {
    result_.finish = FinishReason::kMaxTokens;
    phase_ = Phase::kFeedLast;
    return;
  }
  if (stop_requested_.load() ||
      (spec_.stop_at != absl::InfiniteFuture() &&
       (spec_.clock ? spec_.clock : Clock::Real())->Now() >= spec_.stop_at)) {
    result_.finish = FinishReason::kCancelled;
    phase_ = Phase::kFeedLast;
    return;
  }
  phase_ = Phase::kDecode;
}

void GenerateTask::MaybeCheckpoint() {
  if (!spec_.on_checkpoint || result_.generated == checkpointed_) return;
  const bool by_tokens =
      spec_.checkpoint_tokens > 0 &&
      result_.generated - checkpointed_ >= spec_.checkpoint_tokens;
  absl::Time now;
  if (!by_tokens) {
    if (spec_.checkpoint_interval == absl::InfiniteDuration()) return;
    now = (spec_.clock ? spec_.clock : Clock::Real())->Now();
    if (now - checkpointed_at_ < spec_.checkpoint_interval) return;
  } else {
    now = (spec_.clock ? spec_.clock : Clock::Real())->Now();
  }
  checkpointed_ = result_.generated;
  checkpointed_at_ = now;
  GenerateCheckpoint cp;
  cp.state = *st_;
  cp.sampler = sampler_.state();
  cp.generated = result_.generated;
  spec_.on_checkpoint(std::move(cp));
}

void GenerateTask::Emit(int32_t token, const engine::LogprobResult* lp) {
  GeneratedToken out;
  out.id = token;
  if (tokenizer_ != nullptr) {
    const absl::string_view bytes = tokenizer_->TokenBytes(token);
    text_.append(bytes.data(), bytes.size());
  }
  const absl::string_view pending =
      absl::string_view(text_).substr(text_emitted_);
  const size_t complete = Utf8CompletePrefixLength(pending);
  out.text = std::string(pending.substr(0, complete));
  text_emitted_ += complete;
  if (lp != nullptr) {
    out.logprob = lp->chosen_logprob;
    out.top = lp->top;
  }
  emit_(out);
}

void GenerateTask::OnDone() {
  result_.held_back = text_.substr(text_emitted_);
  result_.sampler = sampler_.state();
  done_(stopped_in_prompt_ ? spec_.stopped_in_prompt : absl::OkStatus(),
        result_);
}

void GenerateTask::OnError(const absl::Status& s) {
  result_.held_back = text_.substr(text_emitted_);
  result_.sampler = sampler_.state();
  done_(s, result_);
}

// --- ScoreTask -------------------------------------------------------------

ScoreTask::ScoreTask(
    EngineState* state, int vocab_size, std::vector<int32_t> tokens,
    std::function<void(const absl::Status&, const std::vector<float>&,
                       const std::vector<bool>&)>
        done)
    : st_(state),
      vocab_size_(vocab_size),
      tokens_(std::move(tokens)),
      done_(std::move(done)) {
  queued_tokens = static_cast<int64_t>(tokens_.size());
}

StepRequest ScoreTask::NextStep(int max_tokens) {
  StepRequest r;
  if (!fed_pending_) {
    r.logits_from_hidden = true;  // logits of the state's last token
    return r;
  }
  // A prefill chunk of the tokens scored so far and not yet fed, with the
  // logits after each (the next token's). The last token is never fed:
  // nothing is scored after it.
  const size_t next = logprobs_.size() - 1;
  const size_t n = std::min(tokens_.size() - logprobs_.size(),
                            static_cast<size_t>(std::max(max_tokens, 1)));
  r.tokens = absl::MakeConstSpan(tokens_).subspan(next, n);
  r.want_logits = true;
  r.logits_at_every_token = true;
  r.prefill = true;
  return r;
}

void ScoreTask::OnStep(int fed, float* logits) {
  st_->position += static_cast<uint64_t>(fed);
  // One row per token fed; the first step (from the hidden vector) one.
  const int rows = std::max(fed, 1);
  for (int row = 0; row < rows; ++row) {
    Score(logits + static_cast<size_t>(row) * vocab_size_);
  }
  fed_pending_ = true;
}

void ScoreTask::Score(float* logits) {
  const int32_t want = tokens_[logprobs_.size()];
  // Log-softmax of the wanted token (NaN logits count as -inf, +inf ones
  // share the mass: never a NaN logprob), and whether it is the argmax.
  float max = -INFINITY;
  int32_t argmax = -1;
  for (int i = 0; i < vocab_size_; ++i) {
    if (logits[i] > max) {
      max = logits[i];
      argmax = i;
    }
  }
  scratch_.resize(vocab_size_);
  engine::LogSoftmax(absl::MakeConstSpan(logits, vocab_size_),
                     absl::MakeSpan(scratch_));
  logprobs_.push_back(scratch_[want]);
  greedy_.push_back(argmax == want);
  if (top_n_ > 0) {
    top_.push_back(engine::ComputeLogprobs(
                       absl::MakeConstSpan(logits, vocab_size_), want, top_n_)
                       .top);
  }
}

void ScoreTask::OnDone() { done_(absl::OkStatus(), logprobs_, greedy_); }
void ScoreTask::OnError(const absl::Status& s) { done_(s, logprobs_, greedy_); }

}  // namespace statestream::worker
