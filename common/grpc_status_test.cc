// SPDX-License-Identifier: Apache-2.0
#include "common/grpc_status.h"

#include <optional>
#include <string>

#include "absl/time/time.h"
#include "common/status.h"
#include "common/throttled_log.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.pb.h"

namespace statestream {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

// Decodes the ErrorInfo a client would find in the trailer.
google::rpc::ErrorInfo WireErrorInfo(const grpc::Status& status) {
  google::rpc::Status details;
  EXPECT_TRUE(details.ParseFromString(status.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(status.error_code()));
  EXPECT_EQ(details.message(), status.error_message());
  EXPECT_EQ(details.details_size(), 1);
  google::rpc::ErrorInfo info;
  EXPECT_TRUE(details.details(0).UnpackTo(&info));
  return info;
}

// The reasons the code makes are the proto's enum, name for number, and
// every value of it: a reason added to one is added to the other.
TEST(GrpcStatusTest, ReasonsAreTheProtosEnum) {
  const google::protobuf::EnumDescriptor* proto = v1::Reason_descriptor();
  ASSERT_EQ(proto->value_count(),
            static_cast<int>(Reason::kResumeDiverged) + 1);
  for (int i = 0; i < proto->value_count(); ++i) {
    const google::protobuf::EnumValueDescriptor* value = proto->value(i);
    EXPECT_EQ(ReasonName(static_cast<Reason>(value->number())), value->name());
  }
}

TEST(GrpcStatusTest, OkMapsToOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).error_details().empty());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, CarriesReasonAndMetadataOnTheWire) {
  absl::Status error =
      MakeError(absl::StatusCode::kFailedPrecondition,
                Reason::kPositionMismatch, "expected 10, at 42",
                {{"actual_position", "42"}, {"actual_input_offset", "57"}});
  grpc::Status wire = ToGrpcStatus(error);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(wire.error_message(), "expected 10, at 42");
  google::rpc::ErrorInfo info = WireErrorInfo(wire);
  EXPECT_EQ(info.reason(), "POSITION_MISMATCH");
  EXPECT_EQ(info.domain(), "statestream.dev");
  EXPECT_EQ(info.metadata().at("actual_position"), "42");
  EXPECT_EQ(info.metadata().at("actual_input_offset"), "57");
}

// A message naming the deployment's insides reaches the caller as its
// public form, reason and metadata unchanged; the whole goes to the log.
TEST(GrpcStatusTest, APublicMessageIsWhatTheCallerGets) {
  absl::Status error = WithPublicMessage(
      MakeError(absl::StatusCode::kUnavailable, Reason::kStoreUnavailable,
                "state store unavailable: connect to 10.0.0.5:6379: refused",
                {{"durability_reached", "MEMORY"}}),
      "state store unavailable: connect to a Redis node: refused");
  ASSERT_TRUE(FlushLogLines(absl::Seconds(30)));
  testing::internal::CaptureStderr();
  grpc::Status wire = ToGrpcStatus(error);
  EXPECT_TRUE(FlushLogLines(absl::Seconds(30)));
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, testing::HasSubstr("10.0.0.5:6379"));
  EXPECT_THAT(log, testing::HasSubstr("(UNAVAILABLE/STORE_UNAVAILABLE)"));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(wire.error_message(),
            "state store unavailable: connect to a Redis node: refused");
  EXPECT_THAT(wire.error_details(),
              testing::Not(testing::HasSubstr("10.0.0.5")));
  google::rpc::ErrorInfo info = WireErrorInfo(wire);
  EXPECT_EQ(info.reason(), "STORE_UNAVAILABLE");
  EXPECT_EQ(info.metadata().at("durability_reached"), "MEMORY");
}

TEST(GrpcStatusTest, RoundTripsEveryReason) {
  for (int i = 0; i <= static_cast<int>(Reason::kTenantLimit); ++i) {
    auto reason = static_cast<Reason>(i);
    absl::Status back = FromGrpcStatus(ToGrpcStatus(
        MakeError(absl::StatusCode::kAborted, reason, "m", {{"k", "v"}})));
    EXPECT_EQ(back.code(), absl::StatusCode::kAborted) << ReasonName(reason);
    EXPECT_EQ(back.message(), "m");
    EXPECT_EQ(GetReason(back), reason) << ReasonName(reason);
    EXPECT_EQ(GetErrorMetadata(back, "k"), "v");
  }
}

