// SPDX-License-Identifier: Apache-2.0
#include "worker/generation_record.h"

#include <cstring>

#include "common/status.h"
#include "gtest/gtest.h"

namespace statestream::worker {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

GenerationRecord Rec(const std::string& id, int tokens, absl::Time at = kT0) {
  GenerationRecord r;
  r.request_id = id;
  r.digest = 0x1234 + tokens;
  r.committed_at = at;
  r.finish = 2;
  r.stop_token = 7;
  r.stop_string = "\n\n";
  r.input_tokens = 3;
  for (int i = 0; i < tokens; ++i) r.tokens.push_back(i * 31);
  return r;
}

TEST(GenerationRecordTest, RoundTripsThroughTheSamplerSideData) {
  std::deque<GenerationRecord> in = {Rec("a", 3), Rec("b", 0)};
  const std::string value = EncodeSamplerSideData("SAMPLER", in);
  std::string sampler;
  std::deque<GenerationRecord> out;
  ASSERT_TRUE(DecodeSamplerSideData(value, &sampler, &out).ok());
  EXPECT_EQ(sampler, "SAMPLER");
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].request_id, "a");
  EXPECT_EQ(out[0].digest, in[0].digest);
  EXPECT_EQ(out[0].committed_at, kT0);
  EXPECT_EQ(out[0].stop_string, "\n\n");
  EXPECT_EQ(out[0].stop_token, 7);
  EXPECT_EQ(out[0].input_tokens, 3u);
  EXPECT_EQ(out[0].tokens, in[0].tokens);
  EXPECT_TRUE(out[1].tokens.empty());
}

// The history base rides along as one more record, beside the carry and
// the real records, and reads back apart from them; none is 0.
TEST(GenerationRecordTest, TheHistoryBaseRoundTrips) {
  std::deque<GenerationRecord> in = {Rec("a", 2)};
  const std::string value =
      EncodeSamplerSideData("S", in, Utf8Carry{"\xE2", 40, true}, 37);
  std::string sampler;
  std::deque<GenerationRecord> out;
  Utf8Carry carry;
  uint64_t base = 0;
  ASSERT_TRUE(DecodeSamplerSideData(value, &sampler, &out, &carry, &base).ok());
  EXPECT_EQ(base, 37u);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].request_id, "a");
  EXPECT_EQ(carry.bytes, "\xE2");
  // Alone, it still makes side data; without one, the bare sampler.
  const std::string alone = EncodeSamplerSideData("S", {}, {}, 5);
  EXPECT_NE(alone, "S");
  ASSERT_TRUE(
      DecodeSamplerSideData(alone, &sampler, &out, nullptr, &base).ok());
  EXPECT_EQ(base, 5u);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(EncodeSamplerSideData("S", {}, {}, 0), "S");
  ASSERT_TRUE(DecodeSamplerSideData("S", &sampler, &out, nullptr, &base).ok());
  EXPECT_EQ(base, 0u);
}

TEST(GenerationRecordTest, NoRecordsIsTheBareSamplerState) {
  EXPECT_EQ(EncodeSamplerSideData("SAMPLER", {}), "SAMPLER");
  std::string sampler;
  std::deque<GenerationRecord> out = {Rec("x", 1)};
  ASSERT_TRUE(DecodeSamplerSideData("SSMP-old", &sampler, &out).ok());
  EXPECT_EQ(sampler, "SSMP-old");
  EXPECT_TRUE(out.empty());
}

TEST(GenerationRecordTest, TheUtf8CarryRoundTripsWithOrWithoutRecords) {
  for (const std::deque<GenerationRecord>& in :
       {std::deque<GenerationRecord>{}, {Rec("a", 2)}}) {
    const std::string value =
        EncodeSamplerSideData("S", in, Utf8Carry{"\xE1\x88", 42});
    std::string sampler;
    Utf8Carry carry;
    std::deque<GenerationRecord> out;
    ASSERT_TRUE(DecodeSamplerSideData(value, &sampler, &out, &carry).ok());
    EXPECT_EQ(sampler, "S");
    EXPECT_EQ(out.size(), in.size());  // the carry is not a record
    EXPECT_EQ(carry.bytes, "\xE1\x88");
    EXPECT_EQ(carry.input_offset, 42u);
    // The format readers that predate the carry know: SSGEN1 with one more
    // record (an in-progress one no request id matches).
    ASSERT_EQ(value.substr(0, 7), "SSGEN1\n");
    uint32_t count = 0;
    std::memcpy(&count, value.data() + 7 + 4 + 1, 4);  // after "S"
    EXPECT_EQ(count, in.size() + 1);
    // Truncated anywhere: corrupt.
    for (size_t n = 7; n < value.size(); ++n) {
      EXPECT_EQ(GetReason(DecodeSamplerSideData(value.substr(0, n), &sampler,
                                                &out, &carry)),
                Reason::kStateCorrupt)
          << n;
    }
  }
  // Not a carry: bytes that are not continuation/lead bytes, or too many;
  // nor bytes that cannot start a character more bytes complete (a lone
  // continuation byte, an impossible lead, an overlong or surrogate start,
  // a complete character): each made every later append INVALID_UTF8.
  for (const std::string& bad :
       {std::string("a"), std::string("\xE1\x88\x80\x80"), std::string("\x80"),
        std::string("\xC0"), std::string("\xF5"), std::string("\xE0\x80"),
        std::string("\xED\xA0"), std::string("\xC3\xA9")}) {
    std::string sampler;
    Utf8Carry carry;
    std::deque<GenerationRecord> out;
    EXPECT_EQ(GetReason(DecodeSamplerSideData(
                  EncodeSamplerSideData("S", {}, Utf8Carry{bad, 1}), &sampler,
                  &out, &carry)),
              Reason::kStateCorrupt);
  }
}

