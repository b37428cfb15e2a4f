// SPDX-License-Identifier: Apache-2.0
// The gateway's ExportState, forwarded by reactors (no thread per call):
// resent to another worker only before its first message reached the
// client.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/gateway_reactor_call.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

// One client ExportState call: a stream like the others (within the
// tenant's stream limit), forwarded as Generate is — the client's stream
// and each attempt's are reactors, the slot, routing and the failover
// decision run on short-lived threads, and a message is read from the
// worker once the client has the one before (a slow reader holds the
// worker back, and the gateway buffers one message).
class ExportCall final
    : public grpc::ServerWriteReactor<v1::ExportStateResponse>,
      private ReactorCall {
 public:
  ExportCall(Gateway* gateway, grpc::CallbackServerContext* ctx,
             const v1::ExportStateRequest* request)
      : ReactorCall(gateway), ctx_(ctx), request_(*request) {}

  // From the rpc handler, before the reactor is returned.
  void Start() {
    began_ = gateway_->BeginCall();
    if (Admit([this] { Setup(); })) return;
    gateway_->EndCall("ExportState", Gateway::Refused(), began_);
    Finish(Gateway::Refused());
  }

  void OnWriteDone(bool ok) override;
  void OnCancel() override { CancelWaits(); }
  void OnDone() override { Unref(); }

 private:
  class Upstream;

  // Task: the caller's tenant and stream slot, then the first attempt.
  void Setup();
  // Task: picks the next worker and starts an attempt on it.
  void Route();
  // Task: ends the call with `status`, or tries another worker.
  void AfterAttempt(grpc::Status status, bool client_gone);
  // Frees the slot, then finishes (once). May block; never under mu_.
  void End(grpc::Status status) override;
  bool HoldsSlot() override {
    absl::MutexLock lock(&mu_);
    return slot_ != nullptr;
  }

  // Reactions of the attempt in progress.
  void UpstreamReadDone(bool ok);
  void UpstreamDone(Upstream* upstream, grpc::Status status);
  void DropReadHold() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  grpc::CallbackServerContext* const ctx_;  // valid until Finish
  // gRPC's, kept until OnDone (which follows Finish).
  const v1::ExportStateRequest& request_;
  absl::Time began_;    // Start's
  std::string tenant_;  // Setup's

  absl::Mutex mu_;
  std::shared_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::Status last_ ABSL_GUARDED_BY(mu_);  // the last attempt's
  // A message reached the client: the export cannot be resent.
  bool delivered_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;       // a write to it failed
  v1::ExportStateResponse write_ ABSL_GUARDED_BY(mu_);  // in flight's

  // The attempt in progress (null between attempts).
  Upstream* upstream_ ABSL_GUARDED_BY(mu_) = nullptr;
  Placed placed_ ABSL_GUARDED_BY(mu_);
  bool read_hold_ ABSL_GUARDED_BY(mu_) = false;
};

// One attempt: the ExportState stream from one worker.
class ExportCall::Upstream final
    : public grpc::ClientReadReactor<v1::ExportStateResponse> {
 public:
  Upstream(ExportCall* call, std::shared_ptr<grpc::Channel> channel,
           std::unique_ptr<grpc::ClientContext> context)
      : call_(call),
        stub_(v1::Sessions::NewStub(channel)),
        context_(std::move(context)) {}

  void Bind(const v1::ExportStateRequest* request) {
    stub_->async()->ExportState(context_.get(), request, this);
  }
  grpc::ClientContext* context() { return context_.get(); }

  v1::ExportStateResponse msg;  // the read in flight's

  void OnReadDone(bool ok) override { call_->UpstreamReadDone(ok); }
  void OnDone(const grpc::Status& status) override {
    call_->UpstreamDone(this, status);
  }

 private:
  ExportCall* const call_;
  const std::unique_ptr<v1::Sessions::Stub> stub_;
  const std::unique_ptr<grpc::ClientContext> context_;
};

