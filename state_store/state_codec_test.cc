// SPDX-License-Identifier: Apache-2.0
#include "state_store/state_codec.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
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
  s.architecture = "x070";
  s.n_layer = 2;
  s.n_embd = 4;
  s.n_head = 1;
  s.head_size = 4;
  s.input_offset = 12400;
  s.parent_session_id = "parent";
  s.parent_version = 7;
  s.last_hidden = {1, 2, 3, 4};
  return s;
}

// The SSSTATE1 encoding, as the first release wrote it.
std::string EncodeV1(const StateSnapshot& s) {
  std::string out = "SSSTATE1";
  auto u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  };
  auto u64 = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  };
  auto bytes = [&](const std::string& b) {
    u32(b.size());
    out += b;
  };
  bytes(s.model_fingerprint);
  u64(s.position);
  bytes(s.tokenizer_tail);
  bytes(s.sampler_state);
  u64(s.state.size());
  out.append(reinterpret_cast<const char*>(s.state.data()), s.state.size() * 4);
  u32(Crc32c(0, out.data(), out.size()));
  return out;
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
  EXPECT_EQ(d->architecture, "x070");
  EXPECT_EQ(d->n_layer, 2u);
  EXPECT_EQ(d->n_embd, 4u);
  EXPECT_EQ(d->n_head, 1u);
  EXPECT_EQ(d->head_size, 4u);
  EXPECT_EQ(d->dtype, StateDtype::kF32);
  EXPECT_EQ(d->input_offset, 12400u);
  EXPECT_EQ(d->parent_session_id, "parent");
  EXPECT_EQ(d->parent_version, 7u);
  EXPECT_EQ(d->last_hidden, s.last_hidden);
  EXPECT_TRUE(CheckStateMatchesModel(*d, s.model_fingerprint, 100).ok());
  EXPECT_EQ(EncodedStateCrc(EncodeState(s)), EncodedStateCrc(EncodeState(*d)));
}

// Side data well past a mebibyte (a long tokenizer tail, many generation
// records) decodes as written: the decoder's bound used to be 1 MiB, below
// what an encoder could write, and such a session could not be loaded.
TEST(StateCodecTest, LargeSideDataRoundTrips) {
  StateSnapshot s = Sample();
  s.tokenizer_tail = std::string((1 << 20) + 1, ' ');
  s.sampler_state = std::string(3 << 20, 'r');
  auto d = DecodeState(EncodeState(s));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->tokenizer_tail, s.tokenizer_tail);
  EXPECT_EQ(d->sampler_state, s.sampler_state);
}

TEST(StateCodecTest, EmptyStateRoundTrips) {
  StateSnapshot s;
  auto d = DecodeState(EncodeState(s));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->state.empty());
  EXPECT_TRUE(d->last_hidden.empty());
}

// The codec carries floats bit for bit, NaN included (the engine refuses
// a non-finite state at import, not the codec): decode then encode gives
// the same bytes. The fuzz target checks this property.
TEST(StateCodecTest, NonFiniteFloatsRoundTripBitForBit) {
  StateSnapshot s = Sample();
  s.state[0] = std::numeric_limits<float>::quiet_NaN();
  s.last_hidden[0] = -std::numeric_limits<float>::infinity();
  const std::string blob = EncodeState(s);
  auto d = DecodeState(blob);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(EncodeState(*d), blob);
}

TEST(StateCodecTest, DecodesFormatVersion1) {
  StateSnapshot s = Sample();
  auto d = DecodeState(EncodeV1(s));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->model_fingerprint, s.model_fingerprint);
  EXPECT_EQ(d->position, s.position);
  EXPECT_EQ(d->tokenizer_tail, s.tokenizer_tail);
  EXPECT_EQ(d->sampler_state, s.sampler_state);
  EXPECT_EQ(d->state, s.state);
  EXPECT_EQ(d->input_offset, 0u);
  EXPECT_TRUE(d->last_hidden.empty());
  std::string bad = EncodeV1(s);
  bad[20] ^= 1;
  EXPECT_EQ(GetReason(DecodeState(bad).status()), Reason::kStateCorrupt);
}

TEST(StateCodecTest, EveryPayloadChunkIsChecked) {
  StateSnapshot s = Sample();
  s.state.assign(700'000, 1.5f);  // 2.8 MB: three 1 MiB chunks
  std::string bytes = EncodeState(s);
  auto d = DecodeState(bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->state, s.state);
  // A byte in the middle of the second chunk.
  const size_t at = bytes.size() / 2;
  bytes[at] ^= 0x01;
  d = DecodeState(bytes);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(d.status().message().find("chunk 1"), absl::string_view::npos)
      << d.status();
}

// A payload chunk straddling state and last_hidden is checksummed across
// both, and the referencing parts concatenate to the plain encoding.
TEST(StateCodecTest, ChunkStraddlingStateAndHidden) {
  StateSnapshot s = Sample();
  s.state.assign(kStateChunkBytes / 4 - 1, 0.5f);  // 1 MiB minus one float
  const EncodedStateParts parts = EncodeStateParts(s);
  std::string bytes = EncodeState(s);
  EXPECT_EQ(
      absl::StrCat(parts.prefix, parts.state, parts.last_hidden, parts.suffix),
      bytes);
  EXPECT_EQ(parts.size(), bytes.size());
  EXPECT_EQ(parts.crc(), EncodedStateCrc(bytes));
  auto d = DecodeState(bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->last_hidden, s.last_hidden);
  // last_hidden[0] completes chunk 0; last_hidden[1..3] form chunk 1.
  const size_t hidden_at = parts.prefix.size() + parts.state.size();
  for (const auto& [offset, chunk] :
       {std::pair<size_t, const char*>{0, "chunk 0"}, {4, "chunk 1"}}) {
    std::string bad = bytes;
    bad[hidden_at + offset] ^= 0x10;
    d = DecodeState(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(d.status().message().find(chunk), absl::string_view::npos)
        << d.status();
  }
}

TEST(StateCodecTest, HiddenOfWrongLengthIsCorrupt) {
  StateSnapshot s = Sample();
  s.last_hidden = {1, 2, 3};  // n_embd is 4
  EXPECT_EQ(GetReason(DecodeState(EncodeState(s)).status()),
            Reason::kStateCorrupt);
  // The stores refuse to write it: what they write always decodes.
  EXPECT_EQ(CheckEncodable(s).code(), absl::StatusCode::kInvalidArgument);
  s.last_hidden = {1, 2, 3, 4};
  EXPECT_TRUE(CheckEncodable(s).ok());
  s.dtype = static_cast<StateDtype>(7);
  EXPECT_EQ(CheckEncodable(s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetReason(DecodeState(EncodeState(s)).status()),
            Reason::kStateCorrupt);
}

TEST(StateCodecTest, CorruptionIsATypedError) {
  std::string bytes = EncodeState(Sample());
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    auto d = DecodeState(bytes.substr(0, cut));
    ASSERT_FALSE(d.ok()) << cut;
    EXPECT_EQ(GetReason(d.status()), Reason::kStateCorrupt);
    // What failed, for clients (docs/errors.md): the message's words.
    EXPECT_EQ(GetErrorMetadata(d.status(), "detail").value_or(""),
              d.status().message())
        << cut;
  }
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string flipped = bytes;
    flipped[i] ^= 0x10;
    auto d = DecodeState(flipped);
    ASSERT_FALSE(d.ok()) << i;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_TRUE(GetErrorMetadata(d.status(), "detail").has_value()) << i;
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
