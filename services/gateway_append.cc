// SPDX-License-Identifier: Apache-2.0
// The gateway's Append: replay-based failover, forwarded by reactors (no
// thread per call; see gateway.h for the contract).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "common/random.h"
#include "common/status.h"
#include "services/caller_metadata.h"
#include "services/gateway_internal.h"
#include "services/gateway_reactor_call.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {
namespace {

// One client Append call, forwarded without a thread of its own. The
// client's stream and each attempt's stream to a worker are callback
// reactors that move requests and acks as they complete; only the steps
// that may block — taking and releasing the tenant's stream slot (Redis),
// routing (a lease read) — run on a task thread (Gateway::Detach; the
// setup, routing and failover steps one after another). A failover's wait
// for the client's cancel and its backoff are gRPC alarms
// (ReactorCall::RunAfterAttempt, RunTaskAfter). An idle or failing-over
// stream holds no thread.
//
// Operations are started under mu_: gRPC never runs a reaction inside the
// call that starts an operation or cancels (every tag of these streams is
// can_inline=false, and OnDone is scheduled, not run inline), so this
// cannot deadlock, and it orders them: one read and one write at a time
// per stream, no client read or write after Finish.
//
// Lifetime: ReactorCall's references.
class AppendCall final
    : public grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>,
      public Watched,
      private ReactorCall {
 public:
  AppendCall(Gateway* gateway, grpc::CallbackServerContext* ctx)
      : ReactorCall(gateway), ctx_(ctx) {}

  // From the rpc handler, before the reactor is returned.
  void Start() {
    began_ = gateway_->BeginCall();
    {
      absl::MutexLock lock(&mu_);
      auth_generation_ = gateway_->options().auth.generation();
    }
    credentials_ = CredentialsOf(*ctx_);
    // The slot is taken on a task thread: it may wait on Redis.
    const grpc::Status refused =
        AuthenticateAndAdmit(*ctx_, &tenant_, [this] { Setup(); });
    if (!refused.ok()) {
      gateway_->EndCall("Append", refused, began_);
      Finish(refused);
    }
  }

  // What the log still holds goes back to the gateway's buffers.
  ~AppendCall() override {
    absl::MutexLock lock(&mu_);
    gateway_->buffers().Give(log_bytes_);
  }

  // Every 100 ms while the call is open. A worker that acknowledges
  // nothing for the stall timeout plus an allowance per input unit of the
  // oldest request in flight (a request is acked once it has all gone
  // through the model: a 1 MiB one can take minutes; each ack restarts the
  // clock) is treated as failed; a paused or partitioned worker is found
  // sooner by its connection's unanswered pings (Gateway::Channel). And a
  // stream whose API key was revoked ends even while its client sends
  // nothing (one atomic read while the keys do not change). A client that
  // leaves an ack unread for client_stall_timeout is cut off: its log
  // (up to two append_buffer_bytes) cannot be trimmed meanwhile. A stream
  // idle for append_idle_probe with requests not known committed asks its
  // worker what is (Probe).
  void Check(absl::Time now) override;
  // Task, after the keys changed: ends the input if the call's key was
  // revoked (a hash lookup, not under the watchdog's lock).
  void RecheckKey();
  // For a stream idle with its log not known committed
  // (GatewayOptions::append_idle_probe), from Check: a GetSession to the
  // attempt's worker, on gRPC's callback API (no thread waits on it).
  struct Probe {
    std::unique_ptr<v1::Sessions::Stub> stub;
    std::unique_ptr<grpc::ClientContext> context;
    v1::GetSessionRequest request;
    v1::Session session;
    int attempt = 0;
    uint64_t acks = 0;  // the attempt's acks when it was sent
  };
  // Its answer: trims the log to what the session has committed, or says
  // that asking again will not help until the stream moves.
  void ProbeDone(Probe* probe, const grpc::Status& status);

  // gRPC: the client's stream.
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override { CancelWaits(); }
  void OnDone() override { Unref(); }

 private:
  class Upstream;

  struct Entry {
    v1::AppendRequest request;
    uint64_t seq = 0;    // index among the client's requests
    uint64_t end = 0;    // expected_input_offset + units
    uint64_t units = 0;  // tokens or text bytes
    // The head version its latest ack reported, and the attempt that ack
    // came in (versions compare within one owner's history only).
    uint64_t acked_version = 0;
    int acked_attempt = 0;
    // Acknowledged having changed nothing a failover would have to redo: no
    // payload and no token consumed (a no-op, a checkpoint, whose commit
    // preceded its ack, or a flush of an empty tail).
    bool inert = false;
    int64_t bytes = 0;
    absl::Time received;  // read from the client
  };

  // Task: the tenant's stream slot, then the client's requests.
  void Setup();
  // Task: picks the next worker and starts an attempt.
  void Route();
  // Task: what an attempt that failed over leads to.
  void AfterAttempt(grpc::Status status, bool stalled, bool progressed,
                    bool client_gone);
  // Task: the client's input ends with `why` (its key was revoked).
  void EndInput(absl::Status why);
  // Finishes the call (once): frees its slot first, so the client may open
  // its next stream at once. May block; never under mu_.
  void End(grpc::Status status) override;
  bool HoldsSlot() override {
    absl::MutexLock lock(&mu_);
    return slot_ != nullptr;
  }

  // Reactions of the attempt in progress.
  void UpstreamWriteDone(bool ok);
  void UpstreamReadDone(bool ok);
  void UpstreamDone(Upstream* upstream, const grpc::Status& status);

  // Room in this call's log, and in the gateway's buffers or for one more
  // request: one read past the gateway's bound goes with checkpoint=true
  // (OnReadDone), and the call reads on once that is acked, its commit
  // having emptied the log. So every call moves, a commit per request,
  // whatever its worker's commit policy, and the buffers exceed the bound
  // by at most two requests a call. What lets a waiting call read again is
  // its own ack, or the gateway's buffers below their bound at the
  // watchdog's next look (Check).
  bool Room() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return log_bytes_ <= 2 * gateway_->options().append_buffer_bytes &&
           (log_bytes_ == 0 || acked_ >= forced_until_ ||
            !gateway_->buffers().over());
  }
  // Starts reading the client's next request if there is room.
  void MaybeReadClient() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the attempt's next log entry, or half-closes once the client has
  // and everything was sent.
  void MaybeWriteUpstream() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The attempt will write no more.
  void DropWriteHold() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The attempt will read no more.
  void DropReadHold() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The client's input is over (client_done_ just set). True when the call
  // ends here: nothing was read, so nothing is to be sent.
  bool InputOver() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Whether acknowledged `e` is known committed. A request with a payload
  // is once the commit covers its end. A bare flush ends where it starts,
  // and a commit at that offset may predate it: it is only once the offset
  // moved past it (a commit past it includes it), or a version newer than
  // that of its ack in this attempt covers it (the SDKs' rule for their
  // own resends, which drop only what their current call acked): a new
  // owner replaying from an older commit may commit a newer version at the
  // flush's offset before it has applied the flush again.
  // An inert one needs no commit: no commit would ever cover it, and a
  // stream of them (no-ops asking for the current ack) filled the log past
  // its bound, where the call stopped reading the client for good.
  bool Committed(const Entry& e) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (e.inert) return true;
    if (e.units > 0) return e.end <= committed_;
    return e.end < committed_ ||
           (e.end == committed_ && e.acked_attempt == attempts_ &&
            committed_version_ > e.acked_version);
  }

  // Drops the log's entries from the oldest on that the client has the
  // acks of and that are known committed. Entries this attempt has not
  // re-sent yet stay, even when covered by what a new owner reports
  // committed: the attempt replays the log in order, one ack per request.
  void TrimCommitted() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (!log_.empty() && log_.front().seq < acked_ &&
           log_.front().seq < attempt_first_seq_ + attempt_sent_ &&
           Committed(log_.front())) {
      DropOldest();
    }
  }

  // The stream moved (an ack, a new attempt): the next probe after
  // append_idle_probe, whatever the last ones found.
  void ProbeAfresh() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    probe_wait_ = gateway_->options().append_idle_probe;
    probe_parked_ = false;
  }

  // The oldest log entry, committed (or discarded by a rollback).
  void DropOldest() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    log_bytes_ -= log_.front().bytes;
    gateway_->buffers().Give(log_.front().bytes);
    log_.pop_front();
  }

  // Valid until Finish (gRPC keeps it until OnDone, which follows Finish).
  grpc::CallbackServerContext* const ctx_;
  absl::Time began_;  // Start's

  int failures_ = 0;  // consecutive attempts without progress (tasks')

  // Set by Start before any task or read, read-only after.
  std::string tenant_;
  // The call's credentials: each request is sent under the key the call
  // was opened with (not read from ctx_: its metadata may be gone).
  Credentials credentials_;

  absl::Mutex mu_;
  uint64_t auth_generation_ ABSL_GUARDED_BY(mu_) = 0;  // Recheck's
  std::shared_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  bool watched_ ABSL_GUARDED_BY(mu_) = false;      // Gateway::Watch'ed
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;          // workers tried
  grpc::Status last_status_ ABSL_GUARDED_BY(mu_);  // the last attempt's

  // The client's side.
  v1::AppendRequest read_ ABSL_GUARDED_BY(mu_);  // the read in flight's
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  // A read failed on a message gRPC could not parse.
  bool unparsable_ ABSL_GUARDED_BY(mu_) = false;
  v1::AppendResponse write_ ABSL_GUARDED_BY(mu_);   // the write in flight's
  absl::Time write_received_ ABSL_GUARDED_BY(mu_);  // its request's
  bool writing_client_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time write_started_ ABSL_GUARDED_BY(mu_);     // the write in flight's
  bool client_stalled_ ABSL_GUARDED_BY(mu_) = false;  // cut off (Check)
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;     // a write to it failed
  bool client_done_ ABSL_GUARDED_BY(mu_) = false;     // no more requests
  // Why the client's input ended early: its API key was revoked (or
  // could not be checked).
  absl::Status input_ended_ ABSL_GUARDED_BY(mu_);
  bool revoking_ ABSL_GUARDED_BY(mu_) = false;  // RecheckKey scheduled
  bool ending_ ABSL_GUARDED_BY(mu_) = false;    // End decided
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish called

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

  // The attempt in progress (null between attempts).
  Upstream* upstream_ ABSL_GUARDED_BY(mu_) = nullptr;
  Placed placed_ ABSL_GUARDED_BY(mu_);
  bool write_hold_ ABSL_GUARDED_BY(mu_) = false;  // the attempt may write
  bool read_hold_ ABSL_GUARDED_BY(mu_) = false;   // ... and read
  bool upstream_writing_ ABSL_GUARDED_BY(mu_) = false;
  bool attempt_over_ ABSL_GUARDED_BY(mu_) = false;  // its acks ended
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t send_seq_ ABSL_GUARDED_BY(mu_) = 0;  // the next entry to send
  uint64_t ack_seq_ ABSL_GUARDED_BY(mu_) = 0;   // what the next ack answers
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
  // The probe in flight (one at a time); when the last one ended; how long
  // the stream must be idle before the next (append_idle_probe, doubled
  // by each that trimmed nothing); and whether none would help until the
  // stream moves (an ack or a new attempt resets both: ProbeAfresh, which
  // a stream runs before its first probe can be due).
  std::unique_ptr<Probe> probe_ ABSL_GUARDED_BY(mu_);
  absl::Time last_probe_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Duration probe_wait_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  bool probe_parked_ ABSL_GUARDED_BY(mu_) = false;
};

