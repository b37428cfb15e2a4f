// SPDX-License-Identifier: Apache-2.0
// Shared by the gateway's services (gateway.cc: the Gateway and wiring;
// gateway_sessions.cc, gateway_streams.cc, gateway_models.cc: the
// services; each call is forwarded by reactors: gateway_unary.cc,
// gateway_append.cc, gateway_generate.cc, gateway_export.cc,
// gateway_import.cc). Internal to services/.
#ifndef STATESTREAM_SERVICES_GATEWAY_INTERNAL_H_
#define STATESTREAM_SERVICES_GATEWAY_INTERNAL_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/byte_budget.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "services/gateway.h"
#include "services/gateway_metrics.h"
#include "services/gateway_router.h"
#include "statestream/v1/statestream.pb.h"

namespace statestream::gateway {

// A call the watchdog looks at every 100 ms (stalls, revoked keys).
class Watched {
 public:
  virtual ~Watched() = default;
  // Under the watchdog's lock: quick checks only, and nothing that waits
  // (Unwatch included); hand longer work to Gateway::Detach.
  virtual void Check(absl::Time now) = 0;
};

// Thread-safe.
class Gateway {
 public:
  Gateway(GatewayOptions options, StateStore* store);
  // Waits for every spawned thread to end.
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  const GatewayOptions& options() const { return options_; }
  GatewayRouter& router() { return router_; }
  GatewayMetrics& metrics() { return *metrics_; }
  // What the calls keep in memory (GatewayOptions::max_buffered_bytes).
  ByteBudget& buffers() { return buffers_; }

  // Bracket every forwarded call (calls_active gauge, per-method latency,
  // outcome and errors_total).
  absl::Time BeginCall();
  void EndCall(const std::string& method, const grpc::Status& status,
               absl::Time began);
  // Counts how an attempt's worker was chosen.
  void CountRoute(const absl::StatusOr<Route>& route, int attempt);

  // The models of every live, non-suspect worker, asked with ListModels
  // once per worker (id and address) and cached: a worker's models do not
  // change while it runs. A worker that does not answer within
  // models_timeout is left out (and marked suspect if unreachable).
  // UNAVAILABLE when no worker answered.
  struct WorkerModels {
    WorkerInfo worker;
    std::vector<v1::Model> models;
  };
  // `all_known` (optional) tells whether every live worker's models are
  // in the answer (none skipped as suspect or unreachable; one that
  // answered ListModels with an error counts as known, serving none).
  absl::StatusOr<std::vector<WorkerModels>> Models(
      const grpc::CallbackServerContext& ctx, const std::string& tenant,
      bool* all_known = nullptr);

  // The model `model_id` names in the cluster: of its fingerprints (two
  // during a rollout), the one most ready workers serve, ties to the
  // lowest, so GetModel describes what CreateSession binds. NOT_FOUND/
  // MODEL_NOT_FOUND only when every live worker's models are known and
  // none served the id within router.served_memory; otherwise (its
  // workers restarting, or one whose models are unknown) UNAVAILABLE, which
  // clients retry.
  // `elsewhere` (optional) gets the ids of the workers that serve the
  // model's weights under other ids only (a create of this id would fail
  // there: model ids are per worker, fingerprints shared).
  absl::StatusOr<v1::Model> ResolveModel(
      const grpc::CallbackServerContext& ctx, const std::string& tenant,
      const std::string& model_id, std::set<std::string>* elsewhere = nullptr);

  // One channel per worker address, created on first use.
  std::shared_ptr<grpc::Channel> Channel(const std::string& address);
  // Whether connecting `channel` to its worker failed within
  // kQuickConnectFailure (refused, or the handshake failed): a call made
  // on it then fails at once and reaches no worker (unless the channel is
  // READY after all: SkipsAttempt). False once connected, while still
  // connecting at that bound (a paused or partitioned worker: such waits
  // count as attempts), and when `ctx` is cancelled or past its deadline.
  static bool RefusedFast(const std::shared_ptr<grpc::Channel>& channel,
                          const grpc::CallbackServerContext& ctx);
  static constexpr absl::Duration kQuickConnectFailure = absl::Seconds(1);
  // Whether a failover from an attempt costs the call none: its channel
  // was RefusedFast and is still not READY after the call (so the call
  // went nowhere), and the call has had fewer than kMaxUnreachableSkips
  // such (counted in `skips`). After a burst of worker deaths the registry
  // lists dead workers until their heartbeats expire, and a call should
  // get past them to a live one.
  static bool SkipsAttempt(bool refused_fast,
                           const std::shared_ptr<grpc::Channel>& channel,
                           int* skips);
  static constexpr int kMaxUnreachableSkips = 32;
  // The caller's tenant (UNAUTHENTICATED as a grpc status on failure).
  absl::StatusOr<std::string> Tenant(const grpc::CallbackServerContext& ctx);
  // A context for one attempt towards a worker: the caller's deadline and
  // cancellation propagate; forwarding metadata set.
  std::unique_ptr<grpc::ClientContext> UpstreamContext(
      const grpc::CallbackServerContext& ctx, const std::string& tenant,
      int attempt);
  // The same metadata on a context of its own (a call the gateway makes
  // for a call of its client's, which may end meanwhile).
  std::unique_ptr<grpc::ClientContext> UpstreamContext(
      const std::string& tenant, int attempt);

