// SPDX-License-Identifier: Apache-2.0
// The gateway's Generate: resume-and-skip failover, forwarded by reactors
// (no thread per call; see gateway.h for the contract).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/gateway_reactor_call.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

// One client Generate call, forwarded like an Append: the client's stream
// and each attempt's stream are reactors, and the slot, routing, the
// failover decision (which may wait for a cancel's sign) and the end run
// on short-lived threads. After a failover the output the client already
// has is skipped; a re-run that diverges from it ends the call
// UNAVAILABLE. A chunk is read from the worker once the client has the
// one before (its pace holds the worker's back).
class GenerateCall final
    : public grpc::ServerWriteReactor<v1::GenerateResponse>,
      private ReactorCall {
 public:
  GenerateCall(Gateway* gateway, grpc::CallbackServerContext* ctx,
               const v1::GenerateRequest* request)
      : ReactorCall(gateway),
        ctx_(ctx),
        request_(*request),
        attempt_request_(*request) {}

  // From the rpc handler, before the reactor is returned.
  void Start() {
    began_ = gateway_->BeginCall();
    auto tenant = gateway_->Tenant(*ctx_);
    grpc::Status refused;
    if (!tenant.ok()) {
      refused = ToGrpcStatus(tenant.status());
    } else {
      tenant_ = *std::move(tenant);
      // The slot is taken on a task thread: it may wait on Redis.
      if (Admit([this] { Setup(); })) return;
      refused = Gateway::Refused();
    }
    gateway_->EndCall("Generate", refused, began_);
    Finish(refused);
  }

  void OnWriteDone(bool ok) override;
  void OnCancel() override { CancelWaits(); }
  void OnDone() override { Unref(); }

 private:
  class Upstream;

  // Task: the tenant's stream slot, then the first attempt.
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
  // The attempt's output diverged from what was delivered, at `index`.
  void Diverged(size_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  grpc::CallbackServerContext* const ctx_;  // valid until Finish
  // gRPC's, kept until OnDone (which follows Finish).
  const v1::GenerateRequest& request_;
  absl::Time began_;    // Start's
  std::string tenant_;  // Start's

  absl::Mutex mu_;
  std::shared_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::Status last_ ABSL_GUARDED_BY(mu_);             // the last attempt's
  std::vector<uint32_t> tokens_ ABSL_GUARDED_BY(mu_);  // delivered
  std::string text_ ABSL_GUARDED_BY(mu_);              // delivered
  bool done_ ABSL_GUARDED_BY(mu_) = false;             // `done` delivered
  int64_t skipped_ ABSL_GUARDED_BY(mu_) = 0;
  // What the attempts send: once the first chunk says which input_offset a
  // side-branch generation started from, a request that pinned none is
  // pinned there, so a re-run on a session that moved on (whose output may
  // still repeat what was delivered) is refused instead of joined. Not a
  // committing one: the request digest that finds its generation record
  // (checkpointed or finished) covers expected_input_offset, so it is
  // re-sent unchanged.
  v1::GenerateRequest attempt_request_ ABSL_GUARDED_BY(mu_);
  bool pinned_here_ ABSL_GUARDED_BY(mu_) = false;
  // The input_offset the delivered output was sampled from: a re-run
  // sampled from another (a committing one, after input the lost worker
  // had applied but not committed) is another generation.
  std::optional<uint64_t> started_at_ ABSL_GUARDED_BY(mu_);
  v1::GenerateResponse write_ ABSL_GUARDED_BY(mu_);  // the write in flight's
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;

  // The attempt in progress (null between attempts).
  Upstream* upstream_ ABSL_GUARDED_BY(mu_) = nullptr;
  Placed placed_ ABSL_GUARDED_BY(mu_);
  bool read_hold_ ABSL_GUARDED_BY(mu_) = false;
  size_t regen_tokens_ ABSL_GUARDED_BY(mu_) = 0;  // this attempt's output
  std::string regen_text_ ABSL_GUARDED_BY(mu_);
  std::optional<size_t> diverged_ ABSL_GUARDED_BY(mu_);
};

// One attempt: the Generate stream from one worker.
class GenerateCall::Upstream final
    : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  Upstream(GenerateCall* call, std::shared_ptr<grpc::Channel> channel,
           std::unique_ptr<grpc::ClientContext> context,
           v1::GenerateRequest request)
      : call_(call),
        stub_(v1::Streams::NewStub(channel)),
        context_(std::move(context)),
        request_(std::move(request)) {}

  void Bind() { stub_->async()->Generate(context_.get(), &request_, this); }
  grpc::ClientContext* context() { return context_.get(); }

  v1::GenerateResponse msg;  // the read in flight's

  void OnReadDone(bool ok) override { call_->UpstreamReadDone(ok); }
  void OnDone(const grpc::Status& status) override {
    call_->UpstreamDone(this, status);
  }

 private:
  GenerateCall* const call_;
  const std::unique_ptr<v1::Streams::Stub> stub_;
  const std::unique_ptr<grpc::ClientContext> context_;
  const v1::GenerateRequest request_;
};