// One attempt: the Append stream to one worker.
class AppendCall::Upstream final
    : public grpc::ClientBidiReactor<v1::AppendRequest, v1::AppendResponse> {
 public:
  Upstream(AppendCall* call, std::shared_ptr<grpc::Channel> channel,
           std::unique_ptr<grpc::ClientContext> context)
      : call_(call),
        stub_(v1::Streams::NewStub(channel)),
        context_(std::move(context)) {}

  // Binds the stream (no operation starts before StartCall).
  void Bind() { stub_->async()->Append(context_.get(), this); }
  grpc::ClientContext* context() { return context_.get(); }

  v1::AppendRequest request;  // the write in flight's
  v1::AppendResponse ack;     // the read in flight's

  void OnWriteDone(bool ok) override { call_->UpstreamWriteDone(ok); }
  void OnReadDone(bool ok) override { call_->UpstreamReadDone(ok); }
  void OnDone(const grpc::Status& status) override {
    call_->UpstreamDone(this, status);
  }

 private:
  AppendCall* const call_;
  const std::unique_ptr<v1::Streams::Stub> stub_;
  const std::unique_ptr<grpc::ClientContext> context_;
};

void AppendCall::Check(absl::Time now) {
  absl::ReleasableMutexLock lock(&mu_);
  // Not before Setup has said so (End unwatches only a call that says it
  // is watched), nor once End has.
  if (!watched_) return;
  const GatewayOptions& o = gateway_->options();
  const uint64_t oldest =
      in_flight_units_.empty() ? 0 : in_flight_units_.front();
  if (upstream_ != nullptr && !stalled_ && !writing_client_ &&
      attempt_sent_ > attempt_acked_ &&
      now - last_progress_ >
          o.upstream_stall_timeout +
              o.upstream_stall_per_unit * static_cast<double>(oldest)) {
    stalled_ = true;
    upstream_->context()->TryCancel();
  }
  if (writing_client_ && !client_stalled_ &&
      now - write_started_ > o.client_stall_timeout) {
    // The write's end (not ok) ends the call as a client gone would.
    client_stalled_ = true;
    gateway_->metrics().CountClientStall("Append");
    ctx_->TryCancel();
  }
  if (!client_done_ && !ending_ && !revoking_ &&
      o.auth.generation() != auth_generation_) {
    // The recheck (a hash lookup) and the end (it may block on the
    // slot) run on a task. If it cannot run, the next check tries again.
    revoking_ = RunTask([this] { RecheckKey(); });
  }
  // Idle, every request sent acked and delivered, and the log not known
  // committed: the worker commits idle input on its own, but says so only
  // in the ack of a next request, which may never come.
  Probe* start = nullptr;
  if (upstream_ != nullptr && probe_ == nullptr && !probe_parked_ &&
      !stalled_ && !ending_ && !writing_client_ && !log_.empty() &&
      send_seq_ == next_seq_ && attempt_acked_ == attempt_sent_ &&
      acked_ == next_seq_ &&
      now - std::max(last_progress_, last_probe_) > probe_wait_) {
    probe_ = std::make_unique<Probe>();
    Probe* probe = probe_.get();
    probe->attempt = attempts_;
    probe->acks = attempt_acked_;
    probe->stub = v1::Sessions::NewStub(placed_.channel);
    probe->context = gateway_->UpstreamContext(tenant_, attempts_);
    probe->context->set_deadline(
        std::chrono::system_clock::now() +
        absl::ToChronoMilliseconds(o.upstream_stall_timeout));
    probe->request.set_session_id(session_id_);
    Ref();  // the probe's, dropped in ProbeDone
    start = probe;
  }
  // A call waiting for room reads on once the gateway's buffers are below
  // their bound again, even if its own acks do not come.
  MaybeReadClient();
  lock.Release();
  // Started outside mu_: a request gRPC cannot send is answered inline.
  // (The probe stays until ProbeDone; a cancel before the start holds.)
  if (start != nullptr) {
    start->stub->async()->GetSession(
        start->context.get(), &start->request, &start->session,
        [this, start](grpc::Status status) { ProbeDone(start, status); });
  }
}

