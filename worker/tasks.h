// SPDX-License-Identifier: Apache-2.0
// The scheduler tasks behind the API: ingesting tokens (Append), generating
// (Generate) and scoring (Score). Each runs on an EngineState the caller
// owns exclusively until the task ends (the session's live state, or a copy
// for side branches and scoring).
#ifndef STATESTREAM_WORKER_TASKS_H_
#define STATESTREAM_WORKER_TASKS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "worker/engine/huge_pages.h"
#include "worker/engine/model.h"
#include "worker/engine/sampler.h"
#include "worker/engine/tokenizer.h"
#include "worker/scheduler.h"

namespace statestream::worker {

// A session's engine-side state. The recurrent state is megabytes that
// every step reads and writes in full: on huge pages (huge_pages.h).
struct EngineState {
  engine::HugePageVector<float> state;  // Model::info().state_floats
  std::vector<float> last_hidden;       // n_embd; valid when position > 0
  uint64_t position = 0;                // tokens consumed

  // A new session's state: Model::InitState (e.g. RWKV-4's pp = -1e30).
  static EngineState Initial(const engine::Model& model);
};

// Feeds `tokens` into `state` in prefill chunks. `done` runs on the
// scheduler thread with OK once every token is in, or the error that ended
// it (the state then holds the tokens fed so far: `position` says how far).
class IngestTask final : public Task {
 public:
  IngestTask(EngineState* state, std::vector<int32_t> tokens,
             std::function<void(const absl::Status&)> done);

  float* state() override { return st_->state.data(); }
  float* last_hidden() override { return st_->last_hidden.data(); }
  StepRequest NextStep(int max_tokens) override;
  void OnStep(int fed, float* logits) override;
  bool Finished() const override { return next_ == tokens_.size(); }
  void OnDone() override { done_(absl::OkStatus()); }
  void OnError(const absl::Status& s) override { done_(s); }
  absl::Status CheckInput(int vocab_size) const override;

 private:
  EngineState* st_;
  std::vector<int32_t> tokens_;
  size_t next_ = 0;
  std::function<void(const absl::Status&)> done_;
};

// kCancelled: stopped early and gracefully (max_duration, or RequestStop
// when the worker drains); the output so far is complete.
enum class FinishReason { kStopToken, kStopString, kMaxTokens, kCancelled };

struct GeneratedToken {
  int32_t id = 0;
  // UTF-8-complete bytes this token completes (incomplete trailing bytes
  // are held back until a later token completes them, or the end).
  std::string text;
  // Only when logprobs were asked for.
  float logprob = 0;
  std::vector<engine::TokenLogprob> top;
};

// A running generation between two tokens: `state` has consumed the
// prompt and the first `generated` output tokens of this task, `sampler`
// has drawn exactly those. A GenerateTask started from `state` with no
// prompt, `sampler`, max_tokens - generated and the output text so far
// (GenerateSpec::prior_text) produces what the uninterrupted task would.
struct GenerateCheckpoint {
  EngineState state;
  engine::SamplerState sampler;
  int generated = 0;
};

struct GenerateSpec {
  std::vector<int32_t> prompt;  // fed first; may be empty
  engine::SamplingParams params;
  engine::SamplerState sampler;  // resumed RNG and penalties
  int max_tokens = 256;
  std::vector<std::string> stop_strings;
  bool logprobs = false;
  int top_logprobs = 0;
  // Stop gracefully (kCancelled) after the first token sampled at or after
  // this time on `clock` (nullptr = Clock::Real()).
  absl::Time stop_at = absl::InfiniteFuture();
  // What the task ends with when RequestStop finds it still feeding the
  // prompt (an error: nothing is sampled yet, so there is nothing to keep).
  absl::Status stopped_in_prompt =
      absl::UnavailableError("stopped before the prompt was consumed");
  Clock* clock = nullptr;
  // Continuing a checkpointed generation: its output bytes so far (for stop
  // strings, which match across the two parts) and how many of them were
  // handed out (the rest is an incomplete UTF-8 tail still held back).
  std::string prior_text;
  size_t prior_text_emitted = 0;
  // Periodic checkpoints: once `checkpoint_tokens` tokens (0 = never) or
  // `checkpoint_interval` on `clock` have passed since the start or the
  // last checkpoint, and the generation goes on, `on_checkpoint` gets the
  // state after the last sampled token was fed. Runs on the scheduler
  // thread, between emit calls; must not block.
  int checkpoint_tokens = 0;
  absl::Duration checkpoint_interval = absl::InfiniteDuration();
  std::function<void(GenerateCheckpoint)> on_checkpoint;
};

struct GenerateResult {
  FinishReason finish = FinishReason::kMaxTokens;
  int generated = 0;
  std::string held_back;  // trailing bytes never completed to UTF-8
  engine::SamplerState sampler;
};

// Prompt, then sample/feed until a stop token, a stop string or max_tokens.
// Every emitted token is also fed, so the state ends having consumed the
// prompt and all output. `emit` and `done` run on the scheduler thread.
class GenerateTask final : public Task {
 public:
  // Needs a prompt or a state with position > 0 (logits come from its last
  // hidden vector). `tokenizer` (may be null) turns tokens into text for
  // the output and the stop strings.
  GenerateTask(
      EngineState* state, int vocab_size, const engine::Tokenizer* tokenizer,
      GenerateSpec spec, std::function<void(const GeneratedToken&)> emit,
      std::function<void(const absl::Status&, const GenerateResult&)> done);

