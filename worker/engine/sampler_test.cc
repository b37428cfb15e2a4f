// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/sampler.h"

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace statestream::engine {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Deterministic pseudo-logits that vary with the step.
std::vector<float> MakeLogits(int vocab, int step) {
  std::vector<float> l(vocab);
  uint64_t x =
      0x1234567ULL + static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ULL;
  for (int i = 0; i < vocab; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    l[i] = static_cast<float>((x >> 40) % 1000) / 200.0f;  // [0, 5)
  }
  return l;
}

int32_t SampleOnce(Sampler& s, std::vector<float> logits) {
  return s.Sample(absl::MakeSpan(logits));
}

SamplingParams Typical() {
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.min_p = 0.01f;
  p.presence_penalty = 0.3f;
  p.frequency_penalty = 0.2f;
  p.penalty_decay = 0.996f;
  p.logit_bias = {{3, 1.5f}, {7, -kInf}};
  p.seed = 1234;
  return p;
}

TEST(SamplerTest, DeterministicAndResumable) {
  const SamplingParams p = Typical();
  ASSERT_TRUE(Validate(p, 512).ok());
  Sampler a(p, SamplerState::FromSeed(p.seed));
  std::vector<int32_t> tokens;
  std::string checkpoint;
  for (int step = 0; step < 50; ++step) {
    if (step == 20) checkpoint = a.state().Serialize();
    tokens.push_back(SampleOnce(a, MakeLogits(512, step)));
  }
  // The same from scratch.
  Sampler b(p, SamplerState::FromSeed(p.seed));
  for (int step = 0; step < 50; ++step) {
    EXPECT_EQ(SampleOnce(b, MakeLogits(512, step)), tokens[step]);
  }
  EXPECT_TRUE(a.state() == b.state());
  // Resumed from the checkpoint at step 20.
  auto state = SamplerState::Parse(checkpoint);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_FALSE(state->penalty_counts.empty());
  Sampler c(p, *state);
  for (int step = 20; step < 50; ++step) {
    EXPECT_EQ(SampleOnce(c, MakeLogits(512, step)), tokens[step]);
  }
  EXPECT_EQ(c.state().Serialize(), a.state().Serialize());
  // Not degenerate: the tokens vary and the banned one never appears.
  std::set<int32_t> distinct(tokens.begin(), tokens.end());
  EXPECT_GT(distinct.size(), 10u);
  EXPECT_EQ(distinct.count(7), 0u);
  // Another seed, another sequence.
  Sampler d(p, SamplerState::FromSeed(p.seed + 1));
  int same = 0;
  for (int step = 0; step < 50; ++step) {
    same += SampleOnce(d, MakeLogits(512, step)) == tokens[step];
  }
  EXPECT_LT(same, 40);
}

// Without top-k/top-p/min-p the draw skips building candidates and sums in
// blocks; over the same probabilities it picks what the general path picks
// (the sums differ only in rounding, which these fixed inputs never hit). A
// min_p too small to remove anything forces the general path.
TEST(SamplerTest, UnfilteredDrawEqualsTheGeneralPath) {
  for (float temperature : {1.0f, 0.7f, 1.9f}) {
    SamplingParams fast;
    fast.temperature = temperature;
    fast.presence_penalty = 0.4f;
    fast.logit_bias = {{5, -kInf}, {11, 2.0f}};
    fast.seed = 77;
    SamplingParams general = fast;
    general.min_p = 1e-30f;
    Sampler a(fast, SamplerState{}), b(general, SamplerState{});
    for (int step = 0; step < 300; ++step) {
      std::vector<float> logits = MakeLogits(997, step);
      logits[step % 997] = -kInf;
      ASSERT_EQ(SampleOnce(a, logits), SampleOnce(b, logits))
          << "temperature " << temperature << " step " << step;
    }
    EXPECT_EQ(a.state(), b.state());
  }
}

TEST(SamplerTest, GreedyTiesGoToLowestId) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p, SamplerState::FromSeed(1));
  EXPECT_EQ(SampleOnce(s, {1.0f, 3.0f, 2.0f, 3.0f}), 1);
  EXPECT_EQ(SampleOnce(s, {-kInf, -kInf}), 0);
  EXPECT_EQ(SampleOnce(s, {NAN, 0.5f, NAN}), 1);
}

