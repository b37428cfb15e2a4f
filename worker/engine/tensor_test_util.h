// SPDX-License-Identifier: Apache-2.0
// A checkpoint's tensors as a state dict, for tests that re-derive or
// rewrite what a file holds (the bf16 copies of the goldens, the float64
// reference of reference_model_test.cc).
#ifndef STATESTREAM_WORKER_ENGINE_TENSOR_TEST_UTIL_H_
#define STATESTREAM_WORKER_ENGINE_TENSOR_TEST_UTIL_H_

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/weight_file.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine::testing {

// Every tensor of the checkpoint at `path`, widened to fp32, in name order;
// a test failure (and no tensors) when it cannot be opened.
inline std::vector<NamedTensor> ReadTensors(const std::string& path) {
  auto file = WeightFile::Open(path);
  EXPECT_TRUE(file.ok()) << path << ": " << file.status();
  std::vector<NamedTensor> tensors;
  if (!file.ok()) return tensors;
  for (const std::string& name : (*file)->Names()) {
    const TensorView* t = (*file)->Find(name);
    NamedTensor n{name, t->shape, std::vector<float>(t->numel())};
    ReadAsF32(*t, n.values.data());
    tensors.push_back(std::move(n));
  }
  return tensors;
}

}  // namespace statestream::engine::testing

#endif  // STATESTREAM_WORKER_ENGINE_TENSOR_TEST_UTIL_H_
