// SPDX-License-Identifier: Apache-2.0
// The gateway's shared machinery (channels, tenants, call admission and
// threads, the watchdog, unary failover) and its service set; the services
// are in gateway_sessions.cc, gateway_streams.cc (with gateway_append.cc
// and gateway_generate.cc) and gateway_models.cc.
#include "services/gateway.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "common/throttled_log.h"
#include "services/caller_metadata.h"
#include "services/gateway_internal.h"
#include "services/tls.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {

Gateway::Gateway(GatewayOptions options, StateStore* store)
    : options_(std::move(options)),
      router_(store,
              [this] {
                // Static workers' models, from what they answered
                // ListModels: a create of a model goes to one serving it.
                GatewayRouterOptions o = options_.router;
                o.fingerprints_of = [this](const WorkerInfo& w) {
                  return KnownFingerprints(w);
                };
                return o;
              }()),
      buffers_(options_.max_buffered_bytes, "--max-buffered-bytes"),
      worker_credentials_(MakeChannelCredentials(options_.worker_tls)) {
  if (options_.metrics == nullptr) {
    own_metrics_ = std::make_unique<GatewayMetrics>();
  }
  metrics_ =
      options_.metrics != nullptr ? options_.metrics : own_metrics_.get();
  metrics_->SetGaugeSource([this] {
    const GatewayRouter::Stats s = router_.stats();
    GatewayMetrics::Gauges g;
    g.workers_known = s.known;
    g.workers_ready = s.known - s.suspect;
    g.calls_active = calls_active_.load();
    g.worker_channels = channel_count_.load();
    g.buffered_bytes = buffers_.held();
    return g;
  });
  watchdog_ = std::thread([this] { WatchdogLoop(); });
}

Gateway::~Gateway() {
  metrics_->SetGaugeSource(nullptr);
  {
    absl::MutexLock lock(&threads_mu_);
    // Every call released and every task run, then the idle task threads
    // told to end.
    auto quiet = [this]() ABSL_SHARED_LOCKS_REQUIRED(threads_mu_) {
      return calls_ == 0 && tasks_.empty() && idle_ == threads_;
    };
    threads_mu_.Await(absl::Condition(&quiet));
    tasks_stopping_ = true;
    auto ended = [this]() ABSL_SHARED_LOCKS_REQUIRED(threads_mu_) {
      return threads_ == 0;
    };
    threads_mu_.Await(absl::Condition(&ended));
  }
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  watchdog_wake_.Notify();
  watchdog_.join();
}

absl::Time Gateway::BeginCall() {
  calls_active_.fetch_add(1);
  return SteadyNow();
}

void Gateway::EndCall(const std::string& method, const grpc::Status& status,
                      absl::Time began) {
  calls_active_.fetch_sub(1);
  const absl::Status st = FromGrpcStatus(status);
  const Reason reason = GetReason(st);
  metrics_->ObserveCall(
      method, absl::StatusCodeToString(st.code()),
      reason == Reason::kUnspecified ? "" : std::string(ReasonName(reason)),
      SteadyNow() - began);
}

void Gateway::CountRoute(const absl::StatusOr<Route>& route, int attempt) {
  using D = GatewayMetrics::RouteDecision;
  if (!route.ok()) {
    metrics_->IncRoute(D::kNoWorker);
  } else if (attempt > 1) {
    metrics_->IncRoute(D::kRetry);
  } else {
    metrics_->IncRoute(route->remembered ? D::kRemembered
                       : route->owner    ? D::kOwner
                                         : D::kRendezvous);
  }
}

namespace {

// Whether `models`, a worker's ListModels answer kept from before, are
// still what its registry entry advertises. A worker that restarted with
// other models under the same id and address (fixed ids: the local
// cluster, Kubernetes) re-registers them, maybe without ever leaving the
// registry; its old answer would route creates by models it no longer
// serves. Workers that advertise none (static --workers) keep theirs.
bool StillAdvertised(const WorkerInfo& w,
                     const std::vector<v1::Model>& models) {
  if (w.model_fingerprints.empty()) return true;
  std::set<std::string> known;
  for (const v1::Model& m : models) known.insert(m.fingerprint());
  return known == std::set<std::string>(w.model_fingerprints.begin(),
                                        w.model_fingerprints.end());
}

}  // namespace