// The vectorised argmax against the definition (the first index whose
// value no other exceeds; NaN counts as -inf; -0 equals +0), on vocabularies
// of many sizes with ties, signed zeros, infinities and NaNs anywhere.
TEST(SamplerTest, GreedyMatchesTheDefinition) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p, SamplerState::FromSeed(1));
  std::mt19937 rng(7);
  const float specials[] = {0.0f, -0.0f, kInf, -kInf, NAN, 1.0f, -1.0f};
  for (int trial = 0; trial < 400; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 300);
    std::vector<float> v(n);
    for (float& x : v) {
      x = rng() % 4 == 0 ? specials[rng() % 7]
                         : static_cast<float>(static_cast<int>(rng() % 9) - 6);
    }
    int want = 0;
    auto value = [&](int i) { return std::isnan(v[i]) ? -kInf : v[i]; };
    for (int i = 1; i < n; ++i) {
      if (value(i) > value(want)) want = i;
    }
    ASSERT_EQ(SampleOnce(s, v), want) << "trial " << trial << " n " << n;
  }
}

TEST(SamplerTest, TopKOneAndTinyTopPEqualGreedy) {
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  SamplingParams k1;
  k1.top_k = 1;
  SamplingParams p_tiny;
  p_tiny.top_p = 1e-6f;
  SamplingParams minp;
  minp.min_p = 1.0f;
  Sampler g(greedy, SamplerState::FromSeed(5));
  Sampler a(k1, SamplerState::FromSeed(6));
  Sampler b(p_tiny, SamplerState::FromSeed(7));
  Sampler c(minp, SamplerState::FromSeed(8));
  for (int step = 0; step < 100; ++step) {
    std::vector<float> l = MakeLogits(1000, step);
    l[step] = l[step + 1] = 6.0f;  // a tie at the top
    const int32_t want = SampleOnce(g, l);
    EXPECT_EQ(want, step);
    EXPECT_EQ(SampleOnce(a, l), want);
    EXPECT_EQ(SampleOnce(b, l), want);
    // min_p = 1 keeps every token tied with the top: step or step + 1.
    const int32_t t = SampleOnce(c, l);
    EXPECT_TRUE(t == step || t == step + 1) << t;
  }
}

// With a fixed seed the counts are fixed too, so these bounds cannot flake;
// they are loose enough to hold for any reasonable generator.
TEST(SamplerTest, DistributionMatchesSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f),
                                     std::log(4.0f), -kInf};
  SamplingParams p;
  Sampler s(p, SamplerState::FromSeed(99));
  constexpr int kDraws = 20000;
  std::vector<int> counts(logits.size());
  for (int i = 0; i < kDraws; ++i) ++counts[SampleOnce(s, logits)];
  double chi2 = 0;
  for (int t = 0; t < 4; ++t) {
    const double expected = kDraws * (t + 1) / 10.0;
    chi2 += (counts[t] - expected) * (counts[t] - expected) / expected;
  }
  EXPECT_EQ(counts[4], 0);
  EXPECT_LT(chi2, 20.0);  // 3 degrees of freedom: p < 0.0002
  // Temperature 0.5 squares the odds: 1 : 4 : 9 : 16.
  p.temperature = 0.5f;
  Sampler cold(p, SamplerState::FromSeed(100));
  std::vector<int> cold_counts(logits.size());
  for (int i = 0; i < kDraws; ++i) ++cold_counts[SampleOnce(cold, logits)];
  EXPECT_NEAR(cold_counts[3] / double{kDraws}, 16.0 / 30, 0.02);
  EXPECT_NEAR(cold_counts[0] / double{kDraws}, 1.0 / 30, 0.01);
  // top_k = 2 keeps tokens 3 and 2 only, in ratio 4 : 3.
  p.temperature = 1.0f;
  p.top_k = 2;
  Sampler k2(p, SamplerState::FromSeed(101));
  std::vector<int> k2_counts(logits.size());
  for (int i = 0; i < kDraws; ++i) ++k2_counts[SampleOnce(k2, logits)];
  EXPECT_EQ(k2_counts[0] + k2_counts[1], 0);
  EXPECT_NEAR(k2_counts[3] / double{kDraws}, 4.0 / 7, 0.02);
  // top_p = 0.5 keeps 0.4 + 0.3 (the smallest prefix reaching 0.5).
  p.top_k = 0;
  p.top_p = 0.5f;
  Sampler nucleus(p, SamplerState::FromSeed(102));
  std::vector<int> np_counts(logits.size());
  for (int i = 0; i < kDraws; ++i) ++np_counts[SampleOnce(nucleus, logits)];
  EXPECT_EQ(np_counts[0] + np_counts[1], 0);
  EXPECT_GT(np_counts[2], 0);
  // min_p = 0.6 keeps tokens with p >= 0.6 * 0.4: tokens 2 and 3.
  p.top_p = 1.0f;
  p.min_p = 0.6f;
  Sampler mp(p, SamplerState::FromSeed(103));
  std::vector<int> mp_counts(logits.size());
  for (int i = 0; i < kDraws; ++i) ++mp_counts[SampleOnce(mp, logits)];
  EXPECT_EQ(mp_counts[0] + mp_counts[1], 0);
  EXPECT_GT(mp_counts[2], 0);
}

