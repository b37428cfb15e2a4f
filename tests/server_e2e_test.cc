// SPDX-License-Identifier: Apache-2.0
// Starts the real `statestream` binary in each server role and probes it
// over gRPC: the `listening on` line, grpc.health.v1, server reflection, the
// registered statestream.v1 services, message size limits and shutdown.
#include <fcntl.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::grpc::reflection::v1alpha::ServerReflection;
using ::grpc::reflection::v1alpha::ServerReflectionRequest;
using ::grpc::reflection::v1alpha::ServerReflectionResponse;
using ::testing::HasSubstr;
using ::testing::IsSupersetOf;
using ::testing::Not;

constexpr absl::Duration kStartTimeout = absl::Seconds(30);
constexpr absl::Duration kExitTimeout = absl::Seconds(15);

// A `statestream <role>` process listening on a free port.
struct RunningServer {
  std::unique_ptr<e2e::Subprocess> process;
  std::string address;  // HOST:PORT from the `listening on` line
};

RunningServer StartServer(const std::string& role,
                          std::vector<std::string> extra_flags = {}) {
  std::vector<std::string> argv = {STATESTREAM_BIN, role,
                                   "--listen=127.0.0.1:0"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  auto process = e2e::Subprocess::Start(argv);
  EXPECT_TRUE(process.ok()) << process.status();
  if (!process.ok()) return {};
  auto line = (*process)->ReadStdoutLine(kStartTimeout);
  EXPECT_TRUE(line.ok()) << line.status();
  std::smatch match;
  std::string text = line.value_or("");
  EXPECT_TRUE(std::regex_match(
      text, match, std::regex(R"(listening on (127\.0\.0\.1:(\d+)))")))
      << text;
  int port = 0;
  if (match.size() == 3) {
    EXPECT_TRUE(absl::SimpleAtoi(match[2].str(), &port));
  }
  EXPECT_GT(port, 0);
  return {*std::move(process), match.size() == 3 ? match[1].str() : ""};
}

std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(10));
  return context;
}

HealthCheckResponse::ServingStatus HealthOf(grpc::Channel* channel,
                                            const std::string& service) {
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  auto context = Context();
  grpc::Status status = Health::NewStub(std::shared_ptr<grpc::Channel>(
                                            channel, [](grpc::Channel*) {}))
                            ->Check(context.get(), request, &response);
  EXPECT_TRUE(status.ok()) << service << ": " << status.error_message();
  return response.status();
}

// Sends one reflection request and returns its response.
ServerReflectionResponse Reflect(const std::shared_ptr<grpc::Channel>& channel,
                                 const ServerReflectionRequest& request) {
  auto stub = ServerReflection::NewStub(channel);
  auto context = Context();
  auto stream = stub->ServerReflectionInfo(context.get());
  ServerReflectionResponse response;
  EXPECT_TRUE(stream->Write(request));
  EXPECT_TRUE(stream->WritesDone());
  EXPECT_TRUE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
  return response;
}

// A tiny random RWKV-7 model file in the test's temp dir ("" on failure);
// byte-level unless given a vocabulary size (65536: serve reads a World
// --vocab for it).
std::string TinyModel(const std::string& name, int vocab = 256) {
  const std::string path = ::testing::TempDir() + "/" + name + "_" +
                           std::to_string(getpid()) + ".safetensors";
  auto made = e2e::Run({STATESTREAM_BIN, "model", "random", "--layers=1",
                        "--embd=64", "--head-size=32",
                        absl::StrCat("--vocab=", vocab), "--out=" + path});
  EXPECT_TRUE(made.ok() && made->exit_code == 0)
      << (made.ok() ? made->err : made.status().ToString());
  return made.ok() && made->exit_code == 0 ? path : "";
}

class ServerRoleTest : public ::testing::TestWithParam<std::string> {};

