// SPDX-License-Identifier: Apache-2.0
// The statestream C++ client: a `Client` (channels, credentials, retries)
// and `Session` handles with exactly-once, resuming Append writers and
// resuming Generate streams. Results are the statestream.v1 messages
// (proto/statestream/v1/statestream.proto); errors are absl::Status values
// carrying the server's Reason and metadata (common/status.h GetReason,
// GetErrorMetadata; GetReasonName also has reasons newer than this SDK).
// Errors the SDK makes itself carry a Reason too, and metadata
// origin=sdk (docs/errors.md), except those standing for a broken call
// (UNAVAILABLE "append stream ended early", ...), retried as one.
//
// Resume protocol (docs/API.md): a call that fails with UNAVAILABLE,
// DEADLINE_EXCEEDED of a single attempt, ABORTED/FENCED,
// RESOURCE_EXHAUSTED/OVERLOADED, UNKNOWN/INTERNAL without a reason (a
// transport failure), CANCELLED not asked for by the caller, or a broken
// connection is retried on the next target
// with exponential backoff (at least the server's retry_after_ms), at most
// ClientOptions::max_attempts times in a row. Appends are resent at their
// original offsets (the server acknowledges already-applied ones as
// duplicates); Generate is reissued with the same request_id and seed and
// the tokens already delivered are skipped; a side branch (commit=false)
// is also pinned to the input_offset it started from, and a committing one
// finds its record on the server by request_id and content (one whose id
// the SDK made is pinned, before its first send, to the session's
// input_offset).
//
// Thread safety: Client is thread-safe. Session, AppendWriter and
// GenerateStream are not (one thread each), except Cancellation::Cancel,
// which may be called from any thread.
//
// Lifetime: the Client must outlive every Session, AppendWriter and
// GenerateStream made from it (they hold a pointer to it and calls on its
// channels).
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_CLIENT_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_CLIENT_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "statestream/append_writer.h"
#include "statestream/generate_stream.h"
#include "statestream/options.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace statestream::client {

// A state blob with its header (ExportState / ImportState).
struct ExportedState {
  v1::StateHeader header;
  std::string blob;
};

// What a call that commits a version may also ask (ImportWith,
// RollbackWith, ForkWith, Client::ImportSessionWith: named apart from
// Import, Rollback, Fork and ImportSession so that a `{}` argument is never
// ambiguous); the same as the Python SDK's keyword arguments.
struct CommitOptions {
  // Import and Rollback: commit only if this is the head, else
  // FAILED_PRECONDITION/VERSION_MISMATCH. Set it to make a retry exact: a
  // retry that reaches another worker (or a restarted one) is otherwise
  // applied again.
  std::optional<uint64_t> expected_version;
  // The level the new version reaches before the call returns (unset:
  // the server's default).
  v1::Durability durability = v1::DURABILITY_UNSPECIFIED;
  // Fork and ImportSession: the new session's labels and idle TTL (unset:
  // the server's default).
  std::map<std::string, std::string> labels;
  std::optional<absl::Duration> ttl;
  // The request id ("" = a new one per call, kept across its retries).
  // Give your own to retry a call that gave up exactly once: a Fork or an
  // ImportSession retried under it gets the same session back.
  std::string request_id;
};

// A handle on one session; cheap to copy; holds no server resources.
class Session {
 public:
  const std::string& id() const { return id_; }

