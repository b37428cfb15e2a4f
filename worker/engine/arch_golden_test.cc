// SPDX-License-Identifier: Apache-2.0
// RWKV-4, RWKV-5.2 and RWKV-6 against the official reference (golden
// vectors in ../shared/testdata), architecture detection, fingerprints and
// the determinism contract of model.h for every architecture.

#include <cstring>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/testing/scratch_dir.h"
#include "gtest/gtest.h"
#include "worker/engine/golden.h"
#include "worker/engine/golden_trace.h"
#include "worker/engine/model.h"
#include "worker/engine/model_test_util.h"
#include "worker/engine/random_model.h"
#include "worker/engine/tensor_test_util.h"
#include "worker/engine/weight_file.h"
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

// In this process's scratch directory, removed at exit.
std::string TempPath(const std::string& name) {
  return ::statestream::testing::ProcessScratchDir().File(name);
}

std::unique_ptr<Model> LoadPath(const std::string& path,
                                ModelOptions opts = {}) {
  auto model = LoadModel(path, opts);
  EXPECT_TRUE(model.ok()) << path << ": " << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

std::unique_ptr<Model> Load(const std::string& rel, ModelOptions opts = {}) {
  return LoadPath(SharedPath(rel), std::move(opts));
}

// A copy of a checkpoint with every tensor rounded to bf16, as the golden
// files' bf16_checkpoint was made; written once per test as .pth.
std::string Bf16Copy(const std::string& rel) {
  const std::vector<NamedTensor> tensors =
      testing::ReadTensors(SharedPath(rel));
  if (tensors.empty()) return "";
  std::string path = TempPath("bf16.pth");
  EXPECT_TRUE(WritePth(path, tensors, DType::kBF16).ok());
  return path;
}

struct GoldenCase {
  const char* golden;
  const char* model;  // relative to the shared folder; "" = bf16 copy of fp32
  const char* arch;
  bool bf16;  // compare against bf16_checkpoint.logits
};

std::string ModelPath(const GoldenCase& gc, const nlohmann::json& g,
                      std::string* temp) {
  if (gc.model[0] != '\0') return SharedPath(gc.model);
  *temp =
      Bf16Copy("testdata/" + g["files"]["pth_fp32"]["path"].get<std::string>());
  return *temp;
}

class ArchGoldenTest : public ::testing::TestWithParam<GoldenCase> {};

// Feeds the golden tokens one at a time (RNN mode), as the reference did.
TEST_P(ArchGoldenTest, RnnModeMatchesReference) {
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath(gc.golden));
  std::string temp;
  auto model = LoadPath(ModelPath(gc, g, &temp));
  if (!temp.empty()) std::remove(temp.c_str());
  ASSERT_NE(model, nullptr);
  const ModelConfig& c = model->info().config;
  EXPECT_STREQ(ArchName(c.arch), gc.arch);
  EXPECT_EQ(ArchName(c.arch), g["hparams"]["arch"].get<std::string>());
  EXPECT_EQ(c.n_layer, g["hparams"]["n_layer"].get<int>());
  EXPECT_EQ(c.n_embd, g["hparams"]["n_embd"].get<int>());
  EXPECT_EQ(c.vocab_size, g["hparams"]["vocab_size"].get<int>());
  EXPECT_EQ(c.dim_ffn, g["hparams"]["dim_ffn"].get<int>());
  if (g["hparams"].contains("n_head")) {
    EXPECT_EQ(c.n_head, g["hparams"]["n_head"].get<int>());
    EXPECT_EQ(c.head_size, g["hparams"]["head_size"].get<int>());
  }
  if (g["hparams"].contains("d_mix_lora")) {
    EXPECT_EQ(c.d_mix, g["hparams"]["d_mix_lora"].get<int>());
    EXPECT_EQ(c.d_decay, g["hparams"]["d_decay_lora"].get<int>());
  }
  EXPECT_EQ(model->info().fingerprint.rfind(std::string(gc.arch) + "-L", 0), 0u)
      << model->info().fingerprint;

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
  std::vector<float> want_state =
      StateFromGolden(g["final_state"]["layers"], gc.arch);
  ASSERT_EQ(want_state.size(), state.size());
  ExpectCloseToGolden(state.data(), want_state, "final state");
  // Resume from the reference's saved state, one token at a time, and the
  // same continuation as one call.
  std::vector<float> resumed = want_state;
  std::vector<float> resumed_seq = want_state;
  std::vector<int32_t> cont = Ints(g["continuation"]["tokens"]);
  for (size_t i = 0; i < cont.size(); ++i) {
    int32_t zero = 0;
    SequenceWork w{absl::MakeConstSpan(&cont[i], 1), resumed.data(),
                   absl::MakeConstSpan(&zero, 1), logits.data()};
    ASSERT_TRUE(model->Forward({&w, 1}).ok());
    ExpectCloseToGolden(logits.data(), Floats(g["continuation"]["logits"][i]),
                        "continuation logits " + std::to_string(i));
  }
  std::vector<int32_t> all_positions(cont.size());
  for (size_t i = 0; i < cont.size(); ++i) all_positions[i] = i;
  std::vector<float> seq_logits(cont.size() * c.vocab_size);
  SequenceWork w{cont, resumed_seq.data(), all_positions, seq_logits.data()};
  ASSERT_TRUE(model->Forward({&w, 1}).ok());
  for (size_t i = 0; i < cont.size(); ++i) {
    ExpectCloseToGolden(&seq_logits[i * c.vocab_size],
                        Floats(g["continuation"]["logits"][i]),
                        "continuation as one call " + std::to_string(i));
  }
  if (g["continuation"].contains("final_state_after_continuation")) {
    ExpectCloseToGolden(
        resumed.data(),
        StateFromGolden(g["continuation"]["final_state_after_continuation"],
                        gc.arch),
        "state after continuation");
  }
}

