// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/weight_arena.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/testing/scratch_dir.h"
#include "worker/engine/huge_pages.h"
#include "worker/engine/kernels.h"
#include "worker/engine/weight_loader.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine {
namespace {

uintptr_t Addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

TEST(WeightArenaTest, BlocksAreAlignedDisjointAndWritable) {
  WeightArena arena;
  char* prev_end = nullptr;
  for (size_t bytes :
       {size_t{1}, size_t{0}, size_t{63}, size_t{64}, size_t{1000},
        size_t{3} << 20, size_t{100} << 20, size_t{5}}) {
    char* p = static_cast<char*>(arena.Allocate(bytes));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(Addr(p) % 64, 0u) << bytes;
    // Never overlaps the previous block (blocks only move forward within a
    // chunk; a new chunk is a new mapping).
    if (prev_end != nullptr && p > prev_end - 64 && p < prev_end) {
      ADD_FAILURE() << "overlap at " << bytes;
    }
    std::memset(p, 0xab, bytes);
    if (bytes > 0) {
      EXPECT_EQ(static_cast<unsigned char>(p[bytes - 1]), 0xab);
    }
    prev_end = p + bytes;
  }
  EXPECT_GE(arena.allocated(), (size_t{103} << 20) + 1000);
}

TEST(WeightArenaTest, ConsecutiveBlocksArePacked) {
  WeightArena arena;
  char* a = static_cast<char*>(arena.Allocate(1000));
  char* b = static_cast<char*>(arena.Allocate(1000));
  EXPECT_EQ(b - a, 1024);  // rounded to 64 bytes, no gap
}

// The `THPeligible` line of /proc/self/smaps for the mapping holding `p`
// (-1 if the kernel does not report it).
int ThpEligible(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo, hi;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 &&
        line.find(':') > line.find(' ')) {
      in = Addr(p) >= lo && Addr(p) < hi;
      continue;
    }
    if (in && line.rfind("THPeligible:", 0) == 0) {
      return std::stoi(line.substr(12));
    }
  }
  return -1;
}

bool ThpOff() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string s;
  std::getline(f, s);
  return s.empty() || s.find("[never]") != std::string::npos;
}

TEST(WeightArenaTest, MemoryIsAdvisedForHugePages) {
  if (ThpOff()) GTEST_SKIP() << "transparent huge pages are off here";
  WeightArena arena;
  void* p = arena.Allocate(size_t{4} << 20);
  EXPECT_EQ(Addr(p) % (size_t{2} << 20), 0u);
  const int eligible = ThpEligible(p);
  if (eligible < 0) GTEST_SKIP() << "kernel does not report THPeligible";
  EXPECT_EQ(eligible, 1);
}

// Session states (megabytes) start on a huge-page boundary and are advised
// for huge pages; small blocks are ordinary heap memory. Both behave as
// vector storage: zeroed on growth, copied, freed.
TEST(HugePagesTest, LargeBlocksAreAdvisedSmallOnesAreHeap) {
  using Vec = HugePageVector<float>;
  Vec big(3 << 18, 1.5f);  // 3 MiB
  EXPECT_EQ(Addr(big.data()) % kHugePageBytes, 0u);
  EXPECT_EQ(big.back(), 1.5f);
  Vec copy = big;
  EXPECT_NE(copy.data(), big.data());
  EXPECT_EQ(copy[12345], 1.5f);
  Vec small(100, 2.0f);
  EXPECT_EQ(small[99], 2.0f);
  small.resize(1 << 20);  // grows into a huge-page block
  EXPECT_EQ(Addr(small.data()) % kHugePageBytes, 0u);
  EXPECT_EQ(small[99], 2.0f);
  EXPECT_EQ(small.back(), 0.0f);
  if (ThpOff()) GTEST_SKIP() << "transparent huge pages are off here";
  const int eligible = ThpEligible(big.data());
  if (eligible < 0) GTEST_SKIP() << "kernel does not report THPeligible";
  EXPECT_EQ(eligible, 1);
}

