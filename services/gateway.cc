// SPDX-License-Identifier: Apache-2.0
// The gateway's shared machinery (channels, tenants, threads, the stall
// watchdog, unary failover) and its Sessions and Models services.
#include "services/gateway.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/gateway_internal.h"
#include "services/tls.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::gateway {

Gateway::Gateway(GatewayOptions options, StateStore* store)
    : options_(std::move(options)), router_(store, options_.router) {
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
    return g;
  });
  watchdog_ = std::thread([this] { WatchdogLoop(); });
}

Gateway::~Gateway() {
  metrics_->SetGaugeSource(nullptr);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    mu_.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &threads_));
  }
  watchdog_.join();
}

absl::Time Gateway::BeginCall() {
  calls_active_.fetch_add(1);
  return absl::Now();
}

void Gateway::EndCall(const std::string& method, const grpc::Status& status,
                      absl::Time began) {
  calls_active_.fetch_sub(1);
  const absl::Status st = FromGrpcStatus(status);
  const Reason reason = GetReason(st);
  metrics_->ObserveCall(
      method, absl::StatusCodeToString(st.code()),
      reason == Reason::kUnspecified ? "" : std::string(ReasonName(reason)),
      absl::Now() - began);
}

void Gateway::CountRoute(const absl::StatusOr<Route>& route, int attempt) {
  using D = GatewayMetrics::RouteDecision;
  if (!route.ok()) {
    metrics_->IncRoute(D::kNoWorker);
  } else if (attempt > 1) {
    metrics_->IncRoute(D::kRetry);
  } else {
    metrics_->IncRoute(route->owner ? D::kOwner : D::kRendezvous);
  }
}

absl::StatusOr<std::vector<Gateway::WorkerModels>> Gateway::Models(
    const grpc::CallbackServerContext& ctx, const std::string& tenant) {
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
      if (it != models_.end()) {
        // A suspect (one failed call) still serves its models: the router
        // falls back to suspects, so its models stay known, not NOT_FOUND.
        out.push_back({w, it->second});
        continue;
      }
    }
    if (router_.IsSuspect(w.worker_id)) continue;  // not asked while suspect
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
    return absl::UnavailableError("no ready worker answered ListModels");
  }
  return out;
}

std::shared_ptr<grpc::Channel> Gateway::Channel(const std::string& address) {
  absl::MutexLock lock(&mu_);
  ChannelEntry& entry = channels_[address];
  entry.used = absl::Now();
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
    auto credentials = MakeChannelCredentials(options_.worker_tls, &args);
    channel = grpc::CreateCustomChannel(address, credentials, args);
  }
  return channel;
}

absl::StatusOr<std::string> Gateway::Tenant(
    const grpc::CallbackServerContext& ctx) {
  const auto& md = ctx.client_metadata();
  auto get = [&md](const char* key) -> std::optional<absl::string_view> {
    auto it = md.find(key);
    if (it == md.end()) return std::nullopt;
    return absl::string_view(it->second.data(), it->second.size());
  };
  return options_.auth.Authenticate(get("authorization"),
                                    get("x-statestream-tenant"));
}

std::unique_ptr<grpc::ClientContext> Gateway::UpstreamContext(
    const grpc::CallbackServerContext& ctx, const std::string& tenant,
    int attempt) {
  auto client = grpc::ClientContext::FromCallbackServerContext(ctx);
  client->AddMetadata("x-statestream-tenant", tenant);
  if (options_.internal_token.configured()) {
    client->AddMetadata(kInternalTokenHeader, options_.internal_token.value());
  }
  client->AddMetadata("x-statestream-forwarded-by", options_.gateway_id);
  client->AddMetadata("x-statestream-attempt", absl::StrCat(attempt));
  return client;
}

