// SPDX-License-Identifier: Apache-2.0
// AppendWriter: pipelined, exactly-once appends that survive reconnects.
//
// Invariant: retained_ holds, in offset order, every request sent whose
// payload is not known to be committed; retained_[0, acked_) were
// acknowledged on the current call, the rest are in flight on it. After a
// failure the whole of retained_ is resent on a new call at the original
// offsets: the server acknowledges what it still has as duplicates and
// applies the rest, so nothing is lost or applied twice.
#include <grpcpp/client_context.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "statestream/call_scope.h"
#include "statestream/client.h"

namespace statestream::client {

struct AppendWriter::Call {
  grpc::ClientContext ctx;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::AppendRequest, v1::AppendResponse>>
      stream;
  Client::Stubs* stubs = nullptr;
  std::unique_ptr<CallScope> scope;

  // Reads what is left and returns the call's status.
  absl::Status Finish() {
    v1::AppendResponse ignored;
    while (stream->Read(&ignored)) {
    }
    return FromGrpcStatus(stream->Finish());
  }
};

namespace {

uint64_t Units(const v1::AppendRequest& r) {
  if (r.has_tokens()) return static_cast<uint64_t>(r.tokens().ids_size());
  return r.text_utf8().size();
}

uint64_t EndOffset(const v1::AppendRequest& r) {
  return r.expected_input_offset() + Units(r);
}

}  // namespace

AppendWriter::AppendWriter(Client* client, std::string session_id,
                           uint64_t offset, AppendOptions options)
    : client_(client),
      session_id_(std::move(session_id)),
      options_(std::move(options)),
      next_offset_(offset) {
  options_.window = std::max(options_.window, 1);
  options_.max_chunk_bytes =
      std::clamp<size_t>(options_.max_chunk_bytes, 1, size_t{1} << 20);
}

AppendWriter::~AppendWriter() {
  if (call_ != nullptr) {
    call_->ctx.TryCancel();
    call_->Finish().IgnoreError();
  }
}

absl::Status AppendWriter::Fail(absl::Status status) {
  if (call_ != nullptr) {
    call_->ctx.TryCancel();
    call_->Finish().IgnoreError();
    call_.reset();
  }
  error_ = status;
  return status;
}

absl::Status AppendWriter::Write(std::string_view text_utf8) {
  while (!text_utf8.empty()) {
    const size_t n = std::min(text_utf8.size(), options_.max_chunk_bytes);
    v1::AppendRequest r;
    r.set_text_utf8(std::string(text_utf8.substr(0, n)));
    if (absl::Status s = Send(std::move(r)); !s.ok()) return s;
    text_utf8.remove_prefix(n);
  }
  return absl::OkStatus();
}

absl::Status AppendWriter::WriteTokens(const std::vector<uint32_t>& tokens) {
  constexpr size_t kMaxTokens = 262144;
  for (size_t i = 0; i < tokens.size(); i += kMaxTokens) {
    v1::AppendRequest r;
    const size_t end = std::min(tokens.size(), i + kMaxTokens);
    r.mutable_tokens()->mutable_ids()->Add(tokens.begin() + i,
                                           tokens.begin() + end);
    if (absl::Status s = Send(std::move(r)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status AppendWriter::Flush() {
  v1::AppendRequest r;
  r.set_flush(true);
  return Send(std::move(r));
}

absl::StatusOr<v1::AppendResponse> AppendWriter::Checkpoint() {
  v1::AppendRequest r;
  r.set_checkpoint(true);
  if (absl::Status s = Send(std::move(r)); !s.ok()) return s;
  if (absl::Status s = ReadAcks(0); !s.ok()) return s;
  return last_ack_;
}

absl::StatusOr<v1::AppendResponse> AppendWriter::Close() {
  if (closed_) return absl::FailedPreconditionError("writer closed");
  auto ack = Checkpoint();
  closed_ = true;
  if (!ack.ok()) return ack;
  if (call_ != nullptr) {
    call_->stream->WritesDone();
    // Everything is committed and acknowledged: how the call ends changes
    // nothing for the caller.
    call_->Finish().IgnoreError();
    call_.reset();
  }
  return ack;
}

absl::Status AppendWriter::Send(v1::AppendRequest request) {
  if (!error_.ok()) return error_;
  if (closed_) return absl::FailedPreconditionError("writer closed");
  request.set_session_id(session_id_);
  request.set_expected_input_offset(next_offset_);
  request.set_durability(options_.durability);
  next_offset_ += Units(request);
  retained_.push_back(std::move(request));
  if (call_ == nullptr) {
    if (absl::Status s = Reconnect(absl::OkStatus()); !s.ok()) return s;
  } else if (!call_->stream->Write(retained_.back())) {
    if (absl::Status s = Reconnect(call_->Finish()); !s.ok()) return s;
  }
  return ReadAcks(static_cast<size_t>(options_.window));
}

absl::Status AppendWriter::ReadAcks(size_t keep_unacked) {
  while (retained_.size() - acked_ > keep_unacked) {
    if (!error_.ok()) return error_;
    v1::AppendResponse ack;
    if (!call_->stream->Read(&ack)) {
      if (absl::Status s = Reconnect(call_->Finish()); !s.ok()) return s;
      continue;
    }
    ++acked_;
    last_ack_ = std::move(ack);
    attempts_ = 0;
    // Drop what is committed (acknowledged ones only: the others still
    // have their acks coming on this call).
    while (acked_ > 0 &&
           EndOffset(retained_.front()) <= last_ack_.committed_input_offset()) {
      retained_.pop_front();
      --acked_;
    }
  }
  return absl::OkStatus();
}

absl::Status AppendWriter::Reconnect(absl::Status cause) {
  for (;;) {
    if (call_ != nullptr) {
      if (cause.ok()) {
        cause = absl::UnavailableError("append stream ended early");
      }
      client_->Rotate(call_->stubs);
      call_.reset();
      ++attempts_;
      if (absl::Status s =
              client_->RetryOrFail(cause, attempts_, options_.call);
          !s.ok()) {
        return Fail(s);
      }
      ++reconnects_;
    }
    call_ = std::make_unique<Call>();
    call_->stubs = &client_->Current();
    client_->Prepare(&call_->ctx, options_.call, /*unary=*/false);
    call_->scope = std::make_unique<CallScope>(&call_->ctx, options_.call);
    if (call_->scope->cancelled()) {
      return Fail(absl::CancelledError("cancelled"));
    }
    call_->stream = call_->stubs->streams->Append(&call_->ctx);
    acked_ = 0;
    bool ok = true;
    for (const v1::AppendRequest& r : retained_) {
      if (!(ok = call_->stream->Write(r))) break;
    }
    if (ok) return absl::OkStatus();
    cause = call_->Finish();
  }
}

}  // namespace statestream::client
