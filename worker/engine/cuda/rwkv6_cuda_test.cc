// SPDX-License-Identifier: Apache-2.0
// The x060 CUDA path: the host loader against rwkv6.cc (fingerprint, layout;
// runs everywhere), the error paths (run everywhere), and on a GPU parity
// with the CPU engine (random models, mixed batches, chunking, three rounds
// of state through host memory), chunking consistency, the rwkv6-tiny golden
// vectors (fp32, and a bf16 copy against bf16_checkpoint) and bit-for-bit
// repeatability.
#include <cmath>
#include <cstdio>

#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/cuda/cuda_model.h"
#include "worker/engine/cuda/cuda_test_util.h"
#include "worker/engine/cuda/rwkv6_cuda_model.h"
#include "worker/engine/golden.h"
#include "worker/engine/random_model.h"
#include "worker/engine/rwkv_common.h"
#include "worker/engine/weight_loader.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine {
namespace {

using cuda::Mat6;
using cuda::Vec6;
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
using testing::TempPath;

RandomModelSpec Spec(int layers, int embd, int head, int vocab, int seed) {
  return {.n_layer = layers,
          .n_embd = embd,
          .vocab_size = vocab,
          .head_size = head,
          .seed = static_cast<uint64_t>(seed)};
}

// The host half of LoadRwkv6Cuda reads what the CPU engine reads: the same
// fingerprint, dimensions and parameter count, every tensor in the shape
// Rwkv6Runner expects, time_maa_w2 transposed per mix.
TEST(Rwkv6CudaHostTest, LoadMatchesCpuEngine) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    RandomModelSpec spec = Spec(2, 128, 32, 300, 3);
    spec.d_mix = 16;
    spec.d_decay = 24;
    auto file = RandomFile("x060", spec, dtype);
    ASSERT_NE(file, nullptr);
    ModelOptions cpu_opts;
    cpu_opts.threads = 1;
    auto cpu = LoadModel(file, cpu_opts);
    ASSERT_TRUE(cpu.ok()) << cpu.status();

    WeightLoader ld(file, WeightPrecision::kAsStored, MatrixLayout::kRowMajor);
    ModelConfig c;
    ASSERT_TRUE(cuda_internal::ReadRwkv6Config(*file, ld, &c).ok());
    cuda_internal::Rwkv6Host host;
    ASSERT_TRUE(cuda_internal::LoadRwkv6Host(c, ld, &host).ok());
    EXPECT_EQ(rwkv::Fingerprint(c, ld), (*cpu)->info().fingerprint);
    EXPECT_EQ(ld.params(), (*cpu)->info().params);
    const ModelConfig& want = (*cpu)->info().config;
    EXPECT_EQ(c.arch, Arch::kRwkv6);
    EXPECT_EQ(c.n_layer, want.n_layer);
    EXPECT_EQ(c.n_head, want.n_head);
    EXPECT_EQ(c.head_size, want.head_size);
    EXPECT_EQ(c.dim_ffn, want.dim_ffn);
    EXPECT_EQ(c.d_mix, 16);
    EXPECT_EQ(c.d_decay, 24);