void AppendCall::ProbeDone(Probe* probe, const grpc::Status& status) {
  std::unique_ptr<Probe> done;
  {
    absl::MutexLock lock(&mu_);
    done = std::move(probe_);
    last_probe_ = SteadyNow();
    const int64_t before = log_bytes_;
    const v1::Session& session = probe->session;
    // Only an answer about the history this attempt's acks describe: the
    // same attempt, and the input offset its last ack reported (a worker
    // whose copy was fenced answers from the store, another owner's
    // history; a rollback or import moved the input). Versions compare
    // within one owner's history only (UpstreamReadDone); and an ack
    // that came meanwhile is newer than the answer.
    const bool current = probe->attempt == attempts_ &&
                         probe->acks == attempt_acked_ && upstream_ != nullptr;
    if (status.ok() && current &&
        session.input_offset() == attempt_input_offset_) {
      if (session.version() > committed_version_) {
        committed_version_ = session.version();
        committed_ = std::max(committed_, session.committed_input_offset());
        committed_unconfirmed_ = false;
      } else if (session.version() == committed_version_ &&
                 !committed_unconfirmed_) {
        committed_ = std::max(committed_, session.committed_input_offset());
      }
      TrimCommitted();
      MaybeReadClient();
    }
    if (!current) {
      // Cancelled by the attempt's end (the next asks anew), or the
      // stream moved meanwhile.
    } else if (status.ok() &&
               (session.input_offset() != attempt_input_offset_ ||
                session.committed_input_offset() == session.input_offset())) {
      // Nothing the worker holds uncommitted (its own commits will not
      // cover the rest), or another history: asking again will not help
      // until the stream moves.
      probe_parked_ = !log_.empty();
    } else if (status.error_code() == grpc::StatusCode::NOT_FOUND ||
               status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
               status.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
               status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      probe_parked_ = true;  // deleted, or a refusal that will stand
    } else if (log_bytes_ == before) {
      // A worker slow to commit, not answering, or refusing for now: less
      // and less often (never more often than the flag says).
      probe_wait_ = std::max(gateway_->options().append_idle_probe,
                             std::min(2 * probe_wait_, absl::Minutes(10)));
    }
  }
  done.reset();  // the call's context, before the reference goes
  Unref();
}