absl::StatusOr<std::vector<Gateway::WorkerModels>> Gateway::Models(
    const grpc::CallbackServerContext& ctx, const std::string& tenant,
    bool* all_known) {
  if (all_known != nullptr) *all_known = true;
  auto workers = router_.Workers();
  if (!workers.ok()) return workers.status();
  std::vector<WorkerModels> out;
  std::set<std::string> live;
  for (const WorkerInfo& w : *workers) {
    const std::string key = absl::StrCat(w.worker_id, "@", w.address);
    live.insert(key);
    {
      absl::MutexLock lock(&models_mu_);
      auto it = models_.find(key);
      if (it != models_.end() && StillAdvertised(w, it->second)) {
        // A suspect (one failed call) still serves its models: the router
        // falls back to suspects, so its models stay known, not NOT_FOUND.
        // (An answer its registry entry no longer matches is not kept, and
        // a suspect is not asked: its models are unknown for now.)
        out.push_back({w, it->second});
        continue;
      }
    }
    if (router_.IsSuspect(w.worker_id)) {  // not asked while suspect
      if (all_known != nullptr) *all_known = false;
      continue;
    }
    auto client = UpstreamContext(ctx, tenant, 1);
    client->set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(options_.models_timeout));
    v1::ListModelsResponse resp;
    grpc::Status st =
        v1::Models::NewStub(Channel(w.address))
            ->ListModels(client.get(), v1::ListModelsRequest(), &resp);
    if (!st.ok()) {
      // The caller cancelling (its ListModels or CreateSession) says
      // nothing of the worker: no suspicion, which would move sessions.
      if (ctx.IsCancelled())
        return absl::CancelledError("the caller cancelled");
      if (ShouldFailover(st)) router_.MarkSuspect(w.worker_id);
      // Not reached, or too slow to answer (a paused or CPU-starved
      // worker: DEADLINE_EXCEEDED), or busy: it may serve any model, so a
      // model not found elsewhere is UNAVAILABLE (retry), not NOT_FOUND.
      // One that answered with a refusal (an older build, a policy)
      // serves none this gateway can use.
      if (!AnsweredWithRefusal(st) && all_known != nullptr) {
        *all_known = false;
      }
      continue;
    }
    std::vector<v1::Model> models(resp.models().begin(), resp.models().end());
    absl::MutexLock lock(&models_mu_);
    models_[key] = models;
    out.push_back({w, std::move(models)});
  }
  {
    // Forget workers that left (ids are per process).
    absl::MutexLock lock(&models_mu_);
    for (auto it = models_.begin(); it != models_.end();) {
      if (live.count(it->first) == 0) {
        models_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  if (out.empty()) {
    // The server's own UNAVAILABLE (a reason, a hint when to retry), not a
    // transport failure.
    return router_.NoWorker("no ready worker answered ListModels; retry");
  }
  return out;
}

std::vector<std::string> Gateway::KnownFingerprints(const WorkerInfo& w) {
  std::vector<std::string> out;
  absl::MutexLock lock(&models_mu_);
  auto it = models_.find(absl::StrCat(w.worker_id, "@", w.address));
  if (it == models_.end()) return out;
  for (const v1::Model& m : it->second) out.push_back(m.fingerprint());
  return out;
}

std::optional<v1::Model> Gateway::CachedModel(const std::string& fingerprint) {
  absl::MutexLock lock(&models_mu_);
  for (const auto& [worker, models] : models_) {
    for (const v1::Model& m : models) {
      if (m.fingerprint() == fingerprint) return m;
    }
  }
  return std::nullopt;
}

bool Gateway::AnsweredWithRefusal(const grpc::Status& status) {
  switch (status.error_code()) {
    // Not reached, too slow, or busy: it may serve any model.
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::ABORTED:
      return false;
    // An answer, if an error (an older build, a policy, a bug): a worker
    // failing ListModels so does not keep every unknown model id
    // "maybe served" for ever.
    default:
      return true;
  }
}

absl::StatusOr<v1::Model> Gateway::ResolveModel(
    const grpc::CallbackServerContext& ctx, const std::string& tenant,
    const std::string& model_id, std::set<std::string>* elsewhere) {
  // NOT_FOUND is final to a client: decided on a registry list read within
  // a refresh, not on one an idle gateway kept from before the model's
  // workers joined, so a pass that finds nothing on an older list reads
  // the registry again (RefreshNow) and looks once more. (Unreadable:
  // UNAVAILABLE, retried.)
  for (bool fresh = false;; fresh = true) {
    bool all_known = true;
    auto workers = Models(ctx, tenant, &all_known);
    if (!workers.ok()) return workers.status();
    const absl::Time now = SteadyNow();
    std::optional<v1::Model> best;
    bool seen_lately = false;
    {
      absl::MutexLock lock(&models_mu_);
      for (const WorkerModels& w : *workers) {
        for (const v1::Model& m : w.models) model_ids_seen_[m.model_id()] = now;
      }
      std::erase_if(model_ids_seen_, [&](const auto& entry) {
        return entry.second < now - options_.router.served_memory;
      });
      seen_lately = model_ids_seen_.count(model_id) != 0;
    }
    for (v1::Model& m : MergeModels(*workers)) {  // by (id, fingerprint)
      if (m.model_id() == model_id &&
          (!best.has_value() || m.workers() > best->workers())) {
        best = std::move(m);
      }
    }
    if (best.has_value()) {
      if (elsewhere != nullptr) {
        for (const WorkerModels& w : *workers) {
          bool weights = false, id = false;
          for (const v1::Model& m : w.models) {
            if (m.fingerprint() != best->fingerprint()) continue;
            weights = true;
            id = id || m.model_id() == model_id;
          }
          if (weights && !id) elsewhere->insert(w.worker.worker_id);
        }
      }
      return *std::move(best);
    }
    if (all_known && !seen_lately) {
      if (fresh) return ModelNotFound(model_id);
      if (router_.RefreshNow().ok()) continue;
    }
    // Typed as the router's other "no worker now" answer (OVERLOADED with
    // retry_after_ms), with the model named.
    absl::Status none = router_.NoWorker(absl::StrCat(
        "no ready worker serves model \"", model_id, "\" now, but one may: ",
        seen_lately ? "it was served lately (restarting?)"
                    : "a worker's models are not known yet (one did not "
                      "answer ListModels in time)"));
    return MakeError(
        absl::StatusCode::kUnavailable, Reason::kOverloaded, none.message(),
        {{"model_id", model_id},
         {"retry_after_ms",
          GetErrorMetadata(none, "retry_after_ms").value_or("1000")}});
  }
}

std::shared_ptr<grpc::Channel> Gateway::Channel(const std::string& address) {
  absl::MutexLock lock(&mu_);
  ChannelEntry& entry = channels_[address];
  entry.used = SteadyNow();
  channel_count_.store(static_cast<int64_t>(channels_.size()));
  std::shared_ptr<grpc::Channel>& channel = entry.channel;
  if (channel == nullptr) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options_.max_message_bytes);
    args.SetMaxSendMessageSize(options_.max_message_bytes);
    // Reconnect to a restarted worker quickly.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // While calls are open, an HTTP/2 ping every half stall timeout, and a
    // connection whose pings go unanswered for a stall timeout fails its
    // calls (UNAVAILABLE: they fail over). A paused or partitioned worker's
    // kernel may still acknowledge TCP, so without this a Generate or a
    // unary call to it would wait forever; Append has its own watchdog.
    // The workers accept pings this often (Server::Start).
    const int64_t stall_ms = std::clamp<int64_t>(
        absl::ToInt64Milliseconds(options_.upstream_stall_timeout), 1000,
        int64_t{1} << 30);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(stall_ms / 2));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(stall_ms));
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    // A connection attempt gets as long (gRPC's default is 20 s): a paused
    // worker's kernel accepts the TCP connection, and the HTTP/2 handshake
    // then never completes.
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(stall_ms));
    SetServerName(options_.worker_tls, &args);
    channel = grpc::CreateCustomChannel(address, worker_credentials_, args);
  }
  return channel;
}

