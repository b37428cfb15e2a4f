// SPDX-License-Identifier: Apache-2.0
// The gateway's unary calls: UnaryCall forwards one with failover, its
// worker's answer awaited by gRPC rather than by a thread.
#include "services/gateway_unary.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/gateway_reactor_call.h"

namespace statestream::gateway {
namespace {

// One client unary call. Its steps run one after another, each started by
// the one before: Start (the rpc handler), Setup and Route (a task each,
// as routing may read the store), the attempt (awaited by gRPC),
// AttemptDone (gRPC's reaction), AfterAttempt (a task, maybe after an
// alarm: RunAfterAttempt), then Route again or End. So the fields below need no
// lock: the step that starts the next one touches none of them after it has.
class UnaryCall final : public grpc::ServerUnaryReactor, private ReactorCall {
 public:
  UnaryCall(Gateway* gateway, grpc::CallbackServerContext* ctx, Target target,
            UnaryAttempt attempt, UnaryPrepare prepare, bool stream_slot)
      : ReactorCall(gateway),
        ctx_(ctx),
        target_(std::move(target)),
        attempt_(std::move(attempt)),
        prepare_(std::move(prepare)),
        wants_slot_(stream_slot) {}

  // From the rpc handler, before the reactor is returned.
  void Start() {
    began_ = gateway_->BeginCall();
    const grpc::Status refused =
        AuthenticateAndAdmit(*ctx_, &tenant_, [this] { Setup(); });
    if (!refused.ok()) End(refused);
  }

  void OnCancel() override { CancelWaits(); }
  void OnDone() override { Unref(); }

 private:
  // Task: the tenant's stream slot (if it takes one), `prepare_`, then the
  // first attempt.
  void Setup() {
    if (grpc::Status gone = Gateway::GoneBeforeStart(*ctx_); !gone.ok()) {
      End(gone);
      return;
    }
    if (wants_slot_) {
      auto slot = HoldStreamSlot(gateway_, tenant_);
      if (!slot.ok()) {
        End(ToGrpcStatus(slot.status()));
        return;
      }
      slot_ = *std::move(slot);
    }
    if (prepare_ != nullptr) {
      grpc::Status status = prepare_(tenant_, &target_);
      prepare_ = nullptr;
      if (!status.ok()) {
        End(status);
        return;
      }
    }
    Route();
  }

  // Task: picks the next worker and starts an attempt on it.
  void Route() {
    const int attempt = attempts_ + 1;
    auto placed = Place(*ctx_, tenant_, target_, attempt);
    if (!placed.ok()) {
      End(attempt == 1 ? ToGrpcStatus(placed.status())
                       : Gateway::GaveUp(last_));
      return;
    }
    attempts_ = attempt;
    placed_ = *std::move(placed);
    context_ = gateway_->UpstreamContext(*ctx_, tenant_, attempt);
    Ref();  // the attempt's, dropped in AttemptDone
    // The last step here: AttemptDone may run before attempt_ returns.
    attempt_(placed_.channel, context_.get(),
             [this](grpc::Status status) { AttemptDone(std::move(status)); });
  }

  // gRPC's reaction to the attempt's end: must not block.
  void AttemptDone(grpc::Status status) {
    last_ = status;
    if (DeletedByAnEarlierAttempt(status)) {
      Conclude(grpc::Status::OK);
    } else if (!Gateway::ShouldFailover(status)) {
      Conclude(Gateway::FromWorker(status));
    } else if (!RunAfterAttempt(
                   *ctx_, status.error_code() == grpc::StatusCode::CANCELLED,
                   [this, status](bool client_gone) {
                     AfterAttempt(status, client_gone);
                   })) {
      Conclude(Gateway::Refused());
    }
    Unref();  // the attempt's
  }

  // Task: ends the call with `status`, or tries another worker.
  void AfterAttempt(grpc::Status status, bool client_gone) {
    if (client_gone) {
      End(Gateway::FromWorker(status));
      return;
    }
    if (!MayRetry(std::move(placed_), status, target_.method)) {
      End(Gateway::GaveUp(status));
      return;
    }
    outcome_unknown_ |= MayHaveApplied(status);
    Route();
  }

  // Whether an attempt that failed over may have been applied: its worker
  // was lost mid-call (a transport failure other than a connection never
  // made, or the worker's own CANCELLED as it shut down), not one that
  // refused it (a draining worker's stopping=true, FENCED) or never got it.
  static bool MayHaveApplied(const grpc::Status& status) {
    if (status.error_code() == grpc::StatusCode::CANCELLED) return true;
    // gRPC's words when no connection could be made ("failed to connect to
    // all addresses; last error: ... Connection refused"). Should they
    // change, such an attempt counts as maybe applied: a delete of a
    // missing session then ends OK, as the SDKs' retries may end it too.
    return status.error_code() == grpc::StatusCode::UNAVAILABLE &&
           status.error_details().empty() &&
           !absl::StrContains(status.error_message(),
                              "failed to connect to all addresses");
  }

  // A DeleteSession's SESSION_NOT_FOUND after an attempt whose outcome is
  // unknown: that attempt deleted the session (the retry's worker cannot
  // know its request id; the store keeps no record of a delete), so the
  // call succeeded, as the SDKs conclude on their own retries.
  bool DeletedByAnEarlierAttempt(const grpc::Status& status) const {
    return outcome_unknown_ && target_.method == "DeleteSession" &&
           status.error_code() == grpc::StatusCode::NOT_FOUND &&
           GetReason(FromGrpcStatus(status)) == Reason::kSessionNotFound;
  }

  // Frees the stream slot, if any (which may block: Conclude calls this
  // on a task thread then), and finishes the call.
  void End(grpc::Status status) override {
    gateway_->EndCall(target_.method, status, began_);
    slot_.reset();  // the client may make its next call at once
    Finish(status);
  }
  bool HoldsSlot() override { return slot_ != nullptr; }

  grpc::CallbackServerContext* const ctx_;  // valid until Finish
  Target target_;
  const UnaryAttempt attempt_;
  UnaryPrepare prepare_;  // Setup's
  const bool wants_slot_;
  std::shared_ptr<TenantLimits::StreamSlot> slot_;  // Setup's, until End
  absl::Time began_;                                // Start's
  std::string tenant_;                              // Start's
  int attempts_ = 0;                                // started
  bool outcome_unknown_ = false;  // an attempt failed over may have applied
  grpc::Status last_;             // the last attempt's
  // The attempt in progress (or the last): its worker and channel, and
  // its context, which gRPC uses until AttemptDone.
  Placed placed_;
  std::unique_ptr<grpc::ClientContext> context_;
};

}  // namespace

grpc::ServerUnaryReactor* StartUnary(Gateway* gateway,
                                     grpc::CallbackServerContext* ctx,
                                     Target target, UnaryAttempt attempt,
                                     UnaryPrepare prepare, bool stream_slot) {
  auto* call =
      new UnaryCall(gateway, ctx, std::move(target), std::move(attempt),
                    std::move(prepare), stream_slot);
  call->Start();
  return call;
}

}  // namespace statestream::gateway
