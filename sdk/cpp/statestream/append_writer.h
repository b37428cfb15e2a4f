// SPDX-License-Identifier: Apache-2.0
// AppendWriter: exactly-once, pipelined appends that survive reconnects
// (opened by Session::OpenAppend, statestream/client.h).
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_APPEND_WRITER_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_APPEND_WRITER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "statestream/options.h"
#include "statestream/v1/statestream.pb.h"

namespace statestream::client {

class Client;

// The largest AppendOptions::window: a server stops reading a writer that
// leaves 64 acks unread, so a writer with more requests in flight could
// wait forever on flow control.
inline constexpr int kMaxAppendWindow = 64;

// Options of an AppendWriter.
struct AppendOptions {
  // Durability of the writer's commits.
  v1::Durability durability = v1::DURABILITY_UNSPECIFIED;
  // Requests sent before waiting for an ack (pipelining window), at least
  // 1; larger than kMaxAppendWindow is clamped to it.
  int window = 32;
  // Largest text piece per request, at least 1; longer writes are split.
  // Larger than 1 MiB is clamped to it.
  size_t max_chunk_bytes = 256 << 10;
  CallOptions call;
  // The expected input_offset of the writer's first request: the session's
  // input_offset where this input begins. Unset: the session's applied
  // input_offset, read when the writer opens (GetSession). To retry input
  // after a writer or AppendText failed, give the offset it began at: what
  // the session already has of it is acknowledged as a duplicate instead
  // of applied twice (a session short of it fails POSITION_MISMATCH).
  std::optional<uint64_t> start_offset;
};

// Writes into a session exactly once. Every request goes out at the offset
// the writer computes from what it sent; requests are kept until an ack
// reports them committed and are resent after a reconnect. Not thread-safe.
class AppendWriter {
 public:
  AppendWriter(const AppendWriter&) = delete;
  AppendWriter& operator=(const AppendWriter&) = delete;
  ~AppendWriter();  // cancels an open call; uncommitted input may be lost

  // Queue text / tokens (sent at once, acks read as the window fills).
  // Text is checked whole before any of it is sent, as the server would:
  // UTF-8, but for a character left open at its end (the next Write
  // continues it) or one its start finishes (the session's). Text that is
  // not is INVALID_ARGUMENT/INVALID_UTF8 (metadata input_offset of the
  // first bad byte), nothing is sent and the writer stays usable.
  absl::Status Write(std::string_view text_utf8);
  absl::Status WriteTokens(const std::vector<uint32_t>& tokens);
  // Tokenize the pending tail. With the text written ending inside a
  // character: INVALID_ARGUMENT/INVALID_UTF8, nothing sent, still usable
  // (WriteTokens too: tokens flush the text before them).
  absl::Status Flush();
  // Wait for the acks of everything written (applied, not necessarily
  // committed).
  absl::Status Sync();
  // Commit everything written so far and wait for it; returns its ack.
  absl::StatusOr<v1::AppendResponse> Checkpoint();
  // Checkpoint, then end the call. The writer is unusable afterwards.
  absl::StatusOr<v1::AppendResponse> Close();

  // input_offset after everything written (acked or not).
  uint64_t offset() const { return next_offset_; }
  // The last ack received (zero before the first).
  const v1::AppendResponse& last_ack() const { return last_ack_; }
  // Reconnects made so far (for tests and metrics).
  int reconnects() const { return reconnects_; }

  // A request kept until it is known committed (internal).
  struct Retained {
    v1::AppendRequest request;
    uint64_t acked_version;  // `version` of its ack on the current call
  };

 private:
  friend class Session;
  struct Call;
  AppendWriter(Client* client, std::string session_id, uint64_t offset,
               AppendOptions options);
  // The error a failed writer keeps; a closed one's (not kept):
  // FAILED_PRECONDITION/INVALID_ARGUMENT "writer closed", field=writer.
  absl::Status Usable() const;
  // Write; with `final` (a flush follows: Session::AppendText) text ending
  // inside a character is refused before anything is sent.
  absl::Status WriteText(std::string_view text_utf8, bool final);
  // The incomplete character the text written ends with after `text` too,
  // or the server's INVALID_UTF8 for it (with `flush`, also when a
  // character would be left open).
  absl::StatusOr<std::string> Utf8CarryAfter(std::string_view text,
                                             bool flush) const;
  // The continuation bytes `text` starts with that may finish a character
  // the session holds (0 once the carry is known).
  size_t SkippedLead(std::string_view text) const;
  // INVALID_UTF8 when the text written ends inside a character (a flush or
  // tokens would be refused), else OK.
  absl::Status Utf8Flushable() const;
  absl::Status Send(v1::AppendRequest request);
  absl::Status ReadAcks(size_t keep_unacked);
  absl::Status Reconnect(absl::Status cause);
  absl::Status Fail(absl::Status status);

  Client* client_;
  std::string session_id_;
  AppendOptions options_;
  uint64_t next_offset_;
  // Requests not yet known committed, in offset order; on the current call
  // the first `acked_` of them were acknowledged and the first `sent_` sent.
  std::deque<Retained> retained_;
  size_t acked_ = 0;
  size_t sent_ = 0;
  v1::AppendResponse last_ack_;
  std::unique_ptr<Call> call_;
  int reconnects_ = 0;
  int attempts_ = 0;  // failed attempts since the last progress
  // Progress marks: the highest end offset and version acknowledged.
  uint64_t acked_high_ = 0;
  uint64_t version_high_ = 0;
  absl::Status error_;  // sticky
  bool closed_ = false;
  // UTF-8 as the server checks it: the open character the text written so
  // far ends with; before the first text, whether it may start with the
  // rest of one the session holds (not known: accepted once).
  std::string utf8_carry_;
  bool carry_known_ = false;
  size_t lead_skipped_ = 0;  // continuation bytes taken while not known
};

// INVALID_ARGUMENT/INVALID_ARGUMENT (metadata field, origin=sdk) for
// options no writer can run with (a window or a max_chunk_bytes below 1),
// checked before anything is called.
absl::Status CheckAppendOptions(const AppendOptions& options);

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_APPEND_WRITER_H_