bool Gateway::RefusedFast(const std::shared_ptr<grpc::Channel>& channel,
                          const grpc::CallbackServerContext& ctx) {
  const auto start = std::chrono::system_clock::now();
  const auto bound = std::min(
      ctx.deadline(), start + absl::ToChronoMilliseconds(kQuickConnectFailure));
  grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE ||
        state == GRPC_CHANNEL_SHUTDOWN) {
      return true;
    }
    // IDLE or CONNECTING. Short waits notice a cancelled caller.
    const auto now = std::chrono::system_clock::now();
    if (ctx.IsCancelled() || now >= bound) return false;
    channel->WaitForStateChange(
        state, std::min(bound, now + std::chrono::milliseconds(100)));
    state = channel->GetState(/*try_to_connect=*/true);
  }
  return false;
}

bool Gateway::SkipsAttempt(bool refused_fast,
                           const std::shared_ptr<grpc::Channel>& channel,
                           int* skips) {
  if (!refused_fast ||
      channel->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY) {
    return false;
  }
  return ++*skips <= kMaxUnreachableSkips;
}

absl::StatusOr<std::string> Gateway::Tenant(
    const grpc::CallbackServerContext& ctx) {
  return options_.auth.Authenticate(
      ClientMetadata(ctx, "authorization"),
      ClientMetadata(ctx, "x-statestream-tenant"));
}

