// SPDX-License-Identifier: Apache-2.0
// A worker whose Redis stops answering (SIGSTOP, as a hung or partitioned
// server looks) keeps its gRPC threads free: with many calls waiting on
// the store, calls that need no store I/O (Models, health, Append and
// Generate on a resident session) are still answered, before any of the
// waiting ones ends. When Redis answers again, the waiting calls end (done
// or UNAVAILABLE) and the worker goes on serving.
//
// The same through a gateway, whose session lookups also need Redis.
//
// Ordering, not timing: a store call waits at least the Redis client's
// command timeout (5 s) before it fails, so "the free calls answered while
// none of the waiting ones had ended" only needs them to take less.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/e2e_calls.h"
#include "tests/metrics_scrape.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using e2e::Ctx;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
// More calls waiting on the store than any pool of the worker has threads.
constexpr int kStuckCreates = 64;
constexpr int kStuckAppends = 16;

// An Append of the default tenant.
grpc::Status AppendText(v1::Streams::Stub* streams, const std::string& session,
                        uint64_t at, const std::string& text, bool checkpoint,
                        v1::AppendResponse* ack) {
  return e2e::AppendText(streams, "", session, at, text, checkpoint, ack);
}

// Creates session `id` of the default tenant (request id "create-<id>").
grpc::Status Create(v1::Sessions::Stub* sessions, const std::string& id) {
  v1::CreateSessionRequest r;
  r.set_session_id(id);
  r.set_request_id("create-" + id);
  v1::Session s;
  auto ctx = Ctx();
  return sessions->CreateSession(ctx.get(), r, &s);
}

// A redis-server and one worker on the tests' tiny model.
class StoreStallE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(
        std::filesystem::temp_directory_path().string(), "/ss-stall-", getpid(),
        "-", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    const std::string model = dir_ + "/tiny.safetensors";
    absl::Status made = e2e::MakeTinyModel(STATESTREAM_BIN, model);
    ASSERT_TRUE(made.ok()) << made;
    auto redis = testing::RedisServer::Start({});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    auto worker =
        e2e::StartServer({STATESTREAM_BIN, "worker", "--listen=127.0.0.1:0",
                          "--redis=" + redis_->address(), "--model=" + model,
                          "--worker-id=w-stall", "--shutdown-grace=1s"},
                         kStartTimeout);
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
  }
  void TearDown() override {
    if (HasFailure() && worker_.process != nullptr) {
      ADD_FAILURE() << "worker stderr:\n" << worker_.process->stderr_text();
    }
    worker_.process.reset();
    redis_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::string dir_;
  std::unique_ptr<testing::RedisServer> redis_;
  e2e::StartedServer worker_;
};

