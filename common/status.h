// SPDX-License-Identifier: Apache-2.0
// Typed errors. Every module returns absl::Status; an error that a client may
// act on carries a machine-readable Reason (and optional key/value metadata)
// as payloads. services/ turns these into gRPC statuses with a
// google.rpc.ErrorInfo detail in exactly one place (common/grpc_status.h).
#ifndef STATESTREAM_COMMON_STATUS_H_
#define STATESTREAM_COMMON_STATUS_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace statestream {

// Machine-readable error reasons. The names (ReasonName) are part of the
// public API: they appear as google.rpc.ErrorInfo.reason on the wire and are
// listed in proto/statestream/v1/statestream.proto. Append only.
enum class Reason {
  kUnspecified = 0,
  kSessionNotFound,   // no such session for this tenant (or another tenant's)
  kSessionExists,     // create with an id that is taken
  kSessionBusy,       // another call holds the session's write stream
  kPositionMismatch,  // append names a position that is not the current one
  kVersionMismatch,   // compare-and-set on a version lost, or no such version
  kFenced,            // this writer's lease was taken over
  kModelNotFound,     // the named model is not served here
  kModelMismatch,     // state belongs to another model (fingerprint differs)
  kStateCorrupt,      // checksum, size or format check of a state failed
  kInvalidToken,      // token id outside the vocabulary
  kInvalidUtf8,       // text field is not valid UTF-8
  kInvalidArgument,   // any other malformed request field
  kMessageTooLarge,   // request over the configured size limit
  kOverloaded,        // queue full; retry with backoff
  kUnauthenticated,   // missing or unknown credentials
  kStoreUnavailable,  // the state store cannot be reached
  kInvalidModelFile,  // a checkpoint file is truncated, corrupt or unsupported
  kDuplicateRequest,  // request id reused with different content
  kInternal,          // a bug; logged with context
  kTenantLimit,       // the tenant is at its session or stream limit
  kResumeDiverged,    // a resumed generation differs from output delivered
};

// "SESSION_NOT_FOUND", ... ; "REASON_UNSPECIFIED" for kUnspecified.
absl::string_view ReasonName(Reason reason);
// Inverse of ReasonName; nullopt for an unknown name.
std::optional<Reason> ReasonFromName(absl::string_view name);

using ErrorMetadata = std::vector<std::pair<std::string, std::string>>;

// An error with `code`, `reason` and optional metadata (e.g.
// {"actual_position", "42"}). `code` must not be kOk.
absl::Status MakeError(absl::StatusCode code, Reason reason,
                       absl::string_view message, ErrorMetadata metadata = {});

// `status` with `message` in place of its own, keeping its code, Reason
// and metadata (every payload: a public message, WithPublicMessage below,
// stays as it was).
absl::Status WithMessage(const absl::Status& status, absl::string_view message);

// `status` with the message a client gets in place of its own: the edge
// (ToGrpcStatus) sends `public_message` and logs the whole message, which
// status.message() keeps for every log on the way. For errors whose text
// names the deployment's insides (a Redis node's address, a path on the
// server): the operator's to see, not the caller's.
absl::Status WithPublicMessage(absl::Status status,
                               absl::string_view public_message);
// The message set by WithPublicMessage, if any.
std::optional<std::string> GetPublicMessage(const absl::Status& status);

// The reason attached by MakeError, or kUnspecified. A reason name this
// build does not know (sent by a newer server) also reads as kUnspecified;
// GetReasonName still has it.
Reason GetReason(const absl::Status& status);
// The reason's wire name ("SESSION_NOT_FOUND", ...) exactly as attached,
// including names newer than this build's Reason enum; "" when the status
// carries no reason.
std::string GetReasonName(const absl::Status& status);
// Attaches `reason_name` verbatim (for errors decoded off the wire, whose
// name may be newer than this build). An empty name removes the reason.
void SetReasonName(absl::Status& status, absl::string_view reason_name);
// The metadata attached by MakeError, in insertion order.
ErrorMetadata GetErrorMetadata(const absl::Status& status);
// One metadata value, if present.
std::optional<std::string> GetErrorMetadata(const absl::Status& status,
                                            absl::string_view key);

// Shorthands for the common codes.
inline absl::Status InvalidArgumentError(Reason reason, absl::string_view msg) {
  return MakeError(absl::StatusCode::kInvalidArgument, reason, msg);
}
inline absl::Status NotFoundError(Reason reason, absl::string_view msg) {
  return MakeError(absl::StatusCode::kNotFound, reason, msg);
}
inline absl::Status FailedPreconditionError(Reason reason,
                                            absl::string_view msg) {
  return MakeError(absl::StatusCode::kFailedPrecondition, reason, msg);
}
// A STATE_CORRUPT error carries its message as metadata `detail` too
// (docs/errors.md), for clients that branch on what failed.
inline absl::Status DataLossError(Reason reason, absl::string_view msg) {
  if (reason == Reason::kStateCorrupt) {
    return MakeError(absl::StatusCode::kDataLoss, reason, msg,
                     {{"detail", std::string(msg)}});
  }
  return MakeError(absl::StatusCode::kDataLoss, reason, msg);
}

}  // namespace statestream

// Early-return helpers for absl::Status / absl::StatusOr.
#define SS_CONCAT_INNER_(a, b) a##b
#define SS_CONCAT_(a, b) SS_CONCAT_INNER_(a, b)

#define SS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status ss_status_ = (expr);      \
    if (!ss_status_.ok()) return ss_status_; \
  } while (0)

#define SS_ASSIGN_OR_RETURN(lhs, expr) \
  SS_ASSIGN_OR_RETURN_IMPL_(SS_CONCAT_(ss_statusor_, __LINE__), lhs, expr)
#define SS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

#endif  // STATESTREAM_COMMON_STATUS_H_