std::unique_ptr<grpc::ClientContext> Gateway::UpstreamContext(
    const grpc::CallbackServerContext& ctx, const std::string& tenant,
    int attempt) {
  return Forwarding(grpc::ClientContext::FromCallbackServerContext(ctx), tenant,
                    attempt);
}

std::unique_ptr<grpc::ClientContext> Gateway::UpstreamContext(
    const std::string& tenant, int attempt) {
  return Forwarding(std::make_unique<grpc::ClientContext>(), tenant, attempt);
}

std::unique_ptr<grpc::ClientContext> Gateway::Forwarding(
    std::unique_ptr<grpc::ClientContext> client, const std::string& tenant,
    int attempt) {
  client->AddMetadata("x-statestream-tenant", tenant);
  // The workers hand the tenant's session limit to the store with each
  // create, which holds it atomically across gateways.
  if (options_.limits != nullptr) {
    if (const int max = options_.limits->For(tenant).max_sessions; max > 0) {
      client->AddMetadata(kSessionLimitHeader, absl::StrCat(max));
    }
  }
  if (options_.internal_token.configured()) {
    client->AddMetadata(kInternalTokenHeader, options_.internal_token.value());
  }
  client->AddMetadata("x-statestream-forwarded-by", options_.gateway_id);
  client->AddMetadata("x-statestream-attempt", absl::StrCat(attempt));
  return client;
}

bool Gateway::AdmitCall() {
  absl::MutexLock lock(&threads_mu_);
  if (calls_ >= options_.max_calls) return false;
  ++calls_;
  return true;
}

void Gateway::ReleaseCall() {
  absl::MutexLock lock(&threads_mu_);
  --calls_;
}

bool Gateway::Detach(std::function<void()> fn) {
  absl::MutexLock lock(&threads_mu_);
  tasks_.push_back(std::move(fn));
  // An idle thread takes it, or a busy one once its task ends.
  if (static_cast<int>(tasks_.size()) <= idle_ ||
      threads_ >= options_.max_task_threads) {
    return true;
  }
  ++threads_;
  try {
    std::thread([this] { TaskLoop(); }).detach();
  } catch (const std::system_error&) {  // out of threads (a pids limit)
    --threads_;
    if (threads_ > 0) return true;  // queued for the running ones
    tasks_.pop_back();
    return false;
  }
  return true;
}