// All tokens in one call (chunked) against the reference's sequence mode.
TEST_P(ArchGoldenTest, SequenceModeMatchesReference) {
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath(gc.golden));
  std::string temp;
  auto model = LoadPath(ModelPath(gc, g, &temp));
  if (!temp.empty()) std::remove(temp.c_str());
  ASSERT_NE(model, nullptr);
  std::vector<int32_t> tokens = Ints(g["tokens"]);
  std::vector<int32_t> positions = Ints(g["logits_positions"]);
  const int V = model->info().config.vocab_size;
  std::vector<float> state(model->info().state_floats);
  model->InitState(state.data());
  std::vector<float> logits(positions.size() * V);
  SequenceWork w{tokens, state.data(), positions, logits.data()};
  ASSERT_TRUE(model->Forward({&w, 1}).ok());
  for (size_t j = 0; j < positions.size(); ++j) {
    const nlohmann::json& want = gc.bf16 ? g["bf16_checkpoint"]["logits"][j]
                                         : g["sequence_mode"]["logits"][j];
    ExpectCloseToGolden(&logits[j * V], Floats(want),
                        "sequence logits " + std::to_string(j));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, ArchGoldenTest,
    ::testing::Values(
        GoldenCase{"testdata/rwkv4-tiny.golden.json", "testdata/rwkv4-tiny.pth",
                   "v4", false},
        GoldenCase{"testdata/rwkv4-tiny.golden.json",
                   "testdata/rwkv4-tiny.safetensors", "v4", false},
        GoldenCase{"testdata/rwkv4-tiny.golden.json",
                   "testdata/rwkv4-tiny-bf16.pth", "v4", true},
        GoldenCase{"testdata/rwkv5-tiny.golden.json", "testdata/rwkv5-tiny.pth",
                   "x052", false},
        GoldenCase{"testdata/rwkv5-tiny.golden.json", "", "x052", true},
        GoldenCase{"testdata/rwkv6-tiny.golden.json", "testdata/rwkv6-tiny.pth",
                   "x060", false},
        GoldenCase{"testdata/rwkv6-tiny.golden.json", "", "x060", true}));

// Intermediate vectors at positions 0 and 1, layer by layer.
class ArchTraceTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(ArchTraceTest, PerLayerTraceMatches) {
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath(gc.golden));
  EXPECT_GT(ExpectTraceMatchesGolden(SharedPath(gc.model), g), 20);
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, ArchTraceTest,
    ::testing::Values(GoldenCase{"testdata/rwkv4-tiny.golden.json",
                                 "testdata/rwkv4-tiny.pth", "v4", false},
                      GoldenCase{"testdata/rwkv5-tiny.golden.json",
                                 "testdata/rwkv5-tiny.pth", "x052", false}));

TEST(ArchTest, Rwkv4InitialStateHasPpMinusInfinity) {
  SS_REQUIRE_SHARED_DATA();
  auto m = Load("testdata/rwkv4-tiny.pth");
  ASSERT_NE(m, nullptr);
  const int C = m->info().config.n_embd;
  ASSERT_EQ(m->info().state_floats, 2 * 5 * C);
  std::vector<float> state(m->info().state_floats, 7.0f);
  m->InitState(state.data());
  for (int l = 0; l < 2; ++l) {
    for (int f = 0; f < 5; ++f) {
      for (int i = 0; i < C; ++i) {
        EXPECT_EQ(state[(l * 5 + f) * C + i], f == 3 ? -1e30f : 0.0f);
      }
    }
  }
}

