// SPDX-License-Identifier: Apache-2.0
// The gateway's Streams service: Append with replay-based failover,
// Generate with resume-and-skip failover, Score forwarded like any unary
// call (see gateway.h for the contracts).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <random>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/random.h"
#include "common/status.h"
#include "services/caller_metadata.h"
#include "services/gateway_internal.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

using AppendBidi = BlockingBidi<v1::AppendRequest, v1::AppendResponse>;

// One client Append call. Threads: Run (routes, reads worker acks, writes
// them to the client), ReadClient (client -> log), and per attempt Send
// (log -> worker).
class AppendCall final : public Watched {
 public:
  // `slot`: the tenant's stream slot (may be null), freed before the
  // client sees the call end. `credentials` named `tenant` under key set
  // `auth_generation` (TenantAuth::generation).
  AppendCall(Gateway* gateway, grpc::CallbackServerContext* ctx,
             AppendBidi* client, std::string tenant,
             std::shared_ptr<TenantLimits::StreamSlot> slot,
             Credentials credentials, uint64_t auth_generation)
      : gateway_(gateway),
        ctx_(ctx),
        client_(client),
        tenant_(std::move(tenant)),
        slot_(std::move(slot)),
        credentials_(std::move(credentials)),
        auth_generation_(auth_generation) {}
  // What the log still holds goes back to the gateway's buffers.
  ~AppendCall() override {
    absl::MutexLock lock(&mu_);
    gateway_->buffers().Give(log_bytes_);
  }

