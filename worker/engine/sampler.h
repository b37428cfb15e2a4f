// SPDX-License-Identifier: Apache-2.0
// Token sampling with RWKV-style repetition penalties, and log-probabilities
// for logprobs output.
//
// Determinism: Sample() is a pure function of (params, state, logits): the
// same inputs give the same token and the same next state, bit for bit, on
// the same build. All randomness comes from SamplerState's xoshiro256**
// generator (implemented here; std:: distributions differ between standard
// libraries), and the state serialises to bytes, so a generation resumed
// from a checkpoint continues exactly as if it had never stopped.
//
// Not thread-safe: one Sampler per generating session, used by one thread.
#ifndef STATESTREAM_WORKER_ENGINE_SAMPLER_H_
#define STATESTREAM_WORKER_ENGINE_SAMPLER_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace statestream::engine {

// The public API's bound on SamplingParams.temperature (the proto's; the
// engine itself takes any finite value), which the CLI checks up front.
inline constexpr float kMaxApiTemperature = 100.0f;

// How to pick the next token. Applied in this order: logit_bias, penalties,
// temperature, top_k, top_p, min_p, then a draw. Check with Validate().
struct SamplingParams {
  // Divides the logits. 0 = greedy (argmax, ties to the lowest id). >= 0.
  float temperature = 1.0f;
  // Keep only the k highest logits (ties to the lowest ids). 0 = off.
  int top_k = 0;
  // Keep the smallest set of highest-probability tokens whose probability
  // sums to at least top_p (nucleus). In (0, 1]; 1 = off.
  float top_p = 1.0f;
  // Drop tokens whose probability is below min_p times the top token's.
  // In [0, 1]; 0 = off.
  float min_p = 0.0f;
  // Subtracted from the logit of every token with a penalty count > 0.
  float presence_penalty = 0.0f;
  // Times the token's penalty count, subtracted from its logit.
  float frequency_penalty = 0.0f;
  // After each sampled token every penalty count is multiplied by this
  // (RWKV's alpha_decay; ChatRWKV uses 0.996), then the sampled token's count
  // grows by 1. In [0, 1]; 1 = counts never fade.
  float penalty_decay = 1.0f;
  // (token, bias) added to the logit before anything else. Bias must not be
  // NaN or +inf; -inf bans the token.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Tokens that end a generation (the scheduler acts on them; see IsStop).
  std::vector<int32_t> stop_tokens;
  // Seeds a new session's SamplerState (SamplerState::FromSeed).
  uint64_t seed = 0;
};

// OK, or INVALID_ARGUMENT with Reason::kInvalidArgument (a numeric field
// out of range or NaN, or a logit_bias that bans every token) or
// Reason::kInvalidToken (a logit_bias or stop token outside
// [0, vocab_size)).
absl::Status Validate(const SamplingParams& params, int vocab_size);

// Everything a session must keep for sampling to continue identically.
struct SamplerState {
  // xoshiro256** state (Blackman & Vigna); never all zero.
  uint64_t rng[4] = {0, 0, 0, 0};
  // Penalty counts by token, sorted by token id, each count > 0 and finite.
  std::vector<std::pair<int32_t, float>> penalty_counts;

  // Fresh state: rng from splitmix64(seed), no penalty counts.
  static SamplerState FromSeed(uint64_t seed);

  // Versioned little-endian encoding: "SSMP", u32 version (1), 4 x u64 rng,
  // u32 n, n x (i32 token, f32 count), u64 FNV-1a of all preceding bytes.
  std::string Serialize() const;
  // Inverse of Serialize. DATA_LOSS / Reason::kStateCorrupt for bad
  // magic, unknown version, wrong length, checksum mismatch, all-zero rng,
  // unsorted or negative tokens, or counts that are not finite and > 0.
  static absl::StatusOr<SamplerState> Parse(absl::string_view bytes);

  bool operator==(const SamplerState& other) const;
};

class Sampler {
 public:
  // `params` should have passed Validate() for the model's vocabulary
  // (invalid values are clamped, never a crash). An all-zero state.rng (a
  // default-constructed SamplerState) is replaced by
  // SamplerState::FromSeed(params.seed).
  Sampler(SamplingParams params, SamplerState state);

  // Picks a token from `logits` (one per vocabulary id; used as scratch and
  // left modified) and advances the state: exactly one RNG draw per call,
  // greedy or not, then the penalty update. NaN logits count as -inf; if no
  // logit is finite after bias and penalties, the lowest id among the
  // largest logits wins (token 0 when all are -inf). Penalty counts and
  // bias entries for ids >= logits.size() are ignored.
  int32_t Sample(absl::Span<float> logits);

  bool IsStop(int32_t token) const;

  const SamplerState& state() const { return state_; }
  const SamplingParams& params() const { return params_; }

 private:
  struct Candidate {
    float logit;  // after bias and penalties, before temperature
    float prob;   // unnormalised exp((logit - max) / temperature)
    int32_t id;
  };

  uint64_t NextRandom();
  // Temperature, top-k, top-p, min-p and the draw, over sanitised logits
  // whose maximum `max` is finite.
  int32_t Draw(absl::Span<const float> logits, float max, uint64_t random);
  void UpdatePenalties(int32_t token);

  SamplingParams params_;
  SamplerState state_;
  std::vector<float> probs_;        // Draw without filters
  std::vector<double> block_sums_;  // of probs_, per 64 tokens
  std::vector<Candidate> scratch_;
};

// Log-probabilities for logprobs output.
struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};
struct LogprobResult {
  float chosen_logprob = 0.0f;    // of the `chosen` token
  std::vector<TokenLogprob> top;  // highest first, ties to the lowest id
};

// out[i] = logits[i] - logsumexp(logits), computed in double. `out` must
// have logits.size() elements (it may alias `logits`). NaN logits are -inf.
void LogSoftmax(absl::Span<const float> logits, absl::Span<float> out);

// The log-probability of `chosen` (which must index `logits`) and the
// `top_n` most likely tokens (fewer if the vocabulary is smaller).
LogprobResult ComputeLogprobs(absl::Span<const float> logits, int32_t chosen,
                              int top_n);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_SAMPLER_H_
