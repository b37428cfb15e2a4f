// SPDX-License-Identifier: Apache-2.0
// The RWKV-7 engine against the official reference (golden vectors), and the
// determinism contract of model.h.
#include "worker/engine/model.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>

#include "common/status.h"
#include "common/testing/scratch_dir.h"
#include "gtest/gtest.h"
#include "worker/engine/accuracy.h"
#include "worker/engine/golden.h"
#include "worker/engine/golden_trace.h"
#include "worker/engine/kernels.h"
#include "worker/engine/model_test_util.h"
#include "worker/engine/random_model.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine {
namespace {

using testing::ExpectCloseToGolden;
using testing::ExpectTraceMatchesGolden;
using testing::Floats;
using testing::Ints;
using testing::LoadJson;
using testing::Opts;
using testing::SharedPath;
using testing::StateFromGolden;

// The kernel builds beside the scalar one (each skipped where the CPU lacks
// its instruction set).
constexpr const char* kEveryBuild[] = {"avx2", "avx512", "avx512vnni",
                                       "avx512bf16", "avx512amx"};

std::unique_ptr<Model> Load(const std::string& rel, ModelOptions opts = {}) {
  auto model = LoadModel(SharedPath(rel), opts);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

struct GoldenCase {
  const char* golden;
  const char* model;
  bool bf16;  // compare against bf16_checkpoint.logits
};

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

// Feeds the golden tokens one at a time (RNN mode), as the reference did.
TEST_P(GoldenTest, RnnModeMatchesReference) {
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath(gc.golden));
  auto model = Load(gc.model);
  ASSERT_NE(model, nullptr);
  const ModelConfig& c = model->info().config;
  EXPECT_EQ(c.n_layer, g["hparams"]["n_layer"].get<int>());
  EXPECT_EQ(c.n_embd, g["hparams"]["n_embd"].get<int>());
  EXPECT_EQ(c.vocab_size, g["hparams"]["vocab_size"].get<int>());
  EXPECT_EQ(c.dim_ffn, g["hparams"]["dim_ffn"].get<int>());
  EXPECT_EQ(c.n_head, g["hparams"]["n_head"].get<int>());

  std::vector<int32_t> tokens = Ints(g["tokens"]);
  std::vector<int32_t> positions = Ints(g["logits_positions"]);
  const nlohmann::json& want_logits =
      gc.bf16 ? g["bf16_checkpoint"]["logits"] : g["logits"];
  std::vector<float> state(model->info().state_floats);
  model->InitState(state.data());
  std::vector<float> logits(c.vocab_size);
  size_t next = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    int32_t zero = 0;
    SequenceWork w{absl::MakeConstSpan(&tokens[i], 1), state.data(),
                   absl::MakeConstSpan(&zero, 1), logits.data()};
    ASSERT_TRUE(model->Forward({&w, 1}).ok());
    if (next < positions.size() && positions[next] == static_cast<int>(i)) {
      ExpectCloseToGolden(logits.data(), Floats(want_logits[next]),
                          "logits at position " + std::to_string(i));
      ++next;
    }
  }
  EXPECT_EQ(next, positions.size());
  if (gc.bf16) return;  // the reference states are for the fp32 weights
  ExpectCloseToGolden(state.data(), StateFromGolden(g["final_state"]["layers"]),
                      "final state");
  // Resume: continue from the saved state.
  std::vector<float> resumed = StateFromGolden(g["final_state"]["layers"]);
  std::vector<int32_t> cont = Ints(g["continuation"]["tokens"]);
  for (size_t i = 0; i < cont.size(); ++i) {
    int32_t zero = 0;
    SequenceWork w{absl::MakeConstSpan(&cont[i], 1), resumed.data(),
                   absl::MakeConstSpan(&zero, 1), logits.data()};
    ASSERT_TRUE(model->Forward({&w, 1}).ok());
    ExpectCloseToGolden(logits.data(), Floats(g["continuation"]["logits"][i]),
                        "continuation logits " + std::to_string(i));
  }
  if (g["continuation"].contains("final_state_after_continuation")) {
    ExpectCloseToGolden(
        resumed.data(),
        StateFromGolden(g["continuation"]["final_state_after_continuation"]),
        "state after continuation");
  }
}