void GenerateCall::Setup() {
  auto slot = HoldStreamSlot(gateway_, tenant_);
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

void GenerateCall::Route() {
  int attempt;
  grpc::Status last;
  v1::GenerateRequest request;
  {
    absl::MutexLock lock(&mu_);
    attempt = attempts_ + 1;
    last = last_;
    request = attempt_request_;
  }
  auto placed =
      Place(*ctx_, tenant_, Target{"Generate", request_.session_id(), "", ""},
            attempt);
  if (!placed.ok()) {
    End(attempt == 1 ? ToGrpcStatus(placed.status()) : Gateway::GaveUp(last));
    return;
  }
  auto* upstream = new Upstream(
      this, placed->channel, gateway_->UpstreamContext(*ctx_, tenant_, attempt),
      std::move(request));
  Ref();  // the attempt's, dropped in UpstreamDone
  absl::MutexLock lock(&mu_);
  attempts_ = attempt;
  upstream_ = upstream;
  placed_ = *std::move(placed);
  regen_tokens_ = 0;
  regen_text_.clear();
  diverged_.reset();
  upstream->Bind();
  // Reads start from OnWriteDone too (outside the attempt's reactions).
  upstream->AddHold();
  read_hold_ = true;
  upstream->StartRead(&upstream->msg);
  upstream->StartCall();
}

void GenerateCall::DropReadHold() {
  if (!read_hold_) return;
  read_hold_ = false;
  upstream_->RemoveHold();
}

void GenerateCall::Diverged(size_t index) {
  diverged_ = index;
  upstream_->context()->TryCancel();
  DropReadHold();
}

void GenerateCall::UpstreamReadDone(bool ok) {
  absl::MutexLock lock(&mu_);
  if (!ok) {
    DropReadHold();
    return;
  }
  const v1::GenerateResponse& msg = upstream_->msg;
  v1::GenerateResponse out;
  if (msg.has_chunk()) {
    const v1::GenerateChunk& in = msg.chunk();
    v1::GenerateChunk* chunk = out.mutable_chunk();
    chunk->set_index(static_cast<uint32_t>(tokens_.size()));
    if (in.has_start_input_offset() && started_at_ &&
        *started_at_ != in.start_input_offset() &&
        (!tokens_.empty() || !text_.empty())) {
      Diverged(0);
      return;
    }
    if (in.has_start_input_offset() && tokens_.empty() && text_.empty()) {
      started_at_ = in.start_input_offset();
      if (!request_.commit() && !attempt_request_.has_expected_input_offset()) {
        attempt_request_.set_expected_input_offset(in.start_input_offset());
        pinned_here_ = true;
      }
      chunk->set_start_input_offset(in.start_input_offset());
    }
    std::optional<size_t> diverged;
    for (int i = 0; i < in.tokens_size() && !diverged; ++i) {
      const size_t k = regen_tokens_ + i;
      if (k < tokens_.size()) {
        if (tokens_[k] != in.tokens(i)) diverged = k;
        ++skipped_;
        continue;
      }
      chunk->add_tokens(in.tokens(i));
      if (i < in.logprobs_size()) *chunk->add_logprobs() = in.logprobs(i);
    }
    regen_tokens_ += in.tokens_size();
    const size_t before = regen_text_.size();
    regen_text_ += in.text_utf8();
    const size_t overlap = std::min(regen_text_.size(), text_.size());
    if (!diverged && before < overlap &&
        regen_text_.compare(before, overlap - before, text_, before,
                            overlap - before) != 0) {
      diverged = tokens_.size();
    }
    if (diverged) {
      Diverged(*diverged);
      return;
    }
    if (regen_text_.size() > text_.size()) {
      chunk->set_text_utf8(regen_text_.substr(std::max(before, text_.size())));
    }
    if (chunk->tokens_size() == 0 && chunk->text_utf8().empty()) {
      upstream_->StartRead(&upstream_->msg);  // all of it was delivered
      return;
    }
    tokens_.insert(tokens_.end(), chunk->tokens().begin(),
                   chunk->tokens().end());
    text_ += chunk->text_utf8();
  } else {
    // A re-run that ends before the output already delivered is not the
    // same generation either (it stopped sooner).
    if (msg.has_done() &&
        (regen_tokens_ < tokens_.size() || regen_text_.size() < text_.size())) {
      Diverged(regen_tokens_);
      return;
    }
    out = msg;
  }
  write_ = std::move(out);
  StartWrite(&write_);
}

void GenerateCall::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  // upstream_ is there: its read hold is (its next read waits for this).
  if (ok) {
    if (write_.has_done()) done_ = true;
    upstream_->StartRead(&upstream_->msg);
  } else {
    client_gone_ = true;
    upstream_->context()->TryCancel();
    DropReadHold();
  }
}

