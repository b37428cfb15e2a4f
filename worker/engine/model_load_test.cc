// SPDX-License-Identifier: Apache-2.0
// LoadModel on what it must refuse, each a typed error and never a crash:
// a file that is no model, missing or misshapen tensors, non-finite
// weights, shapes past the engine's limits, an unknown kernel build, an
// unsupported architecture, a path that is no regular file, and a process
// out of memory.
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/testing/scratch_dir.h"
#include "gtest/gtest.h"
#include "worker/engine/address_space_test_util.h"
#include "worker/engine/golden.h"
#include "worker/engine/model.h"
#include "worker/engine/model_test_util.h"
#include "worker/engine/random_model.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine {
namespace {

using testing::Opts;
using testing::SharedPath;

// In this process's scratch directory, removed at exit.
std::string TempPath(const std::string& name) {
  return ::statestream::testing::ProcessScratchDir().File(name);
}

TEST(ModelTest, NotAModel) {
  SS_REQUIRE_SHARED_DATA();
  auto r = LoadModel(SharedPath("testdata/rwkv7-tiny.golden.json"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(GetReason(r.status()), Reason::kInvalidModelFile) << r.status();
  auto missing = LoadModel("/nonexistent/model.pth");
  EXPECT_FALSE(missing.ok());
}

// Legal shapes far past any RWKV (they would size buffers and states in
// gigabytes) are INVALID_MODEL_FILE at load, not a bad_alloc later.
TEST(ModelTest, ShapesPastTheEnginesLimitsAreRefused) {
  for (RandomModelSpec spec :
       {RandomModelSpec{
            .n_layer = 1, .n_embd = 512, .vocab_size = 64, .head_size = 512},
        RandomModelSpec{.n_layer = 1,
        .n_embd = 32,
        .vocab_size = 64,
        .head_size = 32,
        .dim_ffn = 32 * 17},
        RandomModelSpec{.n_layer = 1,
        .n_embd = 32,
        .vocab_size = 64,
        .head_size = 32,
        .d_decay = 4100}}) {
    auto tensors = RandomRwkv7(spec);
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    const std::string path = TempPath("limits.safetensors");
    ASSERT_TRUE(WriteCheckpoint(path, *tensors, DType::kBF16).ok());
    auto m = LoadModel(path);
    std::remove(path.c_str());
    EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile) << m.status();
  }
}

// An unknown kernel build is a typed error naming the builds, for every
// architecture's loader.
TEST(ModelTest, UnknownKernelBuildIsInvalidArgument) {
  SS_REQUIRE_SHARED_DATA();
  for (const char* file :
       {"testdata/rwkv7-tiny.pth", "testdata/rwkv6-tiny.pth"}) {
    auto m = LoadModel(SharedPath(file), Opts(1, "avx512fp16"));
    ASSERT_FALSE(m.ok()) << file;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << file;
    EXPECT_NE(m.status().message().find("unknown or not available"),
              absl::string_view::npos)
        << m.status();
    EXPECT_NE(m.status().message().find("avx512vnni"), absl::string_view::npos)
        << m.status();
  }
}

// A NaN or an infinity anywhere in the weights (a matrix, a LoRA factor,
// a vector) is a corrupt checkpoint, refused at load with the tensor's
// name at every precision, never served as NaN logits (or, as int8,
// silently saturated into another model).
TEST(ModelTest, NonFiniteWeightsAreRefused) {
  auto tensors = RandomRwkv7(
      {.n_layer = 2, .n_embd = 64, .vocab_size = 50, .head_size = 32});
  ASSERT_TRUE(tensors.ok());
  for (const char* name : {"blocks.1.att.key.weight", "blocks.0.att.w1",
                           "blocks.1.ln1.weight", "head.weight"}) {
    for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
      std::vector<NamedTensor> t = *tensors;
      for (auto& x : t) {
        if (x.name == name) x.values[x.values.size() / 2] = bad;
      }
      const std::string path = TempPath("nonfinite.safetensors");
      ASSERT_TRUE(WriteCheckpoint(path, t, DType::kF32).ok());
      for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kBF16,
                                WeightPrecision::kInt8}) {
        auto m = LoadModel(path, Opts(1, "", p));
        ASSERT_FALSE(m.ok()) << name << " " << bad;
        EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile);
        EXPECT_NE(m.status().message().find(name), std::string::npos)
            << m.status();
        EXPECT_NE(m.status().message().find("1 NaN or infinite"),
                  std::string::npos)
            << m.status();
      }
      std::remove(path.c_str());
    }
  }
}

