// SPDX-License-Identifier: Apache-2.0
// Internal to the SDK: ties one grpc::ClientContext to an operation's
// Cancellation for the duration of one attempt, and the Client::Unary retry
// loop.
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_CALL_SCOPE_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_CALL_SCOPE_H_

#include <grpcpp/client_context.h>

#include "common/grpc_status.h"
#include "sdk/cpp/statestream/client.h"

namespace statestream::client {

class CallScope {
 public:
  // Registers `ctx` with call.cancellation (if any).
  CallScope(grpc::ClientContext* ctx, const CallOptions& call)
      : ctx_(ctx), cancellation_(call.cancellation) {
    if (cancellation_ != nullptr && !cancellation_->Register(ctx_)) {
      cancelled_ = true;
    }
  }
  ~CallScope() {
    if (cancellation_ != nullptr && !cancelled_)
      cancellation_->Unregister(ctx_);
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
  // True if the operation was cancelled before the attempt began.
  bool cancelled() const { return cancelled_; }

 private:
  grpc::ClientContext* ctx_;
  Cancellation* cancellation_;
  bool cancelled_ = false;
};

// `fn(Client::Stubs&, grpc::ClientContext*) -> grpc::Status`, one attempt.
template <typename Fn>
absl::Status Client::Unary(const CallOptions& call, Fn fn) {
  for (int attempt = 1;; ++attempt) {
    Stubs& stubs = Current();
    grpc::ClientContext ctx;
    Prepare(&ctx, call, /*unary=*/true);
    absl::Status status;
    {
      CallScope scope(&ctx, call);
      if (scope.cancelled()) return absl::CancelledError("cancelled");
      status = FromGrpcStatus(fn(stubs, &ctx));
    }
    if (status.ok()) return status;
    Rotate(&stubs, status, call);
    if (absl::Status s = RetryOrFail(status, attempt, call); !s.ok()) return s;
  }
}

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_CALL_SCOPE_H_
