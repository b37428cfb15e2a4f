// SPDX-License-Identifier: Apache-2.0
// The gateway's ImportState, forwarded by reactors (no thread per call):
// the import (at most one state) is read whole first, bounded, so it can
// be resent to another worker.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/byte_budget.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/gateway_reactor_call.h"
#include "services/request_checks.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

// One client ImportState call. Its steps run one after another, each
// started by the one before: Start (the rpc handler), Setup (a task: the
// tenant's stream slot), the reads (OnReadDone, one at a time; after the
// header, CheckLayout, a task, starts the next), Forward (a
// task: the session quota), Route (a task), the attempt's writes and its
// end (gRPC's reactions), AfterAttempt (a task), then Route again or End.
// So the fields below need no lock: no step touches them after it has
// started the next.
class ImportCall final : public grpc::ServerReadReactor<v1::ImportStateRequest>,
                         public Watched,
                         private ReactorCall {
 public:
  ImportCall(Gateway* gateway, grpc::CallbackServerContext* ctx,
             v1::Session* response)
      : ReactorCall(gateway), ctx_(ctx), response_(response) {}

  // From the rpc handler, before the reactor is returned. The caller is
  // authenticated, and within its tenant's stream limit, before a byte is
  // read: the import is buffered whole.
  void Start() {
    began_ = gateway_->BeginCall();
    // The slot is taken on a task: it may wait on Redis.
    const grpc::Status refused =
        AuthenticateAndAdmit(*ctx_, &tenant_, [this] { Setup(); });
    if (refused.ok()) return;
    gateway_->EndCall("ImportState", refused, began_);
    Finish(refused);
  }

  void OnReadDone(bool ok) override;
  void OnCancel() override { CancelWaits(); }
  // Every 100 ms while the call reads: a client that sends nothing for
  // client_stall_timeout while the import holds its part of the gateway's
  // buffers is cut off.
  void Check(absl::Time now) override {
    int64_t since = read_since_ns_.load();
    if (since <= 0 || now - absl::FromUnixNanos(since) <=
                          gateway_->options().client_stall_timeout) {
      return;
    }
    // Claimed from OnReadDone (which takes it back to 0): a read that ends
    // meanwhile is not cut off.
    if (!read_since_ns_.compare_exchange_strong(since, kStalled)) return;
    gateway_->metrics().CountClientStall("ImportState");
    ctx_->TryCancel();
  }
  void OnDone() override { Unref(); }

 private:
  class Upstream;

  // Task: the caller's tenant and stream slot, then the first read.
  void Setup();
  void Read() {
    MarkUnread(&msg_);
    read_since_ns_ = absl::ToUnixNanos(SteadyNow());
    StartRead(&msg_);
  }
  static constexpr int64_t kStalled = -1;  // read_since_ns_: Check cut it
  // Whether `msg_`, the next message read, may join the import: the
  // header's fields checked as the worker checks them
  // (CheckImportHeaderFields) and its state present, before the gateway
  // buffers chunks or acts on the mode; the chunks are the worker's to
  // check; and all kept within the gateway's bounds.
  absl::Status Check();
  // Task, after the header: its state's layout checked as the worker
  // checks it (CheckImportStateLayout) where the gateway knows the
  // fingerprint's model, so a header that announces more than such a
  // state can be is refused before the gateway buffers a byte of it; then
  // the next read.
  void CheckLayout();
  // The most one import may hold (max_import_bytes, within the gateway's
  // max_buffered_bytes), and the refusal past it.
  uint64_t MaxImport() const;
  absl::Status TooLarge() const;
  // Task: where the import goes, its quota, then the first attempt.
  void Forward();
  // Task: picks the next worker and starts an attempt on it.
  void Route();
  // gRPC's reaction to an attempt's end.
  void UpstreamDone(Upstream* upstream, grpc::Status status);
  // Task: ends the call with `status`, or tries another worker.
  void AfterAttempt(grpc::Status status, bool client_gone);
  // Frees the slot and the import's buffers, then finishes (once).
  void End(grpc::Status status) override;
  bool HoldsSlot() override { return slot_ != nullptr; }

  grpc::CallbackServerContext* const ctx_;  // valid until Finish
  v1::Session* const response_;             // gRPC's, valid until OnDone
  absl::Time began_;                        // Start's
  std::string tenant_;                      // Start's
  std::shared_ptr<TenantLimits::StreamSlot> slot_;
  bool finished_ = false;
  bool watched_ = false;  // Gateway::Watch'ed (Setup), until End
  // Shared with the watchdog (Check): when the read in flight began (0:
  // none; kStalled: Check cut the client off).
  std::atomic<int64_t> read_since_ns_{0};

  // The import, kept whole for a replay on failover, so bounded: no more
  // state bytes than the header announces (the worker refuses more anyway)
  // nor than the gateway's limit. A stream that breaks either ends at
  // once, before the gateway has buffered it.
  v1::ImportStateRequest msg_;  // the read in flight's
  std::vector<v1::ImportStateRequest> parts_;
  uint64_t bytes_ = 0;  // state bytes in the chunks so far
  uint64_t kept_ = 0;   // what parts_ holds in memory
  // Its room in the gateway's buffers: what has arrived, grown as it
  // arrives (each by the budget's rule), given back once the import is
  // forwarded. (Not the announced size at the header: a header alone,
  // ~100 bytes on the wire, would then hold up to max_import_bytes.)
  ByteBudget::Hold room_;

  Target target_{"ImportState", "", "", ""};
  int attempts_ = 0;   // started
  grpc::Status last_;  // the last attempt's
  Placed placed_;      // the attempt in progress's (or the last's)
};

