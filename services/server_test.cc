// SPDX-License-Identifier: Apache-2.0
#include "services/server.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "services/service_set.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {
namespace {

TEST(ParseListenAddressTest, AcceptsHostAndPort) {
  auto v4 = ParseListenAddress("127.0.0.1:7700");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->first, "127.0.0.1");
  EXPECT_EQ(v4->second, 7700);
  auto v6 = ParseListenAddress("[::1]:0");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->first, "[::1]");
  EXPECT_EQ(v6->second, 0);
  EXPECT_TRUE(ParseListenAddress("localhost:65535").ok());
}

TEST(ParseListenAddressTest, RejectsMalformed) {
  for (const char* bad : {"", "7700", ":7700", "host:", "host:x", "host:-1",
                          "host:65536", "host:123456", "::1:80", "[::1:80"}) {
    EXPECT_EQ(ParseListenAddress(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

int PortOf(const Server& server) {
  int port = 0;
  auto colon = server.address().rfind(':');
  EXPECT_TRUE(absl::SimpleAtoi(server.address().substr(colon + 1), &port));
  return port;
}

TEST(ServerTest, PortZeroPicksAFreePortAndItIsNotShared) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  auto first = Server::Start(options, UnimplementedPublicApi());
  ASSERT_TRUE(first.ok()) << first.status();
  int port = PortOf(**first);
  EXPECT_GT(port, 0);
  EXPECT_EQ((*first)->address(), "127.0.0.1:" + std::to_string(port));

  options.listen = (*first)->address();
  auto second = Server::Start(options, UnimplementedPublicApi());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);

  (*first)->Shutdown(absl::Seconds(1));
  (*first)->Shutdown(absl::Seconds(1));  // idempotent
}

// A Models service whose ListModels blocks until `release` (or a minute).
class BlockingModels final : public v1::Models::Service {
 public:
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse*) override {
    entered.Notify();
    release.WaitForNotificationWithTimeout(absl::Minutes(1));
    ended = true;
    return grpc::Status::OK;
  }
  absl::Notification entered, release;
  std::atomic<bool> ended{false};
};

struct Blocked {
  std::unique_ptr<Server> server;
  BlockingModels* models = nullptr;
  std::atomic<int> hooks_run{0};
  std::atomic<bool> call_ended_before_hook{false};
  std::thread client;
  grpc::Status status;
};

// A server whose interrupt hook records whether the blocked call had ended
// and, when `releases`, ends it (as an interrupted store ends its waits);
// one ListModels call blocked in it.
void StartBlocked(Blocked* b, bool releases) {
  ServiceSet set;
  auto models = std::make_unique<BlockingModels>();
  b->models = models.get();
  set.Add(v1::Models::service_full_name(), std::move(models));
  set.OnInterrupt([b, releases] {
    if (b->hooks_run++ == 0)
      b->call_ended_before_hook = b->models->ended.load();
    if (releases && !b->models->release.HasBeenNotified()) {
      b->models->release.Notify();
    }
  });
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  auto server = Server::Start(options, std::move(set));
  ASSERT_TRUE(server.ok()) << server.status();
  b->server = *std::move(server);
  b->client = std::thread([b, address = b->server->address()] {
    auto stub = v1::Models::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::ListModelsResponse r;
    b->status = stub->ListModels(&ctx, v1::ListModelsRequest(), &r);
  });
  b->models->entered.WaitForNotification();
}

// The interrupt hooks run once the grace is over, not before: a call that
// ends within the grace ends on its own, then the hooks run (once, however
// often Shutdown is called).
TEST(ServerTest, InterruptHooksRunAfterTheGrace) {
  Blocked b;
  StartBlocked(&b, /*releases=*/false);
  std::thread stop([&] { b.server->Shutdown(absl::Minutes(1)); });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(b.hooks_run.load(), 0) << "ran within the grace";
  b.models->release.Notify();
  stop.join();
  b.client.join();
  EXPECT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_GE(b.hooks_run.load(), 1);
  EXPECT_TRUE(b.call_ended_before_hook.load());
}

// A call still running when the grace is over: the hooks run before the
// server waits for it, so what it waits on (here: the hook's release) ends.
TEST(ServerTest, InterruptHooksEndTheCallsLeftAfterTheGrace) {
  Blocked b;
  StartBlocked(&b, /*releases=*/true);
  const absl::Time start = absl::Now();
  b.server->Shutdown(absl::Milliseconds(200));
  b.client.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(30)) << "waited out the call";
  EXPECT_GE(b.hooks_run.load(), 1);
  EXPECT_FALSE(b.call_ended_before_hook.load());
  EXPECT_TRUE(b.models->ended.load());
}