TEST(ArchTest, FingerprintsNameTheArchitectureAndDiffer) {
  SS_REQUIRE_SHARED_DATA();
  std::map<std::string, std::string> fp;
  for (const char* f :
       {"testdata/rwkv4-tiny.pth", "testdata/rwkv4-tiny.safetensors",
        "testdata/rwkv4-tiny-bf16.pth", "testdata/rwkv5-tiny.pth",
        "testdata/rwkv6-tiny.pth", "testdata/rwkv7-tiny.pth"}) {
    auto m = Load(f);
    ASSERT_NE(m, nullptr);
    fp[f] = m->info().fingerprint;
  }
  EXPECT_EQ(fp["testdata/rwkv4-tiny.pth"],
            fp["testdata/rwkv4-tiny.safetensors"]);
  EXPECT_NE(fp["testdata/rwkv4-tiny.pth"], fp["testdata/rwkv4-tiny-bf16.pth"]);
  EXPECT_EQ(fp["testdata/rwkv4-tiny.pth"].substr(0, 3), "v4-");
  EXPECT_EQ(fp["testdata/rwkv5-tiny.pth"].substr(0, 5), "x052-");
  EXPECT_EQ(fp["testdata/rwkv6-tiny.pth"].substr(0, 5), "x060-");
  EXPECT_EQ(fp["testdata/rwkv7-tiny.pth"].substr(0, 5), "x070-");
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
  FeedResult r{std::vector<float>(m.info().state_floats),
               std::vector<float>(V)};
  m.InitState(r.state.data());
  std::vector<float> other(m.info().state_floats);
  m.InitState(other.data());
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

TEST(ArchTest, ChunkingBatchingThreadsAndKernelsAreBitIdentical) {
  SS_REQUIRE_SHARED_DATA();
  for (const char* file :
       {"testdata/rwkv4-tiny.pth", "testdata/rwkv4-tiny-bf16.pth",
        "testdata/rwkv5-tiny.pth", "testdata/rwkv6-tiny.pth"}) {
    auto base = Load(file, Opts(1, "scalar"));
    ASSERT_NE(base, nullptr);
    std::vector<int32_t> tokens =
        RandomTokens(150, base->info().config.vocab_size, 7);
    FeedResult ref = Feed(*base, tokens, 1, false);
    for (float v : ref.state) ASSERT_TRUE(std::isfinite(v)) << file;
    for (size_t chunk : {3, 64, 65, 150}) {
      ExpectBitIdentical(ref, Feed(*base, tokens, chunk, false),
                         std::string(file) + " chunk " + std::to_string(chunk));
      ExpectBitIdentical(
          ref, Feed(*base, tokens, chunk, true),
          std::string(file) + " batched, chunk " + std::to_string(chunk));
    }
    for (const char* kernels : {"avx2", "avx512"}) {
      for (int threads : {1, 2, 3}) {
        auto m = LoadModel(SharedPath(file), Opts(threads, kernels));
        if (!m.ok()) continue;  // CPU without this instruction set
        ExpectBitIdentical(ref, Feed(**m, tokens, 17, true),
                           std::string(file) + " " + kernels + " threads " +
                               std::to_string(threads));
      }
    }
  }
}

TEST(ArchTest, LogitsFromLastHiddenEqualForwardLogits) {
  SS_REQUIRE_SHARED_DATA();
  for (const char* file : {"testdata/rwkv4-tiny.pth", "testdata/rwkv5-tiny.pth",
                           "testdata/rwkv6-tiny.pth"}) {
    auto m = Load(file);
    ASSERT_NE(m, nullptr);
    const int V = m->info().config.vocab_size, C = m->info().config.n_embd;
    std::vector<float> state(m->info().state_floats);
    m->InitState(state.data());
    std::vector<float> logits(V), again(V), hidden(C);
    std::vector<int32_t> tokens = RandomTokens(70, V, 11);  // two chunks
    int32_t last = 69;
    SequenceWork w{tokens, state.data(), absl::MakeConstSpan(&last, 1),
                   logits.data(), hidden.data()};
    ASSERT_TRUE(m->Forward({&w, 1}).ok());
    ASSERT_TRUE(m->Logits(hidden.data(), 1, again.data()).ok());
    EXPECT_EQ(logits, again) << file;
  }
}

TEST(ArchTest, RepeatedLogitPositionsEachGetTheirLogits) {
  SS_REQUIRE_SHARED_DATA();
  for (const char* file : {"testdata/rwkv4-tiny.pth", "testdata/rwkv5-tiny.pth",
                           "testdata/rwkv6-tiny.pth"}) {
    auto m = Load(file);
    ASSERT_NE(m, nullptr);
    const int V = m->info().config.vocab_size;
    std::vector<int32_t> tokens = {5, 6};
    std::vector<int32_t> positions(100, 1);  // more repeats than chunk rows
    std::vector<float> state(m->info().state_floats);
    m->InitState(state.data());
    std::vector<float> logits(positions.size() * V);
    SequenceWork w{tokens, state.data(), positions, logits.data()};
    ASSERT_TRUE(m->Forward({&w, 1}).ok()) << file;
    for (size_t j = 1; j < positions.size(); ++j) {
      ASSERT_EQ(0,
                std::memcmp(logits.data(), &logits[j * V], V * sizeof(float)))
          << file << " " << j;
    }
  }
}

TEST(ArchTest, BadTokenChangesNoState) {
  SS_REQUIRE_SHARED_DATA();
  auto m = Load("testdata/rwkv4-tiny.pth");
  ASSERT_NE(m, nullptr);
  const int V = m->info().config.vocab_size;
  std::vector<float> state(m->info().state_floats);
  m->InitState(state.data());
  std::vector<float> before = state;
  std::vector<int32_t> bad = {1, V};
  SequenceWork w{bad, state.data(), {}, nullptr};
  absl::Status s = m->Forward({&w, 1});
  EXPECT_EQ(GetReason(s), Reason::kInvalidToken) << s;
  EXPECT_EQ(state, before);
}

// Random models of every architecture and other shapes, as .pth and
// .safetensors in fp32 and bf16: detected, dimensions from shapes, one
// fingerprint per weights, chunked equals one-by-one, bounded state.
TEST(ArchTest, RandomModelsOfEveryArchitectureRoundTrip) {
  struct Case {
    const char* arch;
    int layers, embd, head, vocab, ffn;
  };
  for (Case k :
       {Case{"v4", 1, 64, 0, 100, 0}, Case{"v4", 3, 96, 0, 77, 200},
        Case{"x052", 1, 64, 32, 100, 0}, Case{"x052", 2, 96, 16, 300, 224},
        Case{"x060", 1, 64, 32, 100, 0}, Case{"x060", 3, 96, 32, 77, 0}}) {
    RandomModelSpec spec{.n_layer = k.layers,
                         .n_embd = k.embd,
                         .vocab_size = k.vocab,
                         .head_size = k.head,
                         .dim_ffn = k.ffn,
                         .seed = 5};
    auto tensors = RandomModel(k.arch, spec);
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    std::string previous;
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      std::string fingerprint;
      for (const char* ext : {".pth", ".safetensors"}) {
        const std::string what = absl::StrCat(k.arch, " L", k.layers, ext);
        std::string path = TempPath(std::to_string(k.embd) + ext);
        ASSERT_TRUE(WriteCheckpoint(path, *tensors, dtype).ok());
        auto m = LoadModel(path);
        std::remove(path.c_str());
        ASSERT_TRUE(m.ok()) << what << ": " << m.status();
        const ModelConfig& c = (*m)->info().config;
        EXPECT_STREQ(ArchName(c.arch), k.arch) << what;
        EXPECT_EQ(c.n_layer, k.layers) << what;
        EXPECT_EQ(c.n_embd, k.embd) << what;
        EXPECT_EQ(c.head_size, k.head) << what;
        if (k.ffn != 0) {
          EXPECT_EQ(c.dim_ffn, k.ffn) << what;
        }
        if (fingerprint.empty()) fingerprint = (*m)->info().fingerprint;
        EXPECT_EQ((*m)->info().fingerprint, fingerprint) << what;
        std::vector<int32_t> tokens = RandomTokens(80, k.vocab, 3);
        FeedResult one = Feed(**m, tokens, 1, false);
        ExpectBitIdentical(one, Feed(**m, tokens, 80, true), what);
        for (float v : one.state) {
          ASSERT_TRUE(std::isfinite(v)) << what;
          if (c.arch != Arch::kRwkv4) {
            ASSERT_LT(std::fabs(v), 1e3f) << what;
          }
        }
      }
      EXPECT_NE(fingerprint, previous);
      previous = fingerprint;
    }
  }
  EXPECT_FALSE(RandomModel("x999", {}).ok());
  EXPECT_FALSE(RandomModel("x052", {.n_embd = 100, .head_size = 64}).ok());
  // An x052 of head size 1 would load as no known architecture (detection
  // needs N > 1); a tiny width's default FFN stays within 16 n_embd.
  EXPECT_FALSE(RandomModel("x052", {.n_embd = 8, .head_size = 1}).ok());
  auto tiny = LoadRandomModel(
      "x060", {.n_layer = 1, .n_embd = 1, .vocab_size = 4, .head_size = 1});
  EXPECT_TRUE(tiny.ok()) << tiny.status();
}

