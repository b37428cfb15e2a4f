// SPDX-License-Identifier: Apache-2.0
// The worker's sessions, without gRPC: a residency cache of live sessions in
// front of a StateStore, and the operations of the public API on them
// (proto/statestream/v1/statestream.proto is the contract; this header
// speaks in plain structs). Engine work goes through the Scheduler only.
//
// Residency. A session is loaded from the store on first use, after the
// manager takes its lease (with takeover: the fence bump makes that safe).
// Resident sessions are kept under a byte budget; idle ones (no operation
// running, no writer attached) are evicted least recently used first, after
// committing any applied-but-uncommitted input, and their lease released.
// Leases are renewed in the background while resident. A commit answered
// FENCED (another worker took the session) drops the cached state.
//
// Serialisation. Operations on one session run one at a time, in arrival
// order (a per-session queue). A session has at most one writer call (an
// Append stream or a committing Generate); opening a new one supersedes the
// old one, whose next request fails with ABORTED/SESSION_BUSY.
//
// Threading. Every method is thread-safe. Callbacks (`done`, `emit`, the
// superseded notification) run on the manager's own threads or on the
// scheduler's thread, never on the caller's stack; they must not block.
#ifndef STATESTREAM_WORKER_SESSION_MANAGER_H_
#define STATESTREAM_WORKER_SESSION_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "state_store/state_store.h"
#include "worker/engine/model.h"
#include "worker/engine/sampler.h"
#include "worker/engine/tokenizer.h"
#include "worker/scheduler.h"

