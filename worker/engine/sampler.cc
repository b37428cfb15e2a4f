// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/exp.h"

namespace statestream::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr char kMagic[4] = {'S', 'S', 'M', 'P'};
constexpr uint32_t kVersion = 1;

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t SplitMix64(uint64_t* x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

void PutU32(uint32_t v, std::string* out) {
  for (int k = 0; k < 4; ++k) out->push_back(static_cast<char>(v >> (8 * k)));
}
void PutU64(uint64_t v, std::string* out) {
  for (int k = 0; k < 8; ++k) out->push_back(static_cast<char>(v >> (8 * k)));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int k = 0; k < 4; ++k)
    v |= uint32_t{static_cast<uint8_t>(p[k])} << (8 * k);
  return v;
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int k = 0; k < 8; ++k)
    v |= uint64_t{static_cast<uint8_t>(p[k])} << (8 * k);
  return v;
}

// INVALID_ARGUMENT naming the request field (metadata `field`).
absl::Status BadParam(absl::string_view field, absl::string_view msg) {
  return MakeError(absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
                   absl::StrCat(field, ": ", msg),
                   {{"field", std::string(field)}});
}

absl::Status BadToken(int32_t token, int vocab_size, absl::string_view field) {
  return MakeError(absl::StatusCode::kInvalidArgument, Reason::kInvalidToken,
                   absl::StrCat(field, ": token ", token, " is outside [0, ",
                                vocab_size, ")"),
                   {{"token", absl::StrCat(token)},
                    {"vocab_size", absl::StrCat(vocab_size)},
                    {"field", std::string(field)}});
}

absl::Status Corrupt(absl::string_view msg) {
  return DataLossError(Reason::kStateCorrupt,
                       absl::StrCat("sampler state: ", msg));
}

// Ranking used by top-k, top-p and logprobs: higher logit first, then lower
// id. A strict total order, so every selection is deterministic.
template <typename T>
bool Ahead(const T& a, const T& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// p[i] = Exp((logits[i] - max) / temperature) (exp.h: the same bits on
// every machine, where libm differs), compiled for the
// widest vectors the CPU has; each element is the same sequence of IEEE
// operations in every clone (no contraction: -ffp-contract=off).
__attribute__((target_clones("avx512f", "avx2", "default"))) void FillProbs(
    const float* logits, size_t n, float max, float temperature, float* p) {
  for (size_t i = 0; i < n; ++i) {
    p[i] = Exp((logits[i] - max) / temperature);
  }
}

// Replaces NaN with -inf (and -0 with +0, equal to it as a float) and
// returns max(x). The max is taken over order-preserving integer keys of
// the bit patterns: an integer max vectorises, a float one does not without
// -ffast-math. Compiled like FillProbs.
__attribute__((target_clones("avx512f", "avx2", "default"))) float ScrubAndMax(
    float* x, size_t n) {
  constexpr uint32_t kNegInfBits = 0xff800000u;
  int32_t best = std::numeric_limits<int32_t>::min();
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &x[i], sizeof(u));
    u = (u & 0x7fffffffu) > 0x7f800000u ? kNegInfBits : u;  // NaN -> -inf
    u = u == 0x80000000u ? 0u : u;                          // -0 -> +0
    std::memcpy(&x[i], &u, sizeof(u));
    const int32_t b = static_cast<int32_t>(u);
    const int32_t key = b >= 0 ? b : b ^ 0x7fffffff;
    best = key > best ? key : best;
  }
  const int32_t bits = best >= 0 ? best : best ^ 0x7fffffff;
  float max;
  std::memcpy(&max, &bits, sizeof(max));
  return max;
}

// The first index whose value equals `max` (there is one): blocks of 64 are
// tested with a vectorisable count before one is scanned.
size_t FirstIndexOf(const float* x, size_t n, float max) {
  constexpr size_t kBlock = 64;
  size_t lo = 0;
  for (; lo + kBlock <= n; lo += kBlock) {
    int hits = 0;
    for (size_t i = lo; i < lo + kBlock; ++i) hits += x[i] == max;
    if (hits > 0) break;
  }
  for (size_t i = lo; i < n; ++i) {
    if (x[i] == max) return i;
  }
  return 0;
}

}  // namespace

