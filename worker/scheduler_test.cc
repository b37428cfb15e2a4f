// SPDX-License-Identifier: Apache-2.0
// The scheduler and its tasks on a real (random-weight) model: results equal
// running the engine directly, whatever else shares the batch.
#include "worker/scheduler.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/engine/random_model.h"
#include "worker/engine/tokenizer.h"
#include "worker/scheduler_test_util.h"
#include "worker/tasks.h"

namespace statestream::worker {
namespace {

TEST(SchedulerTest, ConcurrentIngestsEqualDirectRuns) {
  auto model = SmallModel();
  Scheduler sched(model.get(), SchedulerOptions{});
  std::vector<std::vector<int32_t>> inputs;
  std::vector<EngineState> states;
  for (int i = 0; i < 12; ++i) {
    inputs.push_back(Tokens(1 + i * 37, i));
    states.push_back(EngineState::Initial(*model));
  }
  std::vector<Waiter> waiters(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto task = std::make_shared<IngestTask>(&states[i], inputs[i],
                                             [&, i](const absl::Status& s) {
                                               waiters[i].status = s;
                                               waiters[i].done.Notify();
                                             });
    ASSERT_TRUE(sched.Submit(task).ok());
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    waiters[i].done.WaitForNotification();
    ASSERT_TRUE(waiters[i].status.ok()) << waiters[i].status;
    EngineState want = Direct(*model, inputs[i]);
    EXPECT_EQ(states[i].state, want.state) << i;
    EXPECT_EQ(states[i].last_hidden, want.last_hidden) << i;
    EXPECT_EQ(states[i].position, inputs[i].size());
  }
  EXPECT_GT(sched.stats().max_batch_sequences, 1);
}

struct GenOutput {
  std::vector<int32_t> tokens;
  GenerateResult result;
  absl::Status status;
  EngineState state;
};

GenOutput Generate(Scheduler& sched, const engine::Model& m, EngineState start,
                   GenerateSpec spec,
                   const engine::Tokenizer* tokenizer = nullptr) {
  GenOutput out;
  out.state = std::move(start);
  absl::Notification done;
  auto task = std::make_shared<GenerateTask>(
      &out.state, m.info().config.vocab_size, tokenizer, spec,
      [&](const GeneratedToken& t) { out.tokens.push_back(t.id); },
      [&](const absl::Status& s, const GenerateResult& r) {
        out.status = s;
        out.result = r;
        done.Notify();
      });
  EXPECT_TRUE(sched.Submit(task).ok());
  done.WaitForNotification();
  return out;
}

TEST(SchedulerTest, GreedyGenerationEqualsManualLoop) {
  auto model = SmallModel();
  Scheduler sched(model.get(), SchedulerOptions{});
  std::vector<int32_t> prompt = Tokens(30, 1);
  GenerateSpec spec;
  spec.prompt = prompt;
  spec.params.temperature = 0;
  spec.max_tokens = 12;
  GenOutput g = Generate(sched, *model, EngineState::Initial(*model), spec);
  ASSERT_TRUE(g.status.ok()) << g.status;
  ASSERT_EQ(g.tokens.size(), 12u);
  EXPECT_EQ(g.result.finish, FinishReason::kMaxTokens);
  // Manual: argmax, feed, repeat.
  std::vector<int32_t> seq = prompt;
  std::vector<float> logits;
  for (int i = 0; i < 12; ++i) {
    Direct(*model, seq, &logits);
    int32_t best = static_cast<int32_t>(
        std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(g.tokens[i], best) << i;
    seq.push_back(best);
  }
  // The state consumed the prompt and every output token.
  EngineState want = Direct(*model, seq);
  EXPECT_EQ(g.state.state, want.state);
  EXPECT_EQ(g.state.position, seq.size());
}

// Stop strings end the generation at the first token that completes one,
// wherever the match starts: inside that token, across earlier tokens, or
// in a resumed generation's earlier text (prior_text).
TEST(SchedulerTest, StopStringsEndAtTheTokenThatCompletesThem) {
  auto model = SmallModel();
  auto bytes = engine::MakeByteTokenizer();  // token id = byte value
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  Scheduler sched(model.get(), SchedulerOptions{});
  GenerateSpec spec;
  spec.prompt = Tokens(20, 4);
  spec.params.temperature = 0;
  spec.max_tokens = 40;
  const GenOutput whole =
      Generate(sched, *model, EngineState::Initial(*model), spec, bytes->get());
  ASSERT_TRUE(whole.status.ok()) << whole.status;
  ASSERT_GE(whole.tokens.size(), 30u);
  std::string text;
  for (int32_t t : whole.tokens) text.push_back(static_cast<char>(t));
  // The text's first occurrence of `stop` ends with token `end` (1-based).
  auto check = [&](const std::string& stop, const std::string& prior,
                   size_t want_generated, FinishReason want) {
    SCOPED_TRACE(testing::PrintToString(stop));
    GenerateSpec s = spec;
    s.stop_strings = {"\xFF\xFE-never", stop};
    s.prior_text = prior;
    s.prior_text_emitted = prior.size();
    const GenOutput g =
        Generate(sched, *model, EngineState::Initial(*model), s, bytes->get());
    ASSERT_TRUE(g.status.ok()) << g.status;
    EXPECT_EQ(g.result.finish, want);
    EXPECT_EQ(g.tokens.size(), want_generated);
    EXPECT_EQ(g.result.generated, static_cast<int>(want_generated));
  };
  const size_t n = whole.tokens.size();
  // Within the last token, and across the six before it.
  check(text.substr(25, 1), "", text.find(text[25]) + 1,
        FinishReason::kStopString);
  const std::string across = text.substr(19, 7);
  check(across, "", text.find(across) + across.size(),
        FinishReason::kStopString);
  // Begun in the earlier text, completed by the first new token.
  check(std::string("prior") + text.substr(0, 1), "...prior", 1,
        FinishReason::kStopString);
  // Wholly in the earlier text: the first check sees it.
  check("prior", "a prior text", 1, FinishReason::kStopString);
  // Longer than all the text, or never in it: max_tokens.
  check(text + "!", "", n, whole.result.finish);
}

TEST(SchedulerTest, SeededGenerationResumesIdenticallyUnderLoad) {
  auto model = SmallModel();
  Scheduler sched(model.get(), SchedulerOptions{});
  GenerateSpec spec;
  spec.prompt = Tokens(20, 2);
  spec.params.temperature = 0.9f;
  spec.params.top_p = 0.9f;
  spec.params.presence_penalty = 0.3f;
  spec.params.penalty_decay = 0.99f;
  spec.params.seed = 42;
  spec.max_tokens = 20;
  GenOutput whole = Generate(sched, *model, EngineState::Initial(*model), spec);
  ASSERT_TRUE(whole.status.ok());
  // Same thing in two halves, with other sessions ingesting meanwhile.
  std::vector<EngineState> noise(4, EngineState::Initial(*model));
  for (auto& n : noise) {
    ASSERT_TRUE(sched
                    .Submit(std::make_shared<IngestTask>(
                        &n, Tokens(500, 9), [](const absl::Status&) {}))
                    .ok());
  }
  GenerateSpec first = spec;
  first.max_tokens = 8;
  GenOutput a = Generate(sched, *model, EngineState::Initial(*model), first);
  GenerateSpec second = spec;
  second.prompt.clear();
  second.max_tokens = 12;
  second.sampler = a.result.sampler;
  GenOutput b = Generate(sched, *model, a.state, second);
  ASSERT_TRUE(b.status.ok()) << b.status;
  std::vector<int32_t> joined = a.tokens;
  joined.insert(joined.end(), b.tokens.begin(), b.tokens.end());
  EXPECT_EQ(joined, whole.tokens);
  EXPECT_EQ(b.state.state, whole.state.state);
}

TEST(SchedulerTest, ScoreMatchesLogSoftmax) {
  auto model = SmallModel();
  Scheduler sched(model.get(), SchedulerOptions{});
  std::vector<int32_t> prefix = Tokens(10, 4), cont = Tokens(5, 5);
  EngineState s = Direct(*model, prefix);
  absl::Notification done;
  std::vector<float> got;
  auto task = std::make_shared<ScoreTask>(
      &s, model->info().config.vocab_size, cont,
      [&](const absl::Status& st, const std::vector<float>& lp,
          const std::vector<bool>&) {
        EXPECT_TRUE(st.ok()) << st;
        got = lp;
        done.Notify();
      });
  ASSERT_TRUE(sched.Submit(task).ok());
  done.WaitForNotification();
  ASSERT_EQ(got.size(), cont.size());
  std::vector<int32_t> seq = prefix;
  for (size_t i = 0; i < cont.size(); ++i) {
    std::vector<float> logits;
    Direct(*model, seq, &logits);
    double max = *std::max_element(logits.begin(), logits.end()), sum = 0;
    for (float l : logits) sum += std::exp(l - max);
    EXPECT_NEAR(got[i], logits[cont[i]] - max - std::log(sum), 1e-5);
    seq.push_back(cont[i]);
  }
}

// Non-finite logits (a state gone bad) never make a NaN logprob: NaN
// counts as -inf, +inf logits share the mass, all -inf is -inf.
TEST(SchedulerTest, ScoreLogprobsAreNeverNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    std::vector<float> logits;
    int32_t want;
    float logprob;
    bool greedy;
  };
  for (const Case& c :
       std::vector<Case>{{{nan, 0.0f, 0.0f, nan}, 1, std::log(0.5f), true},
                         {{nan, 0.0f, 0.0f, nan}, 0, -inf, false},
                         {{inf, 1.0f, inf, 2.0f}, 2, -std::log(2.0f), false},
                         {{inf, 1.0f, inf, 2.0f}, 3, -inf, false},
                         {{-inf, -inf, -inf, -inf}, 2, -inf, false}}) {
    SCOPED_TRACE(testing::PrintToString(c.logits));
    EngineState state;
    std::vector<float> logprobs;
    std::vector<bool> greedy;
    ScoreTask task(&state, 4, {c.want},
                   [&](const absl::Status& s, const std::vector<float>& l,
                       const std::vector<bool>& g) {
                     EXPECT_TRUE(s.ok()) << s;
                     logprobs = l;
                     greedy = g;
                   });
    ASSERT_TRUE(task.NextStep(1).logits_from_hidden);
    std::vector<float> logits = c.logits;
    task.OnStep(0, logits.data());
    ASSERT_TRUE(task.Finished());
    task.OnDone();
    ASSERT_EQ(logprobs.size(), 1u);
    EXPECT_FLOAT_EQ(logprobs[0], c.logprob);
    EXPECT_EQ(greedy[0], c.greedy);
  }
}

// The logprobs of `cont` after Tokens(10, seed), scored alone on a
// scheduler of its own.
std::vector<float> ScoreAlone(engine::Model& model, uint32_t seed,
                              const std::vector<int32_t>& cont) {
  Scheduler sched(&model, SchedulerOptions{});
  EngineState s = Direct(model, Tokens(10, seed));
  absl::Notification done;
  std::vector<float> alone;
  const absl::Status submitted = sched.Submit(std::make_shared<ScoreTask>(
      &s, model.info().config.vocab_size, cont,
      [&](const absl::Status&, const std::vector<float>& lp,
          const std::vector<bool>&) {
        alone = lp;
        done.Notify();
      }));
  EXPECT_TRUE(submitted.ok()) << submitted;
  if (submitted.ok()) done.WaitForNotification();
  return alone;
}

// Scores that start together take their first logits from their saved
// hidden vectors in one head product: the same bits as one alone.
TEST(SchedulerTest, ScoresStartedTogetherEqualOneAlone) {
  auto model = SmallModel();
  const int V = model->info().config.vocab_size;
  constexpr int kScores = 6;
  std::vector<int32_t> cont = Tokens(4, 5);
  auto run = [&](int n) {
    Scheduler sched(model.get(), SchedulerOptions{});
    std::vector<EngineState> states;
    for (int i = 0; i < n; ++i) states.push_back(Direct(*model, Tokens(10, i)));
    std::vector<std::vector<float>> got(n);
    std::vector<absl::Notification> done(n);
    std::vector<std::shared_ptr<ScoreTask>> tasks;
    for (int i = 0; i < n; ++i) {
      tasks.push_back(std::make_shared<ScoreTask>(
          &states[i], V, cont,
          [&, i](const absl::Status& st, const std::vector<float>& lp,
                 const std::vector<bool>&) {
            EXPECT_TRUE(st.ok()) << st;
            got[i] = lp;
            done[i].Notify();
          }));
    }
    for (auto& t : tasks) EXPECT_TRUE(sched.Submit(t).ok());
    for (auto& d : done) d.WaitForNotification();
    return got;
  };
  const std::vector<std::vector<float>> together = run(kScores);
  for (int i = 0; i < kScores; ++i) {
    EXPECT_EQ(together[i], ScoreAlone(*model, i, cont)) << "score " << i;
  }
}

// A long continuation is scored in prefill chunks with logits after every
// token: a pass over the weights per chunk, not per token, and the same
// bits as scoring one token per step (prefill_chunk 1).
TEST(SchedulerTest, AScoreRunsInPrefillChunksAndEqualsOneTokenAtATime) {
  auto model = SmallModel();
  const int V = model->info().config.vocab_size;
  const std::vector<int32_t> cont = Tokens(150, 6);
  auto run = [&](int chunk, int64_t* iterations) {
    SchedulerOptions o;
    o.prefill_chunk = chunk;
    Scheduler sched(model.get(), o);
    EngineState s = Direct(*model, Tokens(10, 7));
    absl::Notification done;
    std::vector<float> got;
    std::vector<bool> greedy;
    auto task = std::make_shared<ScoreTask>(
        &s, V, cont,
        [&](const absl::Status& st, const std::vector<float>& lp,
            const std::vector<bool>& g) {
          EXPECT_TRUE(st.ok()) << st;
          got = lp;
          greedy = g;
          done.Notify();
        });
    task->set_top_logprobs(3);
    EXPECT_TRUE(sched.Submit(task).ok());
    done.WaitForNotification();
    EXPECT_EQ(task->top().size(), cont.size());
    *iterations = sched.stats().iterations;
    // Logprobs, then greedy flags, then each position's top 3 (id, logprob).
    got.insert(got.end(), greedy.begin(), greedy.end());
    for (const auto& top : task->top()) {
      for (const engine::TokenLogprob& t : top) {
        got.push_back(static_cast<float>(t.id));
        got.push_back(t.logprob);
      }
    }
    return got;
  };
  int64_t chunked = 0, single = 0;
  const std::vector<float> a = run(64, &chunked);
  const std::vector<float> b = run(1, &single);
  ASSERT_EQ(a.size(), 2 * cont.size() + 6 * cont.size());
  EXPECT_EQ(a, b);
  // 149 tokens fed (the last is only scored): 3 chunks of 64 vs 149 steps.
  EXPECT_EQ(chunked, 3);
  EXPECT_EQ(single, 149);
}

// Scores that run together share max_score_rows rows of logits per
// iteration (each row is a vocabulary of floats kept for the process's
// life), and still give the bits each gives alone.
TEST(SchedulerTest, ScoresTogetherShareTheBoundOnLogitRows) {
  auto model = SmallModel();
  const int V = model->info().config.vocab_size;
  constexpr int kScores = 4;
  std::atomic<int> most_tokens{0};
  auto run = [&](int n) {
    SchedulerOptions o;
    o.max_score_rows = 48;
    o.on_batch = [&](int, int tokens) {
      int seen = most_tokens.load();
      while (tokens > seen &&
             !most_tokens.compare_exchange_weak(seen, tokens)) {
      }
    };
    Scheduler sched(model.get(), o);
    std::vector<EngineState> states;
    for (int i = 0; i < n; ++i) states.push_back(Direct(*model, Tokens(10, i)));
    std::vector<std::vector<float>> got(n);
    std::vector<absl::Notification> done(n);
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(
          sched
              .Submit(std::make_shared<ScoreTask>(
                  &states[i], V, Tokens(100, 20 + i),
                  [&, i](const absl::Status& st, const std::vector<float>& lp,
                         const std::vector<bool>&) {
                    EXPECT_TRUE(st.ok()) << st;
                    got[i] = lp;
                    done[i].Notify();
                  }))
              .ok());
    }
    for (auto& d : done) d.WaitForNotification();
    return got;
  };
  const std::vector<std::vector<float>> together = run(kScores);
  EXPECT_LE(most_tokens.load(), 48);
  EXPECT_GT(most_tokens.load(), 0);
  for (int i = 0; i < kScores; ++i) {
    EXPECT_EQ(together[i], ScoreAlone(*model, i, Tokens(100, 20 + i)))
        << "score " << i;
  }
}

// The model, with the largest head product from hidden vectors seen; a
// batch waits at `gate` while it is set (so tasks can pile up meanwhile).
class WatchedModel final : public engine::Model {
 public:
  explicit WatchedModel(engine::Model* inner)
      : engine::Model(inner->info()), inner_(inner) {}
  absl::Status Forward(absl::Span<const engine::SequenceWork> b) override {
    if (gate != nullptr) gate->WaitForNotification();
    return inner_->Forward(b);
  }
  absl::Status Logits(const float* hidden, int rows, float* out) override {
    int seen = most_rows.load();
    while (rows > seen && !most_rows.compare_exchange_weak(seen, rows)) {
    }
    return inner_->Logits(hidden, rows, out);
  }
  void InitState(float* state) const override { inner_->InitState(state); }