void AppendCall::RecheckKey() {
  absl::Status valid;
  {
    absl::MutexLock lock(&mu_);
    valid = gateway_->options().auth.Recheck(credentials_, tenant_,
                                             &auth_generation_);
    if (valid.ok()) {
      revoking_ = false;
      return;
    }
  }
  EndInput(std::move(valid));
}

void AppendCall::Setup() {
  if (grpc::Status gone = Gateway::GoneBeforeStart(*ctx_); !gone.ok()) {
    End(gone);
    return;
  }
  auto slot = HoldStreamSlot(gateway_, tenant_);
  if (!slot.ok()) {
    End(ToGrpcStatus(slot.status()));
    return;
  }
  gateway_->Watch(this);
  absl::MutexLock lock(&mu_);
  slot_ = *std::move(slot);
  watched_ = true;
  MaybeReadClient();
}

void AppendCall::MaybeReadClient() {
  if (reading_ || client_done_ || ending_ || !Room()) return;
  reading_ = true;
  MarkUnread(&read_);
  StartRead(&read_);
}

void AppendCall::OnReadDone(bool ok) {
  std::optional<grpc::Status> end;
  {
    absl::MutexLock lock(&mu_);
    reading_ = false;
    if (client_done_ || ending_) return;  // (the call is ending anyway)
    absl::Status valid;
    if (ok) {
      valid = gateway_->options().auth.Recheck(credentials_, tenant_,
                                               &auth_generation_);
    }
    if (ok && valid.ok() && next_seq_ > 0 && !read_.session_id().empty() &&
        read_.session_id() != session_id_) {
      // One stream, one session (its first request's), as a worker holds
      // it: after a failover a request naming another would be the new
      // attempt's first, and bind it to that session (taking its lease).
      valid = MakeError(absl::StatusCode::kInvalidArgument,
                        Reason::kInvalidArgument,
                        "session_id differs from the stream's first request's",
                        {{"field", "session_id"}});
    }
    if (!ok || !valid.ok()) {
      // A message that did not parse, one sent after the call's API key
      // was revoked, or one naming another session, ends the client's
      // input: what came before it goes
      // through (and is committed, as at a half-close), but the call is no
      // success (End). That message is not applied.
      if (!ok && ReadUnparsable(read_)) unparsable_ = true;
      if (!valid.ok()) input_ended_ = std::move(valid);
      client_done_ = true;
      if (InputOver()) end = grpc::Status::OK;
    } else {
      const int64_t limit = gateway_->options().append_buffer_bytes;
      ByteBudget& buffers = gateway_->buffers();
      Entry e;
      e.received = SteadyNow();
      // What the entry holds in memory, not its size on the wire: a token
      // id below 128 is one byte there and four here, and an empty request
      // serialises to 0 bytes (a flood of them must still fill the bound).
      e.bytes = static_cast<int64_t>(read_.SpaceUsedLong() + sizeof(Entry) -
                                     sizeof(read_));
      const uint64_t units = read_.has_tokens() ? read_.tokens().ids_size()
                                                : read_.text_utf8().size();
      e.end = read_.expected_input_offset() + units;
      e.units = units;
      e.request = std::move(read_);
      read_.Clear();
      // The call's session is the first request's: one that names none is
      // refused, whatever a later request names.
      const bool first = next_seq_ == 0;
      if (first) session_id_ = e.request.session_id();
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
      if (first && session_id_.empty()) {
        ending_ = true;
        end = ToGrpcStatus(MakeError(
            absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
            "session_id is required in the first request",
            {{"field", "session_id"}}));
      } else if (first) {
        if (!RunTask([this] { Route(); })) {
          ending_ = true;
          end = Gateway::Refused();
        }
      } else {
        MaybeWriteUpstream();
      }
      MaybeReadClient();
    }
    if (end) ending_ = true;
  }
  if (end) Conclude(*end);
}