namespace statestream::worker {

class RequestMemo;

class WorkerMetrics;

struct SessionManagerOptions {
  // Public model id of the one served model, e.g. "rwkv7-demo".
  std::string model_id = "default";
  // This worker's lease owner name (unique per process).
  std::string owner = "worker";
  // Lease duration; renewed every lease_ttl / 3 while resident.
  absl::Duration lease_ttl = absl::Seconds(30);
  // Score and Generate on a resident session first ask the
  // store whether this worker still holds the session (another may have
  // taken it over since the last renewal): one store read per call. An
  // answer slower than this serves the resident copy, so that a hung
  // store does not stall reads.
  absl::Duration copy_check_wait = absl::Milliseconds(200);
  // Bytes of resident sessions (state + hidden, as held in memory) kept
  // before idle sessions are evicted (LRU).
  int64_t residency_bytes = int64_t{1} << 30;
  // Bytes of state blobs that ExportState and ImportState calls in flight
  // hold at once (each keeps its whole blob until its call ends); past it a
  // new one is RESOURCE_EXHAUSTED/OVERLOADED (one always fits alone). Read
  // from the default model's options (worker-wide).
  int64_t max_transfer_bytes = int64_t{1} << 30;
  // Bytes of the working copies of session states that Generate and Score
  // calls in flight hold (each runs on a copy of its session's state: a
  // side branch, a score, a committing generation until it commits); past
  // it a new one is RESOURCE_EXHAUSTED/OVERLOADED (one always fits alone).
  // Per model. Without it, a client's side branches of one session (up to
  // the scheduler's max_tasks) would each hold a whole state.
  int64_t max_copy_bytes = int64_t{1} << 30;
  // Server checkpoint policy for Append streams: commit once this many
  // tokens or this much time of uncommitted input has accumulated.
  int64_t checkpoint_tokens = 4096;
  absl::Duration checkpoint_interval = absl::Seconds(5);
  // Committing generations also commit while they run, once this many
  // tokens were generated or this much time passed since the start or the
  // last such checkpoint (0 turns either off), at the request's durability:
  // a retry of the request after a failure replays the checkpointed output
  // and continues from there.
  int generate_checkpoint_tokens = 1024;
  absl::Duration generate_checkpoint_interval = absl::Seconds(10);
  // Durability when a request says "unspecified".
  Durability default_durability = Durability::kMemory;
  // A drain retries the commits of dirty sessions that the store refused
  // for now (UNAVAILABLE) until this long after it started; a session
  // still uncommitted then loses its input since the last commit (counted
  // in Stats::drain_commit_failures and reported on stderr; clients resend
  // from committed_input_offset).
  absl::Duration drain_commit_timeout = absl::Seconds(10);
  // Generate: max_tokens 0 means this; more than max_generate_tokens is
  // MESSAGE_TOO_LARGE.
  int default_generate_tokens = 256;
  int max_generate_tokens = 8192;
  // Threads running session operations and store I/O.
  int threads = 4;
  // Idempotency window of request ids: CreateSession ids are remembered
  // (in memory, at most max_create_request_ids, oldest dropped first) for
  // this long; committed Generate records too (kept with the session's
  // state, at most generation_records per session and
  // generation_record_tokens output tokens in all, oldest dropped first).
  absl::Duration request_id_window = absl::Hours(1);
  int max_create_request_ids = 65536;
  // Where CreateSession, DeleteSession, RollbackSession and ImportState
  // ids are remembered (the two limits above apply to it). A process
  // serving several models gives them one, so a retry finds its id
  // whichever model's manager serves it; null: the manager's own.
  std::shared_ptr<RequestMemo> request_memo;
  int generation_records = 64;
  int64_t generation_record_tokens = 65536;
  // Metrics sink; nullptr = none. Not owned; must outlive the manager.
  WorkerMetrics* metrics = nullptr;
  // Time source for the checkpoint policy and leases. Not owned.
  Clock* clock = nullptr;  // nullptr = Clock::Real()
};

// A session as the API shows it (Session message).
struct SessionView {
  std::string session_id;
  std::string model_id;
  std::string model_fingerprint;
  uint64_t position = 0;  // applied
  uint64_t input_offset = 0;
  uint32_t pending_bytes = 0;
  uint64_t version = 0;  // committed head
  uint64_t committed_position = 0;
  uint64_t committed_input_offset = 0;
  Durability durability = Durability::kMemory;
  std::map<std::string, std::string> labels;
  absl::Duration ttl;
  absl::Time create_time, update_time;
  std::string parent_session_id;
  uint64_t parent_version = 0;
  uint64_t state_bytes = 0;
};

struct CreateParams {
  std::string request_id;
  std::string session_id;  // "" = generate one
  std::string model_id;    // "" = the served model
  std::map<std::string, std::string> labels;
  absl::Duration ttl = absl::ZeroDuration();  // 0 = store default
  std::optional<std::pair<std::string, uint64_t>> fork_from;  // id, version
  std::optional<Durability> durability;
  // > 0: the tenant's session limit, enforced by the store atomically
  // (CreateSessionRequest::max_tenant_sessions).
  int64_t max_tenant_sessions = 0;
};

// One Append request (AppendRequest without session_id).
struct AppendInput {
  std::string request_id;
  uint64_t expected_input_offset = 0;
  enum class Kind { kNone, kText, kTokens } kind = Kind::kNone;
  std::string text;
  std::vector<int32_t> tokens;
  bool flush = false;
  bool checkpoint = false;
  std::optional<Durability> durability;
};

struct AppendAck {
  std::string request_id;
  bool duplicate = false;
  uint32_t tokens_consumed = 0;
  uint64_t position = 0, input_offset = 0;
  uint32_t pending_bytes = 0;
  uint64_t version = 0, committed_input_offset = 0;
  Durability durability = Durability::kMemory;
};

struct GenerateInput {
  std::string request_id;
  std::optional<uint64_t> expected_input_offset;
  enum class Prompt { kNone, kText, kTokens } prompt_kind = Prompt::kNone;
  std::string prompt_text;
  std::vector<int32_t> prompt_tokens;
  engine::SamplingParams sampling;  // seed set iff has_seed
  bool has_seed = false;
  int max_tokens = 0;  // 0 = default
  std::vector<std::string> stop_strings;
  bool commit = false;
  std::optional<Durability> durability;
  bool logprobs = false;
  int top_logprobs = 0;
  // Stop gracefully (Finish::kCancelled) after this much generation time,
  // counted from the call's turn on its session (not time queued behind
  // other work on it).
  std::optional<absl::Duration> max_duration;
  // Digest of the request's content (everything but the transport): a
  // committed generation is recorded under (request_id, digest); a retry
  // with the same pair replays it, another digest is DUPLICATE_REQUEST.
  uint64_t content_digest = 0;
};

struct GenerateOutcome {
  // kCancelled: stopped early (max_duration elapsed, or the worker drains);
  // the output so far is complete (and committed if asked).
  enum class Finish { kStopToken, kStopString, kMaxTokens, kCancelled } finish;
  int32_t stop_token = 0;
  std::string stop_string;
  uint32_t input_tokens = 0, output_tokens = 0;
  std::string held_back;  // trailing bytes never completed to UTF-8
  bool committed = false;
  // A retry of a committed generation: the pieces were replayed from the
  // session's record (no logprobs), nothing was sampled or applied.
  bool replayed = false;
  uint64_t position = 0, input_offset = 0, version = 0;
  Durability durability = Durability::kMemory;
};

struct GeneratedPiece {
  int32_t token = 0;
  std::string text;  // newly complete UTF-8
  // Generated now with logprobs asked for; false for tokens replayed from
  // a checkpoint or a record, which carry none.
  bool has_logprob = false;
  float logprob = 0;
  std::vector<engine::TokenLogprob> top;
  // On the first token of a generation sampled now (none was replayed):
  // the session's input_offset it started from (GenerateChunk's
  // start_input_offset).
  std::optional<uint64_t> start_input_offset;
};

struct ScoreInput {
  uint64_t version = 0;  // 0 = applied state
  std::optional<uint64_t> expected_input_offset;
  bool is_text = false;
  std::string text;
  std::vector<int32_t> tokens;
  int top_logprobs = 0;  // 0-20
};

struct ScoreOutcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<bool> greedy;
  std::vector<std::vector<engine::TokenLogprob>> top;  // when asked
  uint64_t position = 0, input_offset = 0, version = 0;
};

