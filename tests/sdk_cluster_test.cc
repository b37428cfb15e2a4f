// SPDX-License-Identifier: Apache-2.0
// The C++ SDK against a cluster: redis-server, two `statestream gateway`s
// and two `statestream worker`s. The client lists both gateways; killing
// (SIGKILL) the gateway it talks to, or the session's owner worker, in the
// middle of an Append or a Generate is invisible: same final state as an
// uninterrupted session, same tokens. Workers commit only when asked, so a
// kill always loses applied input that must be resent; the client's HTTP/2
// window is fixed, so a long Generate cannot finish before the kill.
#include <grpc/impl/codegen/grpc_types.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/client.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/cluster_process.h"
#include "tests/sdk_cpp_fixture.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(90);

class SdkClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(std::filesystem::temp_directory_path().string(),
                        "/ss-sdk-cluster-", getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    absl::Status made =
        e2e::MakeTinyModel(STATESTREAM_BIN, dir_ + "/tiny.safetensors");
    ASSERT_TRUE(made.ok()) << made;
    auto redis = testing::RedisServer::Start({});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = std::move(*redis);
    RedisStateStoreOptions options;
    options.addresses = {redis_->address()};
    auto store = NewRedisStateStore(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    for (int i = 0; i < 2; ++i) ASSERT_NO_FATAL_FAILURE(AddWorker());
    std::vector<std::string> targets;
    for (int i = 0; i < 2; ++i) {
      auto g = e2e::ClusterProcess::Start(
          {STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
           "--redis=" + redis_->address(), "--upstream-stall-timeout=2s",
           "--suspect-for=2s", "--shutdown-grace=1s"},
          absl::StrCat(dir_, "/gateway", i, ".log"), kStartTimeout);
      ASSERT_TRUE(g.ok()) << g.status();
      targets.push_back((*g)->address());
      gateways_.push_back(*std::move(g));
    }
    client::ClientOptions options_c;
    options_c.targets = targets;
    options_c.max_attempts = 40;
    options_c.max_backoff = absl::Milliseconds(500);
    options_c.channel_args = {{GRPC_ARG_HTTP2_BDP_PROBE, 0}};
    auto c = client::Client::Create(options_c);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }

  void TearDown() override {
    if (HasFailure()) {
      for (auto& g : gateways_) ADD_FAILURE() << "gateway: " << g->Log();
      for (auto& w : workers_) ADD_FAILURE() << "worker: " << w->Log();
    }
    client_.reset();
    gateways_.clear();  // SIGKILL + reap
    workers_.clear();
    store_.reset();
    redis_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A client of the gateway at `address` with API key `key`.
  static std::unique_ptr<client::Client> Connect(const std::string& address,
                                                 const std::string& key) {
    client::ClientOptions options;
    options.targets = {address};
    options.api_key = key;
    return std::move(client::Client::Create(options).value());
  }

  void AddWorker() {
    const std::string id = absl::StrCat("w", next_worker_++);
    auto w = e2e::ClusterProcess::Start(
        {STATESTREAM_BIN, "worker", "--listen=127.0.0.1:0",
         "--redis=" + redis_->address(),
         "--model=" + dir_ + "/tiny.safetensors", "--worker-id=" + id,
         "--heartbeat-interval=300ms", "--checkpoint-tokens=100000000",
         "--checkpoint-interval=10000h", "--shutdown-grace=1s"},
        absl::StrCat(dir_, "/", id, ".log"), kStartTimeout);
    ASSERT_TRUE(w.ok()) << w.status();
    workers_.push_back(*std::move(w));
  }

  // Kills the live worker holding the session's lease, then starts a
  // replacement. False if no owner was found.
  bool KillOwner(const std::string& session) {
    auto lease = store_->GetOwner({"default", session});
    auto listed = store_->ListWorkers();
    if (!lease.ok() || !listed.ok()) return false;
    for (const auto& info : *listed) {
      if (info.worker_id != lease->owner) continue;
      for (auto& w : workers_) {
        if (w->pid() > 0 && w->address() == info.address) {
          w->Kill();
          AddWorker();
          return true;
        }
      }
    }
    return false;
  }

  client::Session Create(const std::string& id) {
    return sdk_test::CreateAndOpen(*client_, id);
  }

  double ScoreOf(const client::Session& s) {
    return sdk_test::SumLogprob(s, "the end");
  }

  static std::string Text(size_t n) {
    std::string text;
    for (int i = 0; text.size() < n; ++i) {
      absl::StrAppend(&text, "record ", i, ": all quiet on the stream\n");
    }
    return text;
  }

  // Writes `text` into `s` in three parts; `fault` runs after the second
  // part is applied (acknowledged) but not committed.
  void AppendAcrossFault(const client::Session& s, const std::string& text,
                         const std::function<void()>& fault, int* reconnects) {
    client::AppendOptions options;
    options.max_chunk_bytes = 999;
    auto writer = s.OpenAppend(options);
    ASSERT_TRUE(writer.ok()) << writer.status();
    const size_t a = text.size() / 3, b = 2 * text.size() / 3;
    ASSERT_TRUE((*writer)->Write(text.substr(0, a)).ok());
    ASSERT_TRUE((*writer)->Checkpoint().ok());
    ASSERT_TRUE((*writer)->Write(text.substr(a, b - a)).ok());
    ASSERT_TRUE((*writer)->Sync().ok());
    ASSERT_EQ((*writer)->last_ack().committed_input_offset(), a);
    fault();
    ASSERT_TRUE((*writer)->Write(text.substr(b)).ok());
    ASSERT_TRUE((*writer)->Flush().ok());
    auto done = (*writer)->Close();
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->committed_input_offset(), text.size());
    *reconnects = (*writer)->reconnects();
  }

  void ExpectSameState(const client::Session& a, const client::Session& b) {
    auto x = a.Get();
    auto y = b.Get();
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(x->input_offset(), y->input_offset());
    EXPECT_EQ(x->position(), y->position());
    EXPECT_EQ(ScoreOf(a), ScoreOf(b));
  }

  std::string dir_;
  std::unique_ptr<testing::RedisServer> redis_;
  std::unique_ptr<StateStore> store_;
  std::vector<std::unique_ptr<e2e::ClusterProcess>> workers_;
  std::vector<std::unique_ptr<e2e::ClusterProcess>> gateways_;
  std::unique_ptr<client::Client> client_;
  int next_worker_ = 0;
};

