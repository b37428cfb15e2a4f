// SPDX-License-Identifier: Apache-2.0
// ReactorCall: what the gateway's calls forwarded by callback reactors
// (AppendCall in gateway_append.cc, GenerateCall in gateway_generate.cc,
// UnaryCall in gateway_unary.cc, ExportCall in gateway_export.cc,
// ImportCall in gateway_import.cc) share. Internal to services/;
// docs/gateway.md, "Forwarding by reactors", says what they rely on.
#ifndef STATESTREAM_SERVICES_GATEWAY_REACTOR_CALL_H_
#define STATESTREAM_SERVICES_GATEWAY_REACTOR_CALL_H_

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "services/gateway_internal.h"

namespace statestream::gateway {

// What the calls forwarded by reactors share: counted references — gRPC's
// until OnDone, the attempt in progress's, each task's, each wait's — the
// last of which deletes the call; the call's admission
// (Gateway::AdmitCall); its tasks, the steps that may block, each on a
// pool thread (Gateway::Detach); and its waits, gRPC alarms that hold no
// thread.
class ReactorCall {
 public:
  virtual ~ReactorCall() {
    if (admitted_) gateway_->ReleaseCall();
  }

 protected:
  explicit ReactorCall(Gateway* gateway) : gateway_(gateway) {}

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }
  // From the rpc handler: admits the call (Gateway::AdmitCall) and runs
  // `first` as its first task. False when the gateway serves as many calls
  // as it may or no task can run: the handler then finishes the call with
  // Gateway::Refused().
  [[nodiscard]] bool Admit(std::function<void()> first) {
    if (!gateway_->AdmitCall()) return false;
    admitted_ = true;
    return RunTask(std::move(first));
  }
  // From the rpc handler: authenticates the caller into `*tenant` (a hash
  // lookup, so a bad key costs no call slot and no task), then admits the
  // call and runs `first` as its first task (Admit). OK, or the status to
  // finish the call with: UNAUTHENTICATED, or Gateway::Refused().
  grpc::Status AuthenticateAndAdmit(const grpc::CallbackServerContext& ctx,
                                    std::string* tenant,
                                    std::function<void()> first) {
    absl::StatusOr<std::string> named = gateway_->Tenant(ctx);
    if (!named.ok()) return ToGrpcStatus(named.status());
    *tenant = *std::move(named);
    return Admit(std::move(first)) ? grpc::Status::OK : Gateway::Refused();
  }
  // Runs `fn` on a task thread holding a reference. False (`fn` dropped)
  // when no thread can be made.
  [[nodiscard]] bool RunTask(std::function<void()> fn) {
    Ref();
    if (gateway_->Detach([this, fn = std::move(fn)] {
          fn();
          Unref();
        })) {
      return true;
    }
    Unref();
    return false;
  }
  // Runs `fn` as a task once `delay` has passed or the client cancelled
  // (CancelWaits), holding no thread meanwhile (a gRPC alarm; at once for
  // no delay). If no task can run then (no thread exists and none can be
  // made), the call ends Gateway::Refused() on gRPC's executor, as the
  // reactions' own fallback does.
  void RunTaskAfter(absl::Duration delay, std::function<void()> fn) {
    if (delay <= absl::ZeroDuration()) {
      if (!RunTask(std::move(fn))) Conclude(Gateway::Refused());
      return;
    }
    Wait(delay, [this, fn = std::move(fn)]() mutable {
      if (!RunTask(std::move(fn))) Conclude(Gateway::Refused());
    });
  }
  // gRPC's reaction, after an attempt that may fail over ended with
  // `upstream`: runs `after(client_gone)` as a task, `client_gone` true
  // when the call's own client cancelled it (or its deadline passed), so
  // that `upstream` is that cancellation propagated, not a worker failure.
  // gRPC cancels the upstream call as the client's cancel arrives, and
  // `ctx` may show it a moment later: after an upstream CANCELLED
  // (`may_be_client`) the task starts once OnCancel says so
  // (CancelWaits) or after Gateway::kCancelNotice (a worker's own
  // CANCELLED, from a shutdown, fails over that much later), holding no
  // thread meanwhile. False (`after` dropped) when no task can run now;
  // a wait whose task cannot run ends the call Gateway::Refused().
  [[nodiscard]] bool RunAfterAttempt(const grpc::CallbackServerContext& ctx,
                                     bool may_be_client,
                                     std::function<void(bool)> after) {
    auto run = [this, &ctx, after = std::move(after)]() mutable {
      return RunTask([&ctx, after = std::move(after)] {
        after(Gateway::ClientGone(ctx));
      });
    };
    if (!may_be_client || Gateway::ClientGone(ctx)) return run();
    Wait(Gateway::kCancelNotice, [this, run = std::move(run)]() mutable {
      if (!run()) Conclude(Gateway::Refused());
    });
    return true;
  }
  // From the reactor's OnCancel: the client is gone, so a wait (now or
  // later) ends at once.
  void CancelWaits() {
    absl::MutexLock lock(&wait_mu_);
    client_cancelled_ = true;
    if (wait_ != nullptr) wait_->Cancel();
  }