bool Gateway::Spawn(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (threads_ >= options_.max_calls) return false;
    ++threads_;
  }
  try {
    std::thread([this, fn = std::move(fn)] {
      fn();
      absl::MutexLock lock(&mu_);
      --threads_;
    }).detach();
  } catch (const std::system_error&) {  // out of threads (a pids limit)
    absl::MutexLock lock(&mu_);
    --threads_;
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

void Gateway::WatchdogLoop() {
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                               absl::Milliseconds(100))) {
    const absl::Time now = absl::Now();
    // Under mu_: a call unwatches itself before it goes away.
    for (Watched* call : watched_) call->CheckStall(now);
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

bool Gateway::ShouldFailover(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE: {
      // Transport failures carry no ErrorInfo; a draining worker says so.
      if (status.error_details().empty()) return true;
      return status.error_message() == "the worker is draining";
    }
    case grpc::StatusCode::CANCELLED:  // the worker shut down (or stalled)
      return true;
    case grpc::StatusCode::ABORTED:
      return GetReason(FromGrpcStatus(status)) == Reason::kFenced;
    default:
      return false;
  }
}

grpc::Status Gateway::FromWorker(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNAUTHENTICATED) return status;
  std::cerr << "statestream gateway: a worker refused this gateway: "
            << status.error_message()
            << " (check --internal-token-file and the worker TLS flags)\n";
  return ToGrpcStatus(MakeError(
      absl::StatusCode::kInternal, Reason::kInternal,
      "a worker refused this gateway's credentials (the cluster's internal "
      "token or certificates are misconfigured); not your API key"));
}

grpc::Status Gateway::GaveUp(const grpc::Status& last) {
  return ToGrpcStatus(MakeError(
      absl::StatusCode::kUnavailable, Reason::kOverloaded,
      absl::StrCat("no worker could complete the call (the last answered ",
                   absl::StatusCodeToString(
                       static_cast<absl::StatusCode>(last.error_code())),
                   ": ", last.error_message(), "); retry"),
      {{"retry_after_ms", "200"}}));
}

absl::StatusOr<std::shared_ptr<TenantLimits::StreamSlot>> HoldStreamSlot(
    Gateway* gateway, const grpc::CallbackServerContext& ctx) {
  TenantLimits* limits = gateway->options().limits.get();
  if (limits == nullptr) return nullptr;
  auto tenant = gateway->Tenant(ctx);
  if (!tenant.ok()) return tenant.status();
  auto slot = limits->AcquireStream(*tenant);
  if (!slot.ok()) return slot.status();
  return std::make_shared<TenantLimits::StreamSlot>(*std::move(slot));
}

grpc::Status ForwardWithFailover(
    Gateway* gateway, const grpc::CallbackServerContext& ctx,
    const Target& target,
    const std::function<grpc::Status(const std::shared_ptr<grpc::Channel>&,
                                     grpc::ClientContext*)>& call,
    int* attempts, const bool* settled) {
  auto tenant = gateway->Tenant(ctx);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  std::set<std::string> exclude;
  grpc::Status last;
  for (int attempt = 1; attempt <= gateway->options().max_attempts; ++attempt) {
    absl::StatusOr<Route> route =
        target.session_id.empty()
            ? gateway->router().RouteAny(
                  absl::StrCat(*tenant, "/", target.hash_key),
                  target.fingerprint, exclude)
            : gateway->router().RouteSession({*tenant, target.session_id},
                                             exclude);
    gateway->CountRoute(route, attempt);
    if (!route.ok()) {
      return attempt == 1 ? ToGrpcStatus(route.status())
                          : Gateway::GaveUp(last);
    }
    auto client = gateway->UpstreamContext(ctx, *tenant, attempt);
    if (attempts != nullptr) *attempts = attempt;
    last = call(gateway->Channel(route->address), client.get());
    if (!Gateway::ShouldFailover(last) || ctx.IsCancelled() ||
        (settled != nullptr && *settled)) {
      return Gateway::FromWorker(last);
    }
    gateway->router().MarkSuspect(route->worker_id);
    exclude.insert(route->worker_id);
    if (attempt < gateway->options().max_attempts) {
      gateway->metrics().IncFailover(target.method);
    }
  }
  return Gateway::GaveUp(last);
}