// All tokens in one call (chunked sequence mode) against the reference's
// sequence mode.
TEST_P(GoldenTest, SequenceModeMatchesReference) {
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath(gc.golden));
  auto model = Load(gc.model);
  ASSERT_NE(model, nullptr);
  std::vector<int32_t> tokens = Ints(g["tokens"]);
  std::vector<int32_t> positions = Ints(g["logits_positions"]);
  const int V = model->info().config.vocab_size;
  std::vector<float> state(model->info().state_floats, 0.0f);
  std::vector<float> logits(positions.size() * V);
  SequenceWork w{tokens, state.data(), positions, logits.data()};
  ASSERT_TRUE(model->Forward({&w, 1}).ok());
  for (size_t j = 0; j < positions.size(); ++j) {
    // The reference's sequence mode ran on the fp32 weights; for the bf16
    // file, compare with its (RNN-mode) bf16 goldens.
    const nlohmann::json& want = gc.bf16 ? g["bf16_checkpoint"]["logits"][j]
                                         : g["sequence_mode"]["logits"][j];
    ExpectCloseToGolden(&logits[j * V], Floats(want),
                        "sequence logits " + std::to_string(j));
  }
}

// Intermediate vectors at positions 0 and 1, layer by layer (the trace
// exists to locate a mismatch; here it must simply agree everywhere).
class TraceTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(TraceTest, PerLayerTraceMatches) {
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath(gc.golden));
  EXPECT_GT(ExpectTraceMatchesGolden(SharedPath(gc.model), g), 20);
}

INSTANTIATE_TEST_SUITE_P(
    Rwkv7Tiny, GoldenTest,
    ::testing::Values(
        GoldenCase{"testdata/rwkv7-tiny.golden.json", "testdata/rwkv7-tiny.pth",
                   false},
        GoldenCase{"testdata/rwkv7-tiny.golden.json",
                   "testdata/rwkv7-tiny.safetensors", false},
        GoldenCase{"testdata/rwkv7-tiny.golden.json",
                   "testdata/rwkv7-tiny-bf16.pth", true},
        GoldenCase{"testdata/rwkv7-tiny.golden.json",
                   "testdata/rwkv7-tiny-bf16.safetensors", true},
        GoldenCase{"testdata/third_party/tiny-rwkv-7v0-834K.golden.json",
                   "testdata/third_party/tiny-rwkv-7v0-834K-bf16.pth", false}));

// The traces were computed for the fp32 weights (the trained model's values
// are exact in bf16, so its file is the fp32 model).
INSTANTIATE_TEST_SUITE_P(
    Rwkv7Tiny, TraceTest,
    ::testing::Values(
        GoldenCase{"testdata/rwkv7-tiny.golden.json", "testdata/rwkv7-tiny.pth",
                   false},
        GoldenCase{"testdata/rwkv7-tiny.golden.json",
                   "testdata/rwkv7-tiny.safetensors", false},
        GoldenCase{"testdata/third_party/tiny-rwkv-7v0-834K.golden.json",
                   "testdata/third_party/tiny-rwkv-7v0-834K-bf16.pth", false}));

TEST(ModelTest, FingerprintIdentifiesWeightsNotFileFormat) {
  SS_REQUIRE_SHARED_DATA();
  auto pth = Load("testdata/rwkv7-tiny.pth");
  auto st = Load("testdata/rwkv7-tiny.safetensors");
  auto bf16 = Load("testdata/rwkv7-tiny-bf16.pth");
  auto rounded =
      Load("testdata/rwkv7-tiny.pth", Opts(0, "", WeightPrecision::kBF16));
  ASSERT_TRUE(pth && st && bf16 && rounded);
  EXPECT_EQ(pth->info().fingerprint, st->info().fingerprint);
  EXPECT_NE(pth->info().fingerprint, bf16->info().fingerprint);
  // Rounding the fp32 file's matrices to bf16 changes what is computed.
  EXPECT_NE(pth->info().fingerprint, rounded->info().fingerprint);
  EXPECT_EQ(pth->info().state_floats, 2 * (2 * 128 + 2 * 64 * 64));
}

