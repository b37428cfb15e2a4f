// SPDX-License-Identifier: Apache-2.0
// Internal to the SDK: errors the SDK makes itself, not a server's
// (docs/errors.md, "Errors the SDKs make"). Python's twin is
// statestream.errors._local_error.
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_LOCAL_ERROR_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_LOCAL_ERROR_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/status.h"

namespace statestream::client {

// The metadata every error made by the SDK carries: {"origin", "sdk"}. A
// server's never does.
inline constexpr char kOriginKey[] = "origin";
inline constexpr char kOriginSdk[] = "sdk";

// An error the SDK makes itself: `code`, always a Reason (never
// REASON_UNSPECIFIED: with INTERNAL or UNKNOWN that would read as a
// transport failure, which IsRetryable retries; kUnspecified becomes
// kInternal), `metadata` and then origin=sdk. Errors that stand for a
// broken call ("append stream ended early", "generate ended without done")
// are not made with this: they are meant to read as a transport failure,
// and be retried as one.
inline absl::Status LocalError(absl::StatusCode code, Reason reason,
                               absl::string_view message,
                               ErrorMetadata metadata = {}) {
  if (reason == Reason::kUnspecified) reason = Reason::kInternal;
  metadata.emplace_back(kOriginKey, kOriginSdk);
  return MakeError(code, reason, message, std::move(metadata));
}

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_LOCAL_ERROR_H_