  // Serves the call to its end (Finish included).
  void Run() {
    const absl::Time began = gateway_->BeginCall();
    std::thread reader;
    try {
      reader = std::thread([this] { ReadClient(); });
    } catch (const std::system_error&) {  // out of threads
      gateway_->EndCall("Append", Gateway::Refused(), began);
      slot_.reset();
      client_->FinishCall(Gateway::Refused());
      return;
    }
    grpc::Status final_status = Forward();
    // A message that did not parse, or one sent after the call's API key
    // was revoked, ended the client's input: what came before it went
    // through (and was committed, as at a half-close), but the call is no
    // success.
    if (final_status.ok() && client_->unparsable()) {
      final_status = ToGrpcStatus(UnparsableRequestError());
    }
    {
      absl::MutexLock lock(&mu_);
      if (final_status.ok() && !input_ended_.ok()) {
        final_status = ToGrpcStatus(input_ended_);
      }
    }
    gateway_->EndCall("Append", final_status, began);
    ctx_->AddTrailingMetadata(kAttemptsTrailer, absl::StrCat(attempts_));
    slot_.reset();  // the client may open its next stream at once
    client_->FinishCall(final_status);
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
    }
    reader.join();
  }

  // A worker that acknowledges nothing for the stall timeout plus an
  // allowance per input unit of the oldest request in flight (a request is
  // acked once it has all gone through the model: a 1 MiB one can take
  // minutes; each ack restarts the clock) is treated as failed. A paused or
  // partitioned worker is found sooner by its connection's unanswered pings
  // (Gateway::Channel).
  void CheckStall(absl::Time now) override {
    absl::MutexLock lock(&mu_);
    const GatewayOptions& o = gateway_->options();
    const uint64_t oldest =
        in_flight_units_.empty() ? 0 : in_flight_units_.front();
    if (upstream_ != nullptr && !stalled_ && !writing_client_ &&
        attempt_sent_ > attempt_acked_ &&
        now - last_progress_ >
            o.upstream_stall_timeout +
                o.upstream_stall_per_unit * static_cast<double>(oldest)) {
      stalled_ = true;
      upstream_->TryCancel();
    }
  }

 private:
  struct Entry {
    v1::AppendRequest request;
    uint64_t seq = 0;            // index among the client's requests
    uint64_t end = 0;            // expected_input_offset + units
    uint64_t units = 0;          // tokens or text bytes
    uint64_t acked_version = 0;  // the head version its latest ack reported
    int64_t bytes = 0;
    absl::Time received;  // read from the client
  };

  // Whether acknowledged `e` is known committed. A request with a payload
  // is once the commit covers its end. A bare flush ends where it starts,
  // and a commit at that offset may predate it: it is only once the offset
  // moved past it or a version newer than its ack's covers it (the SDKs'
  // rule for their own resends).
  bool Committed(const Entry& e) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (e.units > 0) return e.end <= committed_;
    return e.end < committed_ ||
           (e.end == committed_ && committed_version_ > e.acked_version);
  }

  // The oldest log entry, committed (or discarded by a rollback).
  void DropOldest() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    log_bytes_ -= log_.front().bytes;
    gateway_->buffers().Give(log_.front().bytes);
    log_.pop_front();
  }

  void ReadClient() {
    const int64_t limit = gateway_->options().append_buffer_bytes;
    ByteBudget& buffers = gateway_->buffers();
    v1::AppendRequest request;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        // Room in this call's log, and in the gateway's buffers or for
        // one more request: one read past the gateway's bound goes with
        // checkpoint=true (below), and the call reads on once that is
        // acked, its commit having emptied the log. So every call moves,
        // a commit per request, whatever its worker's commit policy, and
        // the buffers exceed the bound by at most two requests a call.
        // What wakes a waiting call is its own ack (under mu_); the
        // gateway's buffers emptying does not, so it waits for that ack.
        auto room = [this, limit, &buffers]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
          return finished_ || (log_bytes_ <= 2 * limit &&
                               (log_bytes_ == 0 || acked_ >= forced_until_ ||
                                !buffers.over()));
        };
        mu_.Await(absl::Condition(&room));
        if (finished_) break;
      }
      if (!client_->Read(&request)) break;
      // Each request is sent under the key the call was opened with.
      // (Not read from ctx_: the call may be finishing as this read
      // returns, and its metadata go with it.)
      if (absl::Status valid = gateway_->options().auth.Recheck(
              credentials_, tenant_, &auth_generation_);
          !valid.ok()) {
        absl::MutexLock lock(&mu_);
        input_ended_ = std::move(valid);
        break;
      }
      Entry e;
      e.received = absl::Now();
      // What the entry holds in memory, not its size on the wire: a token
      // id below 128 is one byte there and four here, and an empty request
      // serialises to 0 bytes (a flood of them must still fill the bound).
      e.bytes = static_cast<int64_t>(request.SpaceUsedLong() + sizeof(Entry) -
                                     sizeof(request));
      uint64_t units = request.has_tokens() ? request.tokens().ids_size()
                                            : request.text_utf8().size();
      e.end = request.expected_input_offset() + units;
      e.units = units;
      e.request = std::move(request);
      absl::MutexLock lock(&mu_);
      // The call's session is the first request's: one that names none is
      // refused, whatever a later request names.
      if (next_seq_ == 0) session_id_ = e.request.session_id();
      // Past the bound, make the worker commit so the log can shrink: one
      // request at a time (the next only once that one is acked), not
      // every request read meanwhile, each a commit of the whole state.
      e.seq = next_seq_++;
      buffers.Take(e.bytes);
      if ((log_bytes_ + e.bytes > limit || buffers.over()) &&
          acked_ >= forced_until_) {
        e.request.set_checkpoint(true);
        forced_until_ = e.seq + 1;
      }
      log_bytes_ += e.bytes;
      log_.push_back(std::move(e));
    }
    absl::MutexLock lock(&mu_);
    client_done_ = true;
  }

  // Writes log entries from `seq` on to the worker, then half-closes once
  // the client has.
  void Send(
      grpc::ClientReaderWriter<v1::AppendRequest, v1::AppendResponse>* stream,
      uint64_t seq) {
    while (true) {
      v1::AppendRequest request;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this, seq]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
          return attempt_over_ || seq < next_seq_ || client_done_;
        };
        mu_.Await(absl::Condition(&ready));
        if (attempt_over_) return;
        if (seq >= next_seq_) break;  // client done, everything sent
        if (log_.empty() || seq < log_.front().seq) return;  // cannot happen
        const Entry& e = log_[seq - log_.front().seq];
        request = e.request;
        if (request.session_id().empty()) request.set_session_id(session_id_);
        if (attempt_sent_ == attempt_acked_) last_progress_ = absl::Now();
        ++attempt_sent_;
        in_flight_units_.push_back(e.units);
      }
      if (!stream->Write(request)) return;
      ++seq;
    }
    stream->WritesDone();
  }

  grpc::Status Forward() {
    {
      absl::MutexLock lock(&mu_);
      auto started = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return !log_.empty() || client_done_;
      };
      mu_.Await(absl::Condition(&started));
      if (log_.empty()) return grpc::Status::OK;  // nothing was sent
      if (session_id_.empty()) {
        return ToGrpcStatus(MakeError(
            absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
            "session_id is required in the first request",
            {{"field", "session_id"}}));
      }
    }
    gateway_->Watch(this);
    std::set<std::string> exclude;
    grpc::Status status;
    bool gave_up = false;  // the last worker failed too, none is left
    // max_attempts bounds consecutive attempts without progress: a long
    // stream may lose many workers over its life. A failover from a worker
    // that could not be reached costs nothing (up to kMaxUnreachableSkips
    // per call): nothing was sent to it.
    const int max_failures = gateway_->options().max_attempts;
    int skips = 0;
    for (int attempt = 1, failures = 0; failures < max_failures; ++attempt) {
      auto route =
          gateway_->router().RouteSession({tenant_, session_id_}, exclude);
      gateway_->CountRoute(route, attempt);
      if (!route.ok()) {
        if (attempt == 1) status = ToGrpcStatus(route.status());
        gave_up = attempt > 1;
        break;
      }
      bool stalled = false, client_gone = false, progressed = false;
      attempts_ = attempt;
      const std::shared_ptr<grpc::Channel> channel =
          gateway_->Channel(route->address);
      const bool refused = Gateway::RefusedFast(channel, *ctx_);
      status = Attempt(channel, attempt, !refused, &stalled, &client_gone,
                       &progressed);
      if (status.ok() || client_gone) break;
      if (!stalled && !Gateway::ShouldFailover(status)) break;
      // (A stall's CANCELLED is the watchdog's own: no wait for a sign.)
      if (stalled ? ctx_->IsCancelled() : Gateway::ClientGone(*ctx_, status)) {
        break;
      }
      if (stalled || Gateway::WorkerFailed(status)) {
        gateway_->router().MarkSuspect(route->worker_id);
      }
      exclude.insert(route->worker_id);
      if (progressed) {
        failures = 1;
      } else if (!Gateway::SkipsAttempt(refused, channel, &skips)) {
        ++failures;
      }
      gave_up = failures >= max_failures;
      if (failures < max_failures) gateway_->metrics().IncFailover("Append");
      if (progressed) exclude = {route->worker_id};
      // Jittered: the streams of a worker that died all fail at once, and
      // would otherwise reach its sessions' new owners in lockstep.
      absl::SleepFor(
          std::min(absl::Milliseconds(50) * failures, absl::Milliseconds(500)) *
          std::uniform_real_distribution<double>(0.5, 1.0)(ThreadRng()));
    }
    gateway_->Unwatch(this);
    return gave_up ? Gateway::GaveUp(status) : Gateway::FromWorker(status);
  }

  // One attempt on the route's `channel`. `replaying`: count the requests
  // re-sent (not for a worker the gateway could not connect to: they go
  // nowhere).
  grpc::Status Attempt(const std::shared_ptr<grpc::Channel>& channel,
                       int attempt, bool replaying, bool* stalled,
                       bool* client_gone, bool* progressed) {
    auto context = gateway_->UpstreamContext(*ctx_, tenant_, attempt);
    auto stream = v1::Streams::NewStub(channel)->Append(context.get());
    uint64_t seq;
    {
      absl::MutexLock lock(&mu_);
      upstream_ = context.get();
      attempt_over_ = false;
      stalled_ = false;
      attempt_sent_ = attempt_acked_ = attempt_delivered_ = 0;
      attempt_acks_any_ = false;
      in_flight_units_.clear();
      last_progress_ = absl::Now();
      // Replay everything not known to be committed (and acked).
      seq = log_.empty() ? next_seq_ : log_.front().seq;
      attempt_first_seq_ = seq;
      if (attempt > 1 && replaying) {
        gateway_->metrics().AddReplayedRequests(
            static_cast<int64_t>(next_seq_ - seq));
      }
    }
    std::thread sender;
    try {
      sender = std::thread([this, s = stream.get(), seq] { Send(s, seq); });
    } catch (const std::system_error&) {  // out of threads: refuse the call
      context->TryCancel();
      stream->Finish().IgnoreError();
      absl::MutexLock lock(&mu_);
      upstream_ = nullptr;
      return Gateway::Refused();
    }
    v1::AppendResponse ack;
    while (stream->Read(&ack)) {
      bool deliver;
      absl::Time received;
      {
        absl::MutexLock lock(&mu_);
        ++attempt_acked_;
        last_progress_ = absl::Now();
        if (!in_flight_units_.empty()) {
          in_flight_units_.pop_front();
        }
        deliver = seq >= acked_;  // else a replayed request's second ack
        if (deliver) {
          acked_ = seq + 1;
          ++attempt_delivered_;
        }
        if (!log_.empty() && seq >= log_.front().seq &&
            seq - log_.front().seq < log_.size()) {
          Entry& e = log_[seq - log_.front().seq];
          if (deliver) received = e.received;
          e.acked_version = std::max(e.acked_version, ack.version());
          // A new request applied (not a duplicate) below where this
          // worker's previous ack left the session: its input moved back in
          // between (a rollback, an import of a new version), which
          // discarded every request before this one, committed or not.
          // None is replayed. (Only within an attempt: a new owner resumes
          // below what the last one reported, and its acks of replayed
          // requests, delivered or not, set where it stands.)
          if (deliver && !ack.duplicate() && attempt_acks_any_ &&
              e.request.expected_input_offset() < attempt_input_offset_) {
            while (log_.front().seq < seq) {
              DropOldest();
            }
          }
        }
        attempt_input_offset_ = ack.input_offset();
        attempt_acks_any_ = true;
        // What the newest version covers. Not the largest offset ever
        // reported: a rollback (or an import of a new version) commits a
        // newer version at an earlier offset, and the input the stream
        // sends from there is uncommitted until a later commit covers it.
        // A lower version than before: the store went back (it restarted
        // without its latest versions) and the owner's versions after its
        // head are numbered again (docs/state-store.md), or a stale copy
        // answered. Neither is trusted to have committed more than before
        // until a newer version follows (a stale copy never commits one);
        // then the count goes on from there, or the log would never be
        // trimmed again.
        if (ack.version() > committed_version_) {
          committed_version_ = ack.version();
          committed_ = ack.committed_input_offset();
          committed_unconfirmed_ = false;
        } else if (ack.version() < committed_version_) {
          committed_version_ = ack.version();
          committed_ = std::min(committed_, ack.committed_input_offset());
          committed_unconfirmed_ = true;
        } else if (!committed_unconfirmed_) {
          committed_ = std::max(committed_, ack.committed_input_offset());
        }
        // Entries this attempt has not re-sent yet stay, even when covered
        // by what the new owner reports committed: the sender replays the
        // log in order, one ack per request.
        while (!log_.empty() && log_.front().seq < acked_ &&
               log_.front().seq < attempt_first_seq_ + attempt_sent_ &&
               Committed(log_.front())) {
          DropOldest();
        }
        ++seq;
      }
      if (deliver) {
        // A client slow to read its acks holds this thread here: that time
        // is not the worker's silence (CheckStall).
        {
          absl::MutexLock lock(&mu_);
          writing_client_ = true;
        }
        const bool written = client_->Write(ack);
        absl::MutexLock lock(&mu_);
        writing_client_ = false;
        last_progress_ = absl::Now();
        if (!written) {
          *client_gone = true;
          context->TryCancel();
          break;
        }
      }
      if (deliver && received != absl::Time()) {
        gateway_->metrics().ObserveAppendAck(absl::Now() - received);
      }
    }
    {
      absl::MutexLock lock(&mu_);
      attempt_over_ = true;
    }
    sender.join();
    grpc::Status status = stream->Finish();
    absl::MutexLock lock(&mu_);
    upstream_ = nullptr;
    // Stalled only if the watchdog's cancel ended the call: a worker's own
    // answer that crossed it (a newer writer's SESSION_BUSY, say) stands.
    *stalled = stalled_ && status.error_code() == grpc::StatusCode::CANCELLED;
    // Progress is acks the client had not had: a replay's acks of requests
    // delivered before do not count, or a request that stalls every owner
    // would be retried forever.
    *progressed = attempt_delivered_ > 0;
    return status;
  }

  Gateway* const gateway_;
  grpc::CallbackServerContext* const ctx_;
  AppendBidi* const client_;
  const std::string tenant_;
  std::shared_ptr<TenantLimits::StreamSlot> slot_;
  int attempts_ = 0;  // Run's thread only
  const Credentials credentials_;
  uint64_t auth_generation_;  // ReadClient's only (TenantAuth::Recheck)

  absl::Mutex mu_;
  std::string session_id_ ABSL_GUARDED_BY(mu_);
  std::deque<Entry> log_ ABSL_GUARDED_BY(mu_);
  int64_t log_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;  // requests read
  uint64_t acked_ ABSL_GUARDED_BY(mu_) = 0;     // acks sent to the client
  uint64_t committed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t committed_version_ ABSL_GUARDED_BY(mu_) = 0;  // of committed_
  // Set by an ack of a lower version than the one before, until a newer
  // one: committed_ is then not raised.
  bool committed_unconfirmed_ ABSL_GUARDED_BY(mu_) = false;

  // A checkpoint the gateway asked for (log over its bound) is pending
  // until acked_ reaches this.
  uint64_t forced_until_ ABSL_GUARDED_BY(mu_) = 0;
  bool client_done_ ABSL_GUARDED_BY(mu_) = false;
  // Why the client's input ended early: its API key was revoked (or
  // could not be checked).
  absl::Status input_ended_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The attempt in progress.
  grpc::ClientContext* upstream_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool attempt_over_ ABSL_GUARDED_BY(mu_) = false;
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_client_ ABSL_GUARDED_BY(mu_) = false;  // blocked on the client
  uint64_t attempt_first_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t attempt_sent_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t attempt_acked_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t attempt_delivered_ ABSL_GUARDED_BY(mu_) = 0;
  // The input_offset this attempt's latest ack reported (if any).
  uint64_t attempt_input_offset_ ABSL_GUARDED_BY(mu_) = 0;
  bool attempt_acks_any_ ABSL_GUARDED_BY(mu_) = false;
  // Units (tokens or text bytes) of the requests sent and not acked yet.
  std::deque<uint64_t> in_flight_units_ ABSL_GUARDED_BY(mu_);
  absl::Time last_progress_ ABSL_GUARDED_BY(mu_);
};