namespace {

// The models of all ready workers merged by (model_id, fingerprint),
// ordered by model_id.
std::vector<v1::Model> MergeModels(
    const std::vector<Gateway::WorkerModels>& workers) {
  std::map<std::pair<std::string, std::string>, v1::Model> merged;
  for (const auto& w : workers) {
    for (const v1::Model& m : w.models) {
      auto [it, fresh] = merged.try_emplace({m.model_id(), m.fingerprint()}, m);
      v1::Model& out = it->second;
      if (fresh) {
        out.clear_backends();
        out.set_workers(0);
      }
      out.set_workers(out.workers() + 1);
      for (int b : m.backends()) {
        if (std::find(out.backends().begin(), out.backends().end(), b) ==
            out.backends().end()) {
          out.add_backends(static_cast<v1::Backend>(b));
        }
      }
    }
  }
  std::vector<v1::Model> out;
  for (auto& [key, m] : merged) {
    std::sort(m.mutable_backends()->begin(), m.mutable_backends()->end());
    out.push_back(std::move(m));
  }
  return out;
}

absl::Status ModelNotFound(const std::string& model_id) {
  return MakeError(
      absl::StatusCode::kNotFound, Reason::kModelNotFound,
      absl::StrCat("no ready worker serves model \"", model_id, "\""),
      {{"model_id", model_id}});
}

}  // namespace

namespace {

using v1::Sessions;

// OK, or TENANT_LIMIT when the caller's tenant may not create another
// session (services/tenants.h). A create whose session exists already (a
// retry of one that succeeded: under `session_id`, or for a generated id
// the one derived from `request_id`) passes, for the worker to answer.
grpc::Status SessionQuota(Gateway* gateway,
                          const grpc::CallbackServerContext& ctx,
                          const std::string& session_id,
                          const std::string& request_id) {
  TenantLimits* limits = gateway->options().limits.get();
  if (limits == nullptr) return grpc::Status::OK;
  auto tenant = gateway->Tenant(ctx);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  // The workers' request-id window decides whether a derived id's session
  // is this request's.
  return ToGrpcStatus(limits->CheckNewCreate(
      *tenant, session_id, request_id, gateway->options().request_id_window));
}

// Every rpc is one line: route key and the stub method.
#define SS_FORWARD(Service, Method, session_expr, hash_expr)                  \
  ForwardUnary(                                                               \
      gateway_, ctx, req, resp, Target{#Method, session_expr, hash_expr, ""}, \
      [](const std::shared_ptr<grpc::Channel>& channel,                       \
         grpc::ClientContext* client, const auto& request, auto* response) {  \
        return v1::Service::NewStub(channel)->Method(client, request,         \
                                                     response);               \
      })

class SessionsService final : public v1::Sessions::CallbackService {
 public:
  explicit SessionsService(Gateway* gateway) : gateway_(gateway) {}

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx,
                                          const v1::CreateSessionRequest* req,
                                          v1::Session* resp) override {
    // A new session has no owner: rendezvous of its id (or, for a
    // server-generated id, of the request id, so retries land together)
    // among the workers serving its model; a fork goes where its source
    // lives.
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    const absl::Time began = gateway_->BeginCall();
    if (!gateway_->Spawn([this, ctx, req, resp, reactor, began] {
          grpc::Status status = CreateSessionOnWorker(*ctx, *req, resp);
          gateway_->EndCall("CreateSession", status, began);
          reactor->Finish(status);
        })) {
      gateway_->EndCall("CreateSession", Gateway::Refused(), began);
      reactor->Finish(Gateway::Refused());
    }
    return reactor;
  }
  grpc::Status CreateSessionOnWorker(const grpc::CallbackServerContext& ctx,
                                     const v1::CreateSessionRequest& req,
                                     v1::Session* resp) {
    grpc::Status quota =
        SessionQuota(gateway_, ctx, req.session_id(), req.request_id());
    if (!quota.ok()) return quota;
    Target target{
        "CreateSession", "",
        req.session_id().empty() ? req.request_id() : req.session_id(), ""};
    if (!req.model_id().empty()) {
      auto tenant = gateway_->Tenant(ctx);
      if (!tenant.ok()) return ToGrpcStatus(tenant.status());
      auto workers = gateway_->Models(ctx, *tenant);
      if (!workers.ok()) return ToGrpcStatus(workers.status());
      // The fingerprint most ready workers serve under that id.
      uint32_t best = 0;
      for (const v1::Model& m : MergeModels(*workers)) {
        if (m.model_id() == req.model_id() && m.workers() > best) {
          best = m.workers();
          target.fingerprint = m.fingerprint();
        }
      }
      if (target.fingerprint.empty()) {
        return ToGrpcStatus(ModelNotFound(req.model_id()));
      }
    } else if (req.has_fork_from() && !req.fork_from().session_id().empty()) {
      target.session_id = req.fork_from().session_id();
    }
    return ForwardWithFailover(
        gateway_, ctx, target,
        [&](const std::shared_ptr<grpc::Channel>& channel,
            grpc::ClientContext* client) {
          return Sessions::NewStub(channel)->CreateSession(client, req, resp);
        });
  }

  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx,
                                       const v1::GetSessionRequest* req,
                                       v1::Session* resp) override {
    return SS_FORWARD(Sessions, GetSession, req->session_id(), "");
  }
  grpc::ServerUnaryReactor* ListSessions(
      grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest* req,
      v1::ListSessionsResponse* resp) override {
    return SS_FORWARD(Sessions, ListSessions, "", "list");
  }
  grpc::ServerUnaryReactor* UpdateSession(grpc::CallbackServerContext* ctx,
                                          const v1::UpdateSessionRequest* req,
                                          v1::Session* resp) override {
    return SS_FORWARD(Sessions, UpdateSession, req->session_id(), "");
  }
  grpc::ServerUnaryReactor* DeleteSession(
      grpc::CallbackServerContext* ctx, const v1::DeleteSessionRequest* req,
      v1::DeleteSessionResponse* resp) override {
    return SS_FORWARD(Sessions, DeleteSession, req->session_id(), "");
  }
  grpc::ServerUnaryReactor* ListVersions(
      grpc::CallbackServerContext* ctx, const v1::ListVersionsRequest* req,
      v1::ListVersionsResponse* resp) override {
    return SS_FORWARD(Sessions, ListVersions, req->session_id(), "");
  }
  grpc::ServerUnaryReactor* RollbackSession(
      grpc::CallbackServerContext* ctx, const v1::RollbackSessionRequest* req,
      v1::Session* resp) override {
    return SS_FORWARD(Sessions, RollbackSession, req->session_id(), "");
  }

