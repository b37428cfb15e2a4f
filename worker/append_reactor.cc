// SPDX-License-Identifier: Apache-2.0
// Streams.Append on a worker (streams_service.cc has the service).
#include <grpcpp/grpcpp.h>

#include <deque>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/caller_metadata.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/api_convert.h"
#include "worker/executor.h"
#include "worker/model_set.h"
#include "worker/streams_internal.h"
#include "worker/worker_service.h"

namespace statestream::worker::streams_internal {
namespace {

class AppendReactor final
    : public grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse> {
  using ThisReactor = AppendReactor;

 public:
  AppendReactor(ModelSet* models, const CallerPolicy* policy, Executor* pool,
                KeyWatchers* keys, ClientStalls* stalls,
                grpc::CallbackServerContext* ctx)
      : models_(models),
        policy_(policy),
        pool_(pool),
        keys_(keys),
        stall_(stalls->Watch(ctx, "Append")),
        link_(std::make_shared<Link<AppendReactor>>()) {
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = this;
    }
    auth_generation_ = policy->auth.generation();  // before TenantOf
    auto tenant = TenantOf(*ctx, *policy);
    if (!tenant.ok()) {
      Fail(tenant.status());
      return;
    }
    tenant_ = *tenant;
    credentials_ = CredentialsOf(*ctx);
    auto slot = HoldStream(*policy, tenant_);
    if (!slot.ok()) {
      Fail(slot.status());
      return;
    }
    slot_ = *std::move(slot);
    // Told of key changes until OnDone (through link_, which outlives
    // this while a notice runs).
    keys_id_ = keys_->Add([weak = std::weak_ptr<Link<AppendReactor>>(link_)] {
      auto link = weak.lock();
      if (link == nullptr) return;
      absl::MutexLock lock(&link->mu);
      if (link->reactor != nullptr) link->reactor->KeysChanged();
    });
    Locked<ThisReactor> lock(this);
    // A change since auth_generation_ was read is checked here (the
    // watcher may have told the others before this was added).
    if (absl::Status valid =
            policy_->auth.Recheck(credentials_, tenant_, &auth_generation_);
        !valid.ok()) {
      EndInputLocked(valid);
    } else {
      ReadLocked();
    }
  }

  void OnReadDone(bool ok) override {
    absl::Status valid;
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      // Ended meanwhile (its key revoked while it waited): a request read
      // since is not taken.
      if (input_ended_) return;
      // A request sent after the call's API key was revoked (serve
      // --api-keys, reread) ends the input, UNAUTHENTICATED.
      if (ok) {
        valid = policy_->auth.Recheck(credentials_, tenant_, &auth_generation_);
      }
    }
    if (!ok) {
      // Half-close: commit what is uncommitted and end with OK. A message
      // that did not parse ends the input too (as through a gateway): what
      // came before is committed, and the call ends UNIMPLEMENTED.
      return EndInput(ReadUnparsable(req_) ? UnparsableRequestError()
                                           : absl::OkStatus());
    }
    if (!valid.ok()) return EndInput(valid);
    absl::Status st = Handle();
    if (!st.ok()) Fail(st);
  }

  // The API keys changed: a call whose key was revoked ends as a request
  // sent with it would — at once if it waits for its client (its input
  // committed), else once the request in flight is acked.
  void KeysChanged() {
    Locked<ThisReactor> lock(this);
    if (input_ended_ || finish_) return;
    absl::Status valid =
        policy_->auth.Recheck(credentials_, tenant_, &auth_generation_);
    if (valid.ok()) return;
    if (reading_ || (read_paused_ && !op_pending_)) {
      EndInputLocked(valid);
    } else {
      revoked_ = valid;  // ReadLocked ends the input instead of reading
    }
  }

  void OnWriteDone(bool ok) override {
    Locked<ThisReactor> lock(this);
    stall_->Moved();
    writes_.pop_front();
    if (!ok) {
      writes_.clear();  // the client is gone
      ClientGoneLocked();
    }
    // Acks queued before an error still go out, then the error.
    if (!writes_.empty()) {
      stall_->Waiting();
      StartWrite(&writes_.front());
    } else {
      writing_ = false;
      MaybeFinishLocked();
    }
    // The client reads its acks again: so does the call its requests.
    if (read_paused_ && !finish_ && !input_ended_ &&
        writes_.size() < static_cast<size_t>(kMaxUnreadAcks)) {
      read_paused_ = false;
      ReadLocked();
    }
  }