TEST(SamplerTest, PenaltiesFollowRwkvRules) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  p.penalty_decay = 0.5f;
  Sampler s(p, SamplerState::FromSeed(3));
  // Token 0 leads by 0.6: picked once, then penalised by 0.5 + 0.25 * 1.
  EXPECT_EQ(SampleOnce(s, {1.6f, 1.0f, 0.0f}), 0);
  ASSERT_EQ(s.state().penalty_counts.size(), 1u);
  EXPECT_EQ(s.state().penalty_counts[0], std::make_pair(0, 1.0f));
  EXPECT_EQ(SampleOnce(s, {1.6f, 1.0f, 0.0f}), 1);
  // Counts decay by 0.5 before the new token is added.
  EXPECT_EQ(s.state().penalty_counts,
            (std::vector<std::pair<int32_t, float>>{{0, 0.5f}, {1, 1.0f}}));
  // Token 0 now pays 0.5 + 0.25 * 0.5 and token 1 pays 0.5 + 0.25 * 1:
  // 1.6 - 0.625 = 0.975 beats 1.0 - 0.75 = 0.25.
  EXPECT_EQ(SampleOnce(s, {1.6f, 1.0f, 0.0f}), 0);
  EXPECT_EQ(s.state().penalty_counts,
            (std::vector<std::pair<int32_t, float>>{{0, 1.25f}, {1, 0.5f}}));
  // Decay 0 drops every earlier count.
  p.penalty_decay = 0.0f;
  Sampler z(p, s.state());
  SampleOnce(z, {0.0f, 0.0f, 5.0f});
  EXPECT_EQ(z.state().penalty_counts,
            (std::vector<std::pair<int32_t, float>>{{2, 1.0f}}));
  // Logit bias comes first and can ban or force a token.
  SamplingParams b;
  b.temperature = 0.0f;
  b.logit_bias = {{0, -kInf}, {2, 10.0f}};
  Sampler sb(b, SamplerState::FromSeed(4));
  EXPECT_EQ(SampleOnce(sb, {9.0f, 1.0f, 0.0f}), 2);
}

TEST(SamplerTest, ValidateRejectsBadParams) {
  auto bad = [](auto mutate, Reason reason) {
    SamplingParams p;
    mutate(p);
    const absl::Status s = Validate(p, 100);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(GetReason(s), reason);
  };
  EXPECT_TRUE(Validate(SamplingParams{}, 100).ok());
  bad([](SamplingParams& p) { p.temperature = -1; }, Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.temperature = NAN; }, Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.temperature = kInf; },
      Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.top_k = -1; }, Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.top_p = 0; }, Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.top_p = 1.5f; }, Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.top_p = NAN; }, Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.min_p = -0.1f; }, Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.presence_penalty = NAN; },
      Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.penalty_decay = 1.1f; },
      Reason::kInvalidArgument);
  bad(
      [](SamplingParams& p) {
        p.logit_bias = {{100, 1.0f}};
      },
      Reason::kInvalidToken);
  bad(
      [](SamplingParams& p) {
        p.logit_bias = {{-1, 1.0f}};
      },
      Reason::kInvalidToken);
  bad(
      [](SamplingParams& p) {
        p.logit_bias = {{1, NAN}};
      },
      Reason::kInvalidArgument);
  bad([](SamplingParams& p) { p.stop_tokens = {100}; }, Reason::kInvalidToken);
  // Every token banned: nothing left to sample (it took a banned one).
  bad(
      [](SamplingParams& p) {
        for (int t = 0; t < 100; ++t) p.logit_bias.push_back({t, -kInf});
      },
      Reason::kInvalidArgument);
  SamplingParams all_but_one;
  for (int t = 1; t < 100; ++t) all_but_one.logit_bias.push_back({t, -kInf});
  // Finite: very unlikely, not banned (the API sends a bias <= -1e9 as
  // -inf, which is).
  all_but_one.logit_bias.push_back({0, -1e30f});
  EXPECT_TRUE(Validate(all_but_one, 100).ok());
}

