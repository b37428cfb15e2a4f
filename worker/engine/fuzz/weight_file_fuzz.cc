// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: any byte string given to WeightFile::FromBuffer must
// either be rejected with a status or yield views whose every element can be
// read. Build with -DSTATESTREAM_BUILD_FUZZ=ON and clang; see
// docs/model-files.md.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "worker/engine/weight_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using statestream::engine::WeightFile;
  // A private copy, so that reads past the input are caught by ASan.
  std::vector<char> bytes(data, data + size);
  auto file =
      WeightFile::FromBuffer(absl::string_view(bytes.data(), bytes.size()));
  if (!file.ok()) return 0;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  for (const std::string& name : (*file)->Names()) {
    const statestream::engine::TensorView* t = (*file)->Find(name);
    if (t == nullptr) __builtin_trap();
    // numel is bounded by the storage the file holds, hence by `size`.
    const size_t n = static_cast<size_t>(t->numel());
    if (n > size) __builtin_trap();
    f32.resize(n);
    bf16.resize(n);
    statestream::engine::ReadAsF32(*t, f32.data());
    statestream::engine::ReadAsBF16(*t, bf16.data());
  }
  return 0;
}