  // Counts a call against options().max_calls until ReleaseCall. False
  // when that many are running: finish it with Refused().
  [[nodiscard]] bool AdmitCall();
  void ReleaseCall();
  // Runs `fn` on a task thread, outside the call count: a step of an
  // admitted call that may block (a store read). The threads
  // are started on demand up to options().max_task_threads and end after
  // kTaskIdle without work; beyond that many `fn` waits its turn. The
  // destructor waits for every task. False, with `fn` dropped, only when
  // no thread runs and none can be made.
  [[nodiscard]] bool Detach(std::function<void()> fn);
  static constexpr absl::Duration kTaskIdle = absl::Seconds(2);
  // AdmitCall, then `fn` on a Detach'ed thread, and ReleaseCall after it:
  // a call forwarded on a thread of its own. False, with `fn` dropped,
  // when either fails: the caller then finishes its call with Refused().
  [[nodiscard]] bool Spawn(std::function<void()> fn);
  // RESOURCE_EXHAUSTED/OVERLOADED with retry_after_ms: a call Spawn refused.
  static grpc::Status Refused();

  void Watch(Watched* call);
  void Unwatch(Watched* call);

  // Whether the call's own client cancelled it (or went away) or its
  // deadline passed. After an upstream CANCELLED, ctx may show that a
  // moment later: ReactorCall::RunAfterAttempt waits up to kCancelNotice.
  static bool ClientGone(const grpc::CallbackServerContext& ctx);
  // For a call's first task (it may have waited for a task thread): OK, or
  // the status to end with when the client is gone already (CANCELLED, or
  // DEADLINE_EXCEEDED), before the call takes a stream slot or reads the
  // store for nobody.
  static grpc::Status GoneBeforeStart(const grpc::CallbackServerContext& ctx);
  static constexpr absl::Duration kCancelNotice = absl::Milliseconds(250);

  // Whether a worker's answer means "try another worker" (see gateway.h).
  static bool ShouldFailover(const grpc::Status& status);
  // Whether such an answer says the worker itself failed (to be avoided a
  // while: GatewayRouter::MarkSuspect). ABORTED/FENCED does not: another
  // worker took that one session, and this one still serves the others.
  static bool WorkerFailed(const grpc::Status& status);
  // A worker's answer to ListModels that says it serves nothing this
  // gateway can use (an error it answered: an older build, a policy), not
  // that it could not answer (unreachable, too slow, busy).
  static bool AnsweredWithRefusal(const grpc::Status& status);
  // The model fingerprints `w` answered ListModels with, as cached (empty:
  // not asked yet). GatewayRouterOptions::fingerprints_of.
  std::vector<std::string> KnownFingerprints(const WorkerInfo& w);
  // The model with `fingerprint` as some worker answered ListModels, from
  // the cache only (nullopt: no cached answer has it).
  std::optional<v1::Model> CachedModel(const std::string& fingerprint);
  // What a call ends with when its last worker's answer still meant "try
  // another" but no attempt is left: UNAVAILABLE/OVERLOADED with
  // retry_after_ms (retry later), never a worker's CANCELLED (a client
  // would take it for its own cancellation) or the internal ABORTED/FENCED.
  // A transport failure's text (it names the worker's address) goes to the
  // gateway's log, not to the caller.
  static grpc::Status GaveUp(const grpc::Status& last);
  // A worker's final answer as the client gets it: UNAUTHENTICATED from a
  // worker means the worker refused this gateway (internal token or client
  // certificate), not the client's credentials, which the gateway already
  // accepted: INTERNAL/INTERNAL saying so (and logged). Else unchanged.
  static grpc::Status FromWorker(const grpc::Status& status);