// An exported state blob and what the header describes.
struct ExportedState {
  std::string blob;  // EncodeState of the version's snapshot
  std::string session_id;
  // The state's model: this manager's, or (a session of a model not
  // served here) the session's own, as recorded in the store.
  std::string model_id, model_fingerprint, architecture;
  uint64_t version = 0, position = 0, input_offset = 0;
  uint32_t pending_bytes = 0;
};

// The fingerprint a session's state is stored and exported under: the
// model's and the tokenizer's ("MODEL+TOKENIZER"), since the undecided
// text bytes it holds belong to that tokenizer. `model eval --state-in/
// --state-out` writes and reads the same one.
std::string SessionStateFingerprint(const engine::Model& model,
                                    const engine::Tokenizer& tokenizer);

// What an imported state (and `model eval --state-in`) must hold beyond
// the codec's checks, first part: header shape fields that are set name
// the model's shape (FAILED_PRECONDITION/MODEL_MISMATCH, `fingerprint`
// as expected_fingerprint), and position, input_offset and pending text
// leave room for more input (DATA_LOSS/STATE_CORRUPT).
absl::Status CheckStateShape(const StateSnapshot& snap,
                             const engine::ModelInfo& info,
                             const std::string& fingerprint);

class SessionManager {
 public:
  // `model`, `tokenizer`, `scheduler` and `store` must outlive the manager.
  static absl::StatusOr<std::unique_ptr<SessionManager>> Create(
      const SessionManagerOptions& options, engine::Model* model,
      const engine::Tokenizer* tokenizer, Scheduler* scheduler,
      StateStore* store);
  ~SessionManager();  // Drain()s
  SessionManager(const SessionManager&) = delete;
  SessionManager& operator=(const SessionManager&) = delete;