    const int C = c.n_embd, F = c.dim_ffn, dm = c.d_mix, dd = c.d_decay;
    const int shapes[static_cast<int>(Mat6::kCount)][2] = {
        {5 * dm, C}, {5 * C, dm}, {dd, C}, {C, dd}, {C, C}, {C, C},
        {C, C},      {C, C},      {C, C},  {F, C},  {C, C}, {C, F}};
    ASSERT_EQ(host.layers.size(), 2u);
    for (cuda_internal::Rwkv6Host::Layer& L : host.layers) {
      for (const std::vector<float>& v : L.vec) EXPECT_EQ(v.size(), size_t(C));
      for (int m = 0; m < static_cast<int>(Mat6::kCount); ++m) {
        EXPECT_EQ(L.mat[m].rows, shapes[m][0]) << "matrix " << m;
        EXPECT_EQ(L.mat[m].cols, shapes[m][1]) << "matrix " << m;
        // As stored (the runner widens the LoRA factors to fp32 at
        // upload), but time_maa_w2, transposed per mix into fp32.
        const bool bf16 = dtype == DType::kBF16 && m != int(Mat6::kMaaW2);
        EXPECT_EQ(L.mat[m].bf16 != nullptr, bf16) << "matrix " << m;
      }
    }
    // time_maa_w2[f][i][o] is row f*C + o, column i.
    const TensorView* w2 = file->Find("blocks.1.att.time_maa_w2");
    ASSERT_NE(w2, nullptr);
    std::vector<float> raw(w2->numel());
    ReadAsF32(*w2, raw.data());
    const Matrix& got = host.layers[1].m(Mat6::kMaaW2);
    for (int f = 0; f < 5; ++f) {
      for (int i = 0; i < dm; i += 5) {
        for (int o = 0; o < C; o += 7) {
          ASSERT_EQ(got.f32[(static_cast<size_t>(f) * C + o) * dm + i],
                    raw[(static_cast<size_t>(f) * dm + i) * C + o]);
        }
      }
    }
  }
}

TEST(Rwkv6CudaHostTest, GoldenFileFingerprintMatchesCpuEngine) {
  SS_REQUIRE_SHARED_DATA();
  auto opened = WeightFile::Open(SharedPath("testdata/rwkv6-tiny.pth"));
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::shared_ptr<const WeightFile> file(std::move(*opened));
  auto cpu = LoadModel(file, ModelOptions{});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  WeightLoader ld(file, WeightPrecision::kAsStored, MatrixLayout::kRowMajor);
  ModelConfig c;
  ASSERT_TRUE(cuda_internal::ReadRwkv6Config(*file, ld, &c).ok());
  cuda_internal::Rwkv6Host host;
  ASSERT_TRUE(cuda_internal::LoadRwkv6Host(c, ld, &host).ok());
  EXPECT_EQ(rwkv::Fingerprint(c, ld), (*cpu)->info().fingerprint);
}

// A layer's time_faaaa in another head layout than block 0's ([4, 16]
// for [2, 32]: the same 64 values) is refused naming it, as the CPU
// engine refuses it; the host loader read the bytes as block 0's heads.
TEST(Rwkv6CudaHostTest, ALayerWithAnotherHeadLayoutIsRefused) {
  auto tensors = RandomModel("x060", Spec(2, 64, 32, 50, 4));
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  const std::string name = "blocks.1.att.time_faaaa";
  bool found = false;
  for (NamedTensor& x : *tensors) {
    if (x.name != name) continue;
    ASSERT_EQ(x.shape, (std::vector<int64_t>{2, 32}));
    x.shape = {4, 16};
    found = true;
  }
  ASSERT_TRUE(found);
  const std::string path = TempPath("heads.safetensors");
  ASSERT_TRUE(WriteCheckpoint(path, *tensors, DType::kF32).ok());
  auto file = WeightFile::Open(path);
  std::remove(path.c_str());
  ASSERT_TRUE(file.ok()) << file.status();
  std::shared_ptr<const WeightFile> shared = std::move(*file);
  WeightLoader ld(shared, WeightPrecision::kAsStored, MatrixLayout::kRowMajor);
  ModelConfig c;
  ASSERT_TRUE(cuda_internal::ReadRwkv6Config(*shared, ld, &c).ok());
  cuda_internal::Rwkv6Host host;
  const absl::Status s = cuda_internal::LoadRwkv6Host(c, ld, &host);
  EXPECT_EQ(GetReason(s), Reason::kInvalidModelFile) << s;
  EXPECT_THAT(s.message(), HasSubstr(name));
}

// The file is good (the CPU runs it): FAILED_PRECONDITION, which --device
// auto answers by loading it on the CPU.
TEST(Rwkv6CudaTest, UnsupportedHeadSizeIsFailedPrecondition) {
  auto file = RandomFile("x060", Spec(1, 96, 48, 32, 2), DType::kF32);
  auto m = LoadRwkv6Cuda(file, {});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(m.status().message(), HasSubstr("head size 48"));
}