// A layer's per-head tensor ([H, N]: x070's att.r_k, x060's and x052's
// att.time_faaaa, x052's att.time_decay) in another head layout than
// block 0's, which set the heads, is refused naming it. x070 and x060 read
// the same bytes as block 0's heads.
TEST(ArchTest, ALayerWithAnotherHeadLayoutIsRefused) {
  const std::pair<const char*, const char*> cases[] = {
      {"x070", "blocks.1.att.r_k"},
      {"x060", "blocks.1.att.time_faaaa"},
      {"x052", "blocks.1.att.time_faaaa"},
      {"x052", "blocks.1.att.time_decay"}};
  for (const auto& [arch, name] : cases) {
    auto tensors = RandomModel(
        arch, {.n_layer = 2, .n_embd = 64, .vocab_size = 50, .head_size = 32});
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    bool found = false;
    for (auto& x : *tensors) {
      if (x.name != name) continue;
      ASSERT_EQ(x.shape, (std::vector<int64_t>{2, 32})) << name;
      x.shape = {4, 16};  // the same 64 values
      found = true;
    }
    ASSERT_TRUE(found) << arch << " " << name;
    std::string path = TempPath("heads.safetensors");
    ASSERT_TRUE(WriteCheckpoint(path, *tensors, DType::kF32).ok());
    auto m = LoadModel(path);
    std::remove(path.c_str());
    ASSERT_FALSE(m.ok()) << arch << " " << name;
    EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile);
    EXPECT_NE(m.status().message().find(name), std::string::npos) << m.status();
  }
}