  void OnCancel() override {
    Locked<ThisReactor> lock(this);
    ClientGoneLocked();
  }

  void OnDone() override {
    if (keys_id_) keys_->Remove(*keys_id_);
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = nullptr;
    }
    bool abandon;
    {
      absl::MutexLock lock(&mu_);
      abandon = writer_ != nullptr && !closed_ && !abandoned_;
    }
    if (abandon) m_->AbandonWriter(writer_);
    delete this;
  }

 private:
  // The next request, unless the call's key was revoked meanwhile: then
  // the input ends.
  void ReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (revoked_) return EndInputLocked(*revoked_);
    reading_ = true;
    MarkUnread(&req_);
    StartRead(&req_);
  }

  // No more input (once): commits what is uncommitted, then the call ends
  // with `end` (or the commit's error).
  void EndInput(const absl::Status& end) {
    {
      Locked<ThisReactor> lock(this);
      if (!EndingInputLocked(end)) return;
    }
    CloseInput(end);
  }
  // The same where mu_ is held: the commit starts on the pool.
  void EndInputLocked(const absl::Status& end)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!EndingInputLocked(end)) return;
    pool_->Post([this, end] { CloseInput(end); });
  }
  // Marks the input ended; true when its writer is to be closed now (the
  // op is begun: the call cannot finish, and be deleted, before it ends).
  bool EndingInputLocked(const absl::Status& end)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (input_ended_) return false;
    input_ended_ = true;
    if (writer_ == nullptr) {
      SetFinishLocked(end);
      return false;
    }
    if (finished_) return false;  // OnDone abandons the writer
    op_pending_ = true;
    return true;
  }
  // Commits what is uncommitted (EndingInputLocked began the op).
  void CloseInput(const absl::Status& end) {
    m_->CloseWriter(writer_, durability_, [this, end](absl::Status st) {
      Locked<ThisReactor> lock(this);
      op_pending_ = false;
      closed_ = true;
      SetFinishLocked(st.ok() ? end : st);
    });
  }

  absl::Status Handle() {
    const v1::AppendRequest& r = req_;
    // The request is checked whole before a first one opens the writer: a
    // malformed first request must not end the session's live writer.
    if (!r.request_id().empty())
      SS_RETURN_IF_ERROR(CheckRequestId(r.request_id()));
    AppendInput in;
    in.request_id = r.request_id();
    in.expected_input_offset = r.expected_input_offset();
    if (r.has_text_utf8()) {
      in.kind = AppendInput::Kind::kText;
      in.text = r.text_utf8();
    } else if (r.has_tokens()) {
      in.kind = AppendInput::Kind::kTokens;
      SS_ASSIGN_OR_RETURN(in.tokens, Ids(r.tokens(), "tokens.ids"));
    }
    in.flush = r.flush();
    in.checkpoint = r.checkpoint();
    SS_ASSIGN_OR_RETURN(
        in.durability,
        DurabilityFromProto(r.durability(), models_->max_durability()));
    if (writer_ == nullptr) {
      SS_RETURN_IF_ERROR(CheckSessionId(r.session_id(), "session_id"));
      session_id_ = r.session_id();
      // Opening the writer may load the session (store I/O, one load at a
      // time per model): then on the service's pool, not on gRPC's thread;
      // a resident session's at once. No read is started until the request
      // is acked.
      if (!BeginOp()) return absl::OkStatus();  // finished meanwhile
      SessionManager* resident = nullptr;
      for (SessionManager* m : models_->managers()) {
        if (m->IsResident(tenant_, session_id_)) resident = m;
      }
      // False (nothing done) when the session, resident a moment ago, is
      // not any more and may_load is false: evicted meanwhile, its load
      // goes to the pool too.
      auto open = [this, resident, in = std::move(in)](bool may_load) mutable {
        {
          // The call ended while this waited: it must not take the
          // session's writer slot (ending a live writer) for nobody.
          Locked<ThisReactor> lock(this);
          if (finish_) {
            op_pending_ = false;
            MaybeFinishLocked();
            return true;
          }
        }
        // A load asks the store which model the session is of: evicted
        // since it was seen resident, it may have been deleted and made
        // again for another model served here.
        SessionManager* m = may_load ? nullptr : resident;
        std::shared_ptr<SessionManager::Writer> writer;
        absl::Status st = OpenWriter(in, may_load, &m, &writer);
        if (st.ok() && writer == nullptr) return false;
        {
          Locked<ThisReactor> lock(this);
          m_ = m;
          writer_ = std::move(writer);
          if (!st.ok() || finish_) {  // failed, or the call ended meanwhile
            op_pending_ = false;      // (OnDone abandons the writer)
            if (!st.ok()) {
              SetFinishLocked(st);
            } else {
              MaybeFinishLocked();
            }
            return true;
          }
        }
        AppendNow(std::move(in));
        return true;
      };
      if (resident == nullptr || !open(/*may_load=*/false)) {
        pool_->Post([open = std::move(open)]() mutable { open(true); });
      }
      return absl::OkStatus();
    }
    if (!r.session_id().empty() && r.session_id() != session_id_) {
      return BadField("session_id", "differs from the call's session");
    }
    if (!BeginOp()) return absl::OkStatus();  // finished meanwhile
    AppendNow(std::move(in));
    return absl::OkStatus();
  }

  // The first request's writer (and model, unless *m is given), once the
  // request is checked whole against that model. No reactor state is
  // touched (it may run on the pool). Without may_load, *writer stays null
  // when the session is not resident (SessionManager::OpenWriter).
  absl::Status OpenWriter(const AppendInput& in, bool may_load,
                          SessionManager** m,
                          std::shared_ptr<SessionManager::Writer>* writer) {
    if (*m == nullptr) {
      SS_ASSIGN_OR_RETURN(*m, models_->ForSession(tenant_, session_id_));
    }
    SS_RETURN_IF_ERROR((*m)->CheckAppend(in));
    std::weak_ptr<Link<AppendReactor>> weak = link_;
    SS_ASSIGN_OR_RETURN(*writer, (*m)->OpenWriter(
                                     tenant_, session_id_,
                                     [weak](const absl::Status& why) {
                                       auto link = weak.lock();
                                       if (link == nullptr) return;
                                       absl::MutexLock lock(&link->mu);
                                       if (link->reactor != nullptr)
                                         link->reactor->Superseded(why);
                                     },
                                     may_load,
                                     [this] {
                                       // The op pending keeps the reactor.
                                       absl::MutexLock lock(&mu_);
                                       return finish_.has_value();
                                     }));
    return absl::OkStatus();
  }

  // Hands `in` to the manager (the op is begun); OnAck ends it.
  void AppendNow(AppendInput in) {
    durability_ = in.durability;
    m_->Append(writer_, std::move(in), [this](absl::StatusOr<AppendAck> ack) {
      OnAck(std::move(ack));
    });
  }

  void OnAck(absl::StatusOr<AppendAck> ack) {
    Locked<ThisReactor> lock(this);
    op_pending_ = false;
    if (!ack.ok()) return SetFinishLocked(ack.status());
    // Applied while the call was ending (a newer writer superseded it, the
    // session left): the ack still goes out before the error, since
    // requests acknowledged before an error stay applied and later ones
    // were not (dropped, an applied and maybe committed request looked
    // refused). Not to a client that is gone.
    if (finish_ && client_gone_) return MaybeFinishLocked();
    v1::AppendResponse resp;
    resp.set_request_id(ack->request_id);
    resp.set_duplicate(ack->duplicate);
    resp.set_tokens_consumed(ack->tokens_consumed);
    resp.set_position(ack->position);
    resp.set_input_offset(ack->input_offset);
    resp.set_pending_bytes(ack->pending_bytes);
    resp.set_version(ack->version);
    resp.set_committed_input_offset(ack->committed_input_offset);
    resp.set_durability(DurabilityToProto(ack->durability));
    writes_.push_back(std::move(resp));
    if (!writing_) {
      writing_ = true;
      stall_->Waiting();
      StartWrite(&writes_.front());
    }
    if (finish_) return;  // the ack, then the error (OnWriteDone)
    // A client that does not read its acks gets no more requests read:
    // they wait in its flow-control window instead of in this queue.
    if (writes_.size() >= static_cast<size_t>(kMaxUnreadAcks)) {
      // Its key revoked meanwhile: the input ends now, not once the client
      // reads again.
      if (revoked_) return EndInputLocked(*revoked_);
      read_paused_ = true;
      return;
    }
    ReadLocked();
  }

  // Marks a manager call outstanding, so the reactor cannot finish (and be
  // deleted) before its callback. False when it has already finished — a
  // newer writer superseded it, or the client went away — and the call must
  // not be made: OnDone may run at any moment, and a callback would then
  // touch a deleted reactor.
  bool BeginOp() {
    Locked<ThisReactor> lock(this);
    if (finished_) return false;
    op_pending_ = true;
    return true;
  }

  // A newer writer call took the session (ABORTED/SESSION_BUSY), or the
  // session left this worker (fenced, deleted, evicted, draining).
  void Superseded(const absl::Status& why) {
    Locked<ThisReactor> lock(this);
    SetFinishLocked(why);
  }

  void Fail(const absl::Status& st) {
    Locked<ThisReactor> lock(this);
    SetFinishLocked(st);
  }

  // The client cancelled or went away: the call ends, and the request in
  // flight stops too (its ingest is cancelled: the call cannot finish
  // before it ends, and a delete or drain would wait for all its tokens).
  void ClientGoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    client_gone_ = true;
    slot_.reset();  // the client's stream is over: its reconnect may come
    SetFinishLocked(absl::CancelledError("the client went away"));
    if (writer_ != nullptr && !abandoned_) {
      abandoned_ = true;
      m_->AbandonWriter(writer_);
    }
  }

  void SetFinishLocked(const absl::Status& st)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!finish_) finish_ = st;
    MaybeFinishLocked();
  }
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!finish_ || finished_ || writing_ || op_pending_) return;
    finished_ = true;
    CountError(models_->default_manager(), *finish_);
    finish_now_ = ToGrpcStatus(*finish_);
    slot_.reset();  // free before the client sees the call end
  }

  ModelSet* const models_;
  const CallerPolicy* const policy_;
  Executor* const pool_;
  KeyWatchers* const keys_;
  std::optional<uint64_t> keys_id_;  // in keys_ (the constructor's)
  // Cuts the call off when its client leaves an ack unread too long (its
  // requests wait unread meanwhile, and its slot stays taken). An idle
  // client, reading its acks, is not cut off.
  const std::unique_ptr<ClientStalls::Call> stall_;
  // The tenant's stream slot (null without limits) until the call ends.
  std::unique_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
  // The session's model's manager; set with writer_.
  SessionManager* m_ = nullptr;
  std::shared_ptr<Link<AppendReactor>> link_;
  std::string tenant_, session_id_;
  Credentials credentials_;  // the call's, for Recheck
  v1::AppendRequest req_;    // one read at a time
  // Set under mu_ (on the pool) with m_; read by the reactor's callbacks.
  std::shared_ptr<SessionManager::Writer> writer_;
  std::optional<Durability> durability_;
  bool closed_ = false;
  bool abandoned_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;  // ClientGoneLocked ran

  // Acks queued for a client that is not reading them, at most.
  static constexpr int kMaxUnreadAcks = 64;

  absl::Mutex mu_;
  std::deque<v1::AppendResponse> writes_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;  // a read is started
  // TenantAuth::Recheck's (OnReadDone, KeysChanged).
  uint64_t auth_generation_ ABSL_GUARDED_BY(mu_) = 0;
  // The call's key was revoked while a request was in flight: the input
  // ends instead of the next read (ReadLocked).
  std::optional<absl::Status> revoked_ ABSL_GUARDED_BY(mu_);
  bool input_ended_ ABSL_GUARDED_BY(mu_) = false;  // EndInput's, once
  bool op_pending_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> finish_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Set once, under mu_; Locked calls Finish with it after unlocking.
  std::optional<grpc::Status> finish_now_ ABSL_GUARDED_BY(mu_);
  template <typename R>
  friend class streams_internal::Locked;
};

}  // namespace

grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>*
NewAppendReactor(ModelSet* models, const CallerPolicy* policy, Executor* pool,
                 KeyWatchers* keys, ClientStalls* stalls,
                 grpc::CallbackServerContext* ctx) {
  return new AppendReactor(models, policy, pool, keys, stalls, ctx);
}

}  // namespace statestream::worker::streams_internal
