// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/cuda/batch_plan.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace statestream::engine::cuda {
namespace {

using ::testing::ElementsAre;

TEST(BatchPlanTest, PacksSequencesInOrderAndSplitsAtMaxRows) {
  const int32_t a[] = {10, 11, 12, 13, 14};
  const int32_t b[] = {20};
  const int32_t c[] = {30, 31, 32};
  const int32_t pa[] = {4, 0, 2};
  const int32_t pc[] = {2};
  std::vector<PlanInput> in = {{a, 5, pa, 3},
                               {nullptr, 0, nullptr, 0},
                               {b, 1, nullptr, 0},
                               {c, 3, pc, 1}};
  std::vector<Chunk> chunks = PlanChunks(in, 4);
  ASSERT_EQ(chunks.size(), 3u);

  EXPECT_THAT(chunks[0].tokens, ElementsAre(10, 11, 12, 13));
  EXPECT_THAT(chunks[0].slot, ElementsAre(0, 0, 0, 0));
  EXPECT_THAT(chunks[0].flags, ElementsAre(kRowFirst, 0, 0, kRowLast));
  EXPECT_THAT(chunks[0].seg_slot, ElementsAre(0));
  EXPECT_THAT(chunks[0].seg_begin, ElementsAre(0));
  EXPECT_THAT(chunks[0].seg_end, ElementsAre(4));
  ASSERT_EQ(chunks[0].logits.size(), 2u);  // positions 0 and 2, in order
  EXPECT_EQ(chunks[0].logits[0].row, 0);
  EXPECT_EQ(chunks[0].logits[0].index, 1);
  EXPECT_EQ(chunks[0].logits[1].row, 2);
  EXPECT_EQ(chunks[0].logits[1].index, 2);

  // a's last token, all of b (empty sequence 1 gets no rows), c's first two.
  EXPECT_THAT(chunks[1].tokens, ElementsAre(14, 20, 30, 31));
  EXPECT_THAT(chunks[1].slot, ElementsAre(0, 2, 3, 3));
  EXPECT_THAT(chunks[1].flags,
              ElementsAre(kRowFirst | kRowLast, kRowFirst | kRowLast, kRowFirst,
                          kRowLast));
  EXPECT_THAT(chunks[1].seg_slot, ElementsAre(0, 2, 3));
  EXPECT_THAT(chunks[1].seg_begin, ElementsAre(0, 1, 2));
  EXPECT_THAT(chunks[1].seg_end, ElementsAre(1, 2, 4));
  ASSERT_EQ(chunks[1].logits.size(), 1u);
  EXPECT_EQ(chunks[1].logits[0].row, 0);
  EXPECT_EQ(chunks[1].logits[0].seq, 0);
  EXPECT_EQ(chunks[1].logits[0].index, 0);

  EXPECT_THAT(chunks[2].tokens, ElementsAre(32));
  EXPECT_THAT(chunks[2].flags, ElementsAre(kRowFirst | kRowLast));
  ASSERT_EQ(chunks[2].logits.size(), 1u);
  EXPECT_EQ(chunks[2].logits[0].seq, 3);
  EXPECT_EQ(chunks[2].logits[0].row, 0);

  EXPECT_THAT(chunks[1].Pack(), ElementsAre(14, 20, 30, 31,  // tokens
                                            0, 2, 3, 3,      // slots
                                            3, 3, 1, 2,      // flags
                                            0, 2, 3,         // segment slots
                                            0, 1, 2,         // begins
                                            1, 2, 4,         // ends
                                            0));             // logit rows
}

TEST(BatchPlanTest, EmptyBatchHasNoChunks) {
  EXPECT_TRUE(PlanChunks({}, 8).empty());
  std::vector<PlanInput> in = {{nullptr, 0, nullptr, 0}};
  EXPECT_TRUE(PlanChunks(in, 8).empty());
}

TEST(BatchPlanTest, DecodeBatchIsOneRowPerSequence) {
  std::vector<int32_t> tok(300, 7);
  std::vector<PlanInput> in;
  const int32_t p0[] = {0};
  for (int i = 0; i < 300; ++i) in.push_back({&tok[i], 1, p0, 1});
  std::vector<Chunk> chunks = PlanChunks(in, 256);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].rows(), 256);
  EXPECT_EQ(chunks[0].segments(), 256);
  EXPECT_EQ(chunks[0].logits.size(), 256u);
  EXPECT_EQ(chunks[1].rows(), 44);
  EXPECT_EQ(chunks[1].seg_slot.front(), 256);
  EXPECT_EQ(chunks[1].logits.back().seq, 299);
}

// The runners size their tables for max_rows rows: 7 ints a row at most
// (3 per row, 3 per segment, 1 per logit row). With increasing positions
// (CudaModel::Forward refuses others) a chunk never holds more logit rows
// than rows, whatever the split: sequences spanning several chunks, ending
// on a chunk's edge, every position requested, or max_rows of 1.
TEST(BatchPlanTest, IncreasingPositionsFitTheRunnersTables) {
  std::vector<int32_t> tok(1000, 3);
  std::vector<int32_t> every(1000);
  for (int i = 0; i < 1000; ++i) every[i] = i;
  const int32_t last[] = {999};
  for (int max_rows : {1, 7, 64, 100, 1024}) {
    std::vector<PlanInput> in = {{tok.data(), 1000, every.data(), 1000},
                                 {tok.data(), 100, every.data(), 100},
                                 {tok.data(), 1000, last, 1},
                                 {tok.data(), 37, nullptr, 0}};
    size_t logit_rows = 0;
    for (const Chunk& c : PlanChunks(in, max_rows)) {
      ASSERT_LE(c.rows(), max_rows);
      EXPECT_LE(static_cast<int>(c.logits.size()), c.rows());
      EXPECT_LE(c.Pack().size(), 7u * static_cast<size_t>(max_rows));
      logit_rows += c.logits.size();
    }
    EXPECT_EQ(logit_rows, 1000u + 100u + 1u) << max_rows;
  }
}

}  // namespace
}  // namespace statestream::engine::cuda
