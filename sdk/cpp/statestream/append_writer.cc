// SPDX-License-Identifier: Apache-2.0
// AppendWriter: pipelined, exactly-once appends that survive reconnects.
//
// Invariant: retained_ holds, in offset order, every request sent or to be
// sent whose effect is not known to be committed. On the current call
// retained_[0, acked_) were acknowledged and [acked_, sent_) are in flight;
// at most `window` (<= kMaxAppendWindow) are ever in flight, resends
// included (the server stops reading a client that leaves 64 acks unread).
// After a failure the whole of retained_ is resent on a new call at the
// original offsets: the server acknowledges what it still has as duplicates
// and applies the rest, so nothing is lost or applied twice.
//
// A request is committed once an ack's committed_input_offset covers its
// end, except a bare flush (no payload): its end is its start, and a commit
// at that offset may predate it. It is kept until the offset moves past it,
// a later commit (a newer version) covers it, or a checkpoint after it is
// acknowledged (that checkpoint's version covers everything before it).
#include <grpcpp/client_context.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "common/utf8.h"
#include "statestream/call_scope.h"
#include "statestream/client.h"
#include "statestream/local_error.h"

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

// Whether `e`, acknowledged, is known committed after `ack` (the latest).
bool Committed(const AppendWriter::Retained& e, const v1::AppendResponse& ack) {
  const uint64_t end = EndOffset(e.request);
  if (Units(e.request) > 0) return end <= ack.committed_input_offset();
  return end < ack.committed_input_offset() ||
         (end == ack.committed_input_offset() &&
          ack.version() > e.acked_version);
}

}  // namespace

absl::Status CheckAppendOptions(const AppendOptions& options) {
  // A size_t: a negative int assigned to it reads as a huge value.
  if (options.window < 1 || options.max_chunk_bytes < 1 ||
      options.max_chunk_bytes > (size_t{1} << 62)) {
    return LocalError(
        absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
        absl::StrCat("AppendOptions: window and max_chunk_bytes "
                     "must be at least 1 (got ",
                     options.window, " and ",
                     static_cast<int64_t>(options.max_chunk_bytes), ")"),
        {{"field", options.window < 1 ? "AppendOptions.window"
                                      : "AppendOptions.max_chunk_bytes"}});
  }
  return absl::OkStatus();
}