TEST(GrpcStatusTest, MetadataComesBackSortedByKey) {
  absl::Status back = FromGrpcStatus(ToGrpcStatus(
      MakeError(absl::StatusCode::kNotFound, Reason::kVersionMismatch, "gone",
                {{"version", "3"}, {"head_version", "9"}})));
  EXPECT_THAT(GetErrorMetadata(back),
              ElementsAre(Pair("head_version", "9"), Pair("version", "3")));
}

TEST(GrpcStatusTest, PlainStatusGetsUnspecifiedReason) {
  grpc::Status wire = ToGrpcStatus(absl::UnavailableError("down"));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(WireErrorInfo(wire).reason(), "REASON_UNSPECIFIED");
  absl::Status back = FromGrpcStatus(wire);
  EXPECT_EQ(back, absl::UnavailableError("down"));
}

// The server's own INTERNAL or UNKNOWN raised without a reason goes out as
// reason INTERNAL: clients retry only a transport failure's (no ErrorInfo
// at all), never a server bug's.
TEST(GrpcStatusTest, AServersInternalErrorWithoutAReasonIsInternal) {
  for (const absl::Status& bug :
       {absl::InternalError("bug"), absl::UnknownError("bug")}) {
    grpc::Status wire = ToGrpcStatus(bug);
    EXPECT_EQ(WireErrorInfo(wire).reason(), "INTERNAL");
    EXPECT_EQ(GetReason(FromGrpcStatus(wire)), Reason::kInternal);
  }
  const grpc::Status transport(grpc::StatusCode::INTERNAL, "stream removed");
  EXPECT_EQ(GetReason(FromGrpcStatus(transport)), Reason::kUnspecified);
}

TEST(GrpcStatusTest, EveryCodeMapsToTheSameNumber) {
  for (int code = 1; code <= 16; ++code) {
    absl::Status error(static_cast<absl::StatusCode>(code), "x");
    grpc::Status wire = ToGrpcStatus(error);
    EXPECT_EQ(static_cast<int>(wire.error_code()), code);
    EXPECT_EQ(FromGrpcStatus(wire).code(), error.code());
  }
}

TEST(GrpcStatusTest, InvalidUtf8IsReplacedAndLongMessagesTruncated) {
  absl::Status error =
      MakeError(absl::StatusCode::kInvalidArgument, Reason::kInvalidUtf8,
                "bad \xC3(\xFF end", {{"text", "a\xE2\x82"}});
  grpc::Status wire = ToGrpcStatus(error);
  EXPECT_EQ(wire.error_message(), "bad \xEF\xBF\xBD(\xEF\xBF\xBD end");
  EXPECT_EQ(WireErrorInfo(wire).metadata().at("text"),
            "a\xEF\xBF\xBD\xEF\xBF\xBD");

  // A 3-byte character straddling the limit is dropped whole.
  std::string long_message(kMaxErrorMessageBytes - 1, 'x');
  long_message += "\xE2\x82\xAC tail";
  wire = ToGrpcStatus(absl::InternalError(long_message));
  EXPECT_EQ(wire.error_message(), std::string(kMaxErrorMessageBytes - 1, 'x'));
}

TEST(GrpcStatusTest, ForeignOrGarbageDetailsKeepCodeAndMessage) {
  grpc::Status garbage(grpc::StatusCode::NOT_FOUND, "nope", "\xFF\xFF\xFF");
  EXPECT_EQ(FromGrpcStatus(garbage), absl::NotFoundError("nope"));

  google::rpc::ErrorInfo info;
  info.set_reason("SESSION_NOT_FOUND");
  info.set_domain("example.com");
  google::rpc::Status details;
  details.set_code(5);
  details.add_details()->PackFrom(info);
  grpc::Status foreign(grpc::StatusCode::NOT_FOUND, "nope",
                       details.SerializeAsString());
  EXPECT_EQ(GetReason(FromGrpcStatus(foreign)), Reason::kUnspecified);
}

