// SPDX-License-Identifier: Apache-2.0
// Internal to the SDK: ties one grpc::ClientContext to an operation's
// Cancellation for the duration of one attempt, and the Client::Unary retry
// loop.
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_CALL_SCOPE_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_CALL_SCOPE_H_

#include <grpcpp/client_context.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
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

// Cancels a call that goes `idle` without Progress(): the bound of a
// transfer attempt (ExportState, ImportState), whose length grows with the
// state and the link while each message's does not. A thread per attempt:
// transfers are few and each moves megabytes.
class StallGuard {
 public:
  // No watch when `idle` is infinite (or past a century).
  StallGuard(grpc::ClientContext* ctx, absl::Duration idle)
      : ctx_(ctx),
        idle_(idle > absl::Hours(24 * 365 * 100) ? absl::InfiniteDuration()
                                                 : idle),
        due_(Clock::now()) {
    if (idle_ == absl::InfiniteDuration()) return;
    due_ += absl::ToChronoNanoseconds(idle_);
    thread_ = std::thread([this] { Watch(); });
  }
  ~StallGuard() {
    Disarm();
    if (thread_.joinable()) thread_.join();
  }
  StallGuard(const StallGuard&) = delete;
  StallGuard& operator=(const StallGuard&) = delete;

  // A message went out or came in: the call has `idle` again from now.
  void Progress() {
    if (idle_ == absl::InfiniteDuration()) return;
    absl::MutexLock lock(&mu_);
    due_ = Clock::now() + absl::ToChronoNanoseconds(idle_);
  }
  // Stops watching: what is left of the call is bounded by its deadline
  // (an import's last writes may sit in buffers longer than `idle`).
  void Disarm() {
    absl::MutexLock lock(&mu_);
    done_ = true;
    wake_.Notify();
  }
  // True once the call was cancelled for going idle.
  bool stalled() const {
    absl::MutexLock lock(&mu_);
    return stalled_;
  }
  absl::Duration idle() const { return idle_; }

 private:
  // Steady: a step of the wall clock neither fires nor delays the guard.
  using Clock = std::chrono::steady_clock;

  void Watch() {
    absl::MutexLock lock(&mu_);
    while (!done_) {
      const Clock::duration left = due_ - Clock::now();
      if (left <= Clock::duration::zero()) {
        stalled_ = true;
        ctx_->TryCancel();
        return;
      }
      wake_.Await(
          &mu_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_; },
          absl::FromChrono(left) + absl::Microseconds(100));
    }
  }

  grpc::ClientContext* const ctx_;
  const absl::Duration idle_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  Clock::time_point due_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;
  // Told when done_ is set. Abseil's own timed waits follow the wall clock.
  SteadyWaiter wake_;
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
      if (scope.cancelled()) return CallerCancelled();
      status = FromGrpcStatus(fn(stubs, &ctx));
    }
    if (status.ok()) return status;
    Rotate(&stubs, status, call);
    if (absl::Status s = RetryOrFail(status, attempt, call); !s.ok()) return s;
  }
}

// `fn(Client::Stubs&, grpc::ClientContext*, StallGuard&) -> grpc::Status`,
// one attempt of a transfer: bounded by call.deadline and `budget` from its
// start, and cancelled once ClientOptions::timeout passes without fn's
// guard.Progress() (a message sent or received) while armed; a stalled
// attempt is DEADLINE_EXCEEDED and retried.
template <typename Fn>
absl::Status Client::Transfer(const CallOptions& call, absl::Duration budget,
                              Fn fn) {
  for (int attempt = 1;; ++attempt) {
    Stubs& stubs = Current();
    grpc::ClientContext ctx;
    CallOptions bounded = call;
    bounded.deadline = std::min(call.deadline, absl::Now() + budget);
    Prepare(&ctx, bounded, /*unary=*/false);
    absl::Status status;
    {
      CallScope scope(&ctx, call);
      if (scope.cancelled()) return CallerCancelled();
      StallGuard guard(&ctx, options_.timeout);
      status = FromGrpcStatus(fn(stubs, &ctx, guard));
      // The guard's cancel, not a status the call had already ended with.
      if (status.code() == absl::StatusCode::kCancelled && guard.stalled()) {
        status = absl::DeadlineExceededError(
            absl::StrCat("no progress for ", absl::FormatDuration(guard.idle()),
                         " (ClientOptions::timeout)"));
      }
    }
    if (status.ok()) return status;
    Rotate(&stubs, status, call);
    if (absl::Status s = RetryOrFail(status, attempt, call); !s.ok()) return s;
  }
}

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_CALL_SCOPE_H_