AppendWriter::AppendWriter(Client* client, std::string session_id,
                           uint64_t offset, AppendOptions options)
    : client_(client),
      session_id_(std::move(session_id)),
      options_(std::move(options)),
      next_offset_(offset),
      acked_high_(offset) {
  // Checked (CheckAppendOptions) before a writer is made; clamped above.
  options_.window = std::min(options_.window, kMaxAppendWindow);
  options_.max_chunk_bytes =
      std::min<size_t>(options_.max_chunk_bytes, size_t{1} << 20);
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

absl::Status AppendWriter::Usable() const {
  if (!error_.ok()) return error_;
  // The writer's state, not the session's or the request's: the
  // FAILED_PRECONDITION of INVALID_ARGUMENT (docs/errors.md), field
  // "writer". Not retried, not sticky.
  if (closed_) {
    return LocalError(absl::StatusCode::kFailedPrecondition,
                      Reason::kInvalidArgument, "writer closed",
                      {{"field", "writer"}});
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> AppendWriter::Utf8CarryAfter(std::string_view text,
                                                         bool flush) const {
  // The server's check (SessionManager's Append), made before anything is
  // sent: text it would refuse after earlier requests of the same Write
  // were applied would leave the session holding part of it.
  const size_t skip = SkippedLead(text);
  // Copied only to prepend an open character (the text may be megabytes).
  std::string with_carry;
  absl::string_view joined(text.data() + skip, text.size() - skip);
  if (!utf8_carry_.empty()) {
    with_carry = utf8_carry_ + std::string(joined);
    joined = with_carry;
  }
  const size_t complete = Utf8CompletePrefixLength(joined);
  const size_t bad = FirstInvalidUtf8Byte(joined.substr(0, complete));
  const uint64_t at = next_offset_;  // where `text` starts
  if (bad != complete) {
    const uint64_t bad_at = bad < utf8_carry_.size()
                                ? at - utf8_carry_.size() + bad
                                : at + skip + (bad - utf8_carry_.size());
    return LocalError(
        absl::StatusCode::kInvalidArgument, Reason::kInvalidUtf8,
        bad < utf8_carry_.size()
            ? "text does not continue the incomplete UTF-8 "
              "character the writer's text ends with"
            : "text is not valid UTF-8; nothing of it was sent",
        {{"input_offset", absl::StrCat(bad_at)}, {"field", "text_utf8"}});
  }
  std::string carry(joined.substr(complete));
  if (flush && !carry.empty()) {
    return LocalError(
        absl::StatusCode::kInvalidArgument, Reason::kInvalidUtf8,
        "text ends inside a UTF-8 character at a flush; nothing was sent",
        {{"input_offset", absl::StrCat(at + text.size() - carry.size())},
         {"field", "text_utf8"}});
  }
  return carry;
}

size_t AppendWriter::SkippedLead(std::string_view text) const {
  if (carry_known_) return 0;
  return std::min<size_t>(
      LeadingContinuationBytes(absl::string_view(text.data(), text.size())),
      3 - lead_skipped_);
}

absl::Status AppendWriter::Utf8Flushable() const {
  if (utf8_carry_.empty()) return absl::OkStatus();
  return LocalError(
      absl::StatusCode::kInvalidArgument, Reason::kInvalidUtf8,
      "the text written ends inside a UTF-8 character: write the rest of it "
      "before a flush or tokens (nothing was sent)",
      {{"input_offset", absl::StrCat(next_offset_ - utf8_carry_.size())},
       {"field", "text_utf8"}});
}

absl::Status AppendWriter::Write(std::string_view text_utf8) {
  return WriteText(text_utf8, /*final=*/false);
}

absl::Status AppendWriter::WriteText(std::string_view text_utf8, bool final) {
  // Even with nothing to send: a closed or failed writer says so.
  if (absl::Status s = Usable(); !s.ok()) return s;
  if (text_utf8.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> carry = Utf8CarryAfter(text_utf8, final);
  if (!carry.ok()) return carry.status();  // not sticky: nothing was sent
  utf8_carry_ = *std::move(carry);
  // Continuation bytes that may finish the session's open character: the
  // carry stays unknown until text past them (at most three in all).
  const size_t lead = SkippedLead(text_utf8);
  if (lead == text_utf8.size()) {
    lead_skipped_ += lead;
  } else {
    carry_known_ = true;
  }
  // A server that does not know the session's open character skips such
  // bytes only at the start of one request: they go in the first whole.
  size_t first = std::max(lead, options_.max_chunk_bytes);
  while (!text_utf8.empty()) {
    const size_t n = std::min(text_utf8.size(), first);
    first = options_.max_chunk_bytes;
    v1::AppendRequest r;
    r.set_text_utf8(std::string(text_utf8.substr(0, n)));
    if (absl::Status s = Send(std::move(r)); !s.ok()) return s;
    text_utf8.remove_prefix(n);
  }
  return absl::OkStatus();
}

absl::Status AppendWriter::WriteTokens(const std::vector<uint32_t>& tokens) {
  if (absl::Status s = Usable(); !s.ok()) return s;
  if (tokens.empty()) return absl::OkStatus();
  // Tokens flush the text before them (the server refuses them after an
  // open character); after them, text starts clean.
  if (absl::Status s = Utf8Flushable(); !s.ok()) return s;  // not sticky
  carry_known_ = true;
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
  if (absl::Status s = Usable(); !s.ok()) return s;
  // Not sticky: write the rest, then flush.
  if (absl::Status s = Utf8Flushable(); !s.ok()) return s;
  v1::AppendRequest r;
  r.set_flush(true);
  return Send(std::move(r));
}

absl::Status AppendWriter::Sync() {
  if (absl::Status s = Usable(); !s.ok()) return s;
  return ReadAcks(0);
}

absl::StatusOr<v1::AppendResponse> AppendWriter::Checkpoint() {
  v1::AppendRequest r;
  r.set_checkpoint(true);
  if (absl::Status s = Send(std::move(r)); !s.ok()) return s;
  if (absl::Status s = ReadAcks(0); !s.ok()) return s;
  return last_ack_;
}

absl::StatusOr<v1::AppendResponse> AppendWriter::Close() {
  // A failed writer's error first, as every other call returns it.
  if (absl::Status s = Usable(); !s.ok()) return s;
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
  if (absl::Status s = Usable(); !s.ok()) return s;
  request.set_session_id(session_id_);
  request.set_expected_input_offset(next_offset_);
  request.set_durability(options_.durability);
  next_offset_ += Units(request);
  retained_.push_back({std::move(request), 0});
  return ReadAcks(static_cast<size_t>(options_.window));
}

absl::Status AppendWriter::ReadAcks(size_t keep_unacked) {
  const size_t window = static_cast<size_t>(options_.window);
  for (;;) {
    if (!error_.ok()) return error_;
    if (call_ == nullptr) {
      if (sent_ == retained_.size()) return absl::OkStatus();  // nothing
      if (absl::Status s = Reconnect(absl::OkStatus()); !s.ok()) return s;
    }
    // Send what the window allows (resends after a reconnect too).
    bool sent = true;
    while (sent && sent_ < retained_.size() && sent_ - acked_ < window) {
      if ((sent = call_->stream->Write(retained_[sent_].request))) ++sent_;
    }
    if (!sent) {
      if (absl::Status s = Reconnect(call_->Finish()); !s.ok()) return s;
      continue;
    }
    if (retained_.size() - acked_ <= keep_unacked) return absl::OkStatus();
    v1::AppendResponse ack;
    if (!call_->stream->Read(&ack)) {
      if (absl::Status s = Reconnect(call_->Finish()); !s.ok()) return s;
      continue;
    }
    Retained& acked = retained_[acked_];
    // Acks come one per request, in order. One that cannot be this
    // request's (the session short of its end; a checkpoint's commit short
    // of it) is the server's error: matched anyway, a stray ack would drop
    // input nothing committed from what a reconnect resends.
    const uint64_t end = EndOffset(acked.request);
    if (ack.input_offset() < end ||
        (acked.request.checkpoint() && ack.committed_input_offset() < end)) {
      return Fail(LocalError(
          absl::StatusCode::kInternal, Reason::kInternal,
          absl::StrCat("the server acknowledged the request ending at input "
                       "offset ",
                       end, " with input_offset ", ack.input_offset(),
                       " and committed_input_offset ",
                       ack.committed_input_offset(),
                       ": not its acknowledgement (an extra or missing one)")));
    }
    ++acked_;
    acked.acked_version = ack.version();
    // Progress, which resets the count of failed attempts, is input never
    // acknowledged before or a new commit: a resend acknowledged as a
    // duplicate is neither, so a request that fails at every attempt ends
    // the retries after max_attempts.
    if (end > acked_high_ || ack.version() > version_high_) attempts_ = 0;
    acked_high_ = std::max(acked_high_, end);
    version_high_ = std::max(version_high_, ack.version());
    const bool checkpoint = acked.request.checkpoint();
    last_ack_ = std::move(ack);
    // Drop what is committed (acknowledged ones only: the others still
    // have their acks coming on this call) at the durability asked for: a
    // commit by policy that could not reach it (a replica down) holds the
    // input at a lower level, so it is kept for a resend.
    const bool durable = options_.durability <= v1::DURABILITY_MEMORY ||
                         last_ack_.durability() >= options_.durability;
    while (acked_ > 0 && durable &&
           (checkpoint || Committed(retained_.front(), last_ack_))) {
      retained_.pop_front();
      --acked_;
      --sent_;
    }
  }
}

absl::Status AppendWriter::Reconnect(absl::Status cause) {
  if (call_ != nullptr) {
    if (cause.ok()) cause = absl::UnavailableError("append stream ended early");
    client_->Rotate(call_->stubs, cause, options_.call);
    call_.reset();
    ++attempts_;
    if (absl::Status s = client_->RetryOrFail(cause, attempts_, options_.call);
        !s.ok()) {
      return Fail(s);
    }
    ++reconnects_;
  }
  auto call = std::make_unique<Call>();
  call->stubs = &client_->Current();
  client_->Prepare(&call->ctx, options_.call, /*unary=*/false);
  call->scope = std::make_unique<CallScope>(&call->ctx, options_.call);
  if (call->scope->cancelled()) return Fail(CallerCancelled());
  call->stream = call->stubs->streams->Append(&call->ctx);
  call_ = std::move(call);
  acked_ = 0;
  sent_ = 0;
  return absl::OkStatus();
}

}  // namespace statestream::client