absl::Status Validate(const SamplingParams& p, int vocab_size) {
  if (!(p.temperature >= 0.0f) || std::isinf(p.temperature)) {
    return BadParam("sampling.temperature", "must be finite and >= 0");
  }
  if (p.top_k < 0) return BadParam("sampling.top_k", "must be >= 0 (0 = off)");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return BadParam("sampling.top_p", "must be in (0, 1]");
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return BadParam("sampling.min_p", "must be in [0, 1]");
  }
  if (!std::isfinite(p.presence_penalty)) {
    return BadParam("sampling.presence_penalty", "must be finite");
  }
  if (!std::isfinite(p.frequency_penalty)) {
    return BadParam("sampling.frequency_penalty", "must be finite");
  }
  if (!(p.penalty_decay >= 0.0f && p.penalty_decay <= 1.0f)) {
    return BadParam("sampling.penalty_decay", "must be in [0, 1]");
  }
  std::set<int32_t> banned;
  for (const auto& [token, bias] : p.logit_bias) {
    if (token < 0 || token >= vocab_size) {
      return BadToken(token, vocab_size, "sampling.logit_bias");
    }
    if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity()) {
      return BadParam("sampling.logit_bias", "must not be NaN or +inf");
    }
    if (bias == kNegInf) banned.insert(token);  // banned
  }
  // Nothing would be left to sample (it would take a banned token).
  if (vocab_size > 0 && banned.size() >= static_cast<size_t>(vocab_size)) {
    return BadParam("sampling.logit_bias",
                    "bans every token of the vocabulary");
  }
  for (int32_t token : p.stop_tokens) {
    if (token < 0 || token >= vocab_size) {
      return BadToken(token, vocab_size, "stop_tokens");
    }
  }
  return absl::OkStatus();
}

SamplerState SamplerState::FromSeed(uint64_t seed) {
  SamplerState s;
  for (uint64_t& word : s.rng) word = SplitMix64(&seed);
  return s;
}

bool SamplerState::operator==(const SamplerState& other) const {
  return std::equal(rng, rng + 4, other.rng) &&
         penalty_counts == other.penalty_counts;
}

std::string SamplerState::Serialize() const {
  std::string out(kMagic, 4);
  PutU32(kVersion, &out);
  for (uint64_t word : rng) PutU64(word, &out);
  PutU32(static_cast<uint32_t>(penalty_counts.size()), &out);
  for (const auto& [token, count] : penalty_counts) {
    uint32_t bits;
    std::memcpy(&bits, &count, 4);
    PutU32(static_cast<uint32_t>(token), &out);
    PutU32(bits, &out);
  }
  PutU64(Fnv1a64(out), &out);
  return out;
}

absl::StatusOr<SamplerState> SamplerState::Parse(absl::string_view bytes) {
  constexpr size_t kHeader = 4 + 4 + 32 + 4;
  if (bytes.size() < kHeader + 8) return Corrupt("truncated");
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) return Corrupt("bad magic");
  const uint32_t version = GetU32(bytes.data() + 4);
  if (version != kVersion) {
    return Corrupt(absl::StrCat("unsupported version ", version));
  }
  const uint64_t n = GetU32(bytes.data() + kHeader - 4);
  if (bytes.size() != kHeader + 8 * n + 8) return Corrupt("wrong length");
  const size_t body = bytes.size() - 8;
  if (GetU64(bytes.data() + body) != Fnv1a64(bytes.substr(0, body))) {
    return Corrupt("checksum mismatch");
  }
  SamplerState s;
  for (int k = 0; k < 4; ++k) s.rng[k] = GetU64(bytes.data() + 8 + 8 * k);
  if ((s.rng[0] | s.rng[1] | s.rng[2] | s.rng[3]) == 0) {
    return Corrupt("all-zero rng state");
  }
  s.penalty_counts.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    const char* p = bytes.data() + kHeader + 8 * i;
    const auto token = static_cast<int32_t>(GetU32(p));
    const uint32_t bits = GetU32(p + 4);
    float count;
    std::memcpy(&count, &bits, 4);
    if (token < 0) return Corrupt("negative token id");
    if (i > 0 && token <= s.penalty_counts.back().first) {
      return Corrupt("penalty tokens not strictly ascending");
    }
    if (!(std::isfinite(count) && count > 0.0f)) {
      return Corrupt("penalty count not finite and > 0");
    }
    s.penalty_counts.emplace_back(token, count);
  }
  return s;
}