TEST(Rwkv6CudaTest, NoDeviceIsFailedPrecondition) {
  if (CudaDeviceStatus().ok()) GTEST_SKIP() << "a CUDA device is present";
  auto file = RandomFile("x060", Spec(1, 64, 64, 32, 1), DType::kF32);
  ModelOptions o;
  o.device = "cuda";
  auto gpu = LoadModel(file, o);
  ASSERT_FALSE(gpu.ok());
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(gpu.status().message(), HasSubstr("no CUDA device"));
}

// A model of another architecture is refused by the x060 loader.
TEST(Rwkv6CudaTest, OtherArchitectureIsInvalidArgument) {
  auto file = RandomFile("x070", Spec(1, 64, 64, 32, 1), DType::kF32);
  auto m = LoadRwkv6Cuda(file, {});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
}

struct ParityCase {
  const char* name;
  int layers, embd, head, vocab;
  DType dtype;
  bool split;
  int max_rows;
  bool graphs;
};

class Rwkv6ParityTest : public ::testing::TestWithParam<ParityCase> {};

// A mixed batch (prompts of several lengths, single tokens, an empty
// sequence), then two decode rounds from the states each backend produced.
TEST_P(Rwkv6ParityTest, MatchesCpuEngine) {
  SS_REQUIRE_GPU();
  const ParityCase& pc = GetParam();
  auto file = RandomFile(
      "x060", Spec(pc.layers, pc.embd, pc.head, pc.vocab, 42), pc.dtype);
  ModelOptions cpu_opts;
  cpu_opts.threads = 2;
  auto cpu = LoadModel(file, cpu_opts);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  CudaModelOptions co;
  co.split_activations = pc.split;
  co.max_rows = pc.max_rows;
  co.graphs = pc.graphs;
  auto gpu = LoadRwkv6Cuda(file, co);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ((*gpu)->info().fingerprint, (*cpu)->info().fingerprint);
  EXPECT_EQ((*gpu)->info().state_floats, (*cpu)->info().state_floats);
  std::printf("  backend %s\n", (*gpu)->info().kernels.c_str());

  const bool loose = pc.dtype == DType::kBF16 && !pc.split;
  const double abs = loose ? kBf16Abs : kTight, rel = loose ? kBf16Rel : kTight;
  const int V = pc.vocab, C = pc.embd;
  const int64_t SF = (*cpu)->info().state_floats;
  const std::vector<int> lengths = {37, 1, 0, 5, 70, 1};
  const size_t n = lengths.size();
  std::vector<std::vector<float>> cpu_states(n, std::vector<float>(SF, 0.0f));
  std::vector<std::vector<float>> gpu_states = cpu_states;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<int32_t>> tokens(n), positions(n);
    std::vector<std::vector<float>> cpu_logits(n), gpu_logits(n),
        cpu_hidden(n, std::vector<float>(C)), gpu_hidden(n, cpu_hidden[0]);
    std::vector<SequenceWork> cw, gw;
    for (size_t s = 0; s < n; ++s) {
      const int len = round == 0 ? lengths[s] : (s == 2 ? 0 : 1);
      tokens[s] = RandomTokens(len, V, 100 * round + s);
      if (len > 0) positions[s] = {len - 1, 0};
      cpu_logits[s].assign(positions[s].size() * V, 0);
      gpu_logits[s].assign(positions[s].size() * V, 0);
      cw.push_back({tokens[s], cpu_states[s].data(), positions[s],
                    cpu_logits[s].data(), cpu_hidden[s].data()});
      gw.push_back({tokens[s], gpu_states[s].data(), positions[s],
                    gpu_logits[s].data(), gpu_hidden[s].data()});
    }
    ASSERT_TRUE((*cpu)->Forward(cw).ok());
    absl::Status st = (*gpu)->Forward(gw);
    ASSERT_TRUE(st.ok()) << st;
    for (size_t s = 0; s < n; ++s) {
      const std::string at =
          "x060 round " + std::to_string(round) + " seq " + std::to_string(s);
      ExpectClose(gpu_logits[s].data(), cpu_logits[s], abs, rel,
                  at + " logits");
      ExpectClose(gpu_states[s].data(), cpu_states[s], abs, rel, at + " state");
      if (tokens[s].empty()) continue;
      float range = 1;
      for (float h : cpu_hidden[s]) range = std::max(range, std::fabs(h));
      ExpectClose(gpu_hidden[s].data(), cpu_hidden[s],
                  loose ? abs * range : abs, rel, at + " last hidden");
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
    Shapes, Rwkv6ParityTest,
    ::testing::Values(ParityCase{"f32_c128_n64", 2, 128, 64, 512, DType::kF32,
                                 false, 1024, true},
                      ParityCase{"f32_c256_n32_chunked", 3, 256, 32, 300,
                                 DType::kF32, false, 16, true},
                      ParityCase{"f32_c256_n128_nographs", 2, 256, 128, 1000,
                                 DType::kF32, false, 64, false},
                      ParityCase{"bf16split_c128_n64", 2, 128, 64, 512,
                                 DType::kBF16, true, 1024, true},
                      ParityCase{"bf16split_c256_n32_chunked", 3, 256, 32, 300,
                                 DType::kBF16, true, 16, true},
                      ParityCase{"bf16_c128_n64", 2, 128, 64, 512, DType::kBF16,
                                 false, 1024, true},
                      ParityCase{"bf16_c512_n64", 4, 512, 64, 2048,
                                 DType::kBF16, false, 32, true}),
    [](const auto& info) { return std::string(info.param.name); });

// One prompt as one call, in chunks of 7 rows, and split over three calls
// (fp32): the same logits and state within the fp32 tolerance.
TEST(Rwkv6CudaTest, ChunkingAndCallSplitsAgree) {
  SS_REQUIRE_GPU();
  auto file = RandomFile("x060", Spec(2, 128, 64, 256, 8), DType::kF32);
  const std::vector<int32_t> tok = RandomTokens(70, 256, 11);
  std::vector<std::vector<float>> logits, states;
  for (int variant = 0; variant < 3; ++variant) {
    CudaModelOptions co;
    co.max_rows = variant == 1 ? 7 : 1024;
    auto m = LoadRwkv6Cuda(file, co);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<float> state((*m)->info().state_floats, 0.0f);
    std::vector<float> out(256);
    const std::vector<size_t> cuts = variant == 2
                                         ? std::vector<size_t>{0, 1, 30, 70}
                                         : std::vector<size_t>{0, 70};
    for (size_t c = 0; c + 1 < cuts.size(); ++c) {
      const int32_t last = static_cast<int32_t>(cuts[c + 1] - cuts[c] - 1);
      SequenceWork w{
          absl::MakeConstSpan(tok).subspan(cuts[c], cuts[c + 1] - cuts[c]),
          state.data(), absl::MakeConstSpan(&last, 1), out.data()};
      ASSERT_TRUE((*m)->Forward({&w, 1}).ok());
    }
    logits.push_back(out);
    states.push_back(state);
  }
  for (int v = 1; v < 3; ++v) {
    ExpectClose(logits[v].data(), logits[0], kTight, kTight,
                "variant " + std::to_string(v) + " logits");
    ExpectClose(states[v].data(), states[0], kTight, kTight,
                "variant " + std::to_string(v) + " state");
  }
}

// Same input, same state: bit-identical output, with and without graphs.
TEST(Rwkv6CudaTest, RepeatableBitForBit) {
  SS_REQUIRE_GPU();
  auto file = RandomFile("x060", Spec(2, 128, 64, 256, 5), DType::kBF16);
  std::vector<std::vector<float>> logits, states;
  for (bool graphs : {true, true, false}) {
    CudaModelOptions co;
    co.graphs = graphs;
    auto m = LoadRwkv6Cuda(file, co);
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
  bool bf16;  // a bf16-rounded copy, against bf16_checkpoint.logits
  bool split;
};

class Rwkv6GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

// One token per call (RNN mode), then all tokens in one call, then the
// continuation from the golden state (one token at a time and as one call).
TEST_P(Rwkv6GoldenTest, MatchesReference) {
  SS_REQUIRE_GPU();
  SS_REQUIRE_SHARED_DATA();
  const GoldenCase& gc = GetParam();
  nlohmann::json g = LoadJson(SharedPath("testdata/rwkv6-tiny.golden.json"));
  const std::string path = SharedPath("testdata/rwkv6-tiny.pth");
  std::shared_ptr<const WeightFile> file;
  if (gc.bf16) {
    file = testing::Bf16CopyOf(path);
  } else {
    auto opened = WeightFile::Open(path);
    ASSERT_TRUE(opened.ok()) << opened.status();
    file = std::move(*opened);
  }
  ASSERT_NE(file, nullptr);
  CudaModelOptions co;
  co.split_activations = gc.split;
  auto model = LoadRwkv6Cuda(file, co);
  ASSERT_TRUE(model.ok()) << model.status();
  Model& m = **model;
  const bool loose = gc.bf16 && !gc.split;
  const double abs = loose ? kBf16Abs : kTight, rel = loose ? kBf16Rel : kTight;
  const int V = m.info().config.vocab_size;
  std::vector<int32_t> tokens = Ints(g["tokens"]);
  std::vector<int32_t> positions = Ints(g["logits_positions"]);
  const nlohmann::json& want =
      gc.bf16 ? g["bf16_checkpoint"]["logits"] : g["logits"];
  std::vector<std::vector<float>> want_rnn, want_seq;
  for (size_t j = 0; j < positions.size(); ++j) {
    want_rnn.push_back(Floats(want[j]));
    want_seq.push_back(
        Floats(gc.bf16 ? want[j] : g["sequence_mode"]["logits"][j]));
  }
  testing::GoldenRun run = testing::ExpectGoldenLogits(
      m, tokens, positions, want_rnn, want_seq, abs, rel, "x060 ");
  std::vector<float>& state = run.rnn_state;
  std::vector<float>& seq_state = run.seq_state;
  std::vector<float> logits(V);  // for the continuation
  if (gc.bf16) return;  // the reference states are for the fp32 weights
  // S[key][value] per head, as the golden file and the CPU engine.
  const std::vector<float> golden_state =
      StateFromGolden(g["final_state"]["layers"]);
  ExpectClose(state.data(), golden_state, abs, rel, "x060 final state (rnn)");
  ExpectClose(seq_state.data(), golden_state, abs, rel,
              "x060 final state (sequence)");
  std::vector<int32_t> cont = Ints(g["continuation"]["tokens"]);
  std::vector<float> resumed = golden_state;
  for (size_t i = 0; i < cont.size(); ++i) {
    const int32_t zero = 0;
    SequenceWork c{absl::MakeConstSpan(&cont[i], 1), resumed.data(),
                   absl::MakeConstSpan(&zero, 1), logits.data()};
    ASSERT_TRUE(m.Forward({&c, 1}).ok());
    ExpectClose(logits.data(), Floats(g["continuation"]["logits"][i]), abs, rel,
                "x060 continuation logits " + std::to_string(i));
  }
  std::vector<float> resumed_seq = golden_state;
  std::vector<int32_t> all(cont.size());
  for (size_t i = 0; i < cont.size(); ++i) all[i] = static_cast<int32_t>(i);
  std::vector<float> cont_logits(cont.size() * V);
  SequenceWork c{cont, resumed_seq.data(), all, cont_logits.data()};
  ASSERT_TRUE(m.Forward({&c, 1}).ok());
  for (size_t i = 0; i < cont.size(); ++i) {
    ExpectClose(&cont_logits[i * V], Floats(g["continuation"]["logits"][i]),
                abs, rel, "x060 continuation as one call " + std::to_string(i));
  }
  ExpectClose(resumed_seq.data(), resumed, abs, rel,
              "x060 state after continuation (one call vs rnn)");
}

INSTANTIATE_TEST_SUITE_P(Tiny, Rwkv6GoldenTest,
                         ::testing::Values(GoldenCase{"f32", false, false},
                                           GoldenCase{"bf16_split", true, true},
                                           GoldenCase{"bf16", true, false}),
                         [](const auto& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace statestream::engine
