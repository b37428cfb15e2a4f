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

namespace statestream {

// google.rpc.ErrorInfo.domain of every statestream error.
inline constexpr char kErrorDomain[] = "statestream.dev";

// Server side. OK maps to OK. Any error gets the same code (absl and gRPC
// codes share their numbers; an out-of-range code becomes UNKNOWN), its
// message truncated to kMaxErrorMessageBytes, and an ErrorInfo whose reason
// is REASON_UNSPECIFIED when none was attached. Strings are made valid UTF-8
// (invalid bytes become U+FFFD), since they may echo client input.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Client side, the inverse: code, message, and — if the details hold an
// ErrorInfo of kErrorDomain — the Reason and metadata (sorted by key; the
// wire form is a map). Unknown reason names read as Reason::kUnspecified.
// Undecodable details are ignored. Never fails.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Longest message ToGrpcStatus sends, in bytes: trailers are size-limited.
inline constexpr size_t kMaxErrorMessageBytes = 1024;

}  // namespace statestream

#endif  // STATESTREAM_COMMON_GRPC_STATUS_H_
