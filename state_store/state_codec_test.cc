// SPDX-License-Identifier: Apache-2.0
#include "state_store/state_codec.h"

#include "common/status.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

StateSnapshot Sample() {
  StateSnapshot s;
  s.model_fingerprint = "x070-L2-C128-abc";
  s.position = 12345;
  s.tokenizer_tail = std::string("\xe2\x82", 2);
  s.sampler_state = "rng";
  for (int i = 0; i < 100; ++i) s.state.push_back(i * 0.25f - 3);
  return s;
}

TEST(StateCodecTest, RoundTrip) {
  StateSnapshot s = Sample();
  auto d = DecodeState(EncodeState(s));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->model_fingerprint, s.model_fingerprint);
  EXPECT_EQ(d->position, s.position);
  EXPECT_EQ(d->tokenizer_tail, s.tokenizer_tail);
  EXPECT_EQ(d->sampler_state, s.sampler_state);
  EXPECT_EQ(d->state, s.state);
  EXPECT_TRUE(CheckStateMatchesModel(*d, s.model_fingerprint, 100).ok());
}

TEST(StateCodecTest, CorruptionIsATypedError) {
  std::string bytes = EncodeState(Sample());
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    auto d = DecodeState(bytes.substr(0, cut));
    ASSERT_FALSE(d.ok()) << cut;
    EXPECT_EQ(GetReason(d.status()), Reason::kStateCorrupt);
  }
  for (size_t i = 0; i < bytes.size(); i += 7) {
    std::string flipped = bytes;
    flipped[i] ^= 0x10;
    auto d = DecodeState(flipped);
    ASSERT_FALSE(d.ok()) << i;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST(StateCodecTest, WrongModel) {
  StateSnapshot s = Sample();
  absl::Status st = CheckStateMatchesModel(s, "x070-other", 100);
  EXPECT_EQ(GetReason(st), Reason::kModelMismatch);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetReason(CheckStateMatchesModel(s, s.model_fingerprint, 99)),
            Reason::kModelMismatch);
}

}  // namespace
}  // namespace statestream