// --- Determinism -----------------------------------------------------------

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

struct FeedResult {
  std::vector<float> state;
  std::vector<float> logits;  // after the last token
};

// Feeds `tokens` in chunks of `chunk`, optionally alongside a second,
// unrelated session in the same Forward call.
FeedResult Feed(Model& m, const std::vector<int32_t>& tokens, size_t chunk,
                bool with_neighbour) {
  const int V = m.info().config.vocab_size;
  FeedResult r{std::vector<float>(m.info().state_floats, 0.0f),
               std::vector<float>(V)};
  std::vector<float> other(m.info().state_floats, 0.0f);
  std::vector<float> other_logits(V);
  std::vector<int32_t> other_tokens = RandomTokens(7, V, 99);
  for (size_t i = 0; i < tokens.size(); i += chunk) {
    size_t n = std::min(chunk, tokens.size() - i);
    int32_t last = static_cast<int32_t>(n - 1);
    int32_t zero = 0;
    std::vector<SequenceWork> batch;
    if (with_neighbour) {
      batch.push_back({other_tokens, other.data(),
                       absl::MakeConstSpan(&zero, 1), other_logits.data()});
    }
    batch.push_back({absl::MakeConstSpan(&tokens[i], n), r.state.data(),
                     absl::MakeConstSpan(&last, 1), r.logits.data()});
    EXPECT_TRUE(m.Forward(batch).ok());
  }
  return r;
}

void ExpectBitIdentical(const FeedResult& a, const FeedResult& b,
                        const std::string& what) {
  EXPECT_EQ(0, std::memcmp(a.state.data(), b.state.data(),
                           a.state.size() * sizeof(float)))
      << what << ": state differs";
  EXPECT_EQ(0, std::memcmp(a.logits.data(), b.logits.data(),
                           a.logits.size() * sizeof(float)))
      << what << ": logits differ";
}

TEST(ModelTest, ChunkingBatchingThreadsAndKernelsAreBitIdentical) {
  SS_REQUIRE_SHARED_DATA();
  for (const char* file :
       {"testdata/rwkv7-tiny.pth", "testdata/rwkv7-tiny-bf16.pth",
        "testdata/rwkv4-tiny-bf16.pth"}) {
    auto base = Load(file, Opts(1, "scalar"));
    ASSERT_NE(base, nullptr);
    std::vector<int32_t> tokens =
        RandomTokens(150, base->info().config.vocab_size, 7);
    FeedResult ref = Feed(*base, tokens, 1, false);
    for (size_t chunk : {3, 64, 65, 150}) {
      ExpectBitIdentical(ref, Feed(*base, tokens, chunk, false),
                         std::string(file) + " chunk " + std::to_string(chunk));
      ExpectBitIdentical(
          ref, Feed(*base, tokens, chunk, true),
          std::string(file) + " batched, chunk " + std::to_string(chunk));
    }
    for (const char* kernels : kEveryBuild) {
      if (GetKernelsByName(kernels) == nullptr) continue;  // not on this CPU
      for (int threads : {1, 2, 3}) {
        auto m = Load(file, Opts(threads, kernels));
        if (m == nullptr) continue;
        ExpectBitIdentical(
            ref, Feed(*m, tokens, 17, true),
            std::string(kernels) + " threads " + std::to_string(threads));
      }
    }
  }
}