void Gateway::TaskLoop() {
  threads_mu_.Lock();
  for (;;) {
    if (tasks_.empty()) {
      ++idle_;
      auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(threads_mu_) {
        return !tasks_.empty() || tasks_stopping_;
      };
      threads_mu_.AwaitWithTimeout(absl::Condition(&woken), kTaskIdle);
      --idle_;
      if (tasks_.empty()) break;  // idle too long, or the gateway stops
    }
    std::function<void()> fn = std::move(tasks_.front());
    tasks_.pop_front();
    threads_mu_.Unlock();
    fn();
    fn = nullptr;  // what it holds goes before the destructor may return
    threads_mu_.Lock();
  }
  --threads_;
  threads_mu_.Unlock();
}

bool Gateway::Spawn(std::function<void()> fn) {
  if (!AdmitCall()) return false;
  if (!Detach([this, fn = std::move(fn)] {
        fn();
        ReleaseCall();
      })) {
    ReleaseCall();
    return false;
  }
  return true;
}

grpc::Status Gateway::Refused() {
  return ToGrpcStatus(
      MakeError(absl::StatusCode::kResourceExhausted, Reason::kOverloaded,
                "the gateway is serving as many calls as it can; retry later",
                {{"retry_after_ms", "100"}}));
}

void Gateway::Watch(Watched* call) {
  absl::MutexLock lock(&mu_);
  watched_.insert(call);
}

void Gateway::Unwatch(Watched* call) {
  absl::MutexLock lock(&mu_);
  watched_.erase(call);
}

// On the steady clock throughout: a wall clock stepped forward would make
// every call in flight look stalled (and move or cut it off), one stepped
// back would stop the watch for as long.
void Gateway::WatchdogLoop() {
  absl::MutexLock lock(&mu_);
  auto stopping = [this]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
  while (!watchdog_wake_.Await(&mu_, stopping, absl::Milliseconds(100))) {
    const absl::Time now = SteadyNow();
    // Under mu_: a call unwatches itself before it goes away.
    for (Watched* call : watched_) call->Check(now);
    SweepChannels(now);
  }
}

void Gateway::SweepChannels(absl::Time now) {
  const absl::Duration idle = options_.idle_channel_timeout;
  if (now - channels_swept_ < std::min(absl::Minutes(1), idle / 2)) return;
  channels_swept_ = now;
  for (auto it = channels_.begin(); it != channels_.end();) {
    // use_count 1: only this map holds it, no call is using the channel.
    if (now - it->second.used > idle && it->second.channel.use_count() == 1) {
      it = channels_.erase(it);
    } else {
      ++it;
    }
  }
  channel_count_.store(static_cast<int64_t>(channels_.size()));
}

bool Gateway::ClientGone(const grpc::CallbackServerContext& ctx) {
  return !GoneBeforeStart(ctx).ok();
}

grpc::Status Gateway::GoneBeforeStart(const grpc::CallbackServerContext& ctx) {
  if (std::chrono::system_clock::now() >= ctx.deadline()) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        "the deadline passed before the call started");
  }
  if (ctx.IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the client went away before the call started");
  }
  return grpc::Status::OK;
}

bool Gateway::ShouldFailover(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE: {
      // Transport failures carry no ErrorInfo; a worker that is leaving
      // (draining, shutting down) says so with stopping=true (a worker
      // from before the key: by its message).
      if (status.error_details().empty()) return true;
      return GetErrorMetadata(FromGrpcStatus(status), "stopping") == "true" ||
             status.error_message() == "the worker is draining";
    }
    case grpc::StatusCode::CANCELLED:  // the worker shut down (or stalled)
      return true;
    case grpc::StatusCode::ABORTED:
      return GetReason(FromGrpcStatus(status)) == Reason::kFenced;
    default:
      return false;
  }
}