bool AppendCall::InputOver() {
  if (next_seq_ == 0) return true;  // nothing to send: no attempt started
  MaybeWriteUpstream();  // between attempts, the next one half-closes
  return false;
}

void AppendCall::EndInput(absl::Status why) {
  {
    absl::MutexLock lock(&mu_);
    revoking_ = false;
    if (client_done_ || ending_) return;
    input_ended_ = std::move(why);
    client_done_ = true;
    if (!InputOver()) return;
    ending_ = true;
  }
  End(grpc::Status::OK);
}

void AppendCall::Route() {
  std::string session_id;
  int attempt;
  grpc::Status last;
  {
    absl::MutexLock lock(&mu_);
    session_id = session_id_;
    attempt = attempts_ + 1;
    last = last_status_;
  }
  // The client may have cancelled during the backoff (which then ended).
  if (attempt > 1 && Gateway::ClientGone(*ctx_)) {
    End(Gateway::FromWorker(last));
    return;
  }
  // max_attempts bounds consecutive attempts without progress: a long
  // stream may lose many workers over its life. A failover from a worker
  // that could not be reached costs nothing (up to kMaxUnreachableSkips
  // per call): nothing was sent to it.
  auto placed =
      Place(*ctx_, tenant_, Target{"Append", session_id, "", ""}, attempt);
  if (!placed.ok()) {
    End(attempt == 1 ? ToGrpcStatus(placed.status()) : Gateway::GaveUp(last));
    return;
  }
  auto* upstream =
      new Upstream(this, placed->channel,
                   gateway_->UpstreamContext(*ctx_, tenant_, attempt));
  Ref();  // the attempt's, dropped in UpstreamDone
  absl::MutexLock lock(&mu_);
  attempts_ = attempt;
  upstream_ = upstream;
  const bool refused = placed->refused;
  placed_ = *std::move(placed);
  attempt_over_ = false;
  stalled_ = false;
  upstream_writing_ = false;
  attempt_sent_ = attempt_acked_ = attempt_delivered_ = 0;
  attempt_acks_any_ = false;
  in_flight_units_.clear();
  last_progress_ = SteadyNow();
  ProbeAfresh();
  // Replay everything not known to be committed (and acked); not counted
  // for a worker the gateway could not connect to: it goes nowhere.
  send_seq_ = ack_seq_ = attempt_first_seq_ =
      log_.empty() ? next_seq_ : log_.front().seq;
  if (attempt > 1 && !refused) {
    gateway_->metrics().AddReplayedRequests(
        static_cast<int64_t>(next_seq_ - send_seq_));
  }
  upstream->Bind();
  // Operations start outside the attempt's reactions: writes as requests
  // arrive (held until DropWriteHold), reads once the client has the last
  // ack (held until the acks end: DropReadHold).
  upstream->AddMultipleHolds(2);
  write_hold_ = read_hold_ = true;
  upstream->StartRead(&upstream->ack);
  upstream->StartCall();
  MaybeWriteUpstream();
}