 private:
  // Adds the forwarding metadata to `client`.
  std::unique_ptr<grpc::ClientContext> Forwarding(
      std::unique_ptr<grpc::ClientContext> client, const std::string& tenant,
      int attempt);
  void WatchdogLoop();
  // A task thread: runs tasks_ until none comes for kTaskIdle.
  void TaskLoop();
  // Closes the connections no call used for idle_channel_timeout (calls
  // still holding one keep it).
  void SweepChannels(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const GatewayOptions options_;
  GatewayRouter router_;
  ByteBudget buffers_;
  std::unique_ptr<GatewayMetrics> own_metrics_;  // when options_ has none
  GatewayMetrics* metrics_;
  std::atomic<int64_t> calls_active_{0};
  absl::Mutex models_mu_;
  // Keyed by worker id + "@" + address.
  std::map<std::string, std::vector<v1::Model>> models_
      ABSL_GUARDED_BY(models_mu_);
  // When each model id was last among the ready workers' (ResolveModel).
  std::map<std::string, absl::Time> model_ids_seen_ ABSL_GUARDED_BY(models_mu_);
  absl::Mutex mu_;
  struct ChannelEntry {
    std::shared_ptr<grpc::Channel> channel;
    absl::Time used;  // last handed to a call
  };
  // Every worker channel's (one watcher of the TLS files for all).
  const std::shared_ptr<grpc::ChannelCredentials> worker_credentials_;
  std::map<std::string, ChannelEntry> channels_ ABSL_GUARDED_BY(mu_);
  absl::Time channels_swept_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> channel_count_{0};  // channels_.size(), for the gauge
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  SteadyWaiter watchdog_wake_;  // told when stopping_ is set
  // Apart from mu_, which the watchdog holds while it checks calls.
  absl::Mutex threads_mu_;
  int calls_ ABSL_GUARDED_BY(threads_mu_) = 0;  // admitted, not released
  // Detach's: the task threads, those of them waiting for work, and the
  // tasks no thread has taken yet.
  int threads_ ABSL_GUARDED_BY(threads_mu_) = 0;
  int idle_ ABSL_GUARDED_BY(threads_mu_) = 0;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(threads_mu_);
  bool tasks_stopping_ ABSL_GUARDED_BY(threads_mu_) = false;
  std::set<Watched*> watched_ ABSL_GUARDED_BY(mu_);
  std::thread watchdog_;
};

// Where a call goes.
struct Target {
  std::string method;      // rpc name, for the metrics
  std::string session_id;  // non-empty: the session's owner (or its hash)
  std::string hash_key;    // else: rendezvous of tenant/hash_key ...
  // ... among workers serving this model ("" any); with session_id, the
  // model to route by when the store has no such session (an import).
  std::string fingerprint;
  // A session call any worker can answer from the store (it does not run
  // the model): when no live worker serves the session's model, another
  // one answers instead of UNAVAILABLE.
  bool any_model = false;
  // Workers never to route to (ids): those serving `fingerprint` under
  // another model id only, for a create by model id.
  std::set<std::string> unfit = {};
};

// Trailing metadata key: how many workers a streaming call used (1 = no
// failover). For operators and the fault tests.
inline constexpr char kAttemptsTrailer[] = "x-statestream-attempts";

// The stream slot of a caller authenticated as `tenant` (Append,
// Generate, ExportState, ImportState), held until the call ends (null
// without limits); TENANT_LIMIT otherwise. Each call authenticates in its
// Start (a hash lookup) and takes its slot on a task (this may wait on
// Redis).
absl::StatusOr<std::shared_ptr<TenantLimits::StreamSlot>> HoldStreamSlot(
    Gateway* gateway, const std::string& tenant);

// OK, or TENANT_LIMIT when `tenant` may not create another session
// (services/tenants.h). A create whose session exists already (a retry of
// one that succeeded: under `session_id`, or for a generated id the one
// derived from `request_id`) passes, for the worker to answer
// (gateway_sessions.cc).
grpc::Status SessionQuota(Gateway* gateway, const std::string& tenant,
                          const std::string& session_id,
                          const std::string& request_id);

// The models of all ready workers merged by (model_id, fingerprint),
// ordered by model_id (gateway_models.cc); is_default when it is every
// one of `workers`' default.
std::vector<v1::Model> MergeModels(
    const std::vector<Gateway::WorkerModels>& workers);
// NOT_FOUND/MODEL_NOT_FOUND: no ready worker serves `model_id`.
absl::Status ModelNotFound(const std::string& model_id);

// Serve one Append (gateway_append.cc) or Generate (gateway_generate.cc):
// the reactor to return from the rpc handler.
grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>* StartAppend(
    Gateway* gateway, grpc::CallbackServerContext* ctx);
grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerate(
    Gateway* gateway, grpc::CallbackServerContext* ctx,
    const v1::GenerateRequest* request);
// Serve one ExportState (gateway_export.cc) or ImportState
// (gateway_import.cc).
grpc::ServerWriteReactor<v1::ExportStateResponse>* StartExport(
    Gateway* gateway, grpc::CallbackServerContext* ctx,
    const v1::ExportStateRequest* request);
grpc::ServerReadReactor<v1::ImportStateRequest>* StartImport(
    Gateway* gateway, grpc::CallbackServerContext* ctx, v1::Session* response);

// The gateway's services (gateway_sessions.cc, gateway_streams.cc,
// gateway_models.cc); `gateway` outlives them.
std::unique_ptr<grpc::Service> NewSessionsService(Gateway* gateway);
std::unique_ptr<grpc::Service> NewStreamsService(Gateway* gateway);
std::unique_ptr<grpc::Service> NewModelsService(Gateway* gateway);

}  // namespace statestream::gateway

#endif  // STATESTREAM_SERVICES_GATEWAY_INTERNAL_H_