TEST(SamplerTest, UnvalidatedParamsNeverCrash) {
  SamplingParams p;
  p.top_k = -5;
  p.top_p = -1.0f;
  p.min_p = 7.0f;
  p.temperature = NAN;
  p.logit_bias = {{-3, 1.0f}, {1000, 2.0f}};
  SamplerState state = SamplerState::FromSeed(1);
  state.penalty_counts = {{-2, 1.0f}, {5000, 1.0f}};
  Sampler s(p, state);
  EXPECT_EQ(SampleOnce(s, {0.0f, 2.0f, 1.0f}), 1);
  p.temperature = 1.0f;
  Sampler t(p, state);
  const int32_t token = SampleOnce(t, {0.0f, 2.0f, 1.0f});
  EXPECT_GE(token, 0);
  EXPECT_LT(token, 3);
  EXPECT_EQ(SampleOnce(t, {}), 0);
}

TEST(SamplerStateTest, SerializeRoundTripAndCorruption) {
  SamplerState s = SamplerState::FromSeed(77);
  s.penalty_counts = {{1, 0.5f}, {40000, 3.25f}};
  const std::string bytes = s.Serialize();
  auto parsed = SamplerState::Parse(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(*parsed == s);

  auto corrupt = [](const std::string& b) {
    auto r = SamplerState::Parse(b);
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(GetReason(r.status()), Reason::kStateCorrupt);
  };
  corrupt("");
  corrupt(bytes.substr(0, bytes.size() - 1));
  corrupt(bytes + "x");
  for (size_t i = 0; i < bytes.size(); ++i) {  // every single-bit flip
    std::string b = bytes;
    b[i] ^= 0x10;
    corrupt(b);
  }
  // Well-formed but semantically invalid contents (valid checksum).
  SamplerState unsorted = s;
  unsorted.penalty_counts = {{5, 1.0f}, {2, 1.0f}};
  corrupt(unsorted.Serialize());
  SamplerState nan = s;
  nan.penalty_counts = {{5, NAN}};
  corrupt(nan.Serialize());
  SamplerState zero_count = s;
  zero_count.penalty_counts = {{5, 0.0f}};
  corrupt(zero_count.Serialize());
  SamplerState zero_rng;
  corrupt(zero_rng.Serialize());
  // A default state seeds from params.seed.
  SamplingParams p;
  p.seed = 77;
  Sampler seeded(p, SamplerState{});
  EXPECT_TRUE(seeded.state() == SamplerState::FromSeed(77));
}

TEST(LogprobsTest, LogSoftmaxAndTopN) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -kInf};
  std::vector<float> lp(logits.size());
  LogSoftmax(logits, absl::MakeSpan(lp));
  double sum = 0;
  for (float v : lp) sum += std::exp(double{v});
  EXPECT_NEAR(sum, 1.0, 1e-6);
  EXPECT_EQ(lp[4], -kInf);
  EXPECT_NEAR(lp[1] - lp[2], 1.0f, 1e-6);
  const LogprobResult r = ComputeLogprobs(logits, 2, 3);
  EXPECT_FLOAT_EQ(r.chosen_logprob, lp[2]);
  ASSERT_EQ(r.top.size(), 3u);
  EXPECT_EQ(r.top[0].id, 1);  // tie with 3: lower id first
  EXPECT_EQ(r.top[1].id, 3);
  EXPECT_EQ(r.top[2].id, 2);
  EXPECT_EQ(ComputeLogprobs(logits, 0, 10).top.size(), 5u);
  // Degenerate inputs stay defined.
  std::vector<float> all_inf = {-kInf, -kInf};
  LogSoftmax(all_inf, absl::MakeSpan(all_inf));
  EXPECT_EQ(all_inf[0], -kInf);
  std::vector<float> pos_inf = {kInf, 0.0f, kInf};
  LogSoftmax(pos_inf, absl::MakeSpan(pos_inf));
  EXPECT_NEAR(pos_inf[0], std::log(0.5), 1e-6);
  EXPECT_EQ(pos_inf[1], -kInf);
}

}  // namespace
}  // namespace statestream::engine