void AppendCall::MaybeWriteUpstream() {
  if (upstream_ == nullptr || !write_hold_ || upstream_writing_) return;
  if (attempt_over_) {
    DropWriteHold();
    return;
  }
  if (send_seq_ < next_seq_) {
    if (log_.empty() || send_seq_ < log_.front().seq) {  // cannot happen
      upstream_->context()->TryCancel();
      DropWriteHold();
      return;
    }
    const Entry& e = log_[send_seq_ - log_.front().seq];
    upstream_->request = e.request;
    if (upstream_->request.session_id().empty()) {
      upstream_->request.set_session_id(session_id_);
    }
    if (attempt_sent_ == attempt_acked_) last_progress_ = SteadyNow();
    ++attempt_sent_;
    ++send_seq_;
    in_flight_units_.push_back(e.units);
    upstream_writing_ = true;
    upstream_->StartWrite(&upstream_->request);
  } else if (client_done_) {
    upstream_->StartWritesDone();
    DropWriteHold();
  }
}

void AppendCall::DropWriteHold() {
  if (!write_hold_) return;
  write_hold_ = false;
  upstream_->RemoveHold();
}

void AppendCall::DropReadHold() {
  if (!read_hold_) return;
  read_hold_ = false;
  upstream_->RemoveHold();
}