TEST_F(StoreStallE2eTest, AWorkerWithAHungStoreStillServesWhatNeedsNoStore) {
  auto channel =
      grpc::CreateChannel(worker_.address, grpc::InsecureChannelCredentials());
  auto sessions = v1::Sessions::NewStub(channel);
  auto streams = v1::Streams::NewStub(channel);
  auto models = v1::Models::NewStub(channel);

  auto create = [&](const std::string& id) {
    return Create(sessions.get(), id);
  };
  // "hot" is resident (loaded by an Append); the "cold-" ones exist in
  // the store only.
  ASSERT_TRUE(create("hot").ok());
  v1::AppendResponse ack;
  grpc::Status st = AppendText(streams.get(), "hot", 0, "warm ", true, &ack);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (int i = 0; i < kStuckAppends; ++i) {
    ASSERT_TRUE(create(absl::StrCat("cold-", i)).ok());
  }

  redis_->Pause();
  std::atomic<int> ended{0};
  std::mutex mu;
  std::vector<grpc::Status> results;
  std::vector<std::thread> stuck;
  for (int i = 0; i < kStuckCreates; ++i) {
    stuck.emplace_back([&, i] {
      grpc::Status s = create(absl::StrCat("new-", i));
      ++ended;
      std::lock_guard<std::mutex> lock(mu);
      results.push_back(s);
    });
  }
  for (int i = 0; i < kStuckAppends; ++i) {
    stuck.emplace_back([&, i] {
      v1::AppendResponse a;  // loading the session needs the store
      grpc::Status s = AppendText(streams.get(), absl::StrCat("cold-", i), 0,
                                  "x", false, &a);
      ++ended;
      std::lock_guard<std::mutex> lock(mu);
      results.push_back(s);
    });
  }
  // Let the calls reach the worker and block there. (Were some still on
  // their way, the checks below would only be weaker, never wrong.)
  std::this_thread::sleep_for(std::chrono::milliseconds(500));

  // Calls that need no store I/O are answered meanwhile. (In a lambda:
  // a failed ASSERT leaves it, not the test, whose threads must join.)
  [&] {
    {
      v1::ListModelsResponse listed;
      auto ctx = Ctx();
      st = models->ListModels(ctx.get(), v1::ListModelsRequest(), &listed);
      EXPECT_TRUE(st.ok()) << st.error_message();
      EXPECT_EQ(listed.models_size(), 1);
    }
    {
      v1::GenerateRequest g;
      g.set_session_id("hot");
      g.set_request_id("generate-hot");
      g.set_max_tokens(8);
      g.mutable_sampling()->set_temperature(0);
      auto ctx = Ctx();
      auto reader = streams->Generate(ctx.get(), g);
      v1::GenerateResponse r;
      int tokens = 0;
      while (reader->Read(&r)) {
        if (r.has_chunk()) tokens += r.chunk().tokens_size();
      }
      st = reader->Finish();
      EXPECT_TRUE(st.ok()) << st.error_message();
      EXPECT_EQ(tokens, 8);
    }
    {
      // An Append's requests are acknowledged without the store (only a
      // checkpoint or the call's close commits). Last: the session's next
      // operation may be the commit of this input.
      v1::AppendRequest append;
      append.set_session_id("hot");
      append.set_request_id("append-hot-stalled");
      append.set_expected_input_offset(5);
      append.set_text_utf8("still here");
      auto ctx = Ctx();
      auto stream = streams->Append(ctx.get());
      ASSERT_TRUE(stream->Write(append));
      ASSERT_TRUE(stream->Read(&ack)) << stream->Finish().error_message();
      EXPECT_EQ(ack.input_offset(), std::string("warm still here").size());
      EXPECT_EQ(ack.committed_input_offset(), 5u);
      ctx->TryCancel();
      stream->Finish().IgnoreError();
    }
  }();
  EXPECT_EQ(ended.load(), 0)
      << "a call waiting on the hung store ended before the free ones";

  redis_->Resume();
  for (auto& t : stuck) t.join();
  int done = 0;
  for (const grpc::Status& s : results) {
    if (s.ok()) {
      ++done;
      continue;
    }
    // Failed while Redis hung: unavailable, safe to retry.
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE)
        << s.error_message();
  }
  // And it serves the store again.
  st = create("after");
  EXPECT_TRUE(st.ok()) << st.error_message();
  {
    v1::GetSessionRequest get;
    get.set_session_id("cold-0");
    v1::Session got;
    auto ctx = Ctx();
    st = sessions->GetSession(ctx.get(), get, &got);
    ASSERT_TRUE(st.ok()) << st.error_message();
    st = AppendText(streams.get(), "cold-0", got.input_offset(), "y", true,
                    &ack);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(ack.committed_input_offset(), got.input_offset() + 1);
  }
  if (HasFailure()) {
    ADD_FAILURE() << done << " of " << results.size()
                  << " waiting calls succeeded";
  }
}