  absl::StatusOr<v1::Session> Get(const CallOptions& call = {}) const;
  // Opens a writer at options.start_offset, else at the session's applied
  // input_offset (GetSession).
  absl::StatusOr<std::unique_ptr<AppendWriter>> OpenAppend(
      AppendOptions options = {}) const;
  // Writes `text` (flushed) and commits it: one Append call. To retry it
  // after a failure without applying it twice, set options.start_offset
  // to the input_offset it began at (the same on every try).
  absl::StatusOr<v1::AppendResponse> AppendText(
      std::string_view text, AppendOptions options = {}) const;
  // `request.session_id` is set; an empty request_id gets a fresh one, and
  // then for commit=true an unset expected_input_offset is pinned
  // (GetSession) so that a resume cannot apply the generation twice. With
  // a request_id of the caller's, retry by calling again with the same
  // request: the server replays the committed generation (set
  // expected_input_offset to pin it yourself).
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
  absl::StatusOr<Session> ForkWith(uint64_t version, const std::string& new_id,
                                   const CommitOptions& options,
                                   const CallOptions& call = {}) const;
  // Every kept version (all pages). A server that repeats its page token:
  // INTERNAL/INTERNAL (origin=sdk), not retried.
  absl::StatusOr<std::vector<v1::Version>> Versions(
      const CallOptions& call = {}) const;
  absl::StatusOr<v1::Session> Rollback(
      uint64_t version, std::optional<uint64_t> expected_version = {},
      const CallOptions& call = {}) const;
  absl::StatusOr<v1::Session> RollbackWith(uint64_t version,
                                           const CommitOptions& options,
                                           const CallOptions& call = {}) const;
  // The state of `version` (0: the head). A blob that fails the SDK's
  // checks (chunk order, CRC-32C, size): DATA_LOSS/STATE_CORRUPT with
  // metadata detail (and origin=sdk), as the server reports its own.
  absl::StatusOr<ExportedState> Export(uint64_t version = 0,
                                       const CallOptions& call = {}) const;
  // Commits `state` as this session's next version (IMPORT_MODE_NEW_VERSION).
  absl::StatusOr<v1::Session> Import(const ExportedState& state,
                                     const CallOptions& call = {}) const;
  absl::StatusOr<v1::Session> ImportWith(const ExportedState& state,
                                         const CommitOptions& options,
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
  absl::StatusOr<v1::Session> ImportSessionWith(const ExportedState& state,
                                                const std::string& session_id,
                                                const CommitOptions& options,
                                                const CallOptions& call = {});
  absl::StatusOr<v1::ListModelsResponse> ListModels(
      const CallOptions& call = {});
  // One served model (Models.GetModel): NOT_FOUND/MODEL_NOT_FOUND for an id
  // no server serves (an empty one too).
  absl::StatusOr<v1::Model> GetModel(const std::string& model_id,
                                     const CallOptions& call = {});

  const ClientOptions& options() const { return options_; }

 private:
  // Internals shared with the handles (not API: no auth metadata, retries
  // or failover outside them).
  friend class Session;
  friend class AppendWriter;
  friend class GenerateStream;
  struct Stubs {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Sessions::Stub> sessions;
    std::unique_ptr<v1::Streams::Stub> streams;
    std::unique_ptr<v1::Models::Stub> models;
  };
  // The stubs of the current target, and its channel.
  Stubs& Current();
  std::shared_ptr<grpc::Channel> CurrentChannel() const;
  // Moves to the next target after `error` on `failed` when it may be the
  // target's fault (BlamesTarget), unless `call` was cancelled or its
  // deadline has passed (the caller's cancel or deadline says nothing
  // about the target).
  void Rotate(const Stubs* failed, const absl::Status& error,
              const CallOptions& call);
  // Prepares a context: metadata, per-attempt deadline. `unary` sets
  // ClientOptions::timeout (capped by call.deadline).
  void Prepare(grpc::ClientContext* ctx, const CallOptions& call,
               bool unary) const;
  // Decides on a failed attempt `n` (1-based): OK to retry (after
  // sleeping the backoff), else the error to return.
  absl::Status RetryOrFail(const absl::Status& error, int attempt,
                           const CallOptions& call) const;
  // Waits `d` (nothing if not positive); CANCELLED if call.cancellation
  // fires meanwhile (no wait for the rest).
  static absl::Status Pause(absl::Duration d, const CallOptions& call);
  // Runs a unary call with retries.
  template <typename Fn>
  absl::Status Unary(const CallOptions& call, Fn fn);
  // Runs an ExportState or ImportState call with retries; each attempt
  // ends after `budget`, or once it goes ClientOptions::timeout without
  // moving a message.
  template <typename Fn>
  absl::Status Transfer(const CallOptions& call, absl::Duration budget, Fn fn);

  explicit Client(ClientOptions options);
  ClientOptions options_;
  std::vector<Stubs> stubs_;
  mutable absl::Mutex mu_;
  size_t current_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_CLIENT_H_