// A Forward call with many sequences (a decode batch: each sequence's key
// stage, recurrence and output stage run in one task per sequence) gives
// every sequence exactly what it gets alone: one-token sequences beside
// multi-token ones, a batch that spans two chunks of rows, on 1-3 threads.
TEST(ModelTest, ManySequencesInOneCallAreBitIdenticalToEachAlone) {
  SS_REQUIRE_SHARED_DATA();
  // Every architecture: RWKV-7's own forward pass, and the chunked one of
  // RWKV-4, 5 and 6 (rwkv_common.h), whose decode batches also take a
  // whole session's heads per task and save one-row shifts in the rows'
  // own tasks.
  for (const char* file :
       {"testdata/rwkv7-tiny.pth", "testdata/rwkv7-tiny-bf16.pth",
        "testdata/rwkv6-tiny.pth", "testdata/rwkv5-tiny.pth",
        "testdata/rwkv4-tiny.pth"}) {
    for (WeightPrecision precision :
         {WeightPrecision::kAsStored, WeightPrecision::kInt8}) {
      auto alone = Load(file, Opts(1, "scalar", precision));
      ASSERT_NE(alone, nullptr);
      const int V = alone->info().config.vocab_size;
      const size_t S = alone->info().state_floats;
      // 40 sequences: one token each, except every fifth with 1-9 tokens;
      // each starts from its own state, reached by feeding a prefix alone.
      constexpr int kSequences = 40;
      std::vector<std::vector<int32_t>> prefix(kSequences), next(kSequences);
      std::vector<std::vector<float>> start(kSequences,
                                            std::vector<float>(S, 0.0f));
      std::vector<float> logits(V);
      const int32_t zero = 0;
      for (int q = 0; q < kSequences; ++q) {
        alone->InitState(start[q].data());
        prefix[q] = RandomTokens(1 + q % 4, V, 1000 + q);
        next[q] = RandomTokens(q % 5 == 0 ? 1 + q % 9 : 1, V, 2000 + q);
        ASSERT_TRUE(
            alone
                ->Forward({{prefix[q], start[q].data(),
                            absl::MakeConstSpan(&zero, 1), logits.data()}})
                .ok());
      }
      // Expected: each sequence alone.
      std::vector<std::vector<float>> want_state = start,
                                      want_logits(kSequences);
      std::vector<int32_t> last(kSequences);
      for (int q = 0; q < kSequences; ++q) {
        last[q] = static_cast<int32_t>(next[q].size()) - 1;
        want_logits[q].assign(V, 0.0f);
        ASSERT_TRUE(alone
                        ->Forward({{next[q], want_state[q].data(),
                                    absl::MakeConstSpan(&last[q], 1),
                                    want_logits[q].data()}})
                        .ok());
      }
      for (int threads : {1, 2, 3}) {
        auto m = Load(file, Opts(threads, "", precision));
        ASSERT_NE(m, nullptr);
        std::vector<std::vector<float>> state = start, got_logits(kSequences);
        std::vector<SequenceWork> batch;
        for (int q = 0; q < kSequences; ++q) {
          got_logits[q].assign(V, 0.0f);
          batch.push_back({next[q], state[q].data(),
                           absl::MakeConstSpan(&last[q], 1),
                           got_logits[q].data()});
        }
        ASSERT_TRUE(m->Forward(batch).ok());
        for (int q = 0; q < kSequences; ++q) {
          ASSERT_EQ(0, std::memcmp(state[q].data(), want_state[q].data(),
                                   S * sizeof(float)))
              << file << " threads " << threads << " sequence " << q;
          ASSERT_EQ(0, std::memcmp(got_logits[q].data(), want_logits[q].data(),
                                   V * sizeof(float)))
              << file << " threads " << threads << " sequence " << q;
        }
      }
    }
  }
}

