// SPDX-License-Identifier: Apache-2.0
// Flags whose effect only shows across processes, checked on real ones:
// Redis ACL authentication (--redis-user with --redis-password or
// STATESTREAM_REDIS_PASSWORD) on a worker and a gateway, --lease-ttl on a
// worker, and --request-id-window on `serve` and on a gateway holding a
// tenant session limit. Each case is built so that the flag's default
// gives a different answer: the default lease is 30 s, the default window
// an hour. A worker registered at a wildcard address (--listen 0.0.0.0
// without --advertise) says so.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/e2e_calls.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using e2e::Ctx;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kAdminPassword[] = "admin-pw-1";
constexpr char kUser[] = "statestream";
constexpr char kUserPassword[] = "s3cret-pw-2";

// Creates `session` of `tenant` through the server at `address` and
// appends `text` with a checkpoint; returns the committed input offset.
absl::StatusOr<uint64_t> CreateAndAppend(const std::string& address,
                                         const std::string& tenant,
                                         const std::string& session,
                                         const std::string& text) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  v1::CreateSessionRequest create;
  create.set_session_id(session);
  create.set_request_id("create-" + session);
  v1::Session created;
  auto ctx = Ctx(tenant);
  grpc::Status st = v1::Sessions::NewStub(channel)->CreateSession(
      ctx.get(), create, &created);
  if (!st.ok()) return FromGrpcStatus(st);
  v1::AppendResponse ack;
  st = e2e::AppendText(v1::Streams::NewStub(channel).get(), tenant, session, 0,
                       text, /*checkpoint=*/true, &ack);
  if (!st.ok()) return FromGrpcStatus(st);
  return ack.committed_input_offset();
}

class FlagsE2eTest : public ::testing::Test {
 protected:
  // One redis-server whose default user needs a password and an ACL user
  // limited to the `ss:` keys; a byte-level model; one worker that
  // authenticates as that user with the password from the environment.
  static void SetUpTestSuite() {
    dir_ = new std::string(
        absl::StrCat(std::filesystem::temp_directory_path().string(),
                     "/ss-flags-", getpid()));
    std::filesystem::create_directories(*dir_);
    model_ = new std::string(*dir_ + "/tiny.safetensors");
    absl::Status made = e2e::MakeTinyModel(STATESTREAM_BIN, *model_);
    ASSERT_TRUE(made.ok()) << made;
    auto redis = testing::RedisServer::Start({});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = redis->release();
    ASSERT_TRUE(redis_
                    ->Command({"ACL", "SETUSER", kUser, "on",
                               absl::StrCat(">", kUserPassword), "~ss:*", "&*",
                               "+@all"})
                    .ok());
    ASSERT_TRUE(redis_
                    ->Command({"ACL", "SETUSER", "default",
                               absl::StrCat(">", kAdminPassword)})
                    .ok());
    // Without the password the default user is refused from here on.
    ASSERT_FALSE(redis_->Command({"PING"}).ok());

    auto worker = e2e::StartServer(
        {STATESTREAM_BIN, "worker", "--listen=127.0.0.1:0",
         "--redis=" + redis_->address(), "--model=" + *model_,
         "--worker-id=w-auth", "--redis-user=statestream", "--lease-ttl=3s",
         "--heartbeat-interval=300ms", "--shutdown-grace=1s"},
        kStartTimeout, {{"STATESTREAM_REDIS_PASSWORD", kUserPassword}});
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = worker->process.release();
  }

  static void TearDownTestSuite() {
    delete worker_;
    delete redis_;
    std::error_code ignored;
    std::filesystem::remove_all(*dir_, ignored);
    delete model_;
    delete dir_;
  }

  void TearDown() override {
    if (HasFailure() && worker_ != nullptr) {
      ADD_FAILURE() << "worker stderr:\n" << worker_->stderr_text();
    }
  }