// One attempt: the import written to one worker.
class ImportCall::Upstream final
    : public grpc::ClientWriteReactor<v1::ImportStateRequest> {
 public:
  Upstream(ImportCall* call, std::shared_ptr<grpc::Channel> channel,
           std::unique_ptr<grpc::ClientContext> context)
      : call_(call),
        stub_(v1::Sessions::NewStub(channel)),
        context_(std::move(context)) {}

  // Writes call_->parts_ in order, then ends its side.
  void Start() {
    stub_->async()->ImportState(context_.get(), call_->response_, this);
    Next();
    StartCall();
  }

  void OnWriteDone(bool ok) override {
    // A write that failed ends the stream: its status says why.
    if (ok) Next();
  }
  void OnDone(const grpc::Status& status) override {
    call_->UpstreamDone(this, status);
  }

 private:
  void Next() {
    if (next_ < call_->parts_.size()) {
      StartWrite(&call_->parts_[next_++]);
    } else {
      StartWritesDone();
    }
  }

  ImportCall* const call_;
  const std::unique_ptr<v1::Sessions::Stub> stub_;
  const std::unique_ptr<grpc::ClientContext> context_;
  size_t next_ = 0;  // the next part to write
};

void ImportCall::Setup() {
  if (grpc::Status gone = Gateway::GoneBeforeStart(*ctx_); !gone.ok()) {
    End(gone);
    return;
  }
  auto slot = HoldStreamSlot(gateway_, tenant_);
  if (!slot.ok()) {
    End(ToGrpcStatus(slot.status()));
    return;
  }
  slot_ = *std::move(slot);
  gateway_->Watch(this);
  watched_ = true;
  Read();
}

void ImportCall::OnReadDone(bool ok) {
  const bool stalled = read_since_ns_.exchange(0) == kStalled;
  if (!ok) {
    // The client's side ended: all of it is here, or a message it sent
    // did not parse.
    if (stalled) {
      Conclude(
          grpc::Status(grpc::StatusCode::CANCELLED,
                       "the client sent nothing for --client-stall-timeout"));
    } else if (ctx_->IsCancelled()) {
      Conclude(grpc::Status(grpc::StatusCode::CANCELLED,
                            "the client cancelled the import"));
    } else if (ReadUnparsable(msg_)) {
      Conclude(ToGrpcStatus(UnparsableRequestError()));
    } else if (!RunTask([this] { Forward(); })) {
      Conclude(Gateway::Refused());
    }
    return;
  }
  absl::Status bad = Check();
  parts_.push_back(std::move(msg_));
  if (!bad.ok()) {
    Conclude(ToGrpcStatus(bad));
    return;
  }
  if (parts_.size() == 1) {
    // The model may have to be asked for (a task: it may wait on a
    // worker); the next read waits for it.
    if (!RunTask([this] { CheckLayout(); })) Conclude(Gateway::Refused());
    return;
  }
  Read();
}

void ImportCall::CheckLayout() {
  const v1::StateHeader& state = parts_[0].header().state();
  // The model from the ListModels cache first (a fingerprint names one
  // model exactly, whichever worker answered it); asking (Models) waits up
  // to models_timeout on each worker not asked yet. A model still unknown
  // (no worker answered, or none serves it) is left to the worker the
  // import reaches, the gateway's bounds holding meanwhile.
  std::optional<v1::Model> model =
      gateway_->CachedModel(state.model_fingerprint());
  if (!model.has_value() && gateway_->Models(*ctx_, tenant_).ok()) {
    model = gateway_->CachedModel(state.model_fingerprint());
  }
  absl::Status st;
  if (model.has_value()) {
    st = CheckImportStateLayout(state, model->state_bytes(), model->n_embd());
  }
  if (st.ok() && state.total_bytes() > MaxImport()) st = TooLarge();
  if (!st.ok()) {
    End(ToGrpcStatus(st));
    return;
  }
  Read();
}