void AppendCall::UpstreamWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  upstream_writing_ = false;
  if (!ok) {
    // The stream broke: its acks end too, and so does the attempt.
    DropWriteHold();
    return;
  }
  MaybeWriteUpstream();
}

void AppendCall::UpstreamReadDone(bool ok) {
  absl::MutexLock lock(&mu_);
  if (!ok) {
    attempt_over_ = true;
    if (!upstream_writing_) DropWriteHold();
    DropReadHold();
    return;
  }
  const v1::AppendResponse& ack = upstream_->ack;
  const uint64_t seq = ack_seq_++;
  ++attempt_acked_;
  last_progress_ = SteadyNow();
  ProbeAfresh();
  if (!in_flight_units_.empty()) in_flight_units_.pop_front();
  const bool deliver = seq >= acked_;  // else a replayed request's second ack
  absl::Time received;
  if (deliver) {
    acked_ = seq + 1;
    ++attempt_delivered_;
  }
  if (!log_.empty() && seq >= log_.front().seq &&
      seq - log_.front().seq < log_.size()) {
    Entry& e = log_[seq - log_.front().seq];
    if (deliver) received = e.received;
    e.acked_version = ack.version();  // one ack per attempt
    e.acked_attempt = attempts_;
    if (e.units == 0 && ack.tokens_consumed() == 0) e.inert = true;
    // A new request applied (not a duplicate) below where this worker's
    // previous ack left the session: its input moved back in between (a
    // rollback, an import of a new version), which discarded every request
    // before this one, committed or not. None is replayed. (Only within an
    // attempt: a new owner resumes below what the last one reported, and
    // its acks of replayed requests, delivered or not, set where it
    // stands.)
    if (deliver && !ack.duplicate() && attempt_acks_any_ &&
        e.request.expected_input_offset() < attempt_input_offset_) {
      while (log_.front().seq < seq) DropOldest();
    }
  }
  attempt_input_offset_ = ack.input_offset();
  attempt_acks_any_ = true;
  // What the newest version covers. Not the largest offset ever reported:
  // a rollback (or an import of a new version) commits a newer version at
  // an earlier offset, and the input the stream sends from there is
  // uncommitted until a later commit covers it. A lower version than
  // before: the store went back (it restarted without its latest versions)
  // and the owner's versions after its head are numbered again
  // (docs/state-store.md), or a stale copy answered. Neither is trusted to
  // have committed more than before until a newer version follows (a stale
  // copy never commits one); then the count goes on from there, or the log
  // would never be trimmed again.
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
  TrimCommitted();
  if (deliver && !client_gone_) {
    // The next ack is read once the client has this one (OnWriteDone): a
    // client slow to read its acks holds the worker's back. That time is
    // not the worker's silence (Check).
    write_ = ack;
    write_received_ = received;
    writing_client_ = true;
    write_started_ = SteadyNow();
    StartWrite(&write_);
  } else {
    upstream_->StartRead(&upstream_->ack);
  }
  MaybeReadClient();
}

void AppendCall::OnWriteDone(bool ok) {
  absl::Time received;
  {
    absl::MutexLock lock(&mu_);
    writing_client_ = false;
    last_progress_ = SteadyNow();
    received = write_received_;
    // upstream_ is there: its read hold is (its acks wait for this write).
    if (ok) {
      upstream_->StartRead(&upstream_->ack);
    } else {
      client_gone_ = true;
      attempt_over_ = true;
      upstream_->context()->TryCancel();
      if (!upstream_writing_) DropWriteHold();
      DropReadHold();
    }
  }
  if (ok && received != absl::Time()) {
    gateway_->metrics().ObserveAppendAck(SteadyNow() - received);
  }
}