grpc::Status WireError(grpc::StatusCode code, const std::string& reason,
                       bool with_metadata) {
  google::rpc::ErrorInfo info;
  info.set_reason(reason);
  info.set_domain(kErrorDomain);
  if (with_metadata) (*info.mutable_metadata())["k"] = "v";
  google::rpc::Status details;
  details.set_code(static_cast<int>(code));
  details.add_details()->PackFrom(info);
  return grpc::Status(code, "later", details.SerializeAsString());
}

TEST(GrpcStatusTest, UnknownReasonNameReadsAsUnspecifiedButKeepsItsName) {
  for (bool with_metadata : {true, false}) {
    absl::Status back = FromGrpcStatus(
        WireError(grpc::StatusCode::ABORTED, "FROM_THE_FUTURE", with_metadata));
    EXPECT_EQ(back.code(), absl::StatusCode::kAborted);
    EXPECT_EQ(back.message(), "later");
    EXPECT_EQ(GetReason(back), Reason::kUnspecified);
    EXPECT_EQ(GetReasonName(back), "FROM_THE_FUTURE") << with_metadata;
    EXPECT_EQ(GetErrorMetadata(back, "k"),
              with_metadata ? std::optional<std::string>("v") : std::nullopt);
  }
}

TEST(GrpcStatusTest, AGatewayRelaysAReasonNewerThanItself) {
  absl::Status from_worker = FromGrpcStatus(
      WireError(grpc::StatusCode::RESOURCE_EXHAUSTED, "FROM_THE_FUTURE", true));
  grpc::Status relayed = ToGrpcStatus(from_worker);
  EXPECT_EQ(relayed.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  google::rpc::ErrorInfo info = WireErrorInfo(relayed);
  EXPECT_EQ(info.reason(), "FROM_THE_FUTURE");
  EXPECT_EQ(info.metadata().at("k"), "v");
}

TEST(GrpcStatusTest, AMalformedReasonNameIsNotKept) {
  for (const std::string& bad :
       {std::string("lower_case"), std::string("_LEADING"),
        std::string("SPACE IN"), std::string(64, 'A'), std::string("\xC3\xA9"),
        std::string("REASON_UNSPECIFIED"), std::string()}) {
    absl::Status back =
        FromGrpcStatus(WireError(grpc::StatusCode::ABORTED, bad, false));
    EXPECT_EQ(back, absl::AbortedError("later")) << bad;
    EXPECT_EQ(GetReasonName(back), "") << bad;
    back = FromGrpcStatus(WireError(grpc::StatusCode::ABORTED, bad, true));
    EXPECT_EQ(GetReasonName(back), "REASON_UNSPECIFIED") << bad;
    EXPECT_EQ(GetErrorMetadata(back, "k"), "v") << bad;
  }
  // The longest name the form allows is kept.
  EXPECT_EQ(GetReasonName(FromGrpcStatus(WireError(
                grpc::StatusCode::ABORTED, std::string(63, 'A'), false))),
            std::string(63, 'A'));
}

// The mark tells a read that got no message (it stays) from one whose
// message did not parse (parsing cleared it), as gRPC reads: Clear, then
// parse.
TEST(GrpcStatusTest, TheUnreadMarkIsGoneOnlyOnceAMessageWasParsed) {
  google::rpc::ErrorInfo valid;
  valid.set_reason("R");
  google::rpc::ErrorInfo garbled;
  garbled.set_reason("\xFF");  // proto3 strings must be UTF-8
  const std::string garbled_wire = garbled.SerializeAsString();

  google::rpc::ErrorInfo msg;
  MarkUnread(&msg);
  EXPECT_FALSE(ReadUnparsable(msg));  // no message arrived
  MarkUnread(&msg);                   // twice: still one mark's meaning
  EXPECT_FALSE(ReadUnparsable(msg));
  ASSERT_FALSE(msg.ParseFromString(garbled_wire));
  EXPECT_TRUE(ReadUnparsable(msg));
  MarkUnread(&msg);
  ASSERT_TRUE(msg.ParseFromString(valid.SerializeAsString()));
  EXPECT_TRUE(ReadUnparsable(msg));  // a message came (the read succeeded)
  EXPECT_EQ(msg.reason(), "R");
  EXPECT_EQ(UnparsableRequestError().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace statestream
