// SPDX-License-Identifier: Apache-2.0
#include "common/status.h"

#include <optional>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(StatusTest, ReasonNamesRoundTrip) {
  for (int i = 0; i <= static_cast<int>(Reason::kResumeDiverged); ++i) {
    auto reason = static_cast<Reason>(i);
    EXPECT_EQ(ReasonFromName(ReasonName(reason)), reason);
  }
  EXPECT_EQ(ReasonName(Reason::kSessionNotFound), "SESSION_NOT_FOUND");
  EXPECT_FALSE(ReasonFromName("NO_SUCH_REASON").has_value());
}

TEST(StatusTest, MakeErrorCarriesReasonAndMetadata) {
  absl::Status s = MakeError(absl::StatusCode::kFailedPrecondition,
                             Reason::kPositionMismatch, "expected 3",
                             {{"actual_position", "7"}, {"b", "x"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "expected 3");
  EXPECT_EQ(GetReason(s), Reason::kPositionMismatch);
  ErrorMetadata meta = GetErrorMetadata(s);
  ASSERT_EQ(meta.size(), 2u);
  EXPECT_EQ(meta[0].first, "actual_position");
  EXPECT_EQ(meta[1].second, "x");
  EXPECT_EQ(GetErrorMetadata(s, "actual_position"), "7");
  EXPECT_FALSE(GetErrorMetadata(s, "missing").has_value());
}

TEST(StatusTest, PlainStatusHasNoReason) {
  EXPECT_EQ(GetReason(absl::InternalError("x")), Reason::kUnspecified);
  EXPECT_EQ(GetReason(absl::OkStatus()), Reason::kUnspecified);
  EXPECT_EQ(GetReasonName(absl::InternalError("x")), "");
}

TEST(StatusTest, ReasonNameIsKeptVerbatim) {
  absl::Status s = absl::AbortedError("x");
  SetReasonName(s, "FROM_THE_FUTURE");
  EXPECT_EQ(GetReasonName(s), "FROM_THE_FUTURE");
  EXPECT_EQ(GetReason(s), Reason::kUnspecified);
  SetReasonName(s, "FENCED");
  EXPECT_EQ(GetReason(s), Reason::kFenced);
  SetReasonName(s, "");
  EXPECT_EQ(GetReasonName(s), "");
  EXPECT_EQ(GetReasonName(MakeError(absl::StatusCode::kNotFound,
                                    Reason::kSessionNotFound, "m")),
            "SESSION_NOT_FOUND");
}

TEST(StatusTest, APublicMessageLeavesTheWholeOneAndThePayloads) {
  absl::Status s = WithPublicMessage(
      MakeError(absl::StatusCode::kUnavailable, Reason::kStoreUnavailable,
                "connect to 10.0.0.5:6379: Connection refused",
                {{"redis_error", "X"}}),
      "connect to a Redis node: Connection refused");
  EXPECT_EQ(s.message(), "connect to 10.0.0.5:6379: Connection refused");
  EXPECT_EQ(GetPublicMessage(s), "connect to a Redis node: Connection refused");
  EXPECT_EQ(GetReason(s), Reason::kStoreUnavailable);
  EXPECT_EQ(GetErrorMetadata(s, "redis_error"), "X");
  EXPECT_EQ(GetPublicMessage(absl::UnavailableError("x")), std::nullopt);
  EXPECT_TRUE(WithPublicMessage(absl::OkStatus(), "y").ok());
  EXPECT_EQ(GetPublicMessage(WithPublicMessage(absl::OkStatus(), "y")),
            std::nullopt);
}

absl::StatusOr<int> Half(int x) {
  if (x % 2) return InvalidArgumentError(Reason::kInvalidArgument, "odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  SS_ASSIGN_OR_RETURN(int h, Half(x));
  SS_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusTest, Macros) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(GetReason(Quarter(6).status()), Reason::kInvalidArgument);
}

}  // namespace
}  // namespace statestream