TEST_F(SdkClusterTest, GatewayKilledMidAppend) {
  const std::string text = Text(20000);
  client::Session s = Create("gw-append");
  // The client starts on gateway 0.
  int reconnects = 0;
  ASSERT_NO_FATAL_FAILURE(AppendAcrossFault(
      s, text, [&] { gateways_[0]->Kill(); }, &reconnects));
  EXPECT_GE(reconnects, 1);  // the SDK moved to gateway 1
  client::Session ref = Create("gw-append-ref");
  ASSERT_TRUE(ref.AppendText(text).ok());
  ExpectSameState(s, ref);
}

TEST_F(SdkClusterTest, OwnerWorkerKilledMidAppend) {
  const std::string text = Text(20000);
  client::Session s = Create("w-append");
  bool killed = false;
  int reconnects = 0;  // the gateway may hide this failure on its own
  ASSERT_NO_FATAL_FAILURE(AppendAcrossFault(
      s, text, [&] { killed = KillOwner("w-append"); }, &reconnects));
  EXPECT_TRUE(killed);
  client::Session ref = Create("w-append-ref");
  ASSERT_TRUE(ref.AppendText(text).ok());
  ExpectSameState(s, ref);
}

TEST_F(SdkClusterTest, GatewayKilledMidGenerate) {
  client::Session s = Create("gw-gen");
  ASSERT_TRUE(s.AppendText("Once upon a time").ok());
  v1::GenerateRequest req;
  req.set_request_id("gen-1");
  req.set_max_tokens(8000);
  req.set_logprobs(true);
  req.set_top_logprobs(5);
  req.mutable_sampling()->set_seed(5);
  auto reference = s.GenerateAll(req);
  ASSERT_TRUE(reference.ok()) << reference.status();

  auto stream = s.Generate(req);
  ASSERT_TRUE(stream.ok());
  client::GenerateChunk chunk;
  ASSERT_TRUE((*stream)->Next(&chunk)) << (*stream)->status();
  std::vector<uint32_t> tokens = chunk.tokens;
  gateways_[0]->Kill();
  while ((*stream)->Next(&chunk)) {
    tokens.insert(tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
  }
  ASSERT_TRUE((*stream)->status().ok()) << (*stream)->status();
  EXPECT_GE((*stream)->reconnects(), 1);
  EXPECT_EQ(tokens, reference->tokens);
}

// A gateway with API keys: the SDK's key selects the tenant; a bad key is
// UNAUTHENTICATED at once (not retried); tenants do not see each other.
TEST_F(SdkClusterTest, ApiKeysThroughAGateway) {
  const std::string keys = dir_ + "/keys";
  std::ofstream(keys) << "acme-token-0123456789 acme\n"
                      << "zeta-token-0123456789 zeta\n";
  auto g = e2e::ClusterProcess::Start(
      {STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
       "--redis=" + redis_->address(), "--api-keys=" + keys},
      dir_ + "/gateway-keys.log", kStartTimeout);
  ASSERT_TRUE(g.ok()) << g.status();
  auto connect = [&](const std::string& key) {
    return Connect((*g)->address(), key);
  };
  auto acme = connect("acme-token-0123456789");
  v1::CreateSessionRequest req;
  req.set_session_id("keyed");
  ASSERT_TRUE(acme->CreateSession(req).ok());
  auto ack = acme->OpenSession("keyed").AppendText("secret");
  ASSERT_TRUE(ack.ok()) << ack.status();

  absl::Status bad =
      connect("wrong-token-0123456789")->OpenSession("keyed").Get().status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kUnauthenticated) << bad;
  EXPECT_EQ(GetReason(bad), Reason::kUnauthenticated);
  absl::Status other =
      connect("zeta-token-0123456789")->OpenSession("keyed").Get().status();
  EXPECT_EQ(GetReason(other), Reason::kSessionNotFound) << other;
}

