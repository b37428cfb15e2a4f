// SPDX-License-Identifier: Apache-2.0
// The one mapping between absl::Status (what every module returns) and
// grpc::Status (what the service edge sends). An error's code and message
// map one to one; its Reason and metadata (common/status.h) travel as a
// serialized google.rpc.Status holding one google.rpc.ErrorInfo
// {reason = ReasonName(...), domain = kErrorDomain, metadata} in the
// `grpc-status-details-bin` trailer, where any gRPC client can decode them.
#ifndef STATESTREAM_COMMON_GRPC_STATUS_H_
#define STATESTREAM_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace statestream {

// google.rpc.ErrorInfo.domain of every statestream error.
inline constexpr char kErrorDomain[] = "statestream.dev";

// Server side. OK maps to OK. Any error gets the same code (absl and gRPC
// codes share their numbers; an out-of-range code becomes UNKNOWN), its
// message truncated to kMaxErrorMessageBytes, and an ErrorInfo whose reason
// is REASON_UNSPECIFIED when none was attached. An error with a public
// message (common/status.h WithPublicMessage) sends that one and logs the
// whole message to stderr (a line per 10 s at most for each code and
// reason; common/throttled_log.h: the caller never waits on stderr). Strings
// are made valid UTF-8 (invalid bytes become U+FFFD), since they may echo
// client input.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Client side, the inverse: code, message, and — if the details hold an
// ErrorInfo of kErrorDomain — the Reason and metadata (sorted by key; the
// wire form is a map). Unknown reason names read as Reason::kUnspecified.
// Undecodable details are ignored. Never fails.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Longest message ToGrpcStatus sends, in bytes: trailers are size-limited.
inline constexpr size_t kMaxErrorMessageBytes = 1024;

// A streaming reader's failed read is the end of the client's messages or a
// message gRPC could not parse (a proto3 `string` field that is not UTF-8):
// gRPC reports both alike (Read returns false, OnReadDone(false)) and lets
// the call go on. gRPC answers a unary call's unparsable request
// UNIMPLEMENTED; a stream's must end the same way, or the service takes it
// for the client's half-close (an Append commits and ends OK, dropping the
// messages after it). Told apart by a mark: MarkUnread(msg) before each
// read puts an unknown field into the message the read fills. gRPC parses a
// message that arrived into it, and parsing clears it first; a failed read
// without a message leaves it as it was. So after a failed read,
// ReadUnparsable(msg) (the mark is gone) is a message that did not parse.
void MarkUnread(google::protobuf::Message* msg);
bool ReadUnparsable(const google::protobuf::Message& msg);
// The error that ends such a stream: UNIMPLEMENTED, as gRPC's for a unary
// call.
absl::Status UnparsableRequestError();

}  // namespace statestream

#endif  // STATESTREAM_COMMON_GRPC_STATUS_H_