// Loaded matrices live in the arena (64-byte aligned, kept alive by the
// matrix), not in the file mapping, and outlive their loader and file.
TEST(WeightArenaTest, LoadedMatricesOwnTheirArena) {
  const std::string path =
      ::statestream::testing::ProcessScratchDir().File("arena.safetensors");
  std::vector<float> vals(6 * 130);
  for (size_t i = 0; i < vals.size(); ++i) vals[i] = static_cast<float>(i);
  ASSERT_TRUE(
      WriteSafetensors(path + ".f32", {{"m", {6, 130}, vals}}, DType::kF32)
          .ok());
  ASSERT_TRUE(
      WriteSafetensors(path + ".bf16", {{"b", {130, 6}, vals}}, DType::kBF16)
          .ok());
  auto f32_file = WeightFile::Open(path + ".f32");
  auto bf16_file = WeightFile::Open(path + ".bf16");
  ASSERT_TRUE(f32_file.ok()) << f32_file.status();
  ASSERT_TRUE(bf16_file.ok()) << bf16_file.status();
  Matrix m, t;
  {
    WeightLoader ld(std::move(*f32_file), WeightPrecision::kAsStored);
    ASSERT_TRUE(ld.Mat("m", 6, 130, &m).ok());
    WeightLoader ld2(std::move(*bf16_file), WeightPrecision::kAsStored);
    ASSERT_TRUE(ld2.MatT("b", 130, 6, &t).ok());
  }
  ASSERT_NE(m.f32, nullptr);
  ASSERT_NE(m.arena, nullptr);
  EXPECT_EQ(Addr(m.f32) % 64, 0u);
  // Packed for the kernels (kernels.h): w[1][1] is step 1 of panel 0, and
  // the 6 rows fill one panel of 16 (the rest zero).
  ASSERT_TRUE(m.panels);
  EXPECT_EQ(m.f32[PanelOffset(1, 1, 130, PanelStep(4))], 131.0f);
  EXPECT_EQ(m.f32[PanelOffset(5, 129, 130, PanelStep(4))], 5.0f * 130 + 129);
  EXPECT_EQ(m.f32[PanelOffset(6, 0, 130, PanelStep(4))], 0.0f);
  EXPECT_EQ(m.bytes(), sizeof(float) * 16 * 130);
  float mrow[130];
  m.ReadRow(5, mrow);
  EXPECT_EQ(mrow[129], 5.0f * 130 + 129);
  // Row-major as in the file where asked (the CUDA backend).
  {
    auto again = WeightFile::Open(path + ".f32");
    ASSERT_TRUE(again.ok()) << again.status();
    WeightLoader ld(std::move(*again), WeightPrecision::kAsStored,
                    MatrixLayout::kRowMajor);
    Matrix r;
    ASSERT_TRUE(ld.Mat("m", 6, 130, &r).ok());
    EXPECT_FALSE(r.panels);
    EXPECT_EQ(r.f32[131], 131.0f);
    EXPECT_EQ(r.bytes(), sizeof(float) * 6 * 130);
  }
  // The bf16 LoRA-style factor stays bf16, transposed: t[c][r] = b[r][c].
  ASSERT_NE(t.bf16, nullptr);
  ASSERT_NE(t.arena, nullptr);
  EXPECT_TRUE(t.panels);
  float row[130];
  t.ReadRow(1, row);
  EXPECT_EQ(row[2], 2.0f * 6 + 1);
  t.ReadRow(5, row);
  EXPECT_EQ(row[41], 41.0f * 6 + 5);  // exact in bf16
}

// `vals` (2 rows of 64) written as a safetensors file `name` under
// the process's scratch directory and loaded back with int8 weights into
// `m`; the load's status (refused for non-finite weights) in `*status`
// when given, else it must succeed.
void LoadInt8(const std::string& name, const std::vector<float>& vals,
              Matrix* m, absl::Status* status = nullptr) {
  const std::string path =
      ::statestream::testing::ProcessScratchDir().File(name);
  ASSERT_TRUE(WriteSafetensors(path, {{"m", {2, 64}, vals}}, DType::kF32).ok());
  auto file = WeightFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  WeightLoader ld(std::move(*file), WeightPrecision::kInt8);
  absl::Status s = ld.Mat("m", 2, 64, m);
  if (status != nullptr) {
    *status = s;
  } else {
    ASSERT_TRUE(s.ok()) << s;
  }
  ASSERT_NE(m->i8, nullptr);
}

}  // namespace

// int8 weights from a row with NaN and +-Inf: the load is refused, naming
// the count, and the quantizing on the way is defined: the scale covers
// the finite weights, Inf saturates to +-127 and NaN reads 0 (its cast
// used to be undefined, and an Inf zeroed the whole row's scale).
TEST(WeightArenaTest, NonFiniteWeightsQuantizeToDefinedValues) {
  std::vector<float> vals(2 * 64, 1.0f);
  vals[3] = std::nanf("");
  vals[5] = std::numeric_limits<float>::infinity();
  vals[6] = -std::numeric_limits<float>::infinity();
  vals[7] = -2.0f;
  Matrix m;
  absl::Status status;
  ASSERT_NO_FATAL_FAILURE(
      LoadInt8("nonfinite_test.safetensors", vals, &m, &status));
  EXPECT_EQ(GetReason(status), Reason::kInvalidModelFile) << status;
  EXPECT_NE(status.message().find("tensor m holds 3 NaN or infinite"),
            std::string::npos)
      << status;
  EXPECT_FLOAT_EQ(m.scale[0], 2.0f / 127);
  float row[64];
  m.ReadRow(0, row);
  EXPECT_EQ(row[3], 0.0f);
  EXPECT_FLOAT_EQ(row[5], 2.0f);
  EXPECT_FLOAT_EQ(row[6], -2.0f);
  EXPECT_FLOAT_EQ(row[7], -2.0f);
  EXPECT_NEAR(row[0], 1.0f, 1.0f / 127);
  m.ReadRow(1, row);
  EXPECT_NEAR(row[0], 1.0f, 1.0f / 127);
}

// A row whose max |w| is below 127 / FLT_MAX counts as zeros, as an
// activation row does: 1 / scale overflowed, and every nonzero weight read
// back as +-max (5e-40 as 1e-38, 20 times too large).
TEST(WeightArenaTest, ARowOfTinyWeightsQuantizesToZeros) {
  std::vector<float> vals(2 * 64, 0.0f);
  vals[0] = 1e-38f;
  vals[1] = 5e-40f;
  vals[2] = -3e-39f;
  for (int c = 0; c < 64; ++c) vals[64 + c] = 1.0f;  // an ordinary row
  Matrix m;
  ASSERT_NO_FATAL_FAILURE(LoadInt8("tiny_row_test.safetensors", vals, &m));
  EXPECT_EQ(m.scale[0], 0.0f);
  EXPECT_EQ(m.wsum[0], 0);
  float row[64];
  m.ReadRow(0, row);
  for (int c = 0; c < 64; ++c) EXPECT_EQ(row[c], 0.0f) << c;
  m.ReadRow(1, row);
  EXPECT_NEAR(row[0], 1.0f, 1.0f / 127);
}

}  // namespace statestream::engine
