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
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/gateway_server_stream.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

// One client Generate call (ServerStreamCall). After a failover the output
// the client already has is skipped; a re-run that diverges from it ends
// the call UNAVAILABLE. A call that delivered `done` is not resent.
class GenerateCall final : public ServerStreamCall<v1::GenerateResponse> {
 public:
  GenerateCall(Gateway* gateway, grpc::CallbackServerContext* ctx,
               const v1::GenerateRequest* request)
      : ServerStreamCall(gateway, ctx, "Generate"),
        request_(*request),
        attempt_request_(*request) {}

 private:
  Target AttemptTarget() override {
    return Target{"Generate", request_.session_id(), "", ""};
  }

  void BindLocked(Upstream* upstream) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    sent_ = attempt_request_;
    regen_tokens_ = 0;
    regen_text_.clear();
    diverged_.reset();
    std::shared_ptr<v1::Streams::Stub> stub =
        v1::Streams::NewStub(upstream->channel());
    stub->async()->Generate(upstream->context(), &sent_, upstream);
    upstream->stub = std::move(stub);
  }

  Relay RelayLocked(v1::GenerateResponse* in_msg,
                    v1::GenerateResponse* out) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const v1::GenerateResponse& msg = *in_msg;
    if (msg.has_chunk()) {
      const v1::GenerateChunk& in = msg.chunk();
      v1::GenerateChunk* chunk = out->mutable_chunk();
      chunk->set_index(static_cast<uint32_t>(tokens_.size()));
      if (in.has_start_input_offset() && started_at_ &&
          *started_at_ != in.start_input_offset() &&
          (!tokens_.empty() || !text_.empty())) {
        return Diverged(0);
      }
      if (in.has_start_input_offset() && tokens_.empty() && text_.empty()) {
        started_at_ = in.start_input_offset();
        if (!request_.commit() &&
            !attempt_request_.has_expected_input_offset()) {
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
        return Diverged(*diverged);
      }
      if (regen_text_.size() > text_.size()) {
        chunk->set_text_utf8(
            regen_text_.substr(std::max(before, text_.size())));
      }
      if (chunk->tokens_size() == 0 && chunk->text_utf8().empty()) {
        return Relay::kSkip;  // all of it was delivered
      }
      tokens_.insert(tokens_.end(), chunk->tokens().begin(),
                     chunk->tokens().end());
      text_ += chunk->text_utf8();
    } else {
      // A re-run that ends before the output already delivered is not the
      // same generation either (it stopped sooner).
      if (msg.has_done() && (regen_tokens_ < tokens_.size() ||
                             regen_text_.size() < text_.size())) {
        return Diverged(regen_tokens_);
      }
      *out = msg;
    }
    return Relay::kWrite;
  }

  void DeliveredLocked(const v1::GenerateResponse& out) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (out.has_done()) done_ = true;
  }

  grpc::Status SettleLocked(grpc::Status status, bool* settled) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Once `done` was delivered the generation is over: a connection lost
    // before the trailers is no reason to run it again (the client would
    // get a second `done`).
    if (done_ && Gateway::ShouldFailover(status)) status = grpc::Status::OK;
    // The session moved on since the generation started: a re-run would be
    // another generation. (Pinned by the client, and nothing delivered
    // yet, its offset is stale: that passes through.)
    if (!diverged_ && (pinned_here_ || !tokens_.empty()) &&
        GetReason(FromGrpcStatus(status)) == Reason::kPositionMismatch) {
      diverged_ = tokens_.size();
    }
    if (diverged_) {
      gateway_->metrics().IncDiverged();
      status = ToGrpcStatus(MakeError(
          absl::StatusCode::kUnavailable, Reason::kResumeDiverged,
          "the generation could not be resumed identically after a worker "
          "failure (the session's applied state changed); the output so far "
          "was not committed: retry the request",
          {{"diverged_at", absl::StrCat(*diverged_)},
           {"delivered_tokens", absl::StrCat(tokens_.size())}}));
    }
    // A call that delivered `done` cannot be resent.
    *settled = done_;
    return status;
  }

  void Ending() override {
    int64_t skipped;
    {
      absl::MutexLock lock(&mu_);
      skipped = skipped_;
    }
    gateway_->metrics().AddSkippedTokens(skipped);
  }

  // The attempt's output diverged from what was delivered, at `index`.
  Relay Diverged(size_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    diverged_ = index;
    StopAttemptLocked();
    return Relay::kStop;
  }

  // gRPC's, kept until OnDone (which follows Finish).
  const v1::GenerateRequest& request_;
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

  // The attempt in progress: its request (read by gRPC until the attempt
  // ends) and output.
  v1::GenerateRequest sent_ ABSL_GUARDED_BY(mu_);
  size_t regen_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::string regen_text_ ABSL_GUARDED_BY(mu_);
  std::optional<size_t> diverged_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerate(
    Gateway* gateway, grpc::CallbackServerContext* ctx,
    const v1::GenerateRequest* request) {
  auto* call = new GenerateCall(gateway, ctx, request);
  call->Start();
  return call;
}

}  // namespace statestream::gateway
