// SPDX-License-Identifier: Apache-2.0
#include "services/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/server_interceptor.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {

// Counts the calls in flight, so Shutdown can stop as soon as they are done:
// grpc::Server::Shutdown(deadline) itself waits out the whole deadline while
// any client keeps a connection open, even an idle one. Thread-safe.
class Server::InFlightCalls {
 public:
  // Waits until no call is in flight or `grace` passes (on the steady
  // clock: a wall clock stepped back must not stretch a shutdown).
  void AwaitIdle(absl::Duration grace) {
    absl::MutexLock lock(&mu_);
    idle_.Await(
        &mu_,
        [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return count_ == 0; },
        grace);
  }

  // An interceptor factory for the server builder; `this` must outlive it.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  MakeInterceptorFactory() {
    return std::make_unique<Factory>(this);
  }

 private:
  // Lives exactly as long as its call.
  class Tracker : public grpc::experimental::Interceptor {
   public:
    explicit Tracker(InFlightCalls* calls) : calls_(calls) { calls_->Add(1); }
    ~Tracker() override { calls_->Add(-1); }
    void Intercept(
        grpc::experimental::InterceptorBatchMethods* methods) override {
      methods->Proceed();
    }

   private:
    InFlightCalls* const calls_;
  };

  class Factory : public grpc::experimental::ServerInterceptorFactoryInterface {
   public:
    explicit Factory(InFlightCalls* calls) : calls_(calls) {}
    grpc::experimental::Interceptor* CreateServerInterceptor(
        grpc::experimental::ServerRpcInfo*) override {
      return new Tracker(calls_);
    }

   private:
    InFlightCalls* const calls_;
  };

  void Add(int delta) {
    absl::MutexLock lock(&mu_);
    count_ += delta;
    if (count_ == 0) idle_.Notify();
  }

  absl::Mutex mu_;
  int count_ ABSL_GUARDED_BY(mu_) = 0;
  SteadyWaiter idle_;  // told when count_ reaches 0
};

// Polls the readiness probe on its own thread and mirrors it into the
// health service. Thread-safe.
class Server::ReadinessPoller {
 public:
  ReadinessPoller(std::function<bool()> probe, absl::Duration interval,
                  std::vector<grpc::HealthCheckServiceInterface*> healths)
      : probe_(std::move(probe)),
        interval_(interval),
        healths_(std::move(healths)) {
    serving_ = probe_();
    for (auto* health : healths_) health->SetServingStatus(serving_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~ReadinessPoller() { Stop(); }

  // No probe starts after this one; one in progress (a hung store's, up
  // to its command timeout) is not waited for. Idempotent.
  void RequestStop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    wake_.Notify();
  }
  // Waits for a probe in progress. Idempotent.
  void Stop() {
    RequestStop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        // On the steady clock: a wall clock stepped back must not freeze
        // what readiness reports.
        auto stop = [this]()
                        ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
        if (wake_.Await(&mu_, stop, interval_)) return;
      }
      const bool serving = probe_();
      if (serving != serving_) {
        serving_ = serving;
        // Ignored by gRPC once the health service was shut down.
        for (auto* health : healths_) health->SetServingStatus(serving);
      }
    }
  }

  const std::function<bool()> probe_;
  const absl::Duration interval_;
  const std::vector<grpc::HealthCheckServiceInterface*> healths_;
  bool serving_;  // the poller thread's (the constructor's before it)
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  SteadyWaiter wake_;  // told when stop_ is set
  std::thread thread_;
};

absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(
    absl::string_view address) {
  size_t colon = address.rfind(':');
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad listen address \"", address, "\": ", why, " (want HOST:PORT)"));
  };
  if (colon == absl::string_view::npos) return bad("no port");
  absl::string_view host = address.substr(0, colon);
  absl::string_view port_text = address.substr(colon + 1);
  if (host.empty()) return bad("no host");
  if (host.front() == '[' ? host.back() != ']'
                          : host.find(':') != absl::string_view::npos) {
    return bad("IPv6 hosts need brackets");
  }
  int port = 0;
  bool digits = !port_text.empty() && port_text.size() <= 5;
  for (char c : port_text) digits = digits && absl::ascii_isdigit(c);
  if (!digits || !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return bad("port must be 0-65535");
  }
  return std::make_pair(std::string(host), port);
}