void ExportCall::Setup() {
  auto slot = TenantAndSlot(*ctx_, &tenant_);
  if (!slot.ok()) {
    End(ToGrpcStatus(slot.status()));
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    slot_ = *std::move(slot);
  }
  Route();
}

void ExportCall::Route() {
  int attempt;
  grpc::Status last;
  {
    absl::MutexLock lock(&mu_);
    attempt = attempts_ + 1;
    last = last_;
  }
  auto placed = Place(
      *ctx_, tenant_,
      Target{"ExportState", request_.session_id(), "", "", /*any_model=*/true},
      attempt);
  if (!placed.ok()) {
    End(attempt == 1 ? ToGrpcStatus(placed.status()) : Gateway::GaveUp(last));
    return;
  }
  auto* upstream =
      new Upstream(this, placed->channel,
                   gateway_->UpstreamContext(*ctx_, tenant_, attempt));
  Ref();  // the attempt's, dropped in UpstreamDone
  absl::MutexLock lock(&mu_);
  attempts_ = attempt;
  upstream_ = upstream;
  placed_ = *std::move(placed);
  upstream->Bind(&request_);
  // Reads start from OnWriteDone too (outside the attempt's reactions).
  upstream->AddHold();
  read_hold_ = true;
  upstream->StartRead(&upstream->msg);
  upstream->StartCall();
}

void ExportCall::DropReadHold() {
  if (!read_hold_) return;
  read_hold_ = false;
  upstream_->RemoveHold();
}

void ExportCall::UpstreamReadDone(bool ok) {
  absl::MutexLock lock(&mu_);
  if (!ok) {
    DropReadHold();
    return;
  }
  delivered_ = true;
  write_ = std::move(upstream_->msg);
  StartWrite(&write_);
}

void ExportCall::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  // upstream_ is there: its read hold is (its next read waits for this).
  if (ok) {
    upstream_->StartRead(&upstream_->msg);
  } else {
    client_gone_ = true;
    upstream_->context()->TryCancel();
    DropReadHold();
  }
}

void ExportCall::UpstreamDone(Upstream* upstream, grpc::Status status) {
  bool client_gone;
  {
    absl::MutexLock lock(&mu_);
    upstream_ = nullptr;
    last_ = status;
    client_gone = client_gone_;
  }
  delete upstream;
  // Cut short by its own client: that is how the call ends.
  if (!Gateway::ShouldFailover(status) || client_gone) {
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

void ExportCall::AfterAttempt(grpc::Status status, bool client_gone) {
  if (client_gone) {
    End(Gateway::FromWorker(status));
    return;
  }
  Placed placed;
  bool delivered;
  {
    absl::MutexLock lock(&mu_);
    placed = std::move(placed_);
    delivered = delivered_;
  }
  if (delivered) {
    // Part of the state reached the client: it retries the export whole.
    End(ToGrpcStatus(MakeError(
        absl::StatusCode::kUnavailable, Reason::kOverloaded,
        "worker lost during export; retry", {{"retry_after_ms", "200"}})));
    return;
  }
  if (!MayRetry(std::move(placed), status, "ExportState")) {
    End(Gateway::GaveUp(status));
    return;
  }
  Route();
}

void ExportCall::End(grpc::Status status) {
  std::shared_ptr<TenantLimits::StreamSlot> slot;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    slot = std::move(slot_);
  }
  gateway_->EndCall("ExportState", status, began_);
  slot.reset();  // the client may open its next stream at once
  Finish(status);
}

}  // namespace

grpc::ServerWriteReactor<v1::ExportStateResponse>* StartExport(
    Gateway* gateway, grpc::CallbackServerContext* ctx,
    const v1::ExportStateRequest* request) {
  auto* call = new ExportCall(gateway, ctx, request);
  call->Start();
  return call;
}

}  // namespace statestream::gateway