  // Server streaming: resent to another worker only before the first
  // message reached the client.
  grpc::ServerWriteReactor<v1::ExportStateResponse>* ExportState(
      grpc::CallbackServerContext* ctx,
      const v1::ExportStateRequest* req) override {
    auto* writer = new BlockingWriter<v1::ExportStateResponse>();
    const absl::Time began = gateway_->BeginCall();
    const bool spawned = gateway_->Spawn([this, ctx, req, writer, began] {
      bool delivered = false;
      grpc::Status st = ForwardWithFailover(
          gateway_, *ctx, Target{"ExportState", req->session_id(), "", ""},
          [&](const std::shared_ptr<grpc::Channel>& channel,
              grpc::ClientContext* client) {
            auto reader = Sessions::NewStub(channel)->ExportState(client, *req);
            v1::ExportStateResponse msg;
            while (reader->Read(&msg)) {
              delivered = true;
              if (!writer->Write(msg)) client->TryCancel();
            }
            grpc::Status s = reader->Finish();
            if (delivered && !s.ok() && Gateway::ShouldFailover(s)) {
              return ToGrpcStatus(MakeError(absl::StatusCode::kUnavailable,
                                            Reason::kOverloaded,
                                            "worker lost during export; retry",
                                            {{"retry_after_ms", "200"}}));
            }
            return s;
          },
          nullptr, &delivered);
      gateway_->EndCall("ExportState", st, began);
      writer->Finish(st);
      writer->Release();
    });
    if (!spawned) {
      gateway_->EndCall("ExportState", Gateway::Refused(), began);
      writer->Finish(Gateway::Refused());
      writer->Release();
    }
    return writer;
  }