namespace {

// A ServerBuilder option that removes the server reflection plugin, which,
// once initialised, is added to every ServerBuilder of the process.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                         return p->name() == "proto_server_reflection";
                       }),
        plugins->end());
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, ServiceSet services) {
  auto host_port = ParseListenAddress(options.listen);
  if (!host_port.ok()) return host_port.status();
  if (absl::Status tls = ValidateServerTls(options.tls); !tls.ok()) {
    return tls;
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, MakeServerCredentials(options.tls),
                           &port);
  // Without this, a second server could silently share a taken port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options.max_send_message_bytes);
  // Gateways ping their open calls' connections to tell a paused worker
  // from a slow one (Gateway::Channel); gRPC's default answers pings more
  // often than every 5 minutes with GOAWAY. Accept them every 500 ms.
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // Find clients that vanished without a reset (a cut path): ping each
  // connection that has calls open every 20 s and drop it after 10 s
  // without an answer, so its calls end (and a tenant's stream slots free)
  // within ~30 s instead of gRPC's default two hours.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  if (options.max_connection_age > absl::ZeroDuration()) {
    // The grace for calls open at that time stays gRPC's default,
    // unlimited: they run to their end on the old connection.
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_MS,
        static_cast<int>(std::min<int64_t>(
            absl::ToInt64Milliseconds(options.max_connection_age),
            std::numeric_limits<int>::max())));
  }
  auto calls = std::make_unique<InFlightCalls>();
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(calls->MakeInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  for (grpc::Service* service : services.services()) {
    builder.RegisterService(service);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen,
                     " (address in use or not local?)"));
  }
  // gRPC's health service starts with "" SERVING: with a readiness probe,
  // not until its first answer (a worker whose store is down or hung is
  // not ready, even while that first probe waits).
  if (options.readiness)
    server->GetHealthCheckService()->SetServingStatus(false);
  std::string address = absl::StrCat(host_port->first, ":", port);
  const std::vector<std::string> names = services.names();
  std::unique_ptr<Server> out(new Server(std::move(address),
                                         std::move(services), std::move(calls),
                                         std::move(server)));
  if (!options.health_listen.empty()) {
    auto health_host = ParseListenAddress(options.health_listen);
    if (!health_host.ok()) return health_host.status();
    // Only the default health service: nothing else is registered, and
    // server reflection (a plugin registered process-wide above) is
    // dropped.
    grpc::ServerBuilder health_builder;
    health_builder.SetOption(std::make_unique<WithoutReflection>());
    out->health_placeholder_ = std::make_unique<v1::Models::Service>();
    health_builder.RegisterService(out->health_placeholder_.get());
    int health_port = 0;
    health_builder.AddListeningPort(
        options.health_listen, grpc::InsecureServerCredentials(), &health_port);
    health_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    out->health_server_ = health_builder.BuildAndStart();
    if (out->health_server_ == nullptr || health_port == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", options.health_listen,
                       " (address in use or not local?)"));
    }
    if (options.readiness) {
      out->health_server_->GetHealthCheckService()->SetServingStatus(false);
    }
    out->health_address_ = absl::StrCat(health_host->first, ":", health_port);
  }
  for (grpc::HealthCheckServiceInterface* health : out->Healths()) {
    for (const std::string& name : names) {
      health->SetServingStatus(name, !options.readiness);
    }
  }
  if (options.readiness) {
    out->readiness_ = std::make_unique<ReadinessPoller>(
        options.readiness, options.readiness_interval, out->Healths());
  }
  return out;
}

Server::Server(std::string address, ServiceSet services,
               std::unique_ptr<InFlightCalls> calls,
               std::unique_ptr<grpc::Server> server)
    : address_(std::move(address)),
      services_(std::move(services)),
      calls_(std::move(calls)),
      server_(std::move(server)) {}

Server::~Server() { Shutdown(absl::ZeroDuration()); }

std::vector<grpc::HealthCheckServiceInterface*> Server::Healths() {
  std::vector<grpc::HealthCheckServiceInterface*> out = {
      server_->GetHealthCheckService()};
  if (health_server_ != nullptr) {
    out.push_back(health_server_->GetHealthCheckService());
  }
  return out;
}

void Server::StopServing() {
  // NOT_SERVING at once; the poller may still be in a probe.
  for (auto* health : Healths()) health->Shutdown();
  // Joined by Shutdown: a drain does not wait for a probe stuck on a hung
  // store (what it sets now is ignored: the health services are shut down).
  if (readiness_ != nullptr) readiness_->RequestStop();
}

void Server::Shutdown(absl::Duration grace) {
  // Each step is idempotent and thread-safe.
  StopServing();
  calls_->AwaitIdle(grace);
  // The calls still running are cancelled; what they wait on fails now.
  services_.Interrupt();
  server_->Shutdown(absl::ToChronoTime(absl::Now()));
  server_->Wait();
  if (health_server_ != nullptr) {
    health_server_->Shutdown(absl::ToChronoTime(absl::Now()));
    health_server_->Wait();
  }
  if (readiness_ != nullptr) readiness_->Stop();
}

}  // namespace statestream