  absl::Notification* gate = nullptr;
  std::atomic<int> most_rows{0};

 private:
  engine::Model* inner_;
};

// Logits from saved hidden vectors (every Score's first token) share the
// bound on rows too: 100 Scores that arrive together take turns, 16 at a
// time, and each still gives the bits it gives alone.
TEST(SchedulerTest, FirstStepsFromHiddenVectorsTakeTurnsForRows) {
  auto model = SmallModel();
  const int V = model->info().config.vocab_size;
  WatchedModel watched(model.get());
  absl::Notification open;
  watched.gate = &open;
  SchedulerOptions o;
  o.max_score_rows = 16;
  Scheduler sched(&watched, o);
  // An ingest holds the first batch while the scores arrive.
  EngineState ingest = EngineState::Initial(*model);
  Waiter ingested;
  ASSERT_TRUE(
      sched
          .Submit(std::make_shared<IngestTask>(&ingest, Tokens(4, 9),
                                               [&](const absl::Status& st) {
                                                 ingested.status = st;
                                                 ingested.done.Notify();
                                               }))
          .ok());
  constexpr int kScores = 100;
  std::vector<EngineState> states;
  for (int i = 0; i < kScores; ++i) {
    states.push_back(Direct(*model, Tokens(10, 100 + i)));
  }
  std::vector<std::vector<float>> got(kScores);
  std::vector<absl::Notification> done(kScores);
  for (int i = 0; i < kScores; ++i) {
    ASSERT_TRUE(
        sched
            .Submit(std::make_shared<ScoreTask>(
                &states[i], V, Tokens(2, 300 + i),
                [&, i](const absl::Status& st, const std::vector<float>& lp,
                       const std::vector<bool>&) {
                  EXPECT_TRUE(st.ok()) << st;
                  got[i] = lp;
                  done[i].Notify();
                }))
            .ok());
  }
  open.Notify();
  for (auto& d : done) d.WaitForNotification();
  ingested.done.WaitForNotification();
  EXPECT_TRUE(ingested.status.ok()) << ingested.status;
  EXPECT_LE(watched.most_rows.load(), 16);
  EXPECT_GT(watched.most_rows.load(), 1);
  for (int i = 0; i < kScores; i += 9) {
    EXPECT_EQ(got[i], ScoreAlone(*model, 100 + i, Tokens(2, 300 + i)))
        << "score " << i;
  }
}

// Scores take turns with the rows: a short Score is not held until a long
// one ends. (The rotation moved past a score skipped for want of rows, so
// it came back to the long one every iteration: here the short one waited
// ~250 iterations.)
TEST(SchedulerTest, AShortScoreIsNotHeldBehindALongOne) {
  auto model = SmallModel();
  const int V = model->info().config.vocab_size;
  SchedulerOptions o;
  o.max_score_rows = 16;
  Scheduler sched(model.get(), o);
  EngineState long_state = Direct(*model, Tokens(10, 1));
  EngineState short_state = Direct(*model, Tokens(10, 2));
  std::atomic<bool> long_done{false};
  std::atomic<bool> short_first{false};
  absl::Notification both;
  std::atomic<int> left{2};
  auto finish = [&] {
    if (left.fetch_sub(1) == 1) both.Notify();
  };
  // Scores `tokens` on `state`, then runs `then`.
  auto score = [&](EngineState* state, std::vector<int32_t> tokens,
                   std::function<void()> then) {
    return sched.Submit(std::make_shared<ScoreTask>(
        state, V, std::move(tokens),
        [&, then](const absl::Status& st, const std::vector<float>&,
                  const std::vector<bool>&) {
          EXPECT_TRUE(st.ok()) << st;
          then();
          finish();
        }));
  };
  ASSERT_TRUE(
      score(&long_state, Tokens(4000, 3), [&] { long_done = true; }).ok());
  ASSERT_TRUE(score(&short_state, Tokens(40, 4), [&] {
                short_first = !long_done.load();
              }).ok());
  both.WaitForNotification();
  EXPECT_TRUE(short_first.load());
}

TEST(SchedulerTest, GenerationIsNotStalledByALongIngest) {
  auto model = SmallModel();
  SchedulerOptions opts;
  opts.max_batch_tokens = 64;
  opts.prefill_chunk = 32;
  Scheduler sched(model.get(), opts);
  EngineState big = EngineState::Initial(*model);
  std::atomic<bool> ingest_done{false};
  absl::Notification ingest_finished;
  ASSERT_TRUE(
      sched
          .Submit(std::make_shared<IngestTask>(&big, Tokens(20000, 6),
                                               [&](const absl::Status&) {
                                                 ingest_done = true;
                                                 ingest_finished.Notify();
                                               }))
          .ok());
  GenerateSpec spec;
  spec.prompt = Tokens(5, 7);
  spec.params.temperature = 0;
  spec.max_tokens = 5;
  GenOutput g = Generate(sched, *model, EngineState::Initial(*model), spec);
  EXPECT_TRUE(g.status.ok());
  EXPECT_FALSE(ingest_done.load())
      << "a short generation waited for a 20k-token ingest";
  ingest_finished.WaitForNotification();
}

// As many decoding generations as the batch budget (here 2 tokens, three
// generations) neither starve the third generation nor an ingest: each
// iteration starts the decodes at another task and leaves a share of the
// budget to prefills.
TEST(SchedulerTest, DecodesFillingTheBudgetStarveNobody) {
  auto model = SmallModel();
  SchedulerOptions opts;
  opts.max_batch_tokens = 2;
  opts.prefill_chunk = 8;
  Scheduler sched(model.get(), opts);
  constexpr int kGens = 3;
  std::vector<EngineState> states(kGens, EngineState::Initial(*model));
  std::vector<std::atomic<int>> emitted(kGens);
  std::vector<absl::Notification> gen_done(kGens);
  std::atomic<int> finished{0};
  for (int i = 0; i < kGens; ++i) {
    GenerateSpec spec;
    spec.prompt = Tokens(3, 20 + i);
    spec.params.temperature = 0;
    spec.max_tokens = 3000;
    ASSERT_TRUE(sched
                    .Submit(std::make_shared<GenerateTask>(
                        &states[i], model->info().config.vocab_size, nullptr,
                        spec, [&, i](const GeneratedToken&) { ++emitted[i]; },
                        [&, i](const absl::Status&, const GenerateResult&) {
                          ++finished;
                          gen_done[i].Notify();
                        }))
                    .ok());
  }
  // Once all three decode, an ingest arrives.
  while (emitted[0] == 0 || emitted[1] == 0 || emitted[2] == 0) {
    ASSERT_EQ(finished.load(), 0) << "a generation waited for the others";
    absl::SleepFor(absl::Microseconds(200));
  }
  EngineState ingest_state = EngineState::Initial(*model);
  absl::Notification ingested;
  ASSERT_TRUE(sched
                  .Submit(std::make_shared<IngestTask>(
                      &ingest_state, Tokens(40, 9),
                      [&](const absl::Status&) { ingested.Notify(); }))
                  .ok());
  ingested.WaitForNotification();
  EXPECT_EQ(finished.load(), 0) << "the ingest waited for the generations";
  for (auto& d : gen_done) d.WaitForNotification();
}

// Two ingests behind decodes that leave one prefill chunk per iteration
// share it evenly, whatever sits between them in the batch: when the first
// ends, the second is nearly done too.
TEST(SchedulerTest, PrefillsShareTheBudgetEvenly) {
  auto model = SmallModel();
  SchedulerOptions opts;
  opts.max_batch_tokens = 8;  // 6 decode slots, 2 tokens of prefill
  opts.prefill_chunk = 4;
  Scheduler sched(model.get(), opts);
  constexpr int kGens = 6;
  std::vector<EngineState> states(kGens, EngineState::Initial(*model));
  std::vector<std::atomic<int>> emitted(kGens);
  std::vector<std::shared_ptr<GenerateTask>> gens;
  std::atomic<int> finished{0};
  for (int i = 0; i < kGens; ++i) {
    GenerateSpec spec;
    spec.prompt = Tokens(1, 40 + i);
    spec.params.temperature = 0;
    spec.max_tokens = 100000;
    gens.push_back(std::make_shared<GenerateTask>(
        &states[i], model->info().config.vocab_size, nullptr, spec,
        [&, i](const GeneratedToken&) { ++emitted[i]; },
        [&](const absl::Status&, const GenerateResult&) { ++finished; }));
    ASSERT_TRUE(sched.Submit(gens.back()).ok());
  }
  for (int i = 0; i < kGens; ++i) {
    while (emitted[i] == 0) absl::SleepFor(absl::Microseconds(200));
  }
  constexpr int kTokens = 400;
  EngineState a = EngineState::Initial(*model);
  EngineState b = EngineState::Initial(*model);
  uint64_t other_at_end = 0;  // b's position when a ended (scheduler thread)
  absl::Notification a_done, b_done;
  ASSERT_TRUE(
      sched
          .Submit(std::make_shared<IngestTask>(&a, Tokens(kTokens, 1),
                                               [&](const absl::Status&) {
                                                 other_at_end = b.position;
                                                 a_done.Notify();
                                               }))
          .ok());
  ASSERT_TRUE(sched
                  .Submit(std::make_shared<IngestTask>(
                      &b, Tokens(kTokens, 2),
                      [&](const absl::Status&) { b_done.Notify(); }))
                  .ok());
  a_done.WaitForNotification();
  b_done.WaitForNotification();
  // Alternating, b trails a by a few chunks (plus a head start of up to
  // some iterations if this thread is preempted between the submits); the
  // old rotation left it at 58 of 400.
  EXPECT_GE(other_at_end, uint64_t{kTokens} * 6 / 10);
  for (auto& g : gens) g->Cancel();
  while (finished.load() < kGens) absl::SleepFor(absl::Milliseconds(1));
}

}  // namespace
}  // namespace statestream::worker