// A path that is no regular file is refused at once: a FIFO is not
// opened for a writer that never comes.
TEST(ModelTest, AFifoIsRefusedWithoutWaiting) {
  const std::string path = TempPath("model.fifo");
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
  auto m = LoadModel(path);
  std::remove(path.c_str());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile) << m.status();
  EXPECT_NE(m.status().message().find("not a regular file"), std::string::npos)
      << m.status();
}

// RWKV-5.0/5.1 (v4's per-head time_first with ln_x) is named as such.
TEST(ModelTest, Rwkv5Point0IsNamedUnsupported) {
  std::vector<NamedTensor> t = {
      {"emb.weight", {10, 4}, std::vector<float>(40, 0.1f)},
      {"blocks.0.att.time_first", {2}, {0.1f, 0.2f}},
      {"blocks.0.att.time_decay", {2}, {0.1f, 0.2f}},
      {"blocks.0.att.ln_x.weight", {4}, std::vector<float>(4, 1.0f)}};
  const std::string path = TempPath("v50.safetensors");
  ASSERT_TRUE(WriteCheckpoint(path, t, DType::kF32).ok());
  auto m = LoadModel(path);
  std::remove(path.c_str());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile);
  EXPECT_NE(m.status().message().find("RWKV-5.0/5.1"), std::string::npos)
      << m.status();
}

// Out of address space while loading (mapping the file, or the weights'
// arena past it) is RESOURCE_EXHAUSTED, not an abort on bad_alloc.
TEST(ModelDeathTest, OutOfMemoryIsAnErrorNotAnAbort) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan reserves address space beyond any RLIMIT_AS";
#else
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto tensors = RandomRwkv7(
      {.n_layer = 1, .n_embd = 128, .vocab_size = 32768, .head_size = 64});
  ASSERT_TRUE(tensors.ok());
  const std::string path = TempPath("big.safetensors");
  ASSERT_TRUE(WriteCheckpoint(path, *tensors, DType::kF32).ok());
  const int64_t file_bytes =
      static_cast<int64_t>(std::filesystem::file_size(path));
  tensors->clear();
  // Half the file: its mapping fails; 1.5 times: the arena's copy does.
  for (int64_t room : {file_bytes / 2, file_bytes + file_bytes / 2}) {
    EXPECT_EXIT(
        {
          if (!testing::CapAddressSpace(room)) std::_Exit(3);
          auto m = LoadModel(path, Opts(1, ""));
          std::fprintf(stderr, "status: %s\n", m.status().ToString().c_str());
          std::_Exit(!m.ok() && m.status().code() ==
                                    absl::StatusCode::kResourceExhausted
                         ? 0
                         : 1);
        },
        ::testing::ExitedWithCode(0), "status: RESOURCE_EXHAUSTED")
        << "room " << room;
  }
  std::remove(path.c_str());
#endif
}

// A tensor name from the file reaches the error escaped and cut short: a
// long name of control bytes was copied into the message whole.
TEST(ModelTest, ABadTensorNameIsQuotedInTheError) {
  auto tensors = RandomRwkv7(
      {.n_layer = 1, .n_embd = 64, .vocab_size = 50, .head_size = 32});
  ASSERT_TRUE(tensors.ok());
  NamedTensor odd = tensors->front();
  odd.name = "blocks.\x1b[2J" + std::string(100000, 'x');
  tensors->push_back(odd);
  const std::string path = TempPath("names.safetensors");
  ASSERT_TRUE(WriteCheckpoint(path, *tensors, DType::kF32).ok());
  auto m = LoadModel(path);
  std::remove(path.c_str());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile) << m.status();
  EXPECT_LT(m.status().message().size(), 1024u);
  EXPECT_EQ(m.status().message().find('\x1b'), absl::string_view::npos);
  EXPECT_NE(m.status().message().find("bad block index"),
            absl::string_view::npos)
      << m.status();
}