TEST(ArchTest, MissingOrMisshapenTensorIsAClearError) {
  for (const char* arch : {"v4", "x052", "x060"}) {
    auto tensors = RandomModel(
        arch, {.n_layer = 2, .n_embd = 64, .vocab_size = 50, .head_size = 32});
    ASSERT_TRUE(tensors.ok());
    for (const char* drop :
         {"head.weight", "blocks.1.att.output.weight",
          "blocks.1.ffn.key.weight", "blocks.1.att.time_faaaa",
          "blocks.1.att.time_maa_w2"}) {
      std::vector<NamedTensor> t;
      bool dropped = false;
      for (auto& x : *tensors) {
        if (x.name == drop) {
          dropped = true;
        } else {
          t.push_back(x);
        }
      }
      if (!dropped) continue;
      std::string path = TempPath("missing.safetensors");
      ASSERT_TRUE(WriteCheckpoint(path, t, DType::kF32).ok());
      auto m = LoadModel(path);
      std::remove(path.c_str());
      ASSERT_FALSE(m.ok()) << arch << " without " << drop;
      EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile);
      EXPECT_NE(m.status().message().find(drop), std::string::npos)
          << m.status();
    }
    std::vector<NamedTensor> t = *tensors;
    for (auto& x : t) {
      if (x.name == "blocks.1.att.key.weight") x.shape = {32, 128};
    }
    std::string path = TempPath("shape.safetensors");
    ASSERT_TRUE(WriteCheckpoint(path, t, DType::kF32).ok());
    auto m = LoadModel(path);
    std::remove(path.c_str());
    ASSERT_FALSE(m.ok()) << arch;
    EXPECT_NE(m.status().message().find("blocks.1.att.key.weight"),
              std::string::npos)
        << m.status();
  }
}

// Detection from the key set: a 1-layer x052 file (which the official
// loader's key-order test would miss) and each architecture's marker.
TEST(ArchTest, DetectionByKeySet) {
  for (const char* arch : {"v4", "x052", "x060", "x070"}) {
    auto tensors = RandomModel(
        arch, {.n_layer = 1, .n_embd = 64, .vocab_size = 50, .head_size = 32});
    ASSERT_TRUE(tensors.ok());
    std::vector<NamedTensor> reversed(tensors->rbegin(), tensors->rend());
    std::string path = TempPath("detect.pth");
    ASSERT_TRUE(WriteCheckpoint(path, reversed, DType::kF32).ok());
    auto m = LoadModel(path);
    std::remove(path.c_str());
    ASSERT_TRUE(m.ok()) << arch << ": " << m.status();
    EXPECT_STREQ(ArchName((*m)->info().config.arch), arch);
  }
}

}  // namespace
}  // namespace statestream::engine