  // A gateway on the suite's Redis, authenticated by flags, with `extra`.
  static absl::StatusOr<e2e::StartedServer> StartGateway(
      const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {
        STATESTREAM_BIN,
        "gateway",
        "--listen=127.0.0.1:0",
        "--redis=" + redis_->address(),
        "--redis-user=statestream",
        absl::StrCat("--redis-password=", kUserPassword),
        "--shutdown-grace=1s"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return e2e::StartServer(argv, kStartTimeout);
  }

  // The lease key's remaining time in milliseconds (-2: no key).
  static int64_t LeasePttl(const std::string& tenant,
                           const std::string& session) {
    auto reply = redis_->Command(
        {"PTTL", absl::StrCat("ss:{", tenant, "/", session, "}:lease")},
        kAdminPassword);
    int64_t ms = -3;
    if (!reply.ok() || !absl::SimpleAtoi(*reply, &ms)) {
      ADD_FAILURE() << "PTTL: " << reply.status();
    }
    return ms;
  }

  static std::string* dir_;
  static std::string* model_;
  static testing::RedisServer* redis_;
  static e2e::Subprocess* worker_;
};

std::string* FlagsE2eTest::dir_ = nullptr;
std::string* FlagsE2eTest::model_ = nullptr;
testing::RedisServer* FlagsE2eTest::redis_ = nullptr;
e2e::Subprocess* FlagsE2eTest::worker_ = nullptr;

TEST_F(FlagsE2eTest, AWorkerWithoutTheRightCredentialsDoesNotStart) {
  struct Case {
    std::string name;
    std::vector<std::string> flags;
    const char* env_password;  // nullptr: unset
  };
  const std::vector<Case> cases = {
      {"no user, no password", {}, nullptr},
      {"wrong password by flag",
       {"--redis-user=statestream", "--redis-password=wrong-password"},
       nullptr},
      {"wrong password from the environment",
       {"--redis-user=statestream"},
       "wrong-password"},
      {"right password, another user",
       {"--redis-user=nobody",
        absl::StrCat("--redis-password=", kUserPassword)},
       nullptr},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<std::string> argv = {
        STATESTREAM_BIN,        "worker",
        "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
        "--model=" + *model_,   "--worker-id=w-refused",
        "--shutdown-grace=1s"};
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    e2e::EnvChanges env = {{"STATESTREAM_REDIS_PASSWORD", std::nullopt}};
    if (c.env_password != nullptr) {
      env["STATESTREAM_REDIS_PASSWORD"] = c.env_password;
    }
    auto ran = e2e::Run(argv, absl::Seconds(60), env);
    ASSERT_TRUE(ran.ok()) << ran.status();
    EXPECT_NE(ran->exit_code, 0) << ran->err;
    EXPECT_FALSE(absl::StrContains(ran->out, "listening on")) << ran->out;
    // A refusal names Redis's answer and is not waited out like an
    // unreachable server (--redis-connect-timeout).
    EXPECT_TRUE(absl::StrContains(ran->err, "NOAUTH") ||
                absl::StrContains(ran->err, "WRONGPASS"))
        << ran->err;
    EXPECT_FALSE(absl::StrContains(ran->err, "retrying")) << ran->err;
  }
}

TEST_F(FlagsE2eTest, AGatewayAndAWorkerServeAsTheAclUser) {
  auto gateway = StartGateway();
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  const std::string text = "written through an ACL user";
  auto committed =
      CreateAndAppend(gateway->address, "acl", "acl-session", text);
  ASSERT_TRUE(committed.ok()) << committed.status() << "\ngateway stderr:\n"
                              << gateway->process->stderr_text();
  EXPECT_EQ(*committed, text.size());

  // Read back through the same gateway: the store holds it.
  v1::GetSessionRequest get;
  get.set_session_id("acl-session");
  v1::Session got;
  auto ctx = Ctx("acl");
  grpc::Status st = v1::Sessions::NewStub(
                        grpc::CreateChannel(gateway->address,
                                            grpc::InsecureChannelCredentials()))
                        ->GetSession(ctx.get(), get, &got);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(got.committed_input_offset(), text.size());
  EXPECT_GE(got.version(), 2u);

  // A gateway that cannot authenticate does not start.
  auto refused =
      e2e::Run({STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
                "--redis=" + redis_->address(), "--redis-user=statestream",
                "--redis-password=wrong-password", "--shutdown-grace=1s"},
               absl::Seconds(60));
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_NE(refused->exit_code, 0) << refused->err;
  EXPECT_FALSE(absl::StrContains(refused->out, "listening on"));
}

TEST_F(FlagsE2eTest, LeaseTtlSetsTheLeasesExpiry) {
  auto gateway = StartGateway();
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  auto committed = CreateAndAppend(gateway->address, "lease", "leased", "held");
  ASSERT_TRUE(committed.ok()) << committed.status();
  // The worker holds the session it serves under a 3 s lease (renewed
  // every second), not the default 30 s one.
  const int64_t ms = LeasePttl("lease", "leased");
  EXPECT_GT(ms, 0);
  EXPECT_LE(ms, 3000);
}

TEST_F(FlagsE2eTest, ServeForgetsRequestIdsAfterTheWindow) {
  // Two servers on their own embedded stores; only the window differs.
  auto short_window =
      e2e::StartServer({STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0",
                        "--request-id-window=1s"},
                       kStartTimeout);
  ASSERT_TRUE(short_window.ok()) << short_window.status();
  auto default_window = e2e::StartServer(
      {STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0"}, kStartTimeout);
  ASSERT_TRUE(default_window.ok()) << default_window.status();

  auto create = [](const std::string& address) -> std::string {
    auto stub = v1::Sessions::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    v1::CreateSessionRequest r;
    r.set_request_id("create-once-please");
    v1::Session s;
    auto ctx = Ctx();
    grpc::Status st = stub->CreateSession(ctx.get(), r, &s);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return s.session_id();
  };
  const std::string short_first = create(short_window->address);
  const std::string default_first = create(default_window->address);
  ASSERT_FALSE(short_first.empty());
  ASSERT_FALSE(default_first.empty());
  // Past the short window (only ever longer than asked: no upper bound).
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  // A retry past --request-id-window is a new request: a new session.
  const std::string short_again = create(short_window->address);
  EXPECT_FALSE(short_again.empty());
  EXPECT_NE(short_again, short_first);
  // Within the default hour the same retry returns the first session.
  EXPECT_EQ(create(default_window->address), default_first);
}

TEST_F(FlagsE2eTest, AGatewayLetsARetryThroughItsLimitOnlyWithinTheWindow) {
  // Both gateways allow one session a tenant; the second forgets request
  // ids after a millisecond.
  auto hour = StartGateway({"--tenant-max-sessions=1"});
  ASSERT_TRUE(hour.ok()) << hour.status();
  auto millisecond =
      StartGateway({"--tenant-max-sessions=1", "--request-id-window=1ms"});
  ASSERT_TRUE(millisecond.ok()) << millisecond.status();
  auto create = [](const std::string& address,
                   v1::Session* out) -> grpc::Status {
    auto stub = v1::Sessions::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    v1::CreateSessionRequest r;
    r.set_request_id("limited-create");
    auto ctx = Ctx("limited");
    return stub->CreateSession(ctx.get(), r, out);
  };
  v1::Session first;
  grpc::Status st = create(hour->address, &first);
  ASSERT_TRUE(st.ok()) << st.error_message();
  // At the limit, a retry is let through within the window and returns
  // the session it made.
  v1::Session again;
  st = create(hour->address, &again);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(again.session_id(), first.session_id());
  // Past the gateway's window the same retry counts as a new session.
  v1::Session refused;
  st = create(millisecond->address, &refused);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << st.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(st)), Reason::kTenantLimit)
      << st.error_message();
}

TEST_F(FlagsE2eTest, AWorkerRegisteredAtAWildcardAddressSaysSo) {
  // Gateways dial the registered address: 0.0.0.0 reaches only this host.
  for (const char* listen : {"0.0.0.0:0", "127.0.0.1:0"}) {
    SCOPED_TRACE(listen);
    auto worker = e2e::StartServer(
        {STATESTREAM_BIN, "worker", absl::StrCat("--listen=", listen),
         "--redis=" + redis_->address(), "--model=" + *model_,
         "--worker-id=w-wildcard", "--redis-user=statestream",
         "--heartbeat-interval=300ms", "--shutdown-grace=1s"},
        kStartTimeout, {{"STATESTREAM_REDIS_PASSWORD", kUserPassword}});
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker->process->Signal(SIGTERM);  // leaves the registry
    auto exited = worker->process->Wait(absl::Seconds(60));
    ASSERT_TRUE(exited.ok()) << exited.status();
    const std::string& err = worker->process->stderr_text();
    ASSERT_TRUE(absl::StrContains(err, "registered w-wildcard at ")) << err;
    EXPECT_EQ(absl::StrContains(err, "a wildcard address only this host"),
              absl::StartsWith(listen, "0.0.0.0"))
        << err;
  }
}

}  // namespace
}  // namespace statestream
