// SPDX-License-Identifier: Apache-2.0
// GenerateStream: a Generate call's output as an iterator that resumes
// after failures (opened by Session::Generate, statestream/client.h).
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_GENERATE_STREAM_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_GENERATE_STREAM_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "statestream/options.h"
#include "statestream/v1/statestream.pb.h"

namespace statestream::client {

class Client;

// One piece of Generate output.
struct GenerateChunk {
  uint32_t index = 0;  // output index of tokens[0]
  std::vector<uint32_t> tokens;
  std::string text;  // UTF-8 complete (see GenerateChunk)
  // With request.logprobs: one entry per token, parallel to `tokens`. A
  // token the server replayed (from a checkpoint or a finished generation,
  // after a resume) has none: its entry has the token, logprob NaN and no
  // alternatives.
  std::vector<v1::TokenLogprob> logprobs;
  // On the first chunk delivered, when the server sampled the generation
  // (not replayed it): the session's input_offset it started from (see
  // v1::GenerateChunk.start_input_offset). A side-branch (commit=false)
  // call is resumed later by setting expected_input_offset to it.
  std::optional<uint64_t> start_input_offset;
};

// Iterates over a Generate call's output, resuming after failures: the
// call is reissued with the same request (request_id, seed) and output
// already delivered is skipped. Not thread-safe (but see Cancellation).
class GenerateStream {
 public:
  GenerateStream(const GenerateStream&) = delete;
  GenerateStream& operator=(const GenerateStream&) = delete;
  ~GenerateStream();

  // The next new output; false at the end or on error (see status()).
  bool Next(GenerateChunk* chunk);
  absl::Status status() const { return status_; }
  // Valid once Next returned false with status() OK.
  const v1::GenerateDone& done() const { return done_; }
  int reconnects() const { return reconnects_; }
  // The request as this stream sends it: with the request_id it chose
  // when the caller left it empty, and the expected_input_offset it
  // pinned. After status() gave up with a retryable error (IsRetryable),
  // issue exactly this request again (Session::Generate) to go on with the
  // same generation rather than start a second: a committing one finds
  // its record on the server (no second commit), a side branch its input.
  const v1::GenerateRequest& request() const { return request_; }

 private:
  friend class Session;
  struct Call;
  GenerateStream(Client* client, v1::GenerateRequest request, CallOptions call);
  absl::Status Open();
  // Ends the current call (cancelled first if `cancel`), read to its end;
  // its status no longer matters.
  void CloseCall(bool cancel);

  Client* client_;
  v1::GenerateRequest request_;
  CallOptions call_options_;
  std::unique_ptr<Call> call_;
  // The ids delivered: a resumed call must produce them again.
  std::vector<uint32_t> delivered_ids_;
  uint64_t delivered_text_ = 0;
  uint64_t seen_text_ = 0;    // text bytes read on the current call
  uint64_t call_tokens_ = 0;  // output tokens the current call produced
  int reconnects_ = 0;
  int attempts_ = 0;
  // The request's expected_input_offset was set by this stream, from its
  // first chunk's start_input_offset: a resume that fails POSITION_MISMATCH
  // means the session's input moved between the attempts.
  bool pinned_here_ = false;
  // The latest start_input_offset any call sent, for the first chunk
  // delivered (kept across calls: a replaying call does not send it).
  std::optional<uint64_t> start_input_offset_;
  bool finished_ = false;
  absl::Status status_;
  v1::GenerateDone done_;
};

// All of a generation.
struct GenerateResult {
  std::vector<uint32_t> tokens;
  std::string text;
  std::vector<v1::TokenLogprob> logprobs;  // as GenerateChunk's
  v1::GenerateDone done;
};

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_GENERATE_STREAM_H_