// A bf16 file kept as bf16 (every matrix, the LoRA factors included) has
// products of its own arithmetic (kernels.h gemm_bf16: the activations as
// two bf16 terms, AMX's chains), the same bits in every build (the test
// above); widened to fp32 at load its products are fp32 chains. Both are
// the same model — one fingerprint — and agree within the golden tolerance.
TEST(ModelTest, Bf16FileKeptOrWidenedAgreesWithinTolerance) {
  SS_REQUIRE_SHARED_DATA();
  auto kept = Load("testdata/rwkv7-tiny-bf16.pth", Opts(2, ""));
  auto widened =
      Load("testdata/rwkv7-tiny-bf16.pth", Opts(2, "", WeightPrecision::kF32));
  ASSERT_NE(kept, nullptr);
  ASSERT_NE(widened, nullptr);
  EXPECT_EQ(kept->info().fingerprint, widened->info().fingerprint);
  const std::vector<int32_t> tokens =
      RandomTokens(80, kept->info().config.vocab_size, 11);
  const FeedResult a = Feed(*widened, tokens, 1, false);
  const FeedResult b = Feed(*kept, tokens, 33, true);
  ExpectCloseToGolden(b.logits.data(), a.logits, "bf16 kept vs widened logits");
  ExpectCloseToGolden(b.state.data(), a.state, "bf16 kept vs widened state");
}

// A reduced-precision mode (`opts(threads, kernels)` loads `file` in it):
// one result whatever the chunking, batching, threads or kernel build, and
// logits close to the fp32 model's (measured and printed as `what`;
// docs/engine-kernels.md records the figures). Returns the mode's model on
// one scalar thread and its result over `tokens` (150 random ids).
struct ModeRun {
  std::unique_ptr<Model> model;
  std::vector<int32_t> tokens;
  FeedResult result;
};
ModeRun ExpectDeterministicAndClose(
    const char* file, const char* what,
    const std::function<ModelOptions(int, const char*)>& opts) {
  ModeRun run;
  run.model = Load(file, opts(1, "scalar"));
  auto fp32 = Load(file, Opts(0, "", WeightPrecision::kF32));
  if (run.model == nullptr || fp32 == nullptr) {
    ADD_FAILURE() << file;
    return run;
  }
  run.tokens = RandomTokens(150, run.model->info().config.vocab_size, 7);
  run.result = Feed(*run.model, run.tokens, 1, false);
  const std::string name = std::string(file) + " " + what;
  for (size_t chunk : {3, 64, 150}) {
    ExpectBitIdentical(run.result, Feed(*run.model, run.tokens, chunk, true),
                       name + ", batched, chunk " + std::to_string(chunk));
  }
  for (const char* kernels : kEveryBuild) {
    if (GetKernelsByName(kernels) == nullptr) continue;  // not on this CPU
    for (int threads : {2, 3}) {
      auto m = Load(file, opts(threads, kernels));
      if (m == nullptr) continue;
      ExpectBitIdentical(
          run.result, Feed(*m, run.tokens, 17, true),
          name + " " + kernels + " threads " + std::to_string(threads));
    }
  }
  auto report = CompareLogits(*fp32, *run.model, run.tokens);
  if (!report.ok()) {
    ADD_FAILURE() << report.status();
    return run;
  }
  std::printf(
      "%s vs fp32 over %lld tokens: max logit error %.4g (max |logit| %.3g), "
      "rms %.3g, top-1 agreement %.3f, mean KL %.3g\n",
      name.c_str(), static_cast<long long>(report->positions),
      report->max_abs_logit_error, report->max_abs_reference_logit,
      report->rms_logit_error, report->top1_agreement, report->mean_kl);
  EXPECT_EQ(report->positions, 150);
  EXPECT_LT(report->max_abs_logit_error, 0.1 * report->max_abs_reference_logit)
      << name;
  EXPECT_GE(report->top1_agreement, 0.9) << name;
  EXPECT_LT(report->mean_kl, 0.05) << name;
  return run;
}

// int8 weights (per-row scales): deterministic and close, with a
// fingerprint of its own.
TEST(ModelTest, Int8WeightsAreDeterministicAndClose) {
  SS_REQUIRE_SHARED_DATA();
  for (const char* file :
       {"testdata/rwkv7-tiny.pth", "testdata/rwkv6-tiny.pth",
        "testdata/rwkv5-tiny.pth", "testdata/rwkv4-tiny.pth",
        "testdata/third_party/tiny-rwkv-7v0-834K-bf16.pth"}) {
    const ModeRun run =
        ExpectDeterministicAndClose(file, "int8", [](int t, const char* k) {
          return Opts(t, k, WeightPrecision::kInt8);
        });
    auto fp32 = Load(file, Opts(0, "", WeightPrecision::kF32));
    ASSERT_TRUE(run.model && fp32) << file;
    EXPECT_NE(run.model->info().fingerprint, fp32->info().fingerprint) << file;
  }
}

