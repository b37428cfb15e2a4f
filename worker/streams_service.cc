// SPDX-License-Identifier: Apache-2.0
// statestream.v1.Streams over the session managers of the worker's models
// (ModelSet routes each call to the manager of its session's model). The
// reactors never call the engine: they hand requests to the manager and
// write what its callbacks (manager or scheduler threads) deliver. Each
// reactor keeps one write in flight and queues the rest; it finishes only
// once no routing or manager callback is outstanding, so OnDone (which
// deletes it) comes last.
#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/api_convert.h"
#include "worker/executor.h"
#include "worker/model_set.h"
#include "worker/streams_internal.h"
#include "worker/worker_service.h"

namespace statestream::worker {
namespace streams_internal {

absl::Status WideToken(uint32_t id, absl::string_view field) {
  return MakeError(
      absl::StatusCode::kInvalidArgument, Reason::kInvalidToken,
      absl::StrCat(field, ": token ", id, " is outside the vocabulary"),
      {{"token", absl::StrCat(id)}, {"field", std::string(field)}});
}

absl::StatusOr<std::vector<int32_t>> Ids(const v1::Tokens& t,
                                         absl::string_view field) {
  std::vector<int32_t> out;
  out.reserve(t.ids_size());
  for (uint32_t id : t.ids()) {
    if (id > INT32_MAX) return WideToken(id, field);
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

KeyWatchers::KeyWatchers(const TenantAuth* auth) : auth_(auth) {
  if (!auth->development_mode()) thread_ = std::thread([this] { Loop(); });
}

KeyWatchers::~KeyWatchers() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  wake_.Notify();
  if (thread_.joinable()) thread_.join();
}

uint64_t KeyWatchers::Add(std::function<void()> changed) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  watchers_.emplace(id, std::move(changed));
  return id;
}

void KeyWatchers::Remove(uint64_t id) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(id);
}

void KeyWatchers::Loop() {
  uint64_t seen = auth_->generation();
  absl::MutexLock lock(&mu_);
  auto stopping = [this]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
  // On the steady clock: a wall clock stepped back must not leave revoked
  // keys' streams open for as long.
  while (!wake_.Await(&mu_, stopping, kInterval)) {
    const uint64_t now = auth_->generation();
    if (now == seen) continue;
    seen = now;
    // Each call rechecks its key (a scan of the keys): outside the lock,
    // so calls open and end meanwhile.
    std::vector<std::function<void()>> told;
    told.reserve(watchers_.size());
    for (const auto& [id, changed] : watchers_) told.push_back(changed);
    mu_.Unlock();
    for (const auto& changed : told) changed();
    mu_.Lock();
  }
}

namespace {

// Score, cancelled when the client goes away (OnCancel).
class ScoreReactor final : public grpc::ServerUnaryReactor {
 public:
  ScoreReactor(ModelSet* models, const CallerPolicy* policy,
               grpc::CallbackServerContext* ctx, const v1::ScoreRequest* req,
               v1::ScoreResponse* out)
      : models_(models) {
    auto tenant = TenantOf(*ctx, *policy);
    absl::Status st = tenant.status();
    if (st.ok()) st = CheckSessionId(req->session_id(), "session_id");
    if (st.ok() && req->top_logprobs() > 20) {
      st = BadField("top_logprobs", "0-20");
    }
    if (st.ok() && !req->has_text_utf8() && !req->has_tokens()) {
      st = BadField("continuation", "required");
    }
    if (st.ok() && req->version() != 0 && req->has_expected_input_offset()) {
      // A committed version is named exactly already; silently ignoring
      // the offset would let a client believe it was checked.
      st = BadField("expected_input_offset", "only with version 0");
    }
    if (!st.ok()) {
      CountError(models_->default_manager(), st);
      Finish(ToGrpcStatus(st));
      return;
    }
    ScoreInput in;
    in.version = req->version();
    if (req->has_expected_input_offset()) {
      in.expected_input_offset = req->expected_input_offset();
    }
    in.is_text = req->has_text_utf8();
    in.text = req->text_utf8();
    if (req->has_tokens()) {
      auto ids = Ids(req->tokens(), "tokens.ids");
      if (!ids.ok()) {
        CountError(models_->default_manager(), ids.status());
        Finish(ToGrpcStatus(ids.status()));
        return;
      }
      in.tokens = *std::move(ids);
    }
    in.top_logprobs = static_cast<int>(req->top_logprobs());
    {
      // It runs the model as a Generate does: one of the tenant's
      // max_streams until it ends (taken once the request is valid: no
      // Finish above holds one).
      auto slot = HoldStream(*policy, *tenant);
      if (!slot.ok()) {
        CountError(models_->default_manager(), slot.status());
        Finish(ToGrpcStatus(slot.status()));
        return;
      }
      absl::MutexLock lock(&mu_);
      slot_ = *std::move(slot);
    }
    models_->ForSessionAsync(
        *tenant, req->session_id(),
        [this, out, tenant = *tenant, session_id = req->session_id(),
         in = std::move(in)](absl::StatusOr<SessionManager*> m) mutable {
          if (!m.ok()) return Unrouted(m.status());
          Run(**m, tenant, session_id, std::move(in), out);
        });
  }