  // Client streaming: the whole import (at most one state) is read first,
  // so it can be resent to another worker.
  grpc::ServerReadReactor<v1::ImportStateRequest>* ImportState(
      grpc::CallbackServerContext* ctx, v1::Session* resp) override {
    class Reader final
        : public Blocking<grpc::ServerReadReactor<v1::ImportStateRequest>> {
     public:
      bool Read(v1::ImportStateRequest* msg) {
        {
          absl::MutexLock lock(&mu_);
          reading_ = true;
        }
        StartRead(msg);
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](bool* p) { return !*p; }, &reading_));
        return ok_;
      }
      void OnReadDone(bool ok) override {
        absl::MutexLock lock(&mu_);
        ok_ = ok;
        reading_ = false;
      }

     private:
      absl::Mutex mu_;
      bool reading_ ABSL_GUARDED_BY(mu_) = false;
      bool ok_ ABSL_GUARDED_BY(mu_) = false;
    };
    auto* reader = new Reader();
    const absl::Time began = gateway_->BeginCall();
    // The caller is authenticated, and within its tenant's stream limit,
    // before a byte is read: the import is buffered whole.
    const absl::StatusOr<std::string> tenant = gateway_->Tenant(*ctx);
    absl::StatusOr<std::shared_ptr<TenantLimits::StreamSlot>> slot =
        tenant.ok() ? HoldStreamSlot(gateway_, *ctx) : tenant.status();
    if (!slot.ok()) {
      const grpc::Status st = ToGrpcStatus(slot.status());
      gateway_->EndCall("ImportState", st, began);
      reader->Finish(st);
      reader->Release();
      return reader;
    }
    const bool spawned = gateway_->Spawn([this, ctx, resp, reader, began,
                                          slot = *std::move(slot)]() mutable {
      // Kept whole for a replay on failover, so bounded: no more state
      // bytes than the header announces (the worker refuses more anyway)
      // nor than the gateway's limit. A stream that breaks either ends at
      // once, before the gateway has buffered it.
      std::vector<v1::ImportStateRequest> parts;
      v1::ImportStateRequest msg;
      uint64_t bytes = 0, kept = 0;
      absl::Status bad;
      while (bad.ok() && reader->Read(&msg)) {
        // What the message holds in memory, an empty one included.
        kept += msg.ByteSizeLong() + sizeof(msg);
        if (parts.empty() != msg.has_header()) {
          bad = InvalidArgumentError(
              Reason::kInvalidArgument,
              "header: the first message must be the header, and only it");
        } else if (!msg.has_header() && !msg.has_chunk()) {
          bad = InvalidArgumentError(
              Reason::kInvalidArgument,
              "chunk: every message after the header must carry a chunk");
        } else if (msg.has_chunk()) {
          bytes += msg.chunk().data().size();
          if (bytes > parts[0].header().state().total_bytes()) {
            bad = DataLossError(
                Reason::kStateCorrupt,
                absl::StrCat("more state bytes than the header's total_bytes ",
                             parts[0].header().state().total_bytes()));
          }
        }
        if (bad.ok() && kept > static_cast<uint64_t>(
                                   gateway_->options().max_import_bytes)) {
          bad = MakeError(
              absl::StatusCode::kInvalidArgument, Reason::kMessageTooLarge,
              absl::StrCat("the import is larger than the gateway takes (",
                           gateway_->options().max_import_bytes, " bytes)"),
              {{"field", "chunk"},
               {"limit", absl::StrCat(gateway_->options().max_import_bytes)}});
        }
        parts.push_back(std::move(msg));
      }
      if (!bad.ok()) {
        const grpc::Status st = ToGrpcStatus(bad);
        gateway_->EndCall("ImportState", st, began);
        slot.reset();
        reader->Finish(st);
        reader->Release();
        return;
      }
      // A new version goes to the session's owner; a new session to a
      // worker serving the state's model (rendezvous of its id, or of the
      // request id for a generated one, so retries land together).
      Target target{"ImportState", "", "", ""};
      grpc::Status quota;
      if (!parts.empty() && parts[0].has_header()) {
        const auto& header = parts[0].header();
        if (header.mode() == v1::IMPORT_MODE_NEW_VERSION) {
          target.session_id = header.session_id();
        } else {
          target.hash_key = header.session_id().empty() ? header.request_id()
                                                        : header.session_id();
          target.fingerprint = header.state().model_fingerprint();
          quota = SessionQuota(gateway_, *ctx, header.session_id(),
                               header.request_id());
        }
      }
      grpc::Status st =
          !quota.ok()
              ? quota
              : ForwardWithFailover(
                    gateway_, *ctx, target,
                    [&](const std::shared_ptr<grpc::Channel>& channel,
                        grpc::ClientContext* client) {
                      auto writer =
                          Sessions::NewStub(channel)->ImportState(client, resp);
                      for (const auto& part : parts) {
                        if (!writer->Write(part)) break;
                      }
                      writer->WritesDone();
                      return writer->Finish();
                    });
      gateway_->EndCall("ImportState", st, began);
      slot.reset();  // the client may open its next stream at once
      reader->Finish(st);
      reader->Release();
    });
    if (!spawned) {
      gateway_->EndCall("ImportState", Gateway::Refused(), began);
      reader->Finish(Gateway::Refused());
      reader->Release();
    }
    return reader;
  }

 private:
  Gateway* const gateway_;
};

