// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/cuda/cuda_test_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "worker/engine/golden.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine::testing {
namespace {

std::shared_ptr<const WeightFile> OpenAndUnlink(const std::string& path) {
  auto file = WeightFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  unlink(path.c_str());  // the mapping stays valid
  if (!file.ok()) return nullptr;
  return std::shared_ptr<const WeightFile>(std::move(*file));
}

}  // namespace

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/ss_cuda_test_" +
         std::to_string(getpid()) + "_" + name;
}

std::shared_ptr<const WeightFile> RandomFile(const std::string& arch,
                                             const RandomModelSpec& spec,
                                             DType dtype) {
  auto tensors = RandomModel(arch, spec);
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  if (!tensors.ok()) return nullptr;
  const std::string path =
      TempPath(arch + "_" + std::to_string(spec.n_embd) + "_" +
               std::to_string(spec.head_size) + "_" +
               std::to_string(static_cast<int>(dtype)) + ".safetensors");
  EXPECT_TRUE(WriteCheckpoint(path, *tensors, dtype).ok());
  return OpenAndUnlink(path);
}

std::shared_ptr<const WeightFile> Bf16CopyOf(const std::string& path) {
  auto file = WeightFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  std::vector<NamedTensor> tensors;
  for (const std::string& name : (*file)->Names()) {
    const TensorView* t = (*file)->Find(name);
    NamedTensor n{name, t->shape, std::vector<float>(t->numel())};
    ReadAsF32(*t, n.values.data());
    tensors.push_back(std::move(n));
  }
  const std::string out = TempPath("bf16_copy.pth");
  EXPECT_TRUE(WritePth(out, tensors, DType::kBF16).ok());
  return OpenAndUnlink(out);
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

void ExpectClose(const float* got, const std::vector<float>& want, double abs,
                 double rel, const std::string& what) {
  size_t where = 0;
  const double excess = ToleranceExcess(got, want, abs, rel, &where);
  double max_abs = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(double(got[i]) - want[i]));
  }
  std::printf("  %s: max |diff| %.3g\n", what.c_str(), max_abs);
  EXPECT_LE(excess, 0) << what << ": worst element " << where << " got "
                       << got[where] << " want " << want[where];
}

GoldenRun ExpectGoldenLogits(Model& m, const std::vector<int32_t>& tokens,
                             const std::vector<int32_t>& positions,
                             const std::vector<std::vector<float>>& want_rnn,
                             const std::vector<std::vector<float>>& want_seq,
                             double abs, double rel, const std::string& label) {
  const int V = m.info().config.vocab_size;
  GoldenRun run;
  run.rnn_state.assign(m.info().state_floats, 0.0f);
  std::vector<float> logits(V);
  size_t next = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t zero = 0;
    SequenceWork w{absl::MakeConstSpan(&tokens[i], 1), run.rnn_state.data(),
                   absl::MakeConstSpan(&zero, 1), logits.data()};
    const absl::Status s = m.Forward({&w, 1});
    if (!s.ok()) {
      ADD_FAILURE() << label << "rnn step " << i << ": " << s;
      return run;
    }
    if (next < positions.size() && positions[next] == static_cast<int>(i)) {
      ExpectClose(logits.data(), want_rnn[next], abs, rel,
                  label + "rnn logits at " + std::to_string(i));
      ++next;
    }
  }
  EXPECT_EQ(next, positions.size());

  run.seq_state.assign(m.info().state_floats, 0.0f);
  std::vector<float> seq_logits(positions.size() * V);
  SequenceWork w{tokens, run.seq_state.data(), positions, seq_logits.data()};
  const absl::Status s = m.Forward({&w, 1});
  if (!s.ok()) {
    ADD_FAILURE() << label << "sequence: " << s;
    return run;
  }
  for (size_t j = 0; j < positions.size(); ++j) {
    ExpectClose(&seq_logits[j * V], want_seq[j], abs, rel,
                label + "sequence logits at " + std::to_string(positions[j]));
  }
  return run;
}

}  // namespace statestream::engine::testing
