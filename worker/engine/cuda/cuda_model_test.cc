// SPDX-License-Identifier: Apache-2.0
// The CUDA backend against the CPU engine (random models of several shapes,
// mixed batches, chunking, state round trips) and the golden vectors. Tests
// that need a GPU skip when the CUDA runtime finds none; the error paths run
// everywhere.
#include "worker/engine/cuda/cuda_model.h"

#include <cmath>
#include <cstdio>

#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/cuda/cuda_test_util.h"
#include "worker/engine/golden.h"

namespace statestream::engine {
namespace {

using testing::ExpectClose;
using testing::Floats;
using ::testing::HasSubstr;
using testing::Ints;
using testing::kBf16Abs;
using testing::kBf16Rel;
using testing::kTight;
using testing::LoadJson;
using testing::RandomFile;
using testing::RandomTokens;
using testing::SharedPath;
using testing::StateFromGolden;

TEST(CudaModelTest, NoDeviceIsFailedPreconditionAndCpuStillWorks) {
  if (CudaDeviceStatus().ok()) GTEST_SKIP() << "a CUDA device is present";
  auto file = RandomFile("x070",
                         {.n_layer = 1,
                          .n_embd = 64,
                          .vocab_size = 32,
                          .head_size = 64,
                          .seed = 1},
                         DType::kF32);
  ModelOptions o;
  o.device = "cuda";
  auto gpu = LoadModel(file, o);
  ASSERT_FALSE(gpu.ok());
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(gpu.status().message(), HasSubstr("no CUDA device"));
  EXPECT_TRUE(LoadModel(file, ModelOptions{}).ok());
}

// The file is good (the CPU runs it): FAILED_PRECONDITION, which
// --device auto answers by loading it on the CPU. It was
// INVALID_ARGUMENT/INVALID_MODEL_FILE, and the model failed to load.
TEST(CudaModelTest, UnsupportedHeadSizeIsFailedPrecondition) {
  for (int n : {16, 48}) {
    auto file = RandomFile("x070",
                           {.n_layer = 1,
                            .n_embd = 96,
                            .vocab_size = 32,
                            .head_size = n,
                            .seed = 2},
                           DType::kF32);
    auto m = LoadRwkv7Cuda(file, {});
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(m.status().message(),
                HasSubstr("head size " + std::to_string(n)));
  }
}

struct ParityCase {
  const char* name;
  int layers, embd, head, vocab, ffn;
  DType dtype;
  bool split;
  int max_rows;
  bool graphs;
};

class ParityTest : public ::testing::TestWithParam<ParityCase> {};

// A mixed batch (prompts of several lengths, single tokens, an empty
// sequence), then a decode round from the states each backend produced.
TEST_P(ParityTest, MatchesCpuEngine) {
  SS_REQUIRE_GPU();
  const ParityCase& pc = GetParam();
  auto file = RandomFile("x070",
                         {.n_layer = pc.layers,
                          .n_embd = pc.embd,
                          .vocab_size = pc.vocab,
                          .head_size = pc.head,
                          .dim_ffn = pc.ffn,
                          .seed = 42},
                         pc.dtype);
  ModelOptions cpu_opts;
  cpu_opts.threads = 2;
  auto cpu = LoadModel(file, cpu_opts);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  CudaModelOptions co;
  co.split_activations = pc.split;
  co.max_rows = pc.max_rows;
  co.graphs = pc.graphs;
  auto gpu = LoadRwkv7Cuda(file, co);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ((*gpu)->info().fingerprint, (*cpu)->info().fingerprint);
  EXPECT_EQ((*gpu)->info().state_floats, (*cpu)->info().state_floats);
  std::printf("  backend %s\n", (*gpu)->info().kernels.c_str());
  // What ListModels reports: the device's arithmetic.
  const bool bf16 = pc.dtype == DType::kBF16;
  EXPECT_EQ((*gpu)->info().weights_dtype, bf16 ? "bf16" : "fp32");
  EXPECT_EQ((*gpu)->info().bf16_activations, !bf16      ? ""
                                             : pc.split ? "split"
                                                        : "round");

  const bool loose = pc.dtype == DType::kBF16 && !pc.split;
  const double abs = loose ? kBf16Abs : kTight, rel = loose ? kBf16Rel : kTight;
  const int V = pc.vocab;
  const int64_t SF = (*cpu)->info().state_floats;
  const std::vector<int> lengths = {37, 1, 0, 5, 70, 1};
  std::vector<std::vector<float>> cpu_states(lengths.size(),
                                             std::vector<float>(SF, 0.0f));
  std::vector<std::vector<float>> gpu_states = cpu_states;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<int32_t>> tokens(lengths.size());
    std::vector<std::vector<int32_t>> positions(lengths.size());
    for (size_t s = 0; s < lengths.size(); ++s) {
      const int n = round == 0 ? lengths[s] : (s == 2 ? 0 : 1);
      tokens[s] = RandomTokens(n, V, 100 * round + s);
      if (n > 0) positions[s] = {n - 1, 0};
    }
    std::vector<std::vector<float>> cpu_logits(lengths.size()),
        gpu_logits(lengths.size());
    const int C = pc.embd;
    std::vector<std::vector<float>> cpu_hidden(lengths.size()),
        gpu_hidden(lengths.size());
    std::vector<SequenceWork> cw, gw;
    for (size_t s = 0; s < lengths.size(); ++s) {
      cpu_logits[s].assign(positions[s].size() * V, 0);
      gpu_logits[s].assign(positions[s].size() * V, 0);
      cpu_hidden[s].assign(C, 0);
      gpu_hidden[s].assign(C, 0);
      cw.push_back({tokens[s], cpu_states[s].data(), positions[s],
                    cpu_logits[s].data(), cpu_hidden[s].data()});
      gw.push_back({tokens[s], gpu_states[s].data(), positions[s],
                    gpu_logits[s].data(), gpu_hidden[s].data()});
    }
    ASSERT_TRUE((*cpu)->Forward(cw).ok());
    absl::Status st = (*gpu)->Forward(gw);
    ASSERT_TRUE(st.ok()) << st;
    for (size_t s = 0; s < lengths.size(); ++s) {
      const std::string at =
          "round " + std::to_string(round) + " seq " + std::to_string(s);
      ExpectClose(gpu_logits[s].data(), cpu_logits[s], abs, rel,
                  at + " logits");
      ExpectClose(gpu_states[s].data(), cpu_states[s], abs, rel, at + " state");
      if (tokens[s].empty()) continue;
      // The residual stream is not normalised: with bf16 activations its
      // error scales with its range, not with each element.
      float range = 1;
      for (float h : cpu_hidden[s]) range = std::max(range, std::fabs(h));
      ExpectClose(gpu_hidden[s].data(), cpu_hidden[s],
                  loose ? abs * range : abs, rel, at + " last hidden");
      // Logits() from the saved hidden vector recreates the last logits.
      std::vector<float> again(V);
      ASSERT_TRUE((*gpu)->Logits(gpu_hidden[s].data(), 1, again.data()).ok());
      ExpectClose(
          again.data(),
          std::vector<float>(cpu_logits[s].begin(), cpu_logits[s].begin() + V),
          abs, rel, at + " Logits()");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ParityTest,
    ::testing::Values(ParityCase{"f32_c128_n64", 2, 128, 64, 512, 0,
                                 DType::kF32, false, 1024, true},
                      ParityCase{"f32_c256_n32_chunked", 3, 256, 32, 300, 896,
                                 DType::kF32, false, 16, true},
                      ParityCase{"f32_c256_n128_nographs", 2, 256, 128, 1000, 0,
                                 DType::kF32, false, 64, false},
                      ParityCase{"bf16split_c128_n64", 2, 128, 64, 512, 0,
                                 DType::kBF16, true, 1024, true},
                      ParityCase{"bf16split_c256_n32_chunked", 3, 256, 32, 300,
                                 896, DType::kBF16, true, 16, true},
                      ParityCase{"bf16_c128_n64", 2, 128, 64, 512, 0,
                                 DType::kBF16, false, 1024, true},
                      ParityCase{"bf16_c512_n64", 4, 512, 64, 2048, 0,
                                 DType::kBF16, false, 32, true}),
    [](const auto& info) { return std::string(info.param.name); });

// Same input, same state: bit-identical output, with and without graphs.
TEST(CudaModelTest, RepeatableBitForBit) {
  SS_REQUIRE_GPU();
  auto file = RandomFile("x070",
                         {.n_layer = 2,
                          .n_embd = 128,
                          .vocab_size = 256,
                          .head_size = 64,
                          .seed = 5},
                         DType::kBF16);
  std::vector<std::vector<float>> logits, states;
  for (bool graphs : {true, true, false}) {
    CudaModelOptions co;
    co.graphs = graphs;
    auto m = LoadRwkv7Cuda(file, co);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<float> state((*m)->info().state_floats, 0.0f);
    std::vector<float> out(256);
    std::vector<int32_t> tok = RandomTokens(20, 256, 9);
    const int32_t last = 19;
    SequenceWork w{tok, state.data(), absl::MakeConstSpan(&last, 1),
                   out.data()};
    ASSERT_TRUE((*m)->Forward({&w, 1}).ok());
    logits.push_back(out);
    states.push_back(state);
  }
  EXPECT_EQ(logits[0], logits[1]);
  EXPECT_EQ(states[0], states[1]);
  EXPECT_EQ(logits[0], logits[2]);
  EXPECT_EQ(states[0], states[2]);
}

struct GoldenCase {
  const char* name;
  const char* model;
  bool bf16;
  bool split;
};

class CudaGoldenTest : public ::testing::TestWithParam<GoldenCase> {};

// One token per call (RNN mode), then all tokens in one call, then the
// continuation from the golden state.
TEST_P(CudaGoldenTest, MatchesReference) {
  SS_REQUIRE_GPU();
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath("testdata/rwkv7-tiny.golden.json"));
  auto file = WeightFile::Open(SharedPath(gc.model));
  ASSERT_TRUE(file.ok()) << file.status();
  CudaModelOptions co;
  co.split_activations = gc.split;
  auto model =
      LoadRwkv7Cuda(std::shared_ptr<const WeightFile>(std::move(*file)), co);
  ASSERT_TRUE(model.ok()) << model.status();
  Model& m = **model;
  const bool loose = gc.bf16 && !gc.split;
  const double abs = loose ? kBf16Abs : kTight, rel = loose ? kBf16Rel : kTight;
  const int V = m.info().config.vocab_size;
  std::vector<int32_t> tokens = Ints(g["tokens"]);
  std::vector<int32_t> positions = Ints(g["logits_positions"]);
  const nlohmann::json& want =
      gc.bf16 ? g["bf16_checkpoint"]["logits"] : g["logits"];
  std::vector<std::vector<float>> want_logits;
  for (size_t j = 0; j < positions.size(); ++j) {
    want_logits.push_back(Floats(want[j]));
  }
  testing::GoldenRun run = testing::ExpectGoldenLogits(
      m, tokens, positions, want_logits, want_logits, abs, rel, "");
  std::vector<float>& state = run.rnn_state;
  std::vector<float>& seq_state = run.seq_state;
  std::vector<float> logits(V);  // for the continuation
  if (gc.bf16) return;  // the reference states are for the fp32 weights
  ExpectClose(state.data(), StateFromGolden(g["final_state"]["layers"]), abs,
              rel, "final state (rnn)");
  ExpectClose(seq_state.data(), StateFromGolden(g["final_state"]["layers"]),
              abs, rel, "final state (sequence)");
  std::vector<int32_t> cont = Ints(g["continuation"]["tokens"]);
  std::vector<float> resumed = StateFromGolden(g["final_state"]["layers"]);
  for (size_t i = 0; i < cont.size(); ++i) {
    const int32_t zero = 0;
    SequenceWork c{absl::MakeConstSpan(&cont[i], 1), resumed.data(),
                   absl::MakeConstSpan(&zero, 1), logits.data()};
    ASSERT_TRUE(m.Forward({&c, 1}).ok());
    ExpectClose(logits.data(), Floats(g["continuation"]["logits"][i]), abs, rel,
                "continuation logits " + std::to_string(i));
  }
  ExpectClose(
      resumed.data(),
      StateFromGolden(g["continuation"]["final_state_after_continuation"]), abs,
      rel, "state after continuation");
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, CudaGoldenTest,
    ::testing::Values(
        GoldenCase{"f32_pth", "testdata/rwkv7-tiny.pth", false, false},
        GoldenCase{"f32_safetensors", "testdata/rwkv7-tiny.safetensors", false,
                   false},
        GoldenCase{"bf16_split", "testdata/rwkv7-tiny-bf16.pth", true, true},
        GoldenCase{"bf16", "testdata/rwkv7-tiny-bf16.pth", true, false}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace statestream::engine