class ModelsService final : public v1::Models::CallbackService {
 public:
  explicit ModelsService(Gateway* gateway) : gateway_(gateway) {}

  // Both answered from the models of all ready workers (see gateway.h).
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* resp) override {
    return Answer(ctx, "ListModels", [resp](std::vector<v1::Model> models) {
      for (auto& m : models) *resp->add_models() = std::move(m);
      return absl::OkStatus();
    });
  }
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* req,
                                     v1::Model* resp) override {
    return Answer(ctx, "GetModel", [req, resp](std::vector<v1::Model> models) {
      for (auto& m : models) {
        if (m.model_id() == req->model_id()) {
          *resp = std::move(m);
          return absl::OkStatus();
        }
      }
      return ModelNotFound(req->model_id());
    });
  }

 private:
  grpc::ServerUnaryReactor* Answer(
      grpc::CallbackServerContext* ctx, const char* method,
      std::function<absl::Status(std::vector<v1::Model>)> fill) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    const absl::Time began = gateway_->BeginCall();
    const bool spawned = gateway_->Spawn(
        [this, ctx, method, fill = std::move(fill), reactor, began] {
          grpc::Status status;
          auto tenant = gateway_->Tenant(*ctx);
          if (!tenant.ok()) {
            status = ToGrpcStatus(tenant.status());
          } else if (auto workers = gateway_->Models(*ctx, *tenant);
                     !workers.ok()) {
            status = ToGrpcStatus(workers.status());
          } else {
            status = ToGrpcStatus(fill(MergeModels(*workers)));
          }
          gateway_->EndCall(method, status, began);
          reactor->Finish(status);
        });
    if (!spawned) {
      gateway_->EndCall(method, Gateway::Refused(), began);
      reactor->Finish(Gateway::Refused());
    }
    return reactor;
  }

  Gateway* const gateway_;
};

#undef SS_FORWARD

}  // namespace
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
  set.Own(std::move(store));  // destroyed after the gateway's threads end
  set.Add(v1::Sessions::service_full_name(),
          std::make_unique<gateway::SessionsService>(gw.get()));
  set.Add(v1::Streams::service_full_name(),
          gateway::NewStreamsService(gw.get()));
  set.Add(v1::Models::service_full_name(),
          std::make_unique<gateway::ModelsService>(gw.get()));
  set.Own(std::move(gw));
  return set;
}

}  // namespace statestream