void GenerateCall::UpstreamDone(Upstream* upstream, grpc::Status status) {
  bool settled, client_gone;
  {
    absl::MutexLock lock(&mu_);
    upstream_ = nullptr;
    // Once `done` was delivered the generation is over: a connection lost
    // before the trailers is no reason to run it again (the client would
    // get a second `done`).
    if (done_ && Gateway::ShouldFailover(status)) status = grpc::Status::OK;
    // The session moved on since the generation started: a re-run would be
    // another generation.
    if (!diverged_ && pinned_here_ &&
        GetReason(FromGrpcStatus(status)) == Reason::kPositionMismatch) {
      diverged_ = tokens_.size();
    }
    if (diverged_) {
      gateway_->metrics().IncDiverged();
      status = ToGrpcStatus(MakeError(
          absl::StatusCode::kUnavailable, Reason::kUnspecified,
          "the generation could not be resumed identically after a worker "
          "failure (the session's applied state changed); the output so far "
          "was not committed: retry the request",
          {{"diverged_at", absl::StrCat(*diverged_)},
           {"delivered_tokens", absl::StrCat(tokens_.size())}}));
    }
    last_ = status;
    // A call that delivered `done` cannot be resent.
    settled = done_;
    client_gone = client_gone_;  // a write to it failed
  }
  delete upstream;
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

void GenerateCall::AfterAttempt(grpc::Status status, bool client_gone) {
  if (client_gone) {
    End(Gateway::FromWorker(status));
    return;
  }
  Placed placed;
  {
    absl::MutexLock lock(&mu_);
    placed = std::move(placed_);
  }
  if (!MayRetry(std::move(placed), status, "Generate")) {
    End(Gateway::GaveUp(status));
    return;
  }
  Route();
}

void GenerateCall::End(grpc::Status status) {
  std::shared_ptr<TenantLimits::StreamSlot> slot;
  int attempts;
  int64_t skipped;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    slot = std::move(slot_);
    attempts = attempts_;
    skipped = skipped_;
  }
  gateway_->metrics().AddSkippedTokens(skipped);
  gateway_->EndCall("Generate", status, began_);
  ctx_->AddTrailingMetadata(kAttemptsTrailer, absl::StrCat(attempts));
  slot.reset();  // the client may open its next stream at once
  Finish(status);
}

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerate(
    Gateway* gateway, grpc::CallbackServerContext* ctx,
    const v1::GenerateRequest* request) {
  auto* call = new GenerateCall(gateway, ctx, request);
  call->Start();
  return call;
}

}  // namespace statestream::gateway