TEST(ServerTest, RejectsMalformedListenAddress) {
  ServerOptions options;
  options.listen = "nonsense";
  EXPECT_EQ(Server::Start(options, ServiceSet()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;

grpc::Status Check(const std::string& address, const std::string& service,
                   HealthCheckResponse* response) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  HealthCheckRequest request;
  request.set_service(service);
  return Health::NewStub(channel)->Check(&ctx, request, response);
}

// --health-listen: a plaintext port with only grpc.health.v1, whose
// statuses follow the main port's (readiness, then the drain).
// The port takes calls (and health checks) before the first readiness
// probe answers, which may wait on a hung store for seconds: until then
// both health ports say NOT_SERVING, for "" too (gRPC's default SERVING).
TEST(ServerTest, NotServingUntilTheFirstProbeAnswers) {
  // Two neighbouring free ports.
  const int port = testing::StablePort(1), health_port = port + 1;
  ASSERT_GT(port, 0);
  absl::Notification probing, answer;
  ServerOptions options;
  options.listen = absl::StrCat("127.0.0.1:", port);
  options.health_listen = absl::StrCat("127.0.0.1:", health_port);
  options.readiness = [&] {
    if (!probing.HasBeenNotified()) probing.Notify();
    answer.WaitForNotification();
    return true;
  };
  options.readiness_interval = absl::Milliseconds(20);
  absl::StatusOr<std::unique_ptr<Server>> server;
  std::thread start(
      [&] { server = Server::Start(options, UnimplementedPublicApi()); });
  probing.WaitForNotification();
  for (const std::string& address : {options.listen, options.health_listen}) {
    for (const std::string service : {"", "statestream.v1.Sessions"}) {
      HealthCheckResponse r;
      grpc::Status st = Check(address, service, &r);
      EXPECT_TRUE(st.ok()) << address << " " << st.error_message();
      EXPECT_EQ(r.status(), HealthCheckResponse::NOT_SERVING)
          << address << " '" << service << "'";
    }
  }
  answer.Notify();
  start.join();
  ASSERT_TRUE(server.ok()) << server.status();
  for (const std::string& address : {options.listen, options.health_listen}) {
    HealthCheckResponse r;
    ASSERT_TRUE(Check(address, "", &r).ok());
    EXPECT_EQ(r.status(), HealthCheckResponse::SERVING) << address;
  }
}

TEST(ServerTest, HealthPortMirrorsTheMainPort) {
  std::atomic<bool> ready{true};
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.health_listen = "127.0.0.1:0";
  options.readiness = [&ready] { return ready.load(); };
  options.readiness_interval = absl::Milliseconds(20);
  auto server = Server::Start(options, UnimplementedPublicApi());
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string health = (*server)->health_address();
  ASSERT_FALSE(health.empty());
  EXPECT_NE(health, (*server)->address());
  auto status_of = [&](const std::string& service) {
    HealthCheckResponse r;
    grpc::Status st = Check(health, service, &r);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return r.status();
  };
  EXPECT_EQ(status_of(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(status_of("statestream.v1.Sessions"), HealthCheckResponse::SERVING);
  // Nothing but health on that port.
  {
    auto channel =
        grpc::CreateChannel(health, grpc::InsecureChannelCredentials());
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    v1::Session resp;
    EXPECT_EQ(v1::Sessions::NewStub(channel)
                  ->GetSession(&ctx, req, &resp)
                  .error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  // Server reflection answers on the main port only. One ListServices
  // request (ServerReflectionRequest{list_services: ""}, field 7, as bytes:
  // the reflection protos are libgrpc++_reflection's own) and its answer.
  auto reflect = [](const std::string& address) {
    auto channel =
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    grpc::GenericStub stub(channel);
    grpc::ClientContext ctx;
    const std::string list_services("\x3a\x00", 2);
    grpc::Slice slice(list_services);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::Status status;
    absl::Notification done;
    stub.UnaryCall(
        &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
          status = std::move(s);
          done.Notify();
        });
    done.WaitForNotification();
    return status.error_code();
  };
  EXPECT_EQ(reflect((*server)->address()), grpc::StatusCode::OK);
  EXPECT_EQ(reflect(health), grpc::StatusCode::UNIMPLEMENTED);
  ready = false;
  for (int i = 0; i < 500 && status_of("") == HealthCheckResponse::SERVING;
       ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(status_of(""), HealthCheckResponse::NOT_SERVING);
  ready = true;
  for (int i = 0; i < 500 && status_of("") != HealthCheckResponse::SERVING;
       ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(status_of(""), HealthCheckResponse::SERVING);
  (*server)->StopServing();
  EXPECT_EQ(status_of(""), HealthCheckResponse::NOT_SERVING);
  (*server)->Shutdown(absl::Seconds(1));
}

TEST(ServerTest, RejectsMalformedHealthAddress) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.health_listen = "nonsense";
  EXPECT_EQ(Server::Start(options, ServiceSet()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace statestream
