// SPDX-License-Identifier: Apache-2.0
// Helpers of the CUDA backend tests (cuda_model_test.cc for x070,
// rwkv6_cuda_test.cc for x060): random checkpoints, tolerances, and a
// comparison that logs the accuracy reached (the device log records it).
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_CUDA_TEST_UTIL_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_CUDA_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/model.h"
#include "worker/engine/random_model.h"
#include "worker/engine/weight_file.h"

namespace statestream::engine::testing {

// Skips a test when the CUDA runtime finds no device.
#define SS_REQUIRE_GPU()                            \
  do {                                              \
    const absl::Status gpu_ = CudaDeviceStatus();   \
    if (!gpu_.ok()) GTEST_SKIP() << gpu_.message(); \
  } while (0)

// fp32 products (and bf16 with split activations): the CPU tolerance of
// ../shared/testdata/README.md. bf16 activations: documented in
// docs/cuda.md; a dropped term or wrong wiring moves logits far more.
inline constexpr double kTight = 1e-4;
inline constexpr double kBf16Abs = 5e-2, kBf16Rel = 5e-2;

// A per-process path under $TEST_TMPDIR (else /tmp).
std::string TempPath(const std::string& name);

// A random checkpoint of `arch` ("x070", "x060", ...) written in `dtype`,
// opened and unlinked (the mapping stays valid). Test failures on error.
std::shared_ptr<const WeightFile> RandomFile(const std::string& arch,
                                             const RandomModelSpec& spec,
                                             DType dtype);

// A copy of a shared checkpoint with every tensor rounded to bf16 (as the
// golden files' bf16_checkpoint was made), opened and unlinked.
std::shared_ptr<const WeightFile> Bf16CopyOf(const std::string& path);

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed);

// EXPECTs every element within abs + rel * |want|, printing the largest
// absolute difference as "  <what>: max |diff| <x>" (bench/gpu/run.sh
// summarises those lines).
void ExpectClose(const float* got, const std::vector<float>& want, double abs,
                 double rel, const std::string& what);

// A golden file's check of one model: `tokens` fed one at a time (RNN
// mode) and then as one sequence, each from a zero state, EXPECTing the
// logits at `positions` within abs + rel * |want| of want_rnn[j] and
// want_seq[j] (labelled "<label>rnn logits at <i>" / "<label>sequence
// logits at <position>"). Returns the two final states.
struct GoldenRun {
  std::vector<float> rnn_state, seq_state;
};
GoldenRun ExpectGoldenLogits(Model& m, const std::vector<int32_t>& tokens,
                             const std::vector<int32_t>& positions,
                             const std::vector<std::vector<float>>& want_rnn,
                             const std::vector<std::vector<float>>& want_seq,
                             double abs, double rel, const std::string& label);

}  // namespace statestream::engine::testing

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_CUDA_TEST_UTIL_H_