// The keys file is reread while the gateway runs: a key added on disk
// works and a revoked one is refused without a restart, an Append stream
// open under it ends (UNAUTHENTICATED) at its next request, what it had
// sent before committed, and limits the file sets apply, even where none
// were set at start.
TEST_F(SdkClusterTest, KeysChangedOnDiskApplyWithoutARestart) {
  const std::string keys = dir_ + "/keys-live";
  const std::string acme_key = "acme-token-0123456789";
  const std::string newco_key = "newco-token-0123456789";
  std::ofstream(keys) << acme_key << " acme\n";
  auto g = e2e::ClusterProcess::Start(
      {STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
       "--redis=" + redis_->address(), "--api-keys=" + keys,
       "--secrets-reload-interval=1s"},
      dir_ + "/gateway-live-keys.log", kStartTimeout);
  ASSERT_TRUE(g.ok()) << g.status();
  auto connect = [&](const std::string& key) {
    return Connect((*g)->address(), key);
  };
  auto acme = connect(acme_key);
  auto newco = connect(newco_key);
  EXPECT_EQ(GetReason(newco->ListModels().status()), Reason::kUnauthenticated);
  v1::CreateSessionRequest req;
  req.set_session_id("live");
  ASSERT_TRUE(acme->CreateSession(req).ok());
  auto open = acme->OpenSession("live").OpenAppend();
  ASSERT_TRUE(open.ok()) << open.status();
  ASSERT_TRUE((*open)->Write("before ").ok());
  ASSERT_TRUE((*open)->Sync().ok());
  // A second stream under the key, idle when it is revoked.
  ASSERT_TRUE(acme->CreateSession([] {
                    v1::CreateSessionRequest r;
                    r.set_session_id("idle");
                    return r;
                  }())
                  .ok());
  auto raw = v1::Streams::NewStub(
      grpc::CreateChannel((*g)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext idle_ctx;
  idle_ctx.AddMetadata("authorization", "Bearer " + acme_key);
  idle_ctx.set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(60));
  auto idle = raw->Append(&idle_ctx);
  {
    v1::AppendRequest r;
    r.set_session_id("idle");
    r.set_text_utf8("quiet");
    ASSERT_TRUE(idle->Write(r));
    v1::AppendResponse ack;
    ASSERT_TRUE(idle->Read(&ack));
  }

  // Replaced as a Secret volume does: renamed over the old file.
  std::ofstream(keys + ".new") << newco_key << " newco max_streams=1\n";
  std::filesystem::rename(keys + ".new", keys);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!newco->ListModels().ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(newco->ListModels().ok());
  EXPECT_EQ(GetReason(acme->OpenSession("live").Get().status()),
            Reason::kUnauthenticated);
  (*open)->Write("after").IgnoreError();  // may fail here or at Close
  absl::Status revoked = (*open)->Close().status();
  EXPECT_EQ(revoked.code(), absl::StatusCode::kUnauthenticated) << revoked;
  EXPECT_EQ(GetReason(revoked), Reason::kUnauthenticated) << revoked;
  open->reset();
  auto head = store_->GetHead({"acme", "live"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, 7u);  // "before " committed; not "after"
  // The idle stream ended without another request from its client (the
  // gateway's watchdog rechecks keys), its input committed.
  v1::AppendResponse more;
  EXPECT_FALSE(idle->Read(&more));
  grpc::Status idle_end = idle->Finish();
  EXPECT_EQ(idle_end.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << idle_end.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(idle_end)), Reason::kUnauthenticated);
  auto idle_head = store_->GetHead({"acme", "idle"});
  ASSERT_TRUE(idle_head.ok()) << idle_head.status();
  EXPECT_EQ(idle_head->head.input_offset, 5u);

  ASSERT_TRUE(newco->CreateSession(req).ok());
  auto writer = newco->OpenSession("live").OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("one stream").ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  absl::Status second = newco->OpenSession("live").AppendText("two").status();
  EXPECT_EQ(GetReason(second), Reason::kTenantLimit) << second;
  ASSERT_TRUE((*writer)->Close().ok());
  // A broken file changes nothing: the keys in use stay.
  std::ofstream(keys + ".new") << "not a key line\n";
  std::filesystem::rename(keys + ".new", keys);
  absl::SleepFor(absl::Seconds(2));
  EXPECT_TRUE(newco->ListModels().ok());
  EXPECT_EQ(GetReason(acme->ListModels().status()), Reason::kUnauthenticated);
}

}  // namespace
}  // namespace statestream