  // Served model: its id, fingerprint (model + tokenizer) and details.
  const SessionManagerOptions& options() const;
  const std::string& fingerprint() const;
  // The fingerprints of the other models served beside this one (set by
  // ModelSet::Create): a session of another model is MODEL_MISMATCH whose
  // expected_fingerprint names every model served (this one first).
  void SetServedBeside(std::vector<std::string> fingerprints);
  const engine::Model& model() const;
  const engine::Tokenizer& tokenizer() const;
  // The most durable level the state store can ever reach
  // (StateStore::MaxDurability).
  Durability max_durability() const;

  // --- Sessions (blocking; store I/O on the caller's thread) ---------------
  absl::StatusOr<SessionView> CreateSession(const std::string& tenant,
                                            const CreateParams& params);
  absl::StatusOr<SessionView> GetSession(const std::string& tenant,
                                         const std::string& session_id);
  absl::StatusOr<std::pair<std::vector<SessionView>, std::string>> ListSessions(
      const std::string& tenant, int page_size, const std::string& page_token,
      const std::map<std::string, std::string>& labels,
      const std::string& model_id);
  absl::StatusOr<SessionView> UpdateSession(const std::string& tenant,
                                            const std::string& session_id,
                                            const SessionUpdate& update);
  // Mutations with a `request_id` are idempotent on this worker within
  // request_id_window: a retry returns what the first call did (a delete
  // that succeeded succeeds again; a rollback is not repeated), reusing the
  // id for other content is DUPLICATE_REQUEST. A delete that arrives
  // while one with its id still runs waits for it; `cancelled` (optional:
  // the caller went away) ends that wait with CANCELLED, nothing done.
  absl::Status DeleteSession(const std::string& tenant,
                             const std::string& session_id, bool allow_missing,
                             const std::string& request_id = "",
                             const std::function<bool()>& cancelled = nullptr);
  // Newest first.
  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const std::string& tenant, const std::string& session_id);
  absl::StatusOr<SessionView> Rollback(const std::string& tenant,
                                       const std::string& session_id,
                                       uint64_t version,
                                       std::optional<uint64_t> expected,
                                       std::optional<Durability> durability,
                                       const std::string& request_id = "");
  absl::StatusOr<ExportedState> Export(const std::string& tenant,
                                       const std::string& session_id,
                                       uint64_t version);
  // `blob` is a validated, complete state blob. new_version: commit as the
  // next version of an existing session (expected: CAS on the head); else
  // create `params.session_id`.
  absl::StatusOr<SessionView> Import(const std::string& tenant,
                                     const std::string& blob, bool new_version,
                                     const CreateParams& params,
                                     std::optional<uint64_t> expected);

  // Rollback and Import without holding the caller's thread while the
  // session is busy (a committing generation holds it for its whole run):
  // `done` runs once with the outcome, on the caller's thread or, once the
  // session's turn came, on the manager's pool. The service uses these, so
  // rollbacks and imports queued behind busy sessions occupy none of its
  // threads. `cancelled` (optional) is asked when the turn comes: true
  // (the client went away meanwhile) ends the call CANCELLED, nothing done.
  using ViewDone = std::function<void(absl::StatusOr<SessionView>)>;
  using IsCancelled = std::function<bool()>;
  void RollbackAsync(const std::string& tenant, const std::string& session_id,
                     uint64_t version, std::optional<uint64_t> expected,
                     std::optional<Durability> durability,
                     const std::string& request_id, ViewDone done,
                     IsCancelled cancelled = nullptr);
  void ImportAsync(const std::string& tenant, const std::string& blob,
                   bool new_version, const CreateParams& params,
                   std::optional<uint64_t> expected, ViewDone done,
                   IsCancelled cancelled = nullptr);

  // --- Streams (asynchronous) ----------------------------------------------
  // A writer call. Opening one supersedes the session's previous writer:
  // `superseded` of the old one runs once, with the status its call should
  // end with: ABORTED/SESSION_BUSY for a newer writer or a delete under
  // way, or why the session left this worker (ABORTED/FENCED when another
  // took it over, UNAVAILABLE when evicted or draining). Close() commits
  // applied-but-uncommitted input.
  // With `may_load` false nothing is read from the store: a session not
  // resident is nullptr (and `superseded` unused), for a caller on a thread
  // that must not block (gRPC's), which then opens on one that may.
  // `cancelled` (optional) is asked once the session is resident (a load
  // can take long): true (the client went away meanwhile) is CANCELLED,
  // and the live writer, if any, goes on.
  class Writer;
  absl::StatusOr<std::shared_ptr<Writer>> OpenWriter(
      const std::string& tenant, const std::string& session_id,
      std::function<void(const absl::Status&)> superseded, bool may_load = true,
      const std::function<bool()>& cancelled = nullptr);
  void Append(const std::shared_ptr<Writer>& writer, AppendInput input,
              std::function<void(absl::StatusOr<AppendAck>)> done);
  // What Append refuses whatever the session holds (INVALID_ARGUMENT): text
  // or tokens over their limits (MESSAGE_TOO_LARGE), a token outside the
  // vocabulary (INVALID_TOKEN). Checked before a call opens its writer, so
  // a malformed first request does not end the session's live writer.
  absl::Status CheckAppend(const AppendInput& input) const;
  // Commits anything uncommitted (at `durability`) and detaches the writer.
  void CloseWriter(const std::shared_ptr<Writer>& writer,
                   std::optional<Durability> durability,
                   std::function<void(absl::Status)> done);
  // Detaches without committing (the call failed or was cancelled).
  void AbandonWriter(const std::shared_ptr<Writer>& writer);

  // Handle to cancel a running generate/score (client went away).
  class Job {
   public:
    virtual ~Job() = default;
    virtual void Cancel() = 0;
  };
  // `emit` gets each token in order (scheduler thread), then `done` once.
  std::shared_ptr<Job> Generate(
      const std::string& tenant, const std::string& session_id,
      GenerateInput input, std::function<void(const GeneratedPiece&)> emit,
      std::function<void(absl::StatusOr<GenerateOutcome>)> done);
  std::shared_ptr<Job> Score(
      const std::string& tenant, const std::string& session_id,
      ScoreInput input, std::function<void(absl::StatusOr<ScoreOutcome>)> done);

  // Stops admitting new operations (UNAVAILABLE), waits for the running
  // ones, commits dirty sessions and releases every lease. Idempotent.
  void Drain();

  // Has the renewal thread renew every resident session's lease now
  // rather than at its next period (lease_ttl / 3): a session another
  // worker took over, or that the store no longer has, is dropped, and
  // its calls end (FENCED / SESSION_NOT_FOUND). For a worker that may have
  // missed changes: its registry entry had expired or was lost
  // (WorkerRegistrationOptions::resync). Returns at once.
  void RenewLeasesNow();

  struct Stats {
    int resident = 0;
    int active = 0;  // resident with an operation or a writer attached
    int64_t resident_bytes = 0;
    int64_t loads = 0, evictions = 0, commits = 0, fenced = 0;
    int64_t drain_commit_failures = 0;
  };
  Stats stats() const;

  // Whether the session is resident here (no store I/O): a worker serving
  // several models routes the session's calls to this manager.
  bool IsResident(const std::string& tenant,
                  const std::string& session_id) const;

  class Impl;

 private:
  explicit SessionManager(std::unique_ptr<Impl> impl);
  absl::Status DeleteOnce(const std::string& tenant,
                          const std::string& session_id, bool allow_missing);
  // A retry of a call that committed `version` of the session (0: none
  // recorded): that version raised to `durability` if the first attempt
  // was kept below it, then the session as it is now.
  absl::StatusOr<SessionView> Retried(const std::string& tenant,
                                      const std::string& session_id,
                                      uint64_t version, Durability durability);
  // ImportAsync's work up to the session's strand: its answer, or, for a
  // new version queued on the strand, *done moved into the operation (and
  // left null).
  absl::StatusOr<SessionView> ImportOrQueue(
      const std::string& tenant, const std::string& blob, bool new_version,
      const CreateParams& params, std::optional<uint64_t> expected,
      ViewDone* done, IsCancelled cancelled);
  std::unique_ptr<Impl> impl_;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_SESSION_MANAGER_H_