// The cluster roles need a Redis and (the worker) a model.
std::vector<std::string> RoleFlags(const std::string& role,
                                   const testing::RedisServer* redis,
                                   const std::string& model) {
  if (role == "serve") return {};
  std::vector<std::string> flags = {"--redis=" + redis->address()};
  if (role == "worker") {
    flags.push_back("--model=" + model);
    flags.push_back("--worker-id=role-test");
  }
  return flags;
}

TEST_P(ServerRoleTest, ServesHealthReflectionAndTheApiThenStopsOnSigterm) {
  auto redis = testing::RedisServer::Start({});
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string model = TinyModel("role_test");
  ASSERT_FALSE(model.empty());
  RunningServer server =
      StartServer(GetParam(), RoleFlags(GetParam(), redis->get(), model));
  ASSERT_NE(server.process, nullptr);
  std::shared_ptr<grpc::Channel> channel = Connect(server.address);

  EXPECT_EQ(HealthOf(channel.get(), ""), HealthCheckResponse::SERVING);
  for (const char* service :
       {"statestream.v1.Sessions", "statestream.v1.Streams",
        "statestream.v1.Models"}) {
    EXPECT_EQ(HealthOf(channel.get(), service), HealthCheckResponse::SERVING)
        << service;
  }

  ServerReflectionRequest list;
  list.set_list_services("");
  ServerReflectionResponse listed = Reflect(channel, list);
  std::vector<std::string> names;
  for (const auto& service : listed.list_services_response().service()) {
    names.push_back(service.name());
  }
  EXPECT_THAT(names,
              IsSupersetOf({"statestream.v1.Sessions", "statestream.v1.Streams",
                            "statestream.v1.Models", "grpc.health.v1.Health"}));

  ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("statestream.v1.Streams");
  ServerReflectionResponse files = Reflect(channel, symbol);
  ASSERT_GE(files.file_descriptor_response().file_descriptor_proto_size(), 1);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(
      files.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.name(), "statestream/v1/statestream.proto");

  // The services are registered and implemented in every role: no such
  // session on a worker; a gateway with no worker registered yet has
  // nowhere to route (UNAVAILABLE, retryable).
  v1::GetSessionRequest request;
  request.set_session_id("s1");
  v1::Session session;
  auto context = Context();
  grpc::Status status = v1::Sessions::NewStub(channel)->GetSession(
      context.get(), request, &session);
  EXPECT_EQ(status.error_code(), GetParam() == "gateway"
                                     ? grpc::StatusCode::UNAVAILABLE
                                     : grpc::StatusCode::NOT_FOUND)
      << status.error_message();

  server.process->Signal(SIGTERM);
  auto exit_code = server.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << server.process->stderr_text();
  EXPECT_EQ(server.process->stdout_text(),
            "listening on " + server.address + "\n");
  std::remove(model.c_str());
}

// A closed terminal (SIGHUP) drains a server like SIGTERM: exit 0, not
// death by the signal. A second SIGHUP during the drain (a closing
// terminal sends one from the shell and one from the kernel) does not end
// it early, as a second SIGTERM would.
TEST_P(ServerRoleTest, DrainsOnSighup) {
  auto redis = testing::RedisServer::Start({});
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string model = TinyModel("sighup_test");
  ASSERT_FALSE(model.empty());
  std::vector<std::string> flags = RoleFlags(GetParam(), redis->get(), model);
  flags.push_back("--shutdown-grace=2s");
  RunningServer server = StartServer(GetParam(), flags);
  ASSERT_NE(server.process, nullptr);
  // A Health Watch is a call in flight: the drain waits for it (the grace).
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  auto watch = Health::NewStub(Connect(server.address))->Watch(&context, {});
  HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  server.process->Signal(SIGHUP);
  ASSERT_TRUE(watch->Read(&response));  // draining
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  server.process->Signal(SIGHUP);
  auto exit_code = server.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << server.process->stderr_text();
  EXPECT_THAT(server.process->stderr_text(), HasSubstr("shutting down"));
  context.TryCancel();
  std::remove(model.c_str());
}