  void OnCancel() override {
    std::unique_ptr<TenantLimits::StreamSlot> slot;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (job_) job_->Cancel();
      slot = std::move(slot_);  // the client's call is over
    }
  }
  void OnDone() override { delete this; }

 private:
  // Once routed (maybe on another thread, after the constructor returned:
  // then nothing holds a Finish back, so Done defers it until job_ is set).
  void Run(SessionManager& m, const std::string& tenant,
           const std::string& session_id, ScoreInput in,
           v1::ScoreResponse* out) {
    auto job = m.Score(tenant, session_id, std::move(in),
                       [this, out](absl::StatusOr<ScoreOutcome> o) {
                         if (o.ok()) Fill(*o, out);
                         CountError(models_->default_manager(), o.status());
                         Done(ToGrpcStatus(o.status()));
                       });
    std::optional<grpc::Status> finish;
    std::unique_ptr<TenantLimits::StreamSlot> slot;
    {
      absl::MutexLock lock(&mu_);
      job_ = std::move(job);
      if (cancelled_) job_->Cancel();
      finish = std::move(deferred_);
      if (finish) slot = std::move(slot_);
    }
    slot.reset();                 // before the client sees the end
    if (finish) Finish(*finish);  // the last use of `this`
  }

  // The session's model could not be looked up: no job ever runs.
  void Unrouted(const absl::Status& why) {
    CountError(models_->default_manager(), why);
    std::unique_ptr<TenantLimits::StreamSlot> slot;
    {
      absl::MutexLock lock(&mu_);
      slot = std::move(slot_);
    }
    slot.reset();  // before the client sees the end
    Finish(ToGrpcStatus(why));
  }

  void Done(const grpc::Status& status) {
    std::unique_ptr<TenantLimits::StreamSlot> slot;
    {
      absl::MutexLock lock(&mu_);
      if (job_ == nullptr) {
        deferred_ = status;
        return;
      }
      slot = std::move(slot_);
    }
    slot.reset();  // before the client sees the end
    Finish(status);
  }

  static void Fill(const ScoreOutcome& o, v1::ScoreResponse* out) {
    double sum = 0;
    bool all = true;
    for (size_t i = 0; i < o.tokens.size(); ++i) {
      auto* t = out->add_tokens();
      t->set_token(static_cast<uint32_t>(o.tokens[i]));
      t->set_logprob(o.logprobs[i]);
      t->set_greedy(o.greedy[i]);
      if (i < o.top.size()) {
        for (const auto& top : o.top[i]) {
          auto* lp = t->add_top();
          lp->set_token(static_cast<uint32_t>(top.id));
          lp->set_logprob(top.logprob);
        }
      }
      sum += o.logprobs[i];
      all = all && o.greedy[i];
    }
    out->set_sum_logprob(sum);
    out->set_all_greedy(all);
    out->set_position(o.position);
    out->set_input_offset(o.input_offset);
    out->set_version(o.version);
  }

  ModelSet* const models_;
  absl::Mutex mu_;
  // Set once Score() returns; until then Done keeps its status here and
  // Run finishes with it (OnDone, which deletes this, follows Finish).
  std::shared_ptr<SessionManager::Job> job_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> deferred_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // The tenant's stream slot (serve's limits; null without any).
  std::unique_ptr<TenantLimits::StreamSlot> slot_ ABSL_GUARDED_BY(mu_);
};

class StreamsService final : public v1::Streams::CallbackService {
 public:
  StreamsService(ModelSet* models, std::shared_ptr<const CallerPolicy> policy)
      : models_(models),
        policy_(std::move(policy)),
        keys_(&policy_->auth),
        stalls_(policy_->client_stall_timeout,
                models->default_manager().options().metrics),
        pool_(8) {}

  grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>* Append(
      grpc::CallbackServerContext* ctx) override {
    return NewAppendReactor(models_, policy_.get(), &pool_, &keys_, &stalls_,
                            ctx);
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx,
      const v1::GenerateRequest* req) override {
    return NewGenerateReactor(models_, policy_.get(), &stalls_, ctx, req);
  }

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx,
                                  const v1::ScoreRequest* req,
                                  v1::ScoreResponse* out) override {
    return new ScoreReactor(models_, policy_.get(), ctx, req, out);
  }

 private:
  ModelSet* const models_;
  const std::shared_ptr<const CallerPolicy> policy_;  // outlives the reactors
  KeyWatchers keys_;     // the open Append calls (they outlive it too)
  ClientStalls stalls_;  // the open Append and Generate calls (likewise)
  // Opens Append calls' writers (session loads); outlives the reactors
  // (the server stops first).
  Executor pool_;
};

}  // namespace
}  // namespace streams_internal

std::unique_ptr<grpc::Service> NewStreamsService(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy) {
  return std::make_unique<streams_internal::StreamsService>(models,
                                                            std::move(policy));
}

}  // namespace statestream::worker