Sampler::Sampler(SamplingParams params, SamplerState state)
    : params_(std::move(params)), state_(std::move(state)) {
  if ((state_.rng[0] | state_.rng[1] | state_.rng[2] | state_.rng[3]) == 0) {
    const auto fresh = SamplerState::FromSeed(params_.seed);
    std::copy(fresh.rng, fresh.rng + 4, state_.rng);
  }
}

uint64_t Sampler::NextRandom() {  // xoshiro256**
  uint64_t* s = state_.rng;
  const uint64_t result = Rotl(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = Rotl(s[3], 45);
  return result;
}

bool Sampler::IsStop(int32_t token) const {
  return std::find(params_.stop_tokens.begin(), params_.stop_tokens.end(),
                   token) != params_.stop_tokens.end();
}

int32_t Sampler::Sample(absl::Span<float> logits) {
  const uint64_t random = NextRandom();
  if (logits.empty()) return 0;
  const size_t n = logits.size();

  for (const auto& [token, bias] : params_.logit_bias) {
    if (token >= 0 && static_cast<size_t>(token) < n) logits[token] += bias;
  }
  for (const auto& [token, count] : state_.penalty_counts) {
    if (static_cast<size_t>(token) < n) {
      logits[token] -=
          params_.presence_penalty + params_.frequency_penalty * count;
    }
  }
  // NaN logits count as -inf; the argmax is the first maximal logit.
  const float max = ScrubAndMax(logits.data(), n);
  const size_t argmax = FirstIndexOf(logits.data(), n, max);
  const float temperature = params_.temperature;
  int32_t token = static_cast<int32_t>(argmax);
  if (temperature > 0.0f && std::isfinite(max)) {
    token = Draw(logits, max, random);
  }
  UpdatePenalties(token);
  return token;
}

int32_t Sampler::Draw(absl::Span<const float> logits, float max,
                      uint64_t random) {
  const float temperature = params_.temperature;
  const size_t k = static_cast<size_t>(std::max(params_.top_k, 0));
  if ((k == 0 || k >= logits.size()) && params_.top_p >= 1.0f &&
      params_.min_p <= 0.0f) {
    // No filter: every token is a candidate. Probabilities in one
    // vectorisable pass; sums in blocks of 64 (4 interleaved partial sums
    // each, then the blocks in order) so the draw is not one 65k-long chain
    // of dependent additions; the scan skips whole blocks.
    constexpr size_t kBlock = 64;
    const size_t n = logits.size();
    std::vector<float>& p = probs_;
    p.resize(n);
    FillProbs(logits.data(), n, max, temperature, p.data());
    const size_t blocks = (n + kBlock - 1) / kBlock;
    block_sums_.resize(blocks);
    double total = 0.0;
    for (size_t b = 0; b < blocks; ++b) {
      const size_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
      double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      size_t i = lo;
      for (; i + 4 <= hi; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
      }
      for (; i < hi; ++i) a0 += p[i];
      block_sums_[b] = (a0 + a1) + (a2 + a3);
      total += block_sums_[b];
    }
    const double target = static_cast<double>(random >> 11) * 0x1.0p-53 * total;
    double cum = 0.0;
    for (size_t b = 0; b < blocks; ++b) {
      if (cum + block_sums_[b] > target) {
        const size_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
        double c = cum;
        for (size_t i = lo; i < hi; ++i) {
          if (!(p[i] > 0.0f)) continue;
          c += p[i];
          if (c > target) return static_cast<int32_t>(i);
        }
      }
      cum += block_sums_[b];
    }
    // Rounding left target at the very top: the last possible token.
    for (size_t i = n; i-- > 0;) {
      if (p[i] > 0.0f) return static_cast<int32_t>(i);
    }
    return 0;
  }
  std::vector<Candidate>& c = scratch_;
  c.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] == kNegInf) continue;
    const float p = Exp((logits[i] - max) / temperature);
    if (p > 0.0f) c.push_back({logits[i], p, static_cast<int32_t>(i)});
  }
  // c is not empty: the argmax has p = exp(0) = 1.
  const auto ahead = [](const Candidate& a, const Candidate& b) {
    return Ahead(a, b);
  };
  if (k > 0 && k < c.size()) {
    std::nth_element(c.begin(), c.begin() + k, c.end(), ahead);
    c.resize(k);
    std::sort(c.begin(), c.end(), ahead);
  }
  if (params_.top_p < 1.0f) {
    double total = 0.0;
    for (const Candidate& x : c) total += x.prob;
    const double target = static_cast<double>(params_.top_p) * total;
    // Sort only as much as the nucleus needs: usually a few dozen tokens.
    size_t m = std::min<size_t>(64, c.size());
    size_t keep = c.size();
    while (true) {
      std::partial_sort(c.begin(), c.begin() + m, c.end(), ahead);
      double cum = 0.0;
      size_t j = 0;
      while (j < m && cum < target) cum += c[j++].prob;
      if (cum >= target || m == c.size()) {
        keep = std::max<size_t>(j, 1);
        break;
      }
      m = std::min(c.size(), m * 8);
    }
    c.resize(keep);
  }
  if (params_.min_p > 0.0f) {
    float top = 0.0f;
    for (const Candidate& x : c) top = std::max(top, x.prob);
    const float threshold = std::min(params_.min_p, 1.0f) * top;
    c.erase(std::remove_if(
                c.begin(), c.end(),
                [threshold](const Candidate& x) { return x.prob < threshold; }),
            c.end());
  }
  double total = 0.0;
  for (const Candidate& x : c) total += x.prob;
  // 53 random bits -> u in [0, 1).
  const double target = static_cast<double>(random >> 11) * 0x1.0p-53 * total;
  double cum = 0.0;
  for (const Candidate& x : c) {
    cum += x.prob;
    if (cum > target) return x.id;
  }
  return c.back().id;  // rounding left target at the very top
}