void AppendCall::UpstreamDone(Upstream* upstream, const grpc::Status& status) {
  bool stalled, progressed, client_gone;
  {
    absl::MutexLock lock(&mu_);
    upstream_ = nullptr;
    if (probe_ != nullptr) probe_->context->TryCancel();  // about it
    // Stalled only if the watchdog's cancel ended the call: a worker's own
    // answer that crossed it (a newer writer's SESSION_BUSY, say) stands.
    stalled = stalled_ && status.error_code() == grpc::StatusCode::CANCELLED;
    // Progress is acks the client had not had: a replay's acks of requests
    // delivered before do not count, or a request that stalls every owner
    // would be retried forever.
    progressed = attempt_delivered_ > 0;
    client_gone = client_gone_;
    last_status_ = status;
  }
  delete upstream;
  if (status.ok() || client_gone ||
      (!stalled && !Gateway::ShouldFailover(status))) {
    Conclude(Gateway::FromWorker(status));
  } else if (!RunAfterAttempt(
                 *ctx_,
                 // A stall's CANCELLED is the watchdog's own.
                 !stalled && status.error_code() == grpc::StatusCode::CANCELLED,
                 [this, status, stalled, progressed](bool client_gone) {
                   // After a stall only the client's own cancel counts,
                   // not a deadline (the stalled worker is suspect).
                   AfterAttempt(status, stalled, progressed,
                                stalled ? ctx_->IsCancelled() : client_gone);
                 })) {
    Conclude(Gateway::Refused());
  }
  Unref();  // the attempt's
}

void AppendCall::AfterAttempt(grpc::Status status, bool stalled,
                              bool progressed, bool client_gone) {
  if (client_gone) {
    End(Gateway::FromWorker(status));
    return;
  }
  Placed placed;
  {
    absl::MutexLock lock(&mu_);
    placed = std::move(placed_);
  }
  const std::string worker = placed.worker;
  const bool counts =
      Counts(std::move(placed), stalled || Gateway::WorkerFailed(status));
  const int max_failures = gateway_->options().max_attempts;
  if (progressed) {
    failures_ = 1;
  } else if (counts) {
    ++failures_;
  }
  if (failures_ >= max_failures) {
    End(Gateway::GaveUp(status));
    return;
  }
  gateway_->metrics().IncFailover("Append");
  if (progressed) exclude_ = {worker};
  // Jittered: the streams of a worker that died all fail at once, and
  // would otherwise reach its sessions' new owners in lockstep. No thread
  // waits out the backoff.
  RunTaskAfter(
      std::min(absl::Milliseconds(50) * failures_, absl::Milliseconds(500)) *
          std::uniform_real_distribution<double>(0.5, 1.0)(ThreadRng()),
      [this] { Route(); });
}

void AppendCall::End(grpc::Status status) {
  std::shared_ptr<TenantLimits::StreamSlot> slot;
  bool watched;
  int attempts;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = ending_ = true;
    // Its answer no longer matters, and its reference holds the call.
    if (probe_ != nullptr) probe_->context->TryCancel();
    // Input ended early: what came before went through, but the call is
    // no success.
    if (status.ok() && unparsable_) {
      status = ToGrpcStatus(UnparsableRequestError());
    }
    if (status.ok() && !input_ended_.ok()) status = ToGrpcStatus(input_ended_);
    slot = std::move(slot_);
    watched = watched_;
    watched_ = false;
    attempts = attempts_;
  }
  if (watched) gateway_->Unwatch(this);
  gateway_->EndCall("Append", status, began_);
  // (Not for a call that ended before it could send: no slot.)
  if (watched) {
    ctx_->AddTrailingMetadata(kAttemptsTrailer, absl::StrCat(attempts));
  }
  slot.reset();  // the client may open its next stream at once
  Finish(status);
}

}  // namespace

grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>* StartAppend(
    Gateway* gateway, grpc::CallbackServerContext* ctx) {
  auto* call = new AppendCall(gateway, ctx);
  call->Start();
  return call;
}

}  // namespace statestream::gateway
