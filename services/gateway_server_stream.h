// SPDX-License-Identifier: Apache-2.0
// ServerStreamCall: the gateway's server-streaming calls (GenerateCall in
// gateway_generate.cc, ExportCall in gateway_export.cc), forwarded by
// reactors. Internal to services/; docs/gateway.md, "Forwarding by
// reactors", says what they rely on.
#ifndef STATESTREAM_SERVICES_GATEWAY_SERVER_STREAM_H_
#define STATESTREAM_SERVICES_GATEWAY_SERVER_STREAM_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_callback.h>
#include <grpcpp/support/server_callback.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "services/gateway_internal.h"
#include "services/gateway_reactor_call.h"

namespace statestream::gateway {

// One client call that streams `Response`s from a worker: within the
// tenant's stream limit; the client's stream and each attempt's stream to
// a worker are reactors; the slot, routing and the failover decision run
// as tasks (ReactorCall). A message is read from the worker once the
// client has the one before, so a slow reader holds the worker back and
// the gateway buffers one message.
//
// What differs between calls are the hooks below: how an attempt starts,
// what of a worker's message reaches the client (Generate skips the output
// a re-run repeats), how an attempt's end is read, and whether the call
// may be resent. The *Locked hooks run under mu_, from gRPC's reactions:
// they must not block.
//
// A client that leaves a message unread for client_stall_timeout is cut
// off (CANCELLED, counted in client_stalls_total{method}): the worker's
// stream waits behind it, and an export holds the whole blob in the
// worker's transfer budget meanwhile (a few idle exports filled it, and
// every tenant's imports and exports on that worker were refused).
//
// Lifetime: ReactorCall's references.
template <class Response>
class ServerStreamCall : public grpc::ServerWriteReactor<Response>,
                         public Watched,
                         protected ReactorCall {
 public:
  // From the rpc handler, before the reactor is returned. The caller is
  // authenticated here (a hash lookup), so a bad key costs no call slot
  // and no task; its stream slot is taken on a task (it may wait on
  // Redis).
  void Start() {
    began_ = gateway_->BeginCall();
    const grpc::Status refused =
        AuthenticateAndAdmit(*ctx_, &tenant_, [this] { Setup(); });
    if (refused.ok()) return;
    gateway_->EndCall(method_, refused, began_);
    this->Finish(refused);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    // upstream_ is there: its read hold is (its next read waits for this).
    if (ok) {
      DeliveredLocked(write_);
      upstream_->StartRead(&upstream_->msg);
    } else {
      client_gone_ = true;
      StopAttemptLocked();
    }
  }
  void OnCancel() override { CancelWaits(); }
  void OnDone() override { Unref(); }

  // Every 100 ms from Setup to End (the watchdog's lock, then mu_).
  void Check(absl::Time now) override {
    absl::MutexLock lock(&mu_);
    if (!watched_ || !writing_ || client_stalled_ ||
        now - write_started_ <= gateway_->options().client_stall_timeout) {
      return;
    }
    // The write's end (not ok) ends the attempt as a client gone would.
    client_stalled_ = true;
    gateway_->metrics().CountClientStall(method_);
    ctx_->TryCancel();
  }

 protected:
  // One attempt: the stream from one worker. The call's BindLocked starts
  // it (a stub's async method on channel(); the stub goes in `stub`).
  class Upstream final : public grpc::ClientReadReactor<Response> {
   public:
    Upstream(ServerStreamCall* call, std::shared_ptr<grpc::Channel> channel,
             std::unique_ptr<grpc::ClientContext> context)
        : call_(call),
          channel_(std::move(channel)),
          context_(std::move(context)) {}

    const std::shared_ptr<grpc::Channel>& channel() { return channel_; }
    grpc::ClientContext* context() { return context_.get(); }
    Response msg;                // the read in flight's
    std::shared_ptr<void> stub;  // kept for the attempt

    void OnReadDone(bool ok) override { call_->UpstreamReadDone(ok); }
    void OnDone(const grpc::Status& status) override {
      call_->UpstreamDone(this, status);
    }

   private:
    ServerStreamCall* const call_;
    const std::shared_ptr<grpc::Channel> channel_;
    const std::unique_ptr<grpc::ClientContext> context_;
  };

  // What a worker's message leads to (RelayLocked).
  enum class Relay {
    kWrite,  // *out goes to the client
    kSkip,   // nothing to deliver: read the next message
    kStop,   // the attempt was stopped (StopAttemptLocked)
  };

  ServerStreamCall(Gateway* gateway, grpc::CallbackServerContext* ctx,
                   std::string method)
      : ReactorCall(gateway), ctx_(ctx), method_(std::move(method)) {}

  // Task: where the next attempt goes (Place's target).
  virtual Target AttemptTarget() = 0;
  // Starts `upstream`'s call (not StartCall: the caller does, after the
  // first read) and resets what one attempt tracks.
  virtual void BindLocked(Upstream* upstream)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // A worker's message: what the client gets of it, into `*out`.
  virtual Relay RelayLocked(Response* in, Response* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // `out` reached the client.
  virtual void DeliveredLocked(const Response& /*out*/)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {}
  // An attempt ended with `status`: the status the call goes on with, and
  // whether it is settled (ends whatever the status says).
  virtual grpc::Status SettleLocked(grpc::Status status, bool* /*settled*/)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return status;
  }
  // Task, before another attempt: a status to end with when the call may
  // not be resent.
  virtual std::optional<grpc::Status> RefuseResend() { return std::nullopt; }
  // Once, as the call ends (metrics).
  virtual void Ending() {}

  // Ends the attempt in progress: cancels it and drops the read hold.
  void StopAttemptLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    upstream_->context()->TryCancel();
    DropReadHold();
  }