void Sampler::UpdatePenalties(int32_t token) {
  auto& counts = state_.penalty_counts;
  const float decay = std::clamp(params_.penalty_decay, 0.0f, 1.0f);
  if (decay != 1.0f) {
    for (auto& entry : counts) entry.second *= decay;
    // Counts that underflowed to zero (or a decay of 0) drop out, which
    // bounds the map and keeps "count > 0" meaning "penalised".
    counts.erase(std::remove_if(counts.begin(), counts.end(),
                                [](const auto& e) { return !(e.second > 0); }),
                 counts.end());
  }
  auto it =
      std::lower_bound(counts.begin(), counts.end(), token,
                       [](const auto& e, int32_t t) { return e.first < t; });
  if (it != counts.end() && it->first == token) {
    it->second += 1.0f;
  } else {
    counts.insert(it, {token, 1.0f});
  }
}

void LogSoftmax(absl::Span<const float> logits, absl::Span<float> out) {
  const size_t n = std::min(logits.size(), out.size());
  float max = kNegInf;
  for (size_t i = 0; i < n; ++i) {
    if (logits[i] > max) max = logits[i];  // NaN never compares greater
  }
  if (!std::isfinite(max)) {
    // All -inf (nothing is possible), or some +inf (they share all mass).
    size_t winners = 0;
    for (size_t i = 0; i < n; ++i) winners += (logits[i] == max) ? 1 : 0;
    const float share =
        max > 0 ? static_cast<float>(-std::log(static_cast<double>(winners)))
                : kNegInf;
    for (size_t i = 0; i < n; ++i) {
      out[i] = logits[i] == max ? share : kNegInf;
    }
    return;
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isnan(logits[i])) sum += std::exp(double{logits[i]} - max);
  }
  const double lse = max + std::log(sum);
  for (size_t i = 0; i < n; ++i) {
    out[i] = std::isnan(logits[i])
                 ? kNegInf
                 : static_cast<float>(double{logits[i]} - lse);
  }
}

LogprobResult ComputeLogprobs(absl::Span<const float> logits, int32_t chosen,
                              int top_n) {
  LogprobResult result;
  std::vector<float> lp(logits.size());
  LogSoftmax(logits, absl::MakeSpan(lp));
  result.chosen_logprob = chosen >= 0 && static_cast<size_t>(chosen) < lp.size()
                              ? lp[chosen]
                              : kNegInf;
  struct Entry {
    float logit;
    int32_t id;
  };
  std::vector<Entry> entries(lp.size());
  for (size_t i = 0; i < lp.size(); ++i) {
    entries[i] = {lp[i], static_cast<int32_t>(i)};
  }
  const size_t k =
      std::min(entries.size(), static_cast<size_t>(std::max(top_n, 0)));
  std::partial_sort(entries.begin(), entries.begin() + k, entries.end(),
                    [](const Entry& a, const Entry& b) { return Ahead(a, b); });
  for (size_t i = 0; i < k; ++i) {
    result.top.push_back({entries[i].id, entries[i].logit});
  }
  return result;
}

}  // namespace statestream::engine