  // Ends the call with `status` (End): on a task thread when that may
  // block (a stream slot to release), else (or if no thread can be made)
  // on this one. Never under the call's lock.
  void Conclude(grpc::Status status) {
    if (!HoldsSlot() || !RunTask([this, status] { End(status); })) {
      End(status);
    }
  }
  // Frees the call's stream slot, then finishes it (once). May block.
  virtual void End(grpc::Status status) = 0;
  // Whether the call holds a stream slot (End releases it).
  virtual bool HoldsSlot() = 0;

  // Where an attempt went.
  struct Placed {
    std::string worker;
    std::shared_ptr<grpc::Channel> channel;
    bool refused = false;  // Gateway::RefusedFast
  };
  // Task: the worker for attempt `attempt` of `tenant`'s call to `target`
  // (none of exclude_), connected; the router's error when there is none.
  absl::StatusOr<Placed> Place(const grpc::CallbackServerContext& ctx,
                               const std::string& tenant, const Target& target,
                               int attempt) {
    std::set<std::string> both;
    if (!target.unfit.empty()) {
      both = exclude_;
      both.insert(target.unfit.begin(), target.unfit.end());
    }
    const std::set<std::string>& exclude =
        target.unfit.empty() ? exclude_ : both;
    auto route = target.session_id.empty()
                     ? gateway_->router().RouteAny(
                           absl::StrCat(tenant, "/", target.hash_key),
                           target.fingerprint, exclude)
                     : gateway_->router().RouteSession(
                           {tenant, target.session_id}, exclude,
                           target.any_model, target.fingerprint);
    gateway_->CountRoute(route, attempt);
    if (!route.ok()) return route.status();
    Placed placed;
    placed.worker = route->worker_id;
    placed.channel = gateway_->Channel(route->address);
    // Made even on a channel that cannot connect: it fails at once, with
    // gRPC's reason for the status if no worker is left, or goes through
    // if the worker came back meanwhile.
    placed.refused = Gateway::RefusedFast(placed.channel, ctx);
    return placed;
  }
  // Task, after an attempt on `placed` that failed over: marks its worker
  // suspect (`suspect`), leaves it out of the next routes, and says whether
  // the attempt counts against max_attempts (not when it never reached the
  // worker: Gateway::SkipsAttempt).
  bool Counts(Placed placed, bool suspect) {
    if (suspect) gateway_->router().MarkSuspect(placed.worker);
    exclude_.insert(placed.worker);
    return !Gateway::SkipsAttempt(placed.refused, placed.channel, &skips_);
  }

  // Task, after an attempt on `placed` that failed over with `status`
  // (Counts): whether another worker may be tried — then counted in the
  // failover metric as `method`'s — or the call has used max_attempts.
  // Attempts are bounded by max_attempts; a failover from a worker that
  // could not be reached costs none (up to kMaxUnreachableSkips of them):
  // the call never got to it. (Append counts its own: progress resets it.)
  bool MayRetry(Placed placed, const grpc::Status& status,
                const std::string& method) {
    if (Counts(std::move(placed), Gateway::WorkerFailed(status))) ++counted_;
    if (counted_ >= gateway_->options().max_attempts) return false;
    gateway_->metrics().IncFailover(method);
    return true;
  }

  Gateway* const gateway_;
  bool admitted_ = false;  // counted in Gateway::AdmitCall
  // Tasks only (one after another).
  std::set<std::string> exclude_;
  int skips_ = 0;    // Gateway::SkipsAttempt's count
  int counted_ = 0;  // MayRetry's: attempts bounded by max_attempts

 private:
  // Calls `fired` on gRPC's executor once `delay` has passed or
  // CancelWaits ran, holding a reference. One wait at a time: a call's
  // steps run one after another.
  void Wait(absl::Duration delay, std::function<void()> fired) {
    Ref();
    auto alarm = std::make_unique<grpc::Alarm>();
    absl::MutexLock lock(&wait_mu_);
    if (client_cancelled_) delay = absl::ZeroDuration();
    // The wait before has fired (its callback may still be returning:
    // the alarm's own reference keeps what it runs alive).
    wait_ = std::move(alarm);
    // Never runs `fired` inline: gRPC hands it to its executor.
    wait_->Set(absl::ToChronoTime(absl::Now() + delay),
               [this, fired = std::move(fired)](bool) {
                 fired();
                 Unref();
               });
  }

  std::atomic<int> refs_{1};  // gRPC's, until OnDone
  absl::Mutex wait_mu_;
  std::unique_ptr<grpc::Alarm> wait_ ABSL_GUARDED_BY(wait_mu_);
  bool client_cancelled_ ABSL_GUARDED_BY(wait_mu_) = false;
};

}  // namespace statestream::gateway

#endif  // STATESTREAM_SERVICES_GATEWAY_REACTOR_CALL_H_
