// SPDX-License-Identifier: Apache-2.0
// The statestream C++ client: a `Client` (channels, credentials, retries)
// and `Session` handles with exactly-once, resuming Append writers and
// resuming Generate streams. Results are the statestream.v1 messages
// (proto/statestream/v1/statestream.proto); errors are absl::Status values
// carrying the server's Reason and metadata (common/status.h GetReason,
// GetErrorMetadata).
//
// Resume protocol (docs/API.md): a call that fails with UNAVAILABLE,
// DEADLINE_EXCEEDED of a single attempt, ABORTED/FENCED or a broken
// connection is retried on the next target with exponential backoff, at
// most ClientOptions::max_attempts times in a row. Appends are resent at
// their original offsets (the server acknowledges already-applied ones as
// duplicates); Generate is reissued with the same request_id and seed and
// the tokens already delivered are skipped.
//
// Thread safety: Client is thread-safe. Session, AppendWriter and
// GenerateStream are not (one thread each), except Cancellation::Cancel,
// which may be called from any thread.
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_CLIENT_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_CLIENT_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace statestream::client {

struct ClientOptions {
  // Gateways (or `statestream serve` addresses), "host:port". Calls start on
  // the first and move to the next after a retryable failure. Required.
  std::vector<std::string> targets;
  // Sent as `authorization: Bearer <api_key>`; empty: none.
  std::string api_key;
  // Sent as `x-statestream-tenant` (development-mode servers only); empty:
  // none.
  std::string tenant;
  // TLS: off by default (plaintext). With `tls`, PEM contents (not paths);
  // empty root certs: the system roots.
  bool tls = false;
  std::string tls_root_certs_pem;
  std::string tls_cert_chain_pem;   // client certificate (mTLS), optional
  std::string tls_private_key_pem;  // its key
  std::string tls_server_name;      // overrides the name checked; optional
  // Deadline of each unary call and of each attempt's connection wait
  // (streams have no deadline unless CallOptions gives one).
  absl::Duration timeout = absl::Seconds(60);
  // Attempts per operation before giving up (>= 1), counted from the last
  // progress: an Append or Generate that made progress starts counting
  // again.
  int max_attempts = 10;
  // Backoff before retry n (1-based): min(initial_backoff * 2^(n-1),
  // max_backoff), with +-20% jitter.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  // Largest message received, bytes (the server's default limit is 8 MiB).
  int max_receive_message_bytes = 8 << 20;
  // Extra integer channel arguments (GRPC_ARG_*), e.g. HTTP/2 window tuning.
  std::vector<std::pair<std::string, int>> channel_args;
};

// Cancels the calls it is given to, from any thread. Once cancelled, every
// operation using it fails with CANCELLED and is not retried.
class Cancellation {
 public:
  void Cancel();
  bool cancelled() const;

 private:
  friend class CallScope;
  // Returns false if already cancelled.
  bool Register(grpc::ClientContext* ctx);
  void Unregister(grpc::ClientContext* ctx);
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<grpc::ClientContext*> contexts_ ABSL_GUARDED_BY(mu_);
};

// Per-operation options.
struct CallOptions {
  // Absolute deadline for the whole operation, all retries included;
  // InfiniteFuture: only the per-attempt ClientOptions::timeout of unary
  // calls.
  absl::Time deadline = absl::InfiniteFuture();
  // Not owned; must outlive the operation. Null: not cancellable.
  Cancellation* cancellation = nullptr;
};

class Client;

// Options of an AppendWriter.
struct AppendOptions {
  // Durability of the writer's commits.
  v1::Durability durability = v1::DURABILITY_UNSPECIFIED;
  // Requests sent before waiting for an ack (pipelining window, >= 1).
  int window = 32;
  // Largest text piece per request; longer writes are split (<= 1 MiB).
  size_t max_chunk_bytes = 256 << 10;
  CallOptions call;
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
  absl::Status Write(std::string_view text_utf8);
  absl::Status WriteTokens(const std::vector<uint32_t>& tokens);
  // Tokenize the pending tail.
  absl::Status Flush();
  // Wait for the acks of everything written (applied, not necessarily
  // committed).
  absl::Status Sync() { return ReadAcks(0); }
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

 private:
  friend class Session;
  struct Call;
  AppendWriter(Client* client, std::string session_id, uint64_t offset,
               AppendOptions options);
  absl::Status Send(v1::AppendRequest request);
  absl::Status ReadAcks(size_t keep_unacked);
  absl::Status Reconnect(absl::Status cause);
  absl::Status Fail(absl::Status status);

  Client* client_;
  std::string session_id_;
  AppendOptions options_;
  uint64_t next_offset_;
  // Requests not yet known committed, in offset order; the first
  // `acked_` of them were acknowledged on the current call.
  std::deque<v1::AppendRequest> retained_;
  size_t acked_ = 0;
  v1::AppendResponse last_ack_;
  std::unique_ptr<Call> call_;
  int reconnects_ = 0;
  int attempts_ = 0;    // failed attempts since the last progress
  absl::Status error_;  // sticky
  bool closed_ = false;
};

// One piece of Generate output.
struct GenerateChunk {
  uint32_t index = 0;  // output index of tokens[0]
  std::vector<uint32_t> tokens;
  std::string text;  // UTF-8 complete (see GenerateChunk)
  std::vector<v1::TokenLogprob> logprobs;
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

 private:
  friend class Session;
  struct Call;
  GenerateStream(Client* client, v1::GenerateRequest request, CallOptions call);
  absl::Status Open();

  Client* client_;
  v1::GenerateRequest request_;
  CallOptions call_options_;
  std::unique_ptr<Call> call_;
  uint32_t delivered_tokens_ = 0;
  uint64_t delivered_text_ = 0;
  uint32_t seen_tokens_ = 0;  // on the current call
  uint64_t seen_text_ = 0;
  int reconnects_ = 0;
  int attempts_ = 0;
  bool finished_ = false;
  absl::Status status_;
  v1::GenerateDone done_;
};

// All of a generation.
struct GenerateResult {
  std::vector<uint32_t> tokens;
  std::string text;
  std::vector<v1::TokenLogprob> logprobs;
  v1::GenerateDone done;
};

// A state blob with its header (ExportState / ImportState).
struct ExportedState {
  v1::StateHeader header;
  std::string blob;
};

// A handle on one session; cheap to copy; holds no server resources.
class Session {
 public:
  const std::string& id() const { return id_; }

  absl::StatusOr<v1::Session> Get(const CallOptions& call = {}) const;
  // Opens a writer at the session's applied input_offset.
  absl::StatusOr<std::unique_ptr<AppendWriter>> OpenAppend(
      AppendOptions options = {}) const;
  // Writes `text` (flushed) and commits it: one Append call.
  absl::StatusOr<v1::AppendResponse> AppendText(
      std::string_view text, AppendOptions options = {}) const;
  // `request.session_id` is set; an empty request_id gets a fresh one;
  // for commit=true an unset expected_input_offset is pinned (GetSession)
  // so that a retry cannot apply the generation twice.
  absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(
      v1::GenerateRequest request, const CallOptions& call = {}) const;
  absl::StatusOr<GenerateResult> GenerateAll(
      v1::GenerateRequest request, const CallOptions& call = {}) const;
  absl::StatusOr<v1::ScoreResponse> Score(v1::ScoreRequest request,
                                          const CallOptions& call = {}) const;
  // A new session from `version` (0: head); empty new_id: server-chosen.
  absl::StatusOr<Session> Fork(uint64_t version = 0,
                               const std::string& new_id = "",
                               const CallOptions& call = {}) const;
  absl::StatusOr<std::vector<v1::Version>> Versions(
      const CallOptions& call = {}) const;
  absl::StatusOr<v1::Session> Rollback(
      uint64_t version, std::optional<uint64_t> expected_version = {},
      const CallOptions& call = {}) const;
  absl::StatusOr<ExportedState> Export(uint64_t version = 0,
                                       const CallOptions& call = {}) const;
  // Commits `state` as this session's next version (IMPORT_MODE_NEW_VERSION).
  absl::StatusOr<v1::Session> Import(const ExportedState& state,
                                     const CallOptions& call = {}) const;
  // UpdateSession: labels and/or TTL per request.update_mask;
  // session_id and an empty request_id are filled in.
  absl::StatusOr<v1::Session> Update(v1::UpdateSessionRequest request,
                                     const CallOptions& call = {}) const;
  absl::Status Delete(bool allow_missing = false,
                      const CallOptions& call = {}) const;

 private:
  friend class Client;
  Session(Client* client, std::string id)
      : client_(client), id_(std::move(id)) {}
  Client* client_;
  std::string id_;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  // CreateSession; an empty request_id gets a fresh one (kept across
  // retries, so a retried create returns the same session).
  absl::StatusOr<v1::Session> CreateSession(v1::CreateSessionRequest request,
                                            const CallOptions& call = {});
  // A handle; makes no call.
  Session OpenSession(const std::string& session_id) {
    return Session(this, session_id);
  }
  absl::StatusOr<v1::ListSessionsResponse> ListSessions(
      v1::ListSessionsRequest request, const CallOptions& call = {});
  // Creates a session from an exported blob (IMPORT_MODE_CREATE).
  absl::StatusOr<v1::Session> ImportSession(const ExportedState& state,
                                            const std::string& session_id = "",
                                            const CallOptions& call = {});
  absl::StatusOr<v1::ListModelsResponse> ListModels(
      const CallOptions& call = {});

  const ClientOptions& options() const { return options_; }

  // Internals shared with the handles.
  struct Stubs {
    std::unique_ptr<v1::Sessions::Stub> sessions;
    std::unique_ptr<v1::Streams::Stub> streams;
    std::unique_ptr<v1::Models::Stub> models;
  };
  // The stubs of the current target.
  Stubs& Current();
  // Moves to the next target after a failure on `failed`.
  void Rotate(const Stubs* failed);
  // Prepares a context: metadata, per-attempt deadline. `unary` sets
  // ClientOptions::timeout (capped by call.deadline).
  void Prepare(grpc::ClientContext* ctx, const CallOptions& call,
               bool unary) const;
  // Decides on a failed attempt `n` (1-based): OK to retry (after
  // sleeping the backoff), else the error to return.
  absl::Status RetryOrFail(const absl::Status& error, int attempt,
                           const CallOptions& call) const;
  // Runs a unary call with retries.
  template <typename Fn>
  absl::Status Unary(const CallOptions& call, Fn fn);

 private:
  explicit Client(ClientOptions options);
  ClientOptions options_;
  std::vector<Stubs> stubs_;
  absl::Mutex mu_;
  size_t current_ ABSL_GUARDED_BY(mu_) = 0;
};

// True for failures after which the same request may be resent.
bool IsRetryable(const absl::Status& status);
// A fresh request id (random, 32 hex digits).
std::string NewRequestId();

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_CLIENT_H_
