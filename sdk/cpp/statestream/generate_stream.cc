// SPDX-License-Identifier: Apache-2.0
// GenerateStream (resuming iterator) and the Session calls that open
// streams (OpenAppend, AppendText, Generate, GenerateAll).
//
// Resume: the request is reissued unchanged (same request_id, same seed or
// the server's seed derived from it and the unchanged input_offset), so the
// new call produces the same output; tokens below delivered_ids_.size() and
// text bytes below delivered_text_ are skipped, once checked equal to what
// was delivered: a resumed call that produced other tokens (the session
// changed in between, or another kind of worker rounded differently) ends
// the stream with FAILED_PRECONDITION/RESUME_DIVERGED (not retryable),
// not joining two outputs. The first chunk says which input_offset the
// generation started from; a side branch (commit=false) that pinned none is
// pinned to it for the resumes (a committing one is found by its request_id and
// content, which a pin would change), so one that would run on another
// input (which may still repeat
// the delivered tokens: greedy sampling) fails with the server's
// FAILED_PRECONDITION/POSITION_MISMATCH, which ends the stream too.
#include <grpcpp/client_context.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "statestream/call_scope.h"
#include "statestream/client.h"
#include "statestream/local_error.h"

namespace statestream::client {

struct GenerateStream::Call {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  Client::Stubs* stubs = nullptr;
  std::unique_ptr<CallScope> scope;
};

GenerateStream::GenerateStream(Client* client, v1::GenerateRequest request,
                               CallOptions call)
    : client_(client), request_(std::move(request)), call_options_(call) {}

GenerateStream::~GenerateStream() {
  if (call_ != nullptr) CloseCall(/*cancel=*/true);
}

void GenerateStream::CloseCall(bool cancel) {
  if (cancel) call_->ctx.TryCancel();
  v1::GenerateResponse ignored;
  while (call_->reader->Read(&ignored)) {
  }
  call_->reader->Finish().IgnoreError();
  call_.reset();
}

absl::Status GenerateStream::Open() {
  call_ = std::make_unique<Call>();
  call_->stubs = &client_->Current();
  client_->Prepare(&call_->ctx, call_options_, /*unary=*/false);
  call_->scope = std::make_unique<CallScope>(&call_->ctx, call_options_);
  if (call_->scope->cancelled()) return CallerCancelled();
  call_->reader = call_->stubs->streams->Generate(&call_->ctx, request_);
  seen_text_ = 0;
  call_tokens_ = 0;
  return absl::OkStatus();
}

bool GenerateStream::Next(GenerateChunk* out) {
  while (!finished_) {
    if (call_ == nullptr) {
      if (absl::Status s = Open(); !s.ok()) {
        status_ = s;
        finished_ = true;
        call_.reset();
        return false;
      }
    }
    v1::GenerateResponse response;
    if (call_->reader->Read(&response)) {
      if (response.has_done() && (call_tokens_ < delivered_ids_.size() ||
                                  seen_text_ < delivered_text_)) {
        // A resumed call that ends before the output already delivered
        // stopped sooner (the session changed, or a time limit came first
        // on a slower worker): another generation, not the same one's end.
        // When the server committed it, the error says where the session
        // is, which is not where the delivered output left it.
        const v1::GenerateDone& d = response.done();
        std::string message = absl::StrCat(
            "the resumed generation ended after ", call_tokens_,
            " tokens, before the ", delivered_ids_.size(),
            " already delivered (the session changed in between, or a time "
            "limit came first?)");
        ErrorMetadata metadata;
        if (d.committed()) {
          absl::StrAppend(&message, "; the server committed its ", call_tokens_,
                          " tokens: the session is at input_offset ",
                          d.input_offset(), " (version ", d.version(), ")");
          metadata = {{"committed", "true"},
                      {"position", absl::StrCat(d.position())},
                      {"input_offset", absl::StrCat(d.input_offset())},
                      {"version", absl::StrCat(d.version())}};
        }
        status_ =
            LocalError(absl::StatusCode::kFailedPrecondition,
                       Reason::kResumeDiverged, message, std::move(metadata));
        finished_ = true;
        CloseCall(/*cancel=*/true);
        return false;
      }
      if (response.has_done()) {
        done_ = response.done();
        // `done` is the outcome: a connection that broke before the call's
        // trailers changes nothing (reporting it would invite a retry under
        // a new request id, committing twice).
        CloseCall(/*cancel=*/false);
        status_ = absl::OkStatus();
        finished_ = true;
        return false;
      }
      const v1::GenerateChunk& c = response.chunk();
      // Tokens [index, index + n) of the output; keep the undelivered ones.
      const uint32_t n = static_cast<uint32_t>(c.tokens_size());
      const uint32_t delivered = static_cast<uint32_t>(delivered_ids_.size());
      bool same = c.index() <= delivered;
      for (uint32_t i = 0; same && i < n && c.index() + i < delivered; ++i) {
        same = delivered_ids_[c.index() + i] == c.tokens(static_cast<int>(i));
      }
      if (!same) {
        status_ = LocalError(
            absl::StatusCode::kFailedPrecondition, Reason::kResumeDiverged,
            absl::StrCat("the resumed generation diverged from the ", delivered,
                         " tokens already delivered (the session changed in "
                         "between?); its output is not joined to them"));
        finished_ = true;
        CloseCall(/*cancel=*/true);
        return false;
      }
      // Not a committing request: the server knows its retry by the
      // request's digest, which a pin added now would change (its finished
      // generation would be refused DUPLICATE_REQUEST instead of replayed).
      if (c.has_start_input_offset()) {
        start_input_offset_ = c.start_input_offset();
      }
      if (c.has_start_input_offset() && delivered_ids_.empty() &&
          delivered_text_ == 0 && !request_.commit() &&
          !request_.has_expected_input_offset()) {
        request_.set_expected_input_offset(c.start_input_offset());
        pinned_here_ = true;
      }
      call_tokens_ = std::max<uint64_t>(call_tokens_, c.index() + n);
      const uint32_t skip =
          delivered > c.index() ? std::min(n, delivered - c.index()) : 0;
      const uint64_t text_begin = seen_text_;
      seen_text_ += c.text_utf8().size();
      const uint64_t text_skip =
          delivered_text_ > text_begin
              ? std::min<uint64_t>(c.text_utf8().size(),
                                   delivered_text_ - text_begin)
              : 0;
      if (skip == n && text_skip == c.text_utf8().size()) continue;
      out->start_input_offset.reset();
      if (delivered_ids_.empty() && delivered_text_ == 0) {
        out->start_input_offset = start_input_offset_;
      }
      out->index = c.index() + skip;
      out->tokens.assign(c.tokens().begin() + skip, c.tokens().end());
      out->text = c.text_utf8().substr(text_skip);
      out->logprobs.clear();
      if (request_.logprobs()) {
        // One entry per token, as the proto promises: tokens replayed from
        // a checkpoint or a finished generation come without (a chunk
        // whose logprobs do not match its tokens is taken as having none,
        // rather than shifted); theirs is NaN, with no alternatives.
        const bool matched = c.logprobs_size() == c.tokens_size();
        for (int i = static_cast<int>(skip); i < c.tokens_size(); ++i) {
          if (matched && c.logprobs(i).token() == c.tokens(i)) {
            out->logprobs.push_back(c.logprobs(i));
          } else {
            v1::TokenLogprob missing;
            missing.set_token(c.tokens(i));
            missing.set_logprob(std::numeric_limits<float>::quiet_NaN());
            out->logprobs.push_back(std::move(missing));
          }
        }
      }
      delivered_ids_.insert(delivered_ids_.end(), c.tokens().begin() + skip,
                            c.tokens().end());
      delivered_text_ = std::max(delivered_text_, seen_text_);
      attempts_ = 0;
      return true;
    }
    absl::Status s = FromGrpcStatus(call_->reader->Finish());
    if (s.ok()) s = absl::UnavailableError("generate ended without done");
    if (pinned_here_ && GetReason(s) == Reason::kPositionMismatch) {
      // The worker's reason and metadata (actual_input_offset, ...) stay.
      status_ = WithMessage(
          s, absl::StrCat("the session's input moved since the generation "
                          "started at input_offset ",
                          request_.expected_input_offset(),
                          "; the resumed call's output is not joined to the ",
                          delivered_ids_.size(), " tokens already delivered (",
                          s.message(), ")"));
      finished_ = true;
      call_.reset();
      return false;
    }
    client_->Rotate(call_->stubs, s, call_options_);
    call_.reset();
    ++attempts_;
    if (absl::Status r = client_->RetryOrFail(s, attempts_, call_options_);
        !r.ok()) {
      status_ = r;
      finished_ = true;
      return false;
    }
    ++reconnects_;
  }
  return false;
}

// --- Session: streaming calls ------------------------------------------------

absl::StatusOr<std::unique_ptr<AppendWriter>> Session::OpenAppend(
    AppendOptions options) const {
  if (absl::Status s = CheckAppendOptions(options); !s.ok()) return s;
  uint64_t offset = 0;
  if (options.start_offset.has_value()) {
    offset = *options.start_offset;
  } else {
    auto session = Get(options.call);
    if (!session.ok()) return session.status();
    offset = session->input_offset();
  }
  return std::unique_ptr<AppendWriter>(
      new AppendWriter(client_, id_, offset, std::move(options)));
}

absl::StatusOr<v1::AppendResponse> Session::AppendText(
    std::string_view text, AppendOptions options) const {
  auto writer = OpenAppend(std::move(options));
  if (!writer.ok()) return writer.status();
  // All of it UTF-8, no character left open at the flush: checked before
  // anything is sent, else the session would keep part of the text.
  if (absl::Status s = (*writer)->WriteText(text, /*final=*/true); !s.ok()) {
    return s;
  }
  if (absl::Status s = (*writer)->Flush(); !s.ok()) return s;
  return (*writer)->Close();
}

absl::StatusOr<std::unique_ptr<GenerateStream>> Session::Generate(
    v1::GenerateRequest request, const CallOptions& call) const {
  request.set_session_id(id_);
  const bool own_id = request.request_id().empty();
  if (own_id) request.set_request_id(NewRequestId());
  if (request.commit() && own_id && !request.has_expected_input_offset()) {
    // Without it, a retry after a commit whose `done` was lost would
    // generate again on top of it; with it, that retry fails with
    // POSITION_MISMATCH instead. Not under the caller's own request id:
    // the caller retries by sending it again, and the server replays the
    // committed generation, which a pin read anew would not match.
    auto session = Get(call);
    if (!session.ok()) return session.status();
    request.set_expected_input_offset(session->input_offset());
  }
  return std::unique_ptr<GenerateStream>(
      new GenerateStream(client_, std::move(request), call));
}

absl::StatusOr<GenerateResult> Session::GenerateAll(
    v1::GenerateRequest request, const CallOptions& call) const {
  auto stream = Generate(std::move(request), call);
  if (!stream.ok()) return stream.status();
  GenerateResult result;
  GenerateChunk chunk;
  while ((*stream)->Next(&chunk)) {
    result.tokens.insert(result.tokens.end(), chunk.tokens.begin(),
                         chunk.tokens.end());
    result.text += chunk.text;
    result.logprobs.insert(result.logprobs.end(), chunk.logprobs.begin(),
                           chunk.logprobs.end());
  }
  if (!(*stream)->status().ok()) return (*stream)->status();
  result.done = (*stream)->done();
  return result;
}

}  // namespace statestream::client