// Through a gateway: its session lookups (the owner, in Redis) hang too.
// The first call waits them out once; from then on calls to a resident
// session route at once to the owner last seen, and are answered before
// store-bound calls started after them end.
TEST_F(StoreStallE2eTest, AGatewayRoutesToTheOwnerLastSeenWhileTheStoreHangs) {
  auto gateway =
      e2e::StartServer({STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
                        "--redis=" + redis_->address(),
                        "--metrics-listen=127.0.0.1:0", "--shutdown-grace=1s"},
                       kStartTimeout);
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  auto through =
      grpc::CreateChannel(gateway->address, grpc::InsecureChannelCredentials());
  auto direct =
      grpc::CreateChannel(worker_.address, grpc::InsecureChannelCredentials());
  auto sessions = v1::Sessions::NewStub(through);
  auto streams = v1::Streams::NewStub(through);
  auto worker_sessions = v1::Sessions::NewStub(direct);

  {
    grpc::Status st = Create(sessions.get(), "hot");
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  v1::AppendResponse ack;
  grpc::Status st = AppendText(streams.get(), "hot", 0, "warm ", true, &ack);
  ASSERT_TRUE(st.ok()) << st.error_message();
  int generated = 0;
  auto generate = [&]() -> grpc::Status {
    v1::GenerateRequest g;
    g.set_session_id("hot");
    g.set_request_id(absl::StrCat("generate-", generated++));
    g.set_max_tokens(4);
    g.mutable_sampling()->set_temperature(0);
    auto ctx = Ctx();
    auto reader = streams->Generate(ctx.get(), g);
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
    }
    return reader->Finish();
  };
  ASSERT_TRUE(generate().ok());  // the gateway has seen "hot"'s owner

  redis_->Pause();
  // The first call waits the lookup out (the store's timeout), then goes
  // to the owner last seen.
  st = generate();
  EXPECT_TRUE(st.ok()) << st.error_message();

  std::atomic<int> ended{0};
  std::vector<std::thread> stuck;
  for (int i = 0; i < 8; ++i) {
    stuck.emplace_back([&, i] {
      Create(worker_sessions.get(), absl::StrCat("new-", i)).error_code();
      ++ended;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (int i = 0; i < 5; ++i) {
    st = generate();
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(ended.load(), 0)
      << "a call through the gateway waited for the hung store";

  redis_->Resume();
  for (auto& t : stuck) t.join();
  auto samples = e2e::ScrapeMetrics(gateway->metrics_address);
  ASSERT_TRUE(samples.has_value());
  EXPECT_GE((*samples)["statestream_gateway_routing_decisions_total{decision="
                       "\"remembered\"}"],
            6);
  EXPECT_TRUE(generate().ok());
  if (HasFailure()) {
    ADD_FAILURE() << "gateway stderr:\n" << gateway->process->stderr_text();
  }
}

// A gateway told to stop while Redis hangs does not wait out the store:
// once its shutdown grace (1 s) is over, the lookups its calls wait on and
// its background registry read fail at once, and it exits. Its Redis
// commands may wait a minute here, so only that can end it within the
// bound.
TEST_F(StoreStallE2eTest, AStoppingGatewayDoesNotWaitOutAHungStore) {
  auto gateway =
      e2e::StartServer({STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
                        "--redis=" + redis_->address(), "--shutdown-grace=1s",
                        "--redis-command-timeout=60s"},
                       kStartTimeout);
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  auto sessions = v1::Sessions::NewStub(grpc::CreateChannel(
      gateway->address, grpc::InsecureChannelCredentials()));
  {
    grpc::Status st = Create(sessions.get(), "seen");
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  redis_->Pause();
  // Sessions the gateway has not seen: each call waits on a lookup.
  std::vector<grpc::Status> ended(4);
  std::vector<std::thread> stuck;
  for (size_t i = 0; i < ended.size(); ++i) {
    stuck.emplace_back([&, i] {
      v1::GetSessionRequest r;
      r.set_session_id(absl::StrCat("unseen-", i));
      v1::Session s;
      auto ctx = Ctx();
      ended[i] = sessions->GetSession(ctx.get(), r, &s);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const absl::Time stop = absl::Now();
  gateway->process->Signal(SIGTERM);
  absl::StatusOr<int> exited = gateway->process->Wait(absl::Seconds(30));
  for (auto& t : stuck) t.join();
  redis_->Resume();
  ASSERT_TRUE(exited.ok()) << "the gateway waited for the hung store: "
                           << exited.status();
  EXPECT_EQ(*exited, 0) << gateway->process->stderr_text();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(30));
  for (const grpc::Status& st : ended) {
    // Ended by the stop, not answered: safe to retry elsewhere.
    EXPECT_TRUE(st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                st.error_code() == grpc::StatusCode::CANCELLED)
        << st.error_code() << " " << st.error_message();
  }
}

}  // namespace
}  // namespace statestream