absl::Status ImportCall::Check() {
  const v1::ImportStateRequest& msg = msg_;
  // What the message holds in memory (its chunk is a message of its own),
  // an empty one included, and its place in `parts_` (whose capacity
  // doubles).
  kept_ += msg.SpaceUsedLong() + sizeof(msg);
  if (parts_.empty() != msg.has_header()) {
    return MakeError(
        absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
        "header: the first message must be the header, and only it",
        {{"field", "header"}});
  }
  // As the worker checks them (refused here before the quota or the
  // model: same answer through a gateway as from serve).
  if (msg.has_header()) {
    SS_RETURN_IF_ERROR(CheckImportHeaderFields(msg.header()));
  }
  if (msg.has_header() && !msg.header().has_state()) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     Reason::kInvalidArgument, "state: required",
                     {{"field", "state"}});
  }
  if (!msg.has_header() && !msg.has_chunk()) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     Reason::kInvalidArgument,
                     "chunk: every message after the header must carry a chunk",
                     {{"field", "chunk"}});
  }
  // The announced state's size, the header's.
  const uint64_t total = msg.has_header()
                             ? msg.header().state().total_bytes()
                             : parts_[0].header().state().total_bytes();
  if (msg.has_chunk()) {
    bytes_ += msg.chunk().data().size();
    if (bytes_ > total) {
      const std::string detail = absl::StrCat(
          "more state bytes than the header's total_bytes ", total);
      return MakeError(absl::StatusCode::kDataLoss, Reason::kStateCorrupt,
                       absl::StrCat("state blob rejected: ", detail),
                       {{"detail", detail}});
    }
  }
  // (A header announcing more than the gateway takes is refused by
  // CheckLayout, after the layout check a worker would answer first.)
  const uint64_t max_import = MaxImport();
  if (kept_ <= max_import && kept_ > static_cast<uint64_t>(room_.bytes())) {
    absl::Status grown = gateway_->buffers().Grow(
        &room_, static_cast<int64_t>(kept_) - room_.bytes());
    if (!grown.ok()) return grown;
  }
  if (kept_ > max_import) return TooLarge();
  return absl::OkStatus();
}

uint64_t ImportCall::MaxImport() const {
  // Per call, within the gateway's whole budget too.
  return static_cast<uint64_t>(
      std::min(gateway_->options().max_import_bytes,
               gateway_->options().max_buffered_bytes));
}

absl::Status ImportCall::TooLarge() const {
  const uint64_t max_import = MaxImport();
  return MakeError(absl::StatusCode::kInvalidArgument, Reason::kMessageTooLarge,
                   absl::StrCat("the import is larger than the gateway takes (",
                                max_import, " bytes)"),
                   {{"field", "chunk"}, {"limit", absl::StrCat(max_import)}});
}

void ImportCall::Forward() {
  // A new version goes to the session's owner; a new session to a worker
  // serving the state's model (rendezvous of its id, or of the request id
  // for a generated one, so retries land together). An import with no
  // header at all (an empty stream) goes anywhere, for the worker to
  // refuse.
  if (!parts_.empty()) {
    const auto& header = parts_[0].header();
    target_.fingerprint = header.state().model_fingerprint();
    if (header.mode() == v1::IMPORT_MODE_NEW_VERSION) {
      // A session the store does not know is answered by a worker of the
      // state's model (SESSION_NOT_FOUND), not any worker's MODEL_MISMATCH.
      target_.session_id = header.session_id();
    } else {
      target_.hash_key = header.session_id().empty() ? header.request_id()
                                                     : header.session_id();
      grpc::Status quota = SessionQuota(gateway_, tenant_, header.session_id(),
                                        header.request_id());
      if (!quota.ok()) {
        End(quota);
        return;
      }
    }
  }
  Route();
}

void ImportCall::Route() {
  const int attempt = attempts_ + 1;
  auto placed = Place(*ctx_, tenant_, target_, attempt);
  if (!placed.ok()) {
    End(attempt == 1 ? ToGrpcStatus(placed.status()) : Gateway::GaveUp(last_));
    return;
  }
  attempts_ = attempt;
  placed_ = *std::move(placed);
  response_->Clear();
  auto* upstream =
      new Upstream(this, placed_.channel,
                   gateway_->UpstreamContext(*ctx_, tenant_, attempt));
  Ref();              // the attempt's, dropped in UpstreamDone
  upstream->Start();  // the last step here: UpstreamDone may follow at once
}

void ImportCall::UpstreamDone(Upstream* upstream, grpc::Status status) {
  delete upstream;
  last_ = status;
  if (!Gateway::ShouldFailover(status)) {
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

void ImportCall::AfterAttempt(grpc::Status status, bool client_gone) {
  if (client_gone) {
    End(Gateway::FromWorker(status));
    return;
  }
  if (!MayRetry(std::move(placed_), status, "ImportState")) {
    End(Gateway::GaveUp(status));
    return;
  }
  Route();
}

void ImportCall::End(grpc::Status status) {
  if (finished_) return;
  finished_ = true;
  // No Check once this returns, so none after Finish.
  if (watched_) gateway_->Unwatch(this);
  gateway_->EndCall("ImportState", status, began_);
  slot_.reset();  // the client may open its next stream at once
  parts_.clear();
  parts_.shrink_to_fit();
  room_.Release();  // and its next import find the room
  Finish(status);
}

}  // namespace

grpc::ServerReadReactor<v1::ImportStateRequest>* StartImport(
    Gateway* gateway, grpc::CallbackServerContext* ctx, v1::Session* response) {
  auto* call = new ImportCall(gateway, ctx, response);
  call->Start();
  return call;
}

}  // namespace statestream::gateway