// A server whose stderr is a pipe with no reader left (a log shipper that
// died) keeps serving: its log writes fail with EPIPE instead of killing it
// by SIGPIPE. The SIGTERM's own "shutting down" line is such a write; the
// drain still ends in exit 0.
TEST_P(ServerRoleTest, OutlivesItsLogReader) {
  auto redis = testing::RedisServer::Start({});
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string model = TinyModel("log_reader_test");
  ASSERT_FALSE(model.empty());
  std::vector<std::string> flags = RoleFlags(GetParam(), redis->get(), model);
  if (GetParam() == "worker") {
    flags.push_back("--heartbeat-interval=100ms");
    flags.push_back("--readiness-interval=100ms");
  }
  RunningServer server = StartServer(GetParam(), flags);
  ASSERT_NE(server.process, nullptr);
  std::shared_ptr<grpc::Channel> channel = Connect(server.address);
  server.process->CloseStderr();

  if (GetParam() == "worker") {
    // Its heartbeats fail while Redis is down and succeed once it is back:
    // the worker logs both (ten heartbeats each way) and serves on.
    (*redis)->Kill();
    absl::SleepFor(absl::Seconds(1));
    ASSERT_TRUE((*redis)->Restart().ok());
    absl::SleepFor(absl::Seconds(1));
    // Ready again once its next probe finds Redis.
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (HealthOf(channel.get(), "") != HealthCheckResponse::SERVING &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  EXPECT_EQ(HealthOf(channel.get(), ""), HealthCheckResponse::SERVING);

  server.process->Signal(SIGTERM);
  auto exit_code = server.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
  std::remove(model.c_str());
}

// Started with SIGHUP ignored (nohup), a server keeps it ignored: a
// closed terminal does not stop it. (Blocked for sigwait, an ignored
// signal would be taken, not discarded.)
TEST(ServerSignalTest, KeepsSighupIgnoredUnderNohup) {
  auto server =
      e2e::StartServer({"/bin/sh", "-c", "trap '' HUP; exec \"$0\" \"$@\"",
                        STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0"},
                       kStartTimeout);
  ASSERT_TRUE(server.ok()) << server.status();
  e2e::Subprocess* process = server->process.get();
  std::shared_ptr<grpc::Channel> channel = Connect(server->address);
  EXPECT_EQ(HealthOf(channel.get(), ""), HealthCheckResponse::SERVING);

  process->Signal(SIGHUP);
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(HealthOf(channel.get(), ""), HealthCheckResponse::SERVING);
  EXPECT_THAT(process->stderr_text(), Not(HasSubstr("shutting down")));

  process->Signal(SIGTERM);
  auto exit_code = process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << process->stderr_text();
}

INSTANTIATE_TEST_SUITE_P(Roles, ServerRoleTest,
                         ::testing::Values("serve", "gateway", "worker"),
                         [](const auto& info) { return info.param; });

// Readiness follows the store: a worker whose Redis is down reports
// NOT_SERVING (so load balancers and Kubernetes stop routing to it) and
// SERVING again once Redis is back.
TEST(WorkerTest, HealthIsNotServingWhileRedisIsDown) {
  auto redis = testing::RedisServer::Start({});
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string model = TinyModel("readiness_test");
  ASSERT_FALSE(model.empty());
  std::vector<std::string> flags = RoleFlags("worker", redis->get(), model);
  flags.push_back("--readiness-interval=100ms");
  RunningServer server = StartServer("worker", flags);
  ASSERT_NE(server.process, nullptr);
  std::shared_ptr<grpc::Channel> channel = Connect(server.address);
  auto stub = Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(120));
  HealthCheckRequest request;
  auto watch = stub->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  (*redis)->Kill();
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(HealthOf(channel.get(), "statestream.v1.Streams"),
            HealthCheckResponse::NOT_SERVING);

  ASSERT_TRUE((*redis)->Restart().ok());
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  EXPECT_EQ(HealthOf(channel.get(), "statestream.v1.Streams"),
            HealthCheckResponse::SERVING);

  server.process->Signal(SIGTERM);
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  auto exit_code = server.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << server.process->stderr_text();
  context.TryCancel();
  std::remove(model.c_str());
}

// A worker started while its Redis is down waits for it (and says so)
// instead of exiting; past --redis-connect-timeout it exits 1, after a last
// try at the deadline (not at the backoff step before it: a 3 s timeout
// gave up after 1.9 s).
TEST(WorkerTest, WaitsForARedisThatIsNotUpYet) {
  auto redis = testing::RedisServer::Start({});
  ASSERT_TRUE(redis.ok()) << redis.status();
  (*redis)->Kill();
  const std::string model = TinyModel("redis_wait_test");
  ASSERT_FALSE(model.empty());
  std::vector<std::string> flags = RoleFlags("worker", redis->get(), model);
  {
    std::vector<std::string> argv = {STATESTREAM_BIN, "worker",
                                     "--listen=127.0.0.1:0",
                                     "--redis-connect-timeout=3s"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    const absl::Time start = absl::Now();
    auto gave_up = e2e::Run(argv);
    ASSERT_TRUE(gave_up.ok()) << gave_up.status();
    EXPECT_EQ(gave_up->exit_code, 1);
    EXPECT_THAT(gave_up->err, HasSubstr("retrying"));
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(2900));
  }
  std::vector<std::string> argv = {STATESTREAM_BIN, "worker",
                                   "--listen=127.0.0.1:0"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto worker = e2e::Subprocess::Start(argv);
  ASSERT_TRUE(worker.ok()) << worker.status();
  // Until the worker has met the dead Redis (and said it retries).
  for (int i = 0;
       i < 600 && !absl::StrContains((*worker)->stderr_text(), "retrying");
       ++i) {
    (*worker)->Wait(absl::Milliseconds(100)).IgnoreError();  // reads stderr
  }
  ASSERT_THAT((*worker)->stderr_text(), HasSubstr("retrying"));
  // On this thread: the harness's Redis dies with the thread that started
  // it (PR_SET_PDEATHSIG).
  ASSERT_TRUE((*redis)->Restart().ok());
  auto line = (*worker)->ReadStdoutLine(kStartTimeout);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_THAT(*line, HasSubstr("listening on"));
  EXPECT_THAT((*worker)->stderr_text(), HasSubstr("retrying"));
  (*worker)->Signal(SIGTERM);
  auto exit_code = (*worker)->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << (*worker)->stderr_text();
  std::remove(model.c_str());
}

TEST(ServeTest, SigintAlsoStopsCleanly) {
  RunningServer server = StartServer("serve");
  ASSERT_NE(server.process, nullptr);
  server.process->Signal(SIGINT);
  auto exit_code = server.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

// A signal while the server starts (a model or vocabulary still loading:
// here a vocabulary read from a FIFO nobody writes to) exits at once, as
// there is nothing to drain. The signal used to wait, blocked, until the
// start finished (a second Ctrl-C did nothing either).
// The port is bound before the first readiness probe answers, and that
// probe waits on a hung Redis for its command timeout (5 s): meanwhile the
// worker says NOT_SERVING, and a SIGTERM drains once the start is done
// (exit 0), not the "while starting" exit 1 that would drop the calls the
// bound port may already hold.
TEST(WorkerTest, ASignalDuringTheFirstProbeDrains) {
  auto redis = testing::RedisServer::Start({});
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string model = TinyModel("first_probe_test");
  ASSERT_FALSE(model.empty());
  // Redis is paused once the worker prints its metrics address, just
  // before it binds; a first probe that still got in first is retried.
  for (int attempt = 0; attempt < 3; ++attempt) {
    const int port = testing::StablePort();
    ASSERT_GT(port, 0);
    std::vector<std::string> argv = {STATESTREAM_BIN, "worker",
                                     absl::StrCat("--listen=127.0.0.1:", port),
                                     "--metrics-listen=127.0.0.1:0"};
    for (const std::string& f : RoleFlags("worker", redis->get(), model)) {
      argv.push_back(f);
    }
    auto process = e2e::Subprocess::Start(argv);
    ASSERT_TRUE(process.ok()) << process.status();
    auto line = (*process)->ReadStdoutLine(kStartTimeout);
    ASSERT_TRUE(line.ok()) << line.status() << (*process)->stderr_text();
    ASSERT_THAT(*line, HasSubstr("metrics on"));
    (*redis)->Pause();
    // A channel per try: one that failed to connect (before the bind)
    // would wait out gRPC's reconnect backoff.
    HealthCheckResponse response;
    grpc::Status status;
    const absl::Time deadline = absl::Now() + absl::Seconds(3);
    do {
      HealthCheckRequest request;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(500));
      status = Health::NewStub(Connect(absl::StrCat("127.0.0.1:", port)))
                   ->Check(&context, request, &response);
      if (!status.ok()) absl::SleepFor(absl::Milliseconds(20));
    } while (!status.ok() && absl::Now() < deadline);
    ASSERT_TRUE(status.ok()) << status.error_message() << "\n"
                             << (*process)->stderr_text();
    if (response.status() == HealthCheckResponse::SERVING) {
      // The probe answered before the pause.
      (*redis)->Resume();
      (*process)->Signal(SIGKILL);
      (*process)->Wait(kExitTimeout).status().IgnoreError();
      continue;
    }
    EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
    (*process)->Signal(SIGTERM);
    absl::SleepFor(absl::Milliseconds(300));
    (*redis)->Resume();
    auto exit_code = (*process)->Wait(kExitTimeout);
    ASSERT_TRUE(exit_code.ok()) << exit_code.status();
    EXPECT_EQ(*exit_code, 0) << (*process)->stderr_text();
    EXPECT_THAT((*process)->stderr_text(), HasSubstr("shutting down"));
    EXPECT_THAT((*process)->stderr_text(), Not(HasSubstr("while starting")));
    std::remove(model.c_str());
    return;
  }
  FAIL() << "the first probe always answered before Redis was paused";
}

TEST(ServeTest, ASignalWhileStartingExitsAtOnce) {
  const std::string model = TinyModel("start_signal", 65536);
  ASSERT_FALSE(model.empty());
  const std::string fifo = model + ".vocab.fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  auto process =
      e2e::Subprocess::Start({STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0",
                              "--model=" + model, "--vocab=" + fifo});
  ASSERT_TRUE(process.ok()) << process.status();
  // A writer's non-blocking open succeeds once the server has the FIFO
  // open for reading; kept open (nothing written), the read waits.
  int writer = -1;
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while ((writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK)) < 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GE(writer, 0) << "serve never opened its --vocab";
  (*process)->Signal(SIGINT);
  auto exit_code = (*process)->Wait(kExitTimeout);
  ::close(writer);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 1);
  EXPECT_THAT((*process)->stderr_text(), HasSubstr("while starting"));
  EXPECT_EQ((*process)->stdout_text(), "");  // never listening
  std::remove(fifo.c_str());
  std::remove(model.c_str());
}

TEST(ServeTest, StopsAtOnceWhenIdleEvenWithClientsConnected) {
  RunningServer server = StartServer("serve", {"--shutdown-grace=30s"});
  ASSERT_NE(server.process, nullptr);
  std::shared_ptr<grpc::Channel> channel = Connect(server.address);
  EXPECT_EQ(HealthOf(channel.get(), ""), HealthCheckResponse::SERVING);
  server.process->Signal(SIGTERM);
  // Within kExitTimeout (15 s), half the grace a waiting server would use.
  auto exit_code = server.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

TEST(ServeTest, DrainsCallsInFlightForTheGracePeriod) {
  RunningServer server = StartServer("serve", {"--shutdown-grace=1s"});
  ASSERT_NE(server.process, nullptr);
  auto stub = Health::NewStub(Connect(server.address));
  grpc::ClientContext context;
  HealthCheckRequest request;
  auto watch = stub->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  absl::Time start = absl::Now();
  server.process->Signal(SIGTERM);
  // Draining: health turns NOT_SERVING while the call stays open.
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  auto exit_code = server.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
  // It waited for the grace (the call never ends by itself) and then
  // stopped: Wait's kExitTimeout bounds it from above.
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(900));
  context.TryCancel();
}

// --max-connection-age: the server sends a connection away after the age
// (GOAWAY; an idle client channel then drops to IDLE, where it stays READY
// without the flag), a call open at that time runs on, and the next call
// opens a new connection.
TEST(ServeTest, OldConnectionsAreSentAwayAndCallsGoOn) {
  // 3 s, not the least (1 s): the first checks must see the connection
  // young even when a loaded machine stalls this process for a while.
  RunningServer server = StartServer("serve", {"--max-connection-age=3s"});
  ASSERT_NE(server.process, nullptr);
  std::shared_ptr<grpc::Channel> idle = Connect(server.address);
  EXPECT_EQ(HealthOf(idle.get(), ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(idle->GetState(false), GRPC_CHANNEL_READY);
  // A call open across the age, on a connection of its own (a channel
  // with its own subchannel pool shares none with `idle`).
  grpc::ChannelArguments own;
  own.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = Health::NewStub(grpc::CreateCustomChannel(
      server.address, grpc::InsecureChannelCredentials(), own));
  grpc::ClientContext context;
  auto watch = stub->Watch(&context, HealthCheckRequest());
  HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  // 3 s give or take gRPC's jitter (10 %), with room for a busy machine.
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (idle->GetState(false) == GRPC_CHANNEL_READY &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_NE(idle->GetState(false), GRPC_CHANNEL_READY);
  EXPECT_EQ(HealthOf(idle.get(), ""), HealthCheckResponse::SERVING);
  // The open call saw no error: it still hears the shutdown.
  server.process->Signal(SIGTERM);
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  context.TryCancel();
}

TEST(ServeTest, AcceptsMessagesUpToTheConfiguredLimit) {
  RunningServer server =
      StartServer("serve", {"--max-receive-message-bytes=12582912"});
  ASSERT_NE(server.process, nullptr);
  auto stub = v1::Sessions::NewStub(Connect(server.address));
  auto call = [&](size_t bytes) {
    v1::GetSessionRequest request;
    request.set_session_id(std::string(bytes, 'x'));
    v1::Session session;
    auto context = Context();
    return stub->GetSession(context.get(), request, &session).error_code();
  };
  // Over the flag's 8 MiB default, under the 12 MiB asked for: reaches the
  // service (which rejects the over-long session id).
  EXPECT_EQ(call(10 << 20), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(call(13 << 20), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(ServeTest, ATakenPortFailsWithExitOne) {
  RunningServer first = StartServer("serve");
  ASSERT_NE(first.process, nullptr);
  auto second = e2e::Run(
      {STATESTREAM_BIN, "serve", "--listen=" + first.address}, kStartTimeout);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->exit_code, 1);
  EXPECT_THAT(second->err, HasSubstr("cannot listen on " + first.address));
  EXPECT_EQ(second->out, "");
}

TEST(ServeTest, CreatesTheDataDir) {
  const std::string top =
      absl::StrCat(::testing::TempDir(), "/statestream_data_", getpid());
  std::filesystem::remove_all(top);
  const std::string dir = top + "/nested";
  ASSERT_NE(access(dir.c_str(), F_OK), 0);
  {
    RunningServer server = StartServer("serve", {"--data-dir=" + dir});
    ASSERT_NE(server.process, nullptr);
    EXPECT_EQ(access(dir.c_str(), W_OK), 0);
  }
  std::filesystem::remove_all(top);
}

}  // namespace
}  // namespace statestream