// bf16 weights with the activations rounded to bf16 (one term a row,
// Bf16Activations::kRound): deterministic and close, the same model for the
// fingerprint (the same weights), and not the two-term products' bits.
TEST(ModelTest, Bf16RoundedActivationsAreDeterministicAndClose) {
  SS_REQUIRE_SHARED_DATA();
  for (const char* file :
       {"testdata/rwkv7-tiny-bf16.pth", "testdata/rwkv4-tiny-bf16.pth",
        "testdata/rwkv6-tiny.pth", "testdata/rwkv5-tiny.pth",
        "testdata/third_party/tiny-rwkv-7v0-834K-bf16.pth"}) {
    const ModeRun run = ExpectDeterministicAndClose(
        file, "bf16 rounded activations", [](int t, const char* k) {
          ModelOptions o = Opts(t, k, WeightPrecision::kBF16);
          o.bf16_activations = Bf16Activations::kRound;
          return o;
        });
    auto split = Load(file, Opts(2, "", WeightPrecision::kBF16));
    ASSERT_TRUE(run.model && split) << file;
    EXPECT_EQ(run.model->info().fingerprint, split->info().fingerprint) << file;
    const FeedResult two_terms = Feed(*split, run.tokens, 17, true);
    EXPECT_NE(0, std::memcmp(run.result.logits.data(), two_terms.logits.data(),
                             two_terms.logits.size() * sizeof(float)))
        << file << ": the activations were not rounded";
  }
}