  float* state() override { return st_->state.data(); }
  float* last_hidden() override { return st_->last_hidden.data(); }
  StepRequest NextStep(int max_tokens) override;
  void OnStep(int fed, float* logits) override;
  bool Finished() const override { return finished_; }
  void OnDone() override;
  void OnError(const absl::Status& s) override;
  absl::Status CheckInput(int vocab_size) const override;

  // Thread-safe: finish gracefully (kCancelled) after the next sampled
  // token, keeping the output so far (the worker is draining). A task
  // still feeding its prompt stops after the prompt's current chunk and
  // ends with spec.stopped_in_prompt instead: a prompt of 262,144 tokens
  // would otherwise hold a drain for minutes.
  void RequestStop() { stop_requested_.store(true); }

 private:
  enum class Phase { kPrompt, kFirstLogits, kDecode, kFeedLast };
  void Sample(float* logits);
  // Calls on_checkpoint when one is due (kDecode, the last token fed).
  void MaybeCheckpoint();
  // Hands out the UTF-8-complete part of text_ with `token`.
  void Emit(int32_t token, const engine::LogprobResult* lp);

  EngineState* st_;
  const int vocab_size_;
  const engine::Tokenizer* tokenizer_;
  GenerateSpec spec_;
  engine::Sampler sampler_;
  std::function<void(const GeneratedToken&)> emit_;
  std::function<void(const absl::Status&, const GenerateResult&)> done_;
  Phase phase_;
  size_t prompt_next_ = 0;
  int32_t last_token_ = 0;
  bool finished_ = false;
  bool stopped_in_prompt_ = false;  // RequestStop during kPrompt
  GenerateResult result_;
  std::string text_;         // all output bytes so far (for stop strings)
  size_t text_emitted_ = 0;  // bytes of text_ handed out
  size_t stop_scanned_ = 0;  // bytes of text_ searched for stop strings
  std::atomic<bool> stop_requested_{false};
  int checkpointed_ = 0;  // result_.generated at the last checkpoint
  absl::Time checkpointed_at_;
};

// Log-probabilities of `tokens` (non-empty) as a continuation of the state
// (position > 0), which it advances: give it a copy. `done` gets one
// logprob per token and whether each was the greedy choice. The first
// token's logits come from the saved hidden vector, the rest from prefill
// chunks with logits after every token (one pass over the weights per
// chunk, not per token).
class ScoreTask final : public Task {
 public:
  ScoreTask(EngineState* state, int vocab_size, std::vector<int32_t> tokens,
            std::function<void(const absl::Status&,
                               const std::vector<float>& logprobs,
                               const std::vector<bool>& greedy)>
                done);

  float* state() override { return st_->state.data(); }
  float* last_hidden() override { return st_->last_hidden.data(); }
  StepRequest NextStep(int max_tokens) override;
  void OnStep(int fed, float* logits) override;
  bool Finished() const override { return logprobs_.size() == tokens_.size(); }
  void OnDone() override;
  void OnError(const absl::Status& s) override;
  absl::Status CheckInput(int vocab_size) const override;

  // Also record the `n` most likely tokens at each position (before the
  // task is submitted); read them with top() from `done`.
  void set_top_logprobs(int n) { top_n_ = n; }
  const std::vector<std::vector<engine::TokenLogprob>>& top() const {
    return top_;
  }

 private:
  EngineState* st_;
  const int vocab_size_;
  int top_n_ = 0;
  std::vector<std::vector<engine::TokenLogprob>> top_;
  std::vector<int32_t> tokens_;
  bool fed_pending_ = false;  // the first token is scored (from hidden)
  std::vector<float> logprobs_;
  std::vector<bool> greedy_;
  std::vector<float> scratch_;  // a position's log-softmax
  // Scores the next token from the `logits` before it.
  void Score(float* logits);
  std::function<void(const absl::Status&, const std::vector<float>&,
                     const std::vector<bool>&)>
      done_;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_TASKS_H_