TEST(ModelTest, MissingTensorIsAClearError) {
  auto tensors = RandomRwkv7(
      {.n_layer = 2, .n_embd = 64, .vocab_size = 50, .head_size = 32});
  ASSERT_TRUE(tensors.ok());
  for (const char* drop : {"blocks.1.att.v1", "head.weight", "blocks.0.att.r_k",
                           "blocks.1.ffn.key.weight"}) {
    std::vector<NamedTensor> t;
    for (auto& x : *tensors) {
      if (x.name != drop) t.push_back(x);
    }
    std::string path = TempPath("missing.safetensors");
    ASSERT_TRUE(WriteCheckpoint(path, t, DType::kF32).ok());
    auto m = LoadModel(path);
    std::remove(path.c_str());
    ASSERT_FALSE(m.ok()) << drop;
    EXPECT_EQ(GetReason(m.status()), Reason::kInvalidModelFile);
  }
  // A wrong shape.
  std::vector<NamedTensor> t = *tensors;
  for (auto& x : t) {
    if (x.name == "blocks.0.att.key.weight") {
      x.shape = {32, 128};
    }
  }
  std::string path = TempPath("shape.safetensors");
  ASSERT_TRUE(WriteCheckpoint(path, t, DType::kF32).ok());
  auto m = LoadModel(path);
  std::remove(path.c_str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("blocks.0.att.key.weight"),
            std::string::npos);
}

// Training code writes layer 0's value LoRA (v0, v1, v2) too, which the
// model never uses (layer 0's value is v_first): such a file is the same
// model, with the same fingerprint, state and logits, as one without them,
// and a one-layer file carrying them loads.
TEST(ModelTest, Layer0ValueLoraOfATrainingFileIsIgnored) {
  for (int layers : {1, 2}) {
    auto tensors = RandomRwkv7({.n_layer = layers,
                                .n_embd = 64,
                                .vocab_size = 50,
                                .head_size = 32,
                                .d_mv = 6});
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    std::vector<NamedTensor> extra = *tensors;
    const int64_t C = 64;
    auto filled = [](std::string name, std::vector<int64_t> shape, float v) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      return NamedTensor{std::move(name), std::move(shape),
                         std::vector<float>(n, v)};
    };
    extra.push_back(filled("blocks.0.att.v0", {1, 1, C}, 0.3f));
    extra.push_back(filled("blocks.0.att.v1", {C, 6}, 0.02f));
    extra.push_back(filled("blocks.0.att.v2", {6, C}, -0.05f));
    const std::string plain_path = TempPath("plain.safetensors");
    const std::string extra_path = TempPath("extra.safetensors");
    ASSERT_TRUE(WriteCheckpoint(plain_path, *tensors, DType::kF32).ok());
    ASSERT_TRUE(WriteCheckpoint(extra_path, extra, DType::kF32).ok());
    auto plain = LoadModel(plain_path);
    auto with = LoadModel(extra_path);
    ASSERT_TRUE(plain.ok()) << plain.status();
    ASSERT_TRUE(with.ok()) << layers << ": " << with.status();
    EXPECT_EQ((*with)->info().fingerprint, (*plain)->info().fingerprint);
    const std::vector<int32_t> tokens = {3, 14, 15, 9, 26, 5};
    const int32_t last[] = {5};
    auto run = [&](Model& m, std::vector<float>* logits) {
      std::vector<float> state(m.info().state_floats);
      m.InitState(state.data());
      logits->assign(50, 0);
      SequenceWork w{tokens, state.data(), last, logits->data()};
      EXPECT_TRUE(m.Forward({&w, 1}).ok());
      return state;
    };
    std::vector<float> a, b;
    EXPECT_EQ(run(**with, &b), run(**plain, &a)) << layers;
    EXPECT_EQ(b, a) << layers;
    std::remove(plain_path.c_str());
    std::remove(extra_path.c_str());
  }
}

}  // namespace
}  // namespace statestream::engine