// Forwards one Generate, skipping output the client already has after a
// failover. Returns the worker's status, or UNAVAILABLE if a re-run
// diverged from what was delivered.
grpc::Status ForwardGenerate(Gateway* gateway, grpc::CallbackServerContext& ctx,
                             const v1::GenerateRequest& request,
                             BlockingWriter<v1::GenerateResponse>* client) {
  std::vector<uint32_t> tokens;  // delivered
  std::string text;              // delivered
  bool done = false;             // `done` delivered: nothing to resend
  int attempts = 0;
  int64_t skipped = 0;
  // What the attempts send: once the first chunk says which input_offset a
  // side-branch generation started from, a request that pinned none is
  // pinned there, so a re-run on a session that moved on (whose output may
  // still repeat what was delivered) is refused instead of joined. Not a
  // committing one: the request digest that finds its generation record
  // (checkpointed or finished) covers expected_input_offset, so it is
  // re-sent unchanged.
  v1::GenerateRequest attempt_request = request;
  bool pinned_here = false;
  // The input_offset the delivered output was sampled from: a re-run
  // sampled from another (a committing one, after input the lost worker
  // had applied but not committed) is another generation.
  std::optional<uint64_t> started_at;
  grpc::Status status = ForwardWithFailover(
      gateway, ctx, Target{"Generate", request.session_id(), "", ""},
      [&](const std::shared_ptr<grpc::Channel>& channel,
          grpc::ClientContext* upstream) {
        auto reader =
            v1::Streams::NewStub(channel)->Generate(upstream, attempt_request);
        size_t regen_tokens = 0;
        std::string regen_text;
        std::optional<size_t> diverged;
        v1::GenerateResponse msg;
        while (reader->Read(&msg)) {
          v1::GenerateResponse out;
          if (msg.has_chunk()) {
            const v1::GenerateChunk& in = msg.chunk();
            v1::GenerateChunk* chunk = out.mutable_chunk();
            chunk->set_index(static_cast<uint32_t>(tokens.size()));
            if (in.has_start_input_offset() && started_at &&
                *started_at != in.start_input_offset() &&
                (!tokens.empty() || !text.empty())) {
              diverged = 0;
              upstream->TryCancel();
              break;
            }
            if (in.has_start_input_offset() && tokens.empty() && text.empty()) {
              started_at = in.start_input_offset();
              if (!request.commit() &&
                  !attempt_request.has_expected_input_offset()) {
                attempt_request.set_expected_input_offset(
                    in.start_input_offset());
                pinned_here = true;
              }
              chunk->set_start_input_offset(in.start_input_offset());
            }
            for (int i = 0; i < in.tokens_size() && !diverged; ++i) {
              const size_t k = regen_tokens + i;
              if (k < tokens.size()) {
                if (tokens[k] != in.tokens(i)) diverged = k;
                ++skipped;
                continue;
              }
              chunk->add_tokens(in.tokens(i));
              if (i < in.logprobs_size()) {
                *chunk->add_logprobs() = in.logprobs(i);
              }
            }
            regen_tokens += in.tokens_size();
            const size_t before = regen_text.size();
            regen_text += in.text_utf8();
            const size_t overlap = std::min(regen_text.size(), text.size());
            if (!diverged && before < overlap &&
                regen_text.compare(before, overlap - before, text, before,
                                   overlap - before) != 0) {
              diverged = tokens.size();
            }
            if (diverged) {
              upstream->TryCancel();
              break;
            }
            if (regen_text.size() > text.size()) {
              chunk->set_text_utf8(
                  regen_text.substr(std::max(before, text.size())));
            }
            if (chunk->tokens_size() == 0 && chunk->text_utf8().empty()) {
              continue;  // all of it was delivered before
            }
            tokens.insert(tokens.end(), chunk->tokens().begin(),
                          chunk->tokens().end());
            text += chunk->text_utf8();
          } else {
            // A re-run that ends before the output already delivered is
            // not the same generation either (it stopped sooner).
            if (msg.has_done() && (regen_tokens < tokens.size() ||
                                   regen_text.size() < text.size())) {
              diverged = regen_tokens;
              upstream->TryCancel();
              break;
            }
            out = msg;
          }
          if (!client->Write(out)) {
            upstream->TryCancel();
            break;
          }
          if (out.has_done()) done = true;
        }
        grpc::Status status = reader->Finish();
        // Once `done` was delivered the generation is over: a connection
        // lost before the trailers is no reason to run it again (the
        // client would get a second `done`).
        if (done && Gateway::ShouldFailover(status)) return grpc::Status::OK;
        // The session moved on since the generation started: a re-run
        // would be another generation.
        if (!diverged && pinned_here &&
            GetReason(FromGrpcStatus(status)) == Reason::kPositionMismatch) {
          diverged = tokens.size();
        }
        if (diverged) {
          gateway->metrics().IncDiverged();
          return ToGrpcStatus(MakeError(
              absl::StatusCode::kUnavailable, Reason::kUnspecified,
              "the generation could not be resumed identically after a "
              "worker failure (the session's applied state changed); the "
              "output so far was not committed: retry the request",
              {{"diverged_at", absl::StrCat(*diverged)},
               {"delivered_tokens", absl::StrCat(tokens.size())}}));
        }
        return status;
      },
      &attempts, &done);
  gateway->metrics().AddSkippedTokens(skipped);
  ctx.AddTrailingMetadata(kAttemptsTrailer, absl::StrCat(attempts));
  return status;
}