  grpc::CallbackServerContext* const ctx_;  // valid until Finish
  const std::string method_;                // for the metrics
  absl::Time began_;                        // Start's
  std::string tenant_;                      // Start's

  absl::Mutex mu_;
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;
  // The attempt in progress (null between attempts).
  Upstream* upstream_ ABSL_GUARDED_BY(mu_) = nullptr;

 private:
  // Task: the tenant's stream slot, then the first attempt.
  void Setup() {
    if (grpc::Status gone = Gateway::GoneBeforeStart(*ctx_); !gone.ok()) {
      End(gone);
      return;
    }
    auto slot = HoldStreamSlot(gateway_, tenant_);
    if (!slot.ok()) {
      End(ToGrpcStatus(slot.status()));
      return;
    }
    gateway_->Watch(this);
    {
      absl::MutexLock lock(&mu_);
      slot_ = *std::move(slot);
      watched_ = true;
    }
    Route();
  }

  // Task: picks the next worker and starts an attempt on it.
  void Route() {
    int attempt;
    grpc::Status last;
    {
      absl::MutexLock lock(&mu_);
      attempt = attempts_ + 1;
      last = last_;
    }
    auto placed = Place(*ctx_, tenant_, AttemptTarget(), attempt);
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
    BindLocked(upstream);
    // Reads start from OnWriteDone too (outside the attempt's reactions).
    upstream->AddHold();
    read_hold_ = true;
    upstream->StartRead(&upstream->msg);
    upstream->StartCall();
  }

  // Task: ends the call with `status`, or tries another worker.
  void AfterAttempt(grpc::Status status, bool client_gone) {
    if (client_gone) {
      End(Gateway::FromWorker(status));
      return;
    }
    if (std::optional<grpc::Status> refused = RefuseResend()) {
      End(*std::move(refused));
      return;
    }
    Placed placed;
    {
      absl::MutexLock lock(&mu_);
      placed = std::move(placed_);
    }
    if (!MayRetry(std::move(placed), status, method_)) {
      End(Gateway::GaveUp(status));
      return;
    }
    Route();
  }

  // Frees the slot, then finishes (once), with the attempts made in the
  // x-statestream-attempts trailer. May block; never under mu_.
  void End(grpc::Status status) override {
    std::shared_ptr<TenantLimits::StreamSlot> slot;
    int attempts;
    bool watched;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      slot = std::move(slot_);
      attempts = attempts_;
      watched = watched_;
      watched_ = false;
    }
    // Before Finish: Check uses ctx_ (and the call) under the watchdog.
    if (watched) gateway_->Unwatch(this);
    Ending();
    gateway_->EndCall(method_, status, began_);
    ctx_->AddTrailingMetadata(kAttemptsTrailer, absl::StrCat(attempts));
    slot.reset();  // the client may open its next stream at once
    this->Finish(status);
  }
  bool HoldsSlot() override {
    absl::MutexLock lock(&mu_);
    return slot_ != nullptr;
  }

  // Reactions of the attempt in progress.
  void UpstreamReadDone(bool ok) {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      DropReadHold();
      return;
    }
    Response out;
    switch (RelayLocked(&upstream_->msg, &out)) {
      case Relay::kWrite:
        write_ = std::move(out);
        writing_ = true;
        write_started_ = SteadyNow();
        this->StartWrite(&write_);
        return;
      case Relay::kSkip:
        upstream_->StartRead(&upstream_->msg);
        return;
      case Relay::kStop:
        return;
    }
  }

  void UpstreamDone(Upstream* upstream, grpc::Status status) {
    bool settled = false, client_gone;
    {
      absl::MutexLock lock(&mu_);
      upstream_ = nullptr;
      status = SettleLocked(std::move(status), &settled);
      last_ = status;
      client_gone = client_gone_;  // a write to it failed
    }
    delete upstream;
    // Cut short by its own client: that is how the call ends.
    if (!Gateway::ShouldFailover(status) || settled || client_gone) {
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

  void DropReadHold() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!read_hold_) return;
    read_hold_ = false;
    upstream_->RemoveHold();
  }

  std::shared_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status last_ ABSL_GUARDED_BY(mu_);  // the last attempt's
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  Response write_ ABSL_GUARDED_BY(mu_);  // the write in flight's
  Placed placed_ ABSL_GUARDED_BY(mu_);
  bool read_hold_ ABSL_GUARDED_BY(mu_) = false;
  bool watched_ ABSL_GUARDED_BY(mu_) = false;  // Gateway::Watch'ed, to End
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // a client write in flight
  absl::Time write_started_ ABSL_GUARDED_BY(mu_);
  bool client_stalled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace statestream::gateway

#endif  // STATESTREAM_SERVICES_GATEWAY_SERVER_STREAM_H_