TEST(ModelTest, BadInputChangesNothing) {
  SS_REQUIRE_SHARED_DATA();
  auto m = Load("testdata/rwkv7-tiny.pth");
  ASSERT_NE(m, nullptr);
  const int V = m->info().config.vocab_size;
  std::vector<float> state(m->info().state_floats, 0.5f);
  std::vector<float> before = state;
  std::vector<float> logits(V);
  std::vector<int32_t> good = {1, 2, 3};
  for (std::vector<int32_t> bad :
       {std::vector<int32_t>{1, V, 2}, std::vector<int32_t>{-1}}) {
    int32_t zero = 0;
    SequenceWork ok{good, state.data(), absl::MakeConstSpan(&zero, 1),
                    logits.data()};
    SequenceWork w{bad, state.data() + 0, {}, nullptr};
    std::vector<float> other(m->info().state_floats, 0.0f);
    w.state = other.data();
    SequenceWork batch[] = {ok, w};
    absl::Status s = m->Forward(batch);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(GetReason(s), Reason::kInvalidToken) << s;
    EXPECT_EQ(state, before) << "a rejected batch must not touch any state";
  }
  int32_t out_of_range = 3;
  SequenceWork w{good, state.data(), absl::MakeConstSpan(&out_of_range, 1),
                 logits.data()};
  EXPECT_EQ(m->Forward({&w, 1}).code(), absl::StatusCode::kInvalidArgument);
  SequenceWork no_buffer{good, state.data(),
                         absl::MakeConstSpan(&out_of_range, 1), nullptr};
  out_of_range = 0;
  EXPECT_EQ(m->Forward({&no_buffer, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  SequenceWork shared[] = {{good, state.data(), {}, nullptr},
                           {good, state.data(), {}, nullptr}};
  EXPECT_EQ(m->Forward(shared).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state, before);
}

TEST(ModelTest, LogitsFromLastHiddenEqualForwardLogits) {
  SS_REQUIRE_SHARED_DATA();
  auto m = Load("testdata/rwkv7-tiny-bf16.pth");
  ASSERT_NE(m, nullptr);
  const int V = m->info().config.vocab_size, C = m->info().config.n_embd;
  std::vector<float> state(m->info().state_floats, 0.0f);
  std::vector<float> logits(V), again(V), hidden(C);
  std::vector<int32_t> tokens = RandomTokens(70, V, 11);  // spans two chunks
  int32_t last = 69;
  SequenceWork w{tokens, state.data(), absl::MakeConstSpan(&last, 1),
                 logits.data(), hidden.data()};
  ASSERT_TRUE(m->Forward({&w, 1}).ok());
  ASSERT_TRUE(m->Logits(hidden.data(), 1, again.data()).ok());
  EXPECT_EQ(logits, again);
  // Several hidden vectors in one call (one head product for all rows):
  // each row equals its own Forward's logits.
  constexpr int kRows = 67;  // more than a chunk's 64, not a multiple of 16
  std::vector<float> hiddens(static_cast<size_t>(kRows) * C);
  std::vector<float> expected(static_cast<size_t>(kRows) * V);
  for (int r = 0; r < kRows; ++r) {
    std::vector<float> fresh(m->info().state_floats, 0.0f);
    std::vector<int32_t> seq = RandomTokens(1 + r % 5, V, 20 + r);
    int32_t at = static_cast<int32_t>(seq.size()) - 1;
    SequenceWork one{seq, fresh.data(), absl::MakeConstSpan(&at, 1),
                     &expected[static_cast<size_t>(r) * V],
                     &hiddens[static_cast<size_t>(r) * C]};
    ASSERT_TRUE(m->Forward({&one, 1}).ok());
  }
  std::vector<float> batched(static_cast<size_t>(kRows) * V);
  ASSERT_TRUE(m->Logits(hiddens.data(), kRows, batched.data()).ok());
  EXPECT_EQ(batched, expected);
}

TEST(ModelTest, RepeatedLogitPositionsEachGetTheirLogits) {
  SS_REQUIRE_SHARED_DATA();
  auto m = Load("testdata/rwkv7-tiny.pth");
  ASSERT_NE(m, nullptr);
  const int V = m->info().config.vocab_size;
  std::vector<int32_t> tokens = {5, 6};
  std::vector<int32_t> positions(100, 1);  // more repeats than chunk rows
  positions[0] = 0;
  std::vector<float> state(m->info().state_floats, 0.0f);
  std::vector<float> logits(positions.size() * V);
  SequenceWork w{tokens, state.data(), positions, logits.data()};
  ASSERT_TRUE(m->Forward({&w, 1}).ok());
  for (size_t j = 2; j < positions.size(); ++j) {
    ASSERT_EQ(0, std::memcmp(&logits[V], &logits[j * V], V * sizeof(float)))
        << j;
  }
}

// The body of LogitsRowsAnywhereGetTheSameLogits below, for one model.
void LogitsRowsAnywhereGetTheSameLogits(const char* file) {
  auto m = Load(file);
  ASSERT_NE(m, nullptr);
  const int V = m->info().config.vocab_size;
  const int kSeqs = 5, kGap = 7;
  auto run = [&](std::vector<float*> rows) {
    std::vector<std::vector<float>> states(
        kSeqs, std::vector<float>(m->info().state_floats, 0.0f));
    std::vector<std::vector<int32_t>> tokens(kSeqs);
    const int32_t last = 0;
    std::vector<SequenceWork> work(kSeqs);
    for (int i = 0; i < kSeqs; ++i) {
      tokens[i] = {static_cast<int32_t>((i * 37 + 11) % V)};
      work[i] = {tokens[i], states[i].data(), absl::MakeConstSpan(&last, 1),
                 rows[i]};
    }
    ASSERT_TRUE(m->Forward(work).ok());
  };
  std::vector<std::vector<float>> separate(kSeqs, std::vector<float>(V));
  std::vector<float*> rows;
  for (auto& r : separate) rows.push_back(r.data());
  run(rows);
  std::vector<float> even(static_cast<size_t>(kSeqs) * (V + kGap), -7.0f);
  rows.clear();
  for (int i = 0; i < kSeqs; ++i) rows.push_back(&even[i * (V + kGap)]);
  run(rows);
  std::vector<float> uneven(static_cast<size_t>(kSeqs) * (V + kGap) + 3, -7.0f);
  std::vector<float*> rows2;
  for (int i = 0; i < kSeqs; ++i) {
    rows2.push_back(&uneven[i * (V + kGap) + (i == 3 ? 3 : 0)]);
  }
  run(rows2);
  for (int i = 0; i < kSeqs; ++i) {
    EXPECT_EQ(0, std::memcmp(separate[i].data(), rows[i], V * sizeof(float)))
        << i;
    EXPECT_EQ(0, std::memcmp(separate[i].data(), rows2[i], V * sizeof(float)))
        << i;
    for (int g = 0; g < kGap; ++g) {
      EXPECT_EQ(even[i * (V + kGap) + V + g], -7.0f) << i;
    }
  }
}

// Logits rows of a batch in one buffer at an even stride (wider than the
// vocabulary) are written in place; rows in separate buffers, or unevenly
// spaced, go through the model's own buffer. Same logits either way, and
// nothing outside the rows is touched.
TEST(ModelTest, LogitsRowsAnywhereGetTheSameLogits) {
  SS_REQUIRE_SHARED_DATA();
  // RWKV-7 and the chunked architectures share ChunkOutputs.
  for (const char* file : {"testdata/rwkv7-tiny.pth", "testdata/rwkv6-tiny.pth",
                           "testdata/rwkv4-tiny.pth"}) {
    SCOPED_TRACE(file);
    LogitsRowsAnywhereGetTheSameLogits(file);
  }
}
}  // namespace
}  // namespace statestream::engine

namespace statestream::engine {
namespace {

// In this process's scratch directory, removed at exit.
std::string TempPath(const std::string& name) {
  return ::statestream::testing::ProcessScratchDir().File(name);
}

// Random models of other shapes, written as .pth and .safetensors in every
// dtype, load to the same computation, and chunked equals one-by-one.
TEST(ModelTest, RandomModelsOfOtherShapesRoundTrip) {
  struct Shape {
    int layers, embd, head, vocab, ffn;
  };
  for (Shape sh : {Shape{1, 64, 32, 100, 0}, Shape{3, 96, 32, 300, 336},
                   Shape{2, 80, 16, 77, 200}}) {
    RandomModelSpec spec{.n_layer = sh.layers,
                         .n_embd = sh.embd,
                         .vocab_size = sh.vocab,
                         .head_size = sh.head,
                         .dim_ffn = sh.ffn,
                         .seed = 5};
    auto tensors = RandomRwkv7(spec);
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    std::string fp = "";
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      std::string fingerprint;
      for (const char* ext : {".pth", ".safetensors"}) {
        std::string path = TempPath(std::to_string(sh.embd) + ext);
        ASSERT_TRUE(WriteCheckpoint(path, *tensors, dtype).ok());
        auto m = LoadModel(path);
        std::remove(path.c_str());
        ASSERT_TRUE(m.ok()) << m.status();
        const ModelConfig& c = (*m)->info().config;
        EXPECT_EQ(c.n_layer, sh.layers);
        EXPECT_EQ(c.n_embd, sh.embd);
        EXPECT_EQ(c.head_size, sh.head);
        EXPECT_EQ(c.dim_ffn, sh.ffn ? sh.ffn : 4 * sh.embd);
        if (fingerprint.empty()) fingerprint = (*m)->info().fingerprint;
        EXPECT_EQ((*m)->info().fingerprint, fingerprint);
        std::vector<int32_t> tokens = RandomTokens(40, sh.vocab, 3);
        FeedResult one = Feed(**m, tokens, 1, false);
        ExpectBitIdentical(one, Feed(**m, tokens, 40, true), "chunked");
        for (float v : one.state) ASSERT_TRUE(std::isfinite(v));
      }
      EXPECT_NE(fingerprint, fp);
      fp = fingerprint;
    }
  }
}

}  // namespace
}  // namespace statestream::engine