class StreamsService final : public v1::Streams::CallbackService {
 public:
  explicit StreamsService(Gateway* gateway) : gateway_(gateway) {}

  grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>* Append(
      grpc::CallbackServerContext* ctx) override {
    auto* client = new AppendBidi();
    const uint64_t auth_generation = gateway_->options().auth.generation();
    auto tenant = gateway_->Tenant(*ctx);
    if (!tenant.ok()) {
      const grpc::Status status = ToGrpcStatus(tenant.status());
      gateway_->EndCall("Append", status, gateway_->BeginCall());
      client->Finish(status);
      client->Release();
      return client;
    }
    // The slot is taken on the call's own thread: it may wait on Redis.
    if (!gateway_->Spawn([this, ctx, client, tenant = *std::move(tenant),
                          auth_generation]() mutable {
          auto slot = HoldStreamSlot(gateway_, tenant);
          if (slot.ok()) {
            AppendCall(gateway_, ctx, client, tenant, *std::move(slot),
                       CredentialsOf(*ctx), auth_generation)
                .Run();
          } else {
            const grpc::Status status = ToGrpcStatus(slot.status());
            gateway_->EndCall("Append", status, gateway_->BeginCall());
            client->FinishCall(status);
          }
          client->Release();
        })) {
      gateway_->EndCall("Append", Gateway::Refused(), gateway_->BeginCall());
      client->FinishCall(Gateway::Refused());
      client->Release();
    }
    return client;
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx,
      const v1::GenerateRequest* req) override {
    auto* client = new BlockingWriter<v1::GenerateResponse>();
    const absl::Time began = gateway_->BeginCall();
    // The slot is taken on the call's own thread: it may wait on Redis.
    if (!gateway_->Spawn([this, ctx, req, client, began]() mutable {
          auto slot = HoldStreamSlot(gateway_, *ctx);
          grpc::Status status =
              slot.ok() ? ForwardGenerate(gateway_, *ctx, *req, client)
                        : ToGrpcStatus(slot.status());
          gateway_->EndCall("Generate", status, began);
          if (slot.ok()) slot->reset();  // the client may open its next one
          client->Finish(status);
          client->Release();
        })) {
      gateway_->EndCall("Generate", Gateway::Refused(), began);
      client->Finish(Gateway::Refused());
      client->Release();
    }
    return client;
  }

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx,
                                  const v1::ScoreRequest* req,
                                  v1::ScoreResponse* resp) override {
    return ForwardUnary(
        gateway_, ctx, req, resp, Target{"Score", req->session_id(), "", ""},
        [](const std::shared_ptr<grpc::Channel>& channel,
           grpc::ClientContext* client, const v1::ScoreRequest& request,
           v1::ScoreResponse* response) {
          return v1::Streams::NewStub(channel)->Score(client, request,
                                                      response);
        });
  }

 private:
  Gateway* const gateway_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewStreamsService(Gateway* gateway) {
  return std::make_unique<StreamsService>(gateway);
}

}  // namespace statestream::gateway