// A record no worker writes is refused at import (CheckGenerationRecords):
// a finish no replay can name, a stop string a client could not parse in
// its replay, an in-progress record without the sampler it continues
// with. (They were taken, and every retry of that request failed or
// answered FINISH_REASON_UNSPECIFIED.) Reading one still works: a stored
// state's unknown finish may be a newer release's.
TEST(GenerationRecordTest, ARecordNoWorkerWritesIsCorrupt) {
  GenerationRecord odd_finish = Rec("a", 1);
  odd_finish.finish = 9;
  GenerationRecord bad_stop = Rec("b", 1);
  bad_stop.stop_string = "\xff";
  GenerationRecord in_progress = Rec("c", 1);
  in_progress.finish = kGenerationInProgress;
  struct Case {
    GenerationRecord record;
    std::string sampler;
  };
  for (const Case& c :
       {Case{odd_finish, "S"}, Case{bad_stop, "S"}, Case{in_progress, ""}}) {
    std::string sampler;
    std::deque<GenerationRecord> out;
    ASSERT_TRUE(
        DecodeSamplerSideData(EncodeSamplerSideData(c.sampler, {c.record}),
                              &sampler, &out)
            .ok());
    EXPECT_EQ(GetReason(CheckGenerationRecords(sampler, out)),
              Reason::kStateCorrupt)
        << c.record.request_id;
  }
  // Each is fine as a worker writes it.
  EXPECT_TRUE(CheckGenerationRecords("S", {Rec("a", 1), in_progress}).ok());
}

// A carry known to be the tail's (no bytes of its own) is recorded too, so
// a reader knows that no character was left open; one with bytes is
// corrupt.
TEST(GenerationRecordTest, AKnownEmptyCarryRoundTrips) {
  const std::string value =
      EncodeSamplerSideData("S", {}, Utf8Carry{"", 7, true});
  ASSERT_NE(value, "S");
  std::string sampler;
  Utf8Carry carry;
  std::deque<GenerationRecord> out;
  ASSERT_TRUE(DecodeSamplerSideData(value, &sampler, &out, &carry).ok());
  EXPECT_EQ(sampler, "S");
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(carry.known);
  EXPECT_EQ(carry.bytes, "");
  EXPECT_EQ(carry.input_offset, 7u);
  // Nothing known: the sampler alone, and the decoder says so.
  EXPECT_EQ(EncodeSamplerSideData("S", {}, Utf8Carry{}), "S");
  ASSERT_TRUE(DecodeSamplerSideData("S", &sampler, &out, &carry).ok());
  EXPECT_FALSE(carry.known);
  // The marker with bytes: corrupt.
  GenerationRecord marker = Rec("\x01utf8-known", 1);
  marker.tokens = {0x80};
  EXPECT_EQ(GetReason(DecodeSamplerSideData(
                EncodeSamplerSideData("S", {marker}), &sampler, &out, &carry)),
            Reason::kStateCorrupt);
}

TEST(GenerationRecordTest, TruncatedOrPaddedValuesAreCorrupt) {
  const std::string value = EncodeSamplerSideData("S", {Rec("a", 4)});
  std::string sampler;
  std::deque<GenerationRecord> out;
  for (size_t n = 7; n < value.size(); ++n) {
    absl::Status st = DecodeSamplerSideData(value.substr(0, n), &sampler, &out);
    EXPECT_EQ(GetReason(st), Reason::kStateCorrupt) << n;
  }
  EXPECT_EQ(GetReason(DecodeSamplerSideData(value + "x", &sampler, &out)),
            Reason::kStateCorrupt);
}

TEST(GenerationRecordTest, BoundedByCountTokensAndAge) {
  std::deque<GenerationRecord> r;
  for (int i = 0; i < 10; ++i) {
    AddGenerationRecord(Rec(std::to_string(i), 10), 4, 1000, absl::Hours(1),
                        kT0, &r);
  }
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r.front().request_id, "6");
  AddGenerationRecord(Rec("big", 995), 4, 1000, absl::Hours(1), kT0, &r);
  ASSERT_EQ(r.size(), 1u);  // the newest is always kept
  AddGenerationRecord(Rec("late", 1, kT0 + absl::Hours(2)), 4, 1000,
                      absl::Hours(1), kT0 + absl::Hours(2), &r);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r.front().request_id, "late");
  EXPECT_NE(
      FindGenerationRecord(r, "late", absl::Hours(1), kT0 + absl::Hours(2)),
      nullptr);
  EXPECT_EQ(
      FindGenerationRecord(r, "late", absl::Hours(1), kT0 + absl::Hours(4)),
      nullptr);
  EXPECT_EQ(FindGenerationRecord(r, "6", absl::Hours(1), kT0), nullptr);
}

TEST(GenerationRecordTest, InProgressRecordsRoundTripAndAreDropped) {
  GenerationRecord partial = Rec("p", 2);
  partial.finish = kGenerationInProgress;
  std::deque<GenerationRecord> in = {Rec("a", 1), partial, Rec("b", 1)};
  std::string sampler;
  std::deque<GenerationRecord> out;
  ASSERT_TRUE(
      DecodeSamplerSideData(EncodeSamplerSideData("S", in), &sampler, &out)
          .ok());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].finish, kGenerationInProgress);
  DropInProgressRecords(&out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].request_id, "a");
  EXPECT_EQ(out[1].request_id, "b");
}

}  // namespace
}  // namespace statestream::worker