bool Gateway::WorkerFailed(const grpc::Status& status) {
  return ShouldFailover(status) &&
         status.error_code() != grpc::StatusCode::ABORTED;
}

namespace {

ThrottledLog& RefusalLog() {
  static ThrottledLog* log = new ThrottledLog("statestream gateway: ");
  return *log;
}

ThrottledLog& GaveUpLog() {
  static ThrottledLog* log = new ThrottledLog("statestream gateway: ");
  return *log;
}

}  // namespace

grpc::Status Gateway::FromWorker(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNAUTHENTICATED) return status;
  RefusalLog().Say([&] {
    return absl::StrCat(
        "a worker refused this gateway: ", status.error_message(),
        " (check --internal-token-file and the worker TLS flags)");
  });
  return ToGrpcStatus(MakeError(
      absl::StatusCode::kInternal, Reason::kInternal,
      "a worker refused this gateway's credentials (the cluster's internal "
      "token or certificates are misconfigured); not your API key"));
}

grpc::Status Gateway::GaveUp(const grpc::Status& last) {
  const std::string code = absl::StatusCodeToString(
      static_cast<absl::StatusCode>(last.error_code()));
  std::string said;
  if (last.error_details().empty()) {
    // A transport failure ("failed to connect to all addresses; ...
    // ipv4:10.0.3.7:50051: Connection refused"): the worker's address is
    // the cluster's, not the caller's to see. The log has it.
    said = absl::StrCat("the last one tried did not answer (", code, ")");
    GaveUpLog().Say([&] {
      return absl::StrCat(
          "gave up on a call: the last worker tried did not answer: ", code,
          ": ", last.error_message());
    });
  } else {
    said = absl::StrCat("the last answered ", code, ": ", last.error_message());
  }
  return ToGrpcStatus(MakeError(
      absl::StatusCode::kUnavailable, Reason::kOverloaded,
      absl::StrCat("no worker could complete the call (", said, "); retry"),
      {{"retry_after_ms", "200"}}));
}

absl::StatusOr<std::shared_ptr<TenantLimits::StreamSlot>> HoldStreamSlot(
    Gateway* gateway, const std::string& tenant) {
  TenantLimits* limits = gateway->options().limits.get();
  if (limits == nullptr) return nullptr;
  auto slot = limits->AcquireStream(tenant);
  if (!slot.ok()) return slot.status();
  return std::make_shared<TenantLimits::StreamSlot>(*std::move(slot));
}

}  // namespace statestream::gateway

namespace statestream {

absl::StatusOr<ServiceSet> GatewayServices(const GatewayOptions& options,
                                           std::shared_ptr<StateStore> store) {
  if (store == nullptr && options.router.static_workers.empty()) {
    return absl::InvalidArgumentError(
        "a gateway needs a registry (Redis) or a static worker list");
  }
  auto gw = std::make_shared<gateway::Gateway>(options, store.get());
  ServiceSet set;
  // A gateway has nothing of its own to save: once the shutdown grace is
  // over, its lookups and registry reads on a hung Redis fail at once.
  // First its streams' slots in the store go, as they are about to be
  // cancelled (their clients may resume through another gateway at once).
  if (TenantLimits* limits = options.limits.get(); limits != nullptr) {
    set.OnInterrupt([limits] { limits->ReleaseStoreSlots(); });
  }
  if (StateStore* s = store.get(); s != nullptr) {
    set.OnInterrupt([s] { s->Interrupt(); });
  }
  set.Own(std::move(store));  // destroyed after the gateway's threads end
  set.Add(v1::Sessions::service_full_name(),
          gateway::NewSessionsService(gw.get()));
  set.Add(v1::Streams::service_full_name(),
          gateway::NewStreamsService(gw.get()));
  set.Add(v1::Models::service_full_name(), gateway::NewModelsService(gw.get()));
  set.Own(std::move(gw));
  return set;
}

}  // namespace statestream
