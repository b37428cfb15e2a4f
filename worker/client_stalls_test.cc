// SPDX-License-Identifier: Apache-2.0
// ClientStalls behind the worker's services, in process (so the sanitizer
// build runs the cut-off's races): a Generate or export client that stops
// reading is cut off and counted, a client that reads is not, and calls
// that end while the watch looks at them are safe.
#include "worker/client_stalls.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "gtest/gtest.h"
#include "services/server.h"
#include "state_store/memory_state_store.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/engine/tokenizer.h"
#include "worker/metrics.h"
#include "worker/model_set.h"
#include "worker/scheduler.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"
#include "worker/worker_service.h"

namespace statestream::worker {
namespace {

// One model's worker services on 127.0.0.1, their calls cut off after
// `stall`.
class ClientStallsTest : public ::testing::Test {
 protected:
  void Start(absl::Duration stall) {
    // A state (~100 KB) larger than any flow-control window.
    model_ = RandomModel(256, 12);
    tokenizer_ = *engine::MakeByteTokenizer();
    store_ = *NewMemoryStateStore(MemoryStateStoreOptions{});
    scheduler_ = std::make_unique<Scheduler>(model_.get(), SchedulerOptions{});
    SessionManagerOptions options;
    options.model_id = "m";
    options.owner = "stall-test";
    options.metrics = &metrics_;
    auto manager =
        SessionManager::Create(options, model_.get(), tokenizer_.get(),
                               scheduler_.get(), store_.get());
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = *std::move(manager);
    auto models = ModelSet::Create({manager_.get()}, nullptr);
    ASSERT_TRUE(models.ok()) << models.status();
    models_ = *std::move(models);
    auto policy = std::make_shared<CallerPolicy>();
    policy->client_stall_timeout = stall;
    ServerOptions server;
    server.listen = "127.0.0.1:0";
    auto started =
        Server::Start(server, PublicApiServices(models_.get(), policy));
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    // A channel whose receive window stays at 1 KiB: what the server sends
    // waits in the server until the client reads.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
    tiny_ = grpc::CreateCustomChannel(server_->address(),
                                      grpc::InsecureChannelCredentials(), args);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(5));
    server_.reset();
  }

  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(60));
    return ctx;
  }

  void CreateWithText(const std::string& id) {
    v1::CreateSessionRequest create;
    create.set_session_id(id);
    create.set_request_id("create-" + id);
    v1::Session session;
    auto ctx = Ctx();
    ASSERT_TRUE(v1::Sessions::NewStub(channel_)
                    ->CreateSession(ctx.get(), create, &session)
                    .ok());
    v1::AppendRequest r;
    r.set_session_id(id);
    r.set_request_id("text-" + id);
    r.set_expected_input_offset(0);
    r.set_text_utf8("some text to start from");
    r.set_checkpoint(true);
    // Resent (applied once) if cut off: a timeout of a millisecond may cut
    // this call off too on a busy machine.
    grpc::Status status;
    for (int attempt = 0; attempt < 50; ++attempt) {
      auto append_ctx = Ctx();
      auto stream = v1::Streams::NewStub(channel_)->Append(append_ctx.get());
      stream->Write(r);
      stream->WritesDone();
      v1::AppendResponse ack;
      while (stream->Read(&ack)) {
      }
      status = stream->Finish();
      if (status.error_code() != grpc::StatusCode::CANCELLED) break;
    }
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  double Stalls(const std::string& method) {
    const std::string series = absl::StrCat(
        "statestream_client_stalls_total{method=\"", method, "\"} ");
    const std::string text = metrics_.Render();
    const size_t at = text.find(series);
    if (at == std::string::npos) return 0;
    return std::stod(text.substr(at + series.size()));
  }

  // Polls `cond` every 10 ms for up to 60 s.
  static bool Eventually(const std::function<bool()>& cond) {
    const absl::Time end = absl::Now() + absl::Seconds(60);
    while (absl::Now() < end) {
      if (cond()) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return cond();
  }

  WorkerMetrics metrics_{"memory"};
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SessionManager> manager_;
  std::unique_ptr<ModelSet> models_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_, tiny_;
};

v1::GenerateRequest LongGeneration(const std::string& id) {
  v1::GenerateRequest g;
  g.set_session_id(id);
  g.set_request_id("long");
  g.set_max_tokens(8192);
  g.set_logprobs(true);
  g.set_top_logprobs(20);  // ~300 bytes a token: the window fills at once
  g.mutable_sampling()->set_seed(3);
  return g;
}

TEST_F(ClientStallsTest, AGenerateLeftUnreadIsCutOff) {
  Start(absl::Milliseconds(200));
  CreateWithText("s");
  auto ctx = Ctx();
  auto reader =
      v1::Streams::NewStub(tiny_)->Generate(ctx.get(), LongGeneration("s"));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));  // then nothing more is read
  EXPECT_TRUE(Eventually([&] { return Stalls("Generate") == 1; }));
  bool done = false;
  while (reader->Read(&msg)) done = done || msg.has_done();
  EXPECT_FALSE(done);
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ClientStallsTest, AnExportLeftUnreadIsCutOff) {
  Start(absl::Milliseconds(200));
  CreateWithText("s");
  v1::ExportStateRequest req;
  req.set_session_id("s");
  auto ctx = Ctx();
  auto reader = v1::Sessions::NewStub(tiny_)->ExportState(ctx.get(), req);
  v1::ExportStateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_GT(msg.header().total_bytes(), 65536u);  // more than a window
  EXPECT_TRUE(Eventually([&] { return Stalls("ExportState") == 1; }));
  while (reader->Read(&msg)) {
  }
  // CANCELLED; OK only if the write got through just as it was cut off.
  const grpc::StatusCode code = reader->Finish().error_code();
  EXPECT_TRUE(code == grpc::StatusCode::CANCELLED ||
              code == grpc::StatusCode::OK)
      << code;
}

// Without a timeout nothing is watched: the same unread generation is not
// cut off (it ends with its client's cancel).
TEST_F(ClientStallsTest, NoTimeoutCutsNothingOff) {
  Start(absl::InfiniteDuration());
  CreateWithText("s");
  auto ctx = Ctx();
  auto reader =
      v1::Streams::NewStub(tiny_)->Generate(ctx.get(), LongGeneration("s"));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Stalls("Generate"), 0);
  ctx->TryCancel();
  while (reader->Read(&msg)) {
  }
  reader->Finish().IgnoreError();
}

// Many short calls, read with pauses through a small window, with a
// timeout so short that many writes outlast it: each ends OK or CANCELLED
// (cut off, maybe while ending), none crashes or hangs. The sanitizers
// check the watch's thread against calls that end and free their contexts
// meanwhile.
TEST_F(ClientStallsTest, CallsEndingWhileWatchedAreSafe) {
  Start(absl::Milliseconds(1));
  CreateWithText("s");
  std::vector<std::thread> clients;
  std::atomic<int> bad{0};
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      const auto read_slowly = [c](auto* reader, auto* msg) {
        int n = 0;
        while (reader->Read(msg)) {
          absl::SleepFor(absl::Microseconds(500 * ((c + n++) % 3)));
        }
      };
      for (int i = 0; i < 10; ++i) {
        v1::GenerateRequest g;
        g.set_session_id("s");
        g.set_request_id(absl::StrCat("g", c, "-", i));
        g.set_max_tokens(32);
        g.set_logprobs(true);
        g.set_top_logprobs(c * 5);
        auto ctx = Ctx();
        auto reader = v1::Streams::NewStub(tiny_)->Generate(ctx.get(), g);
        v1::GenerateResponse msg;
        read_slowly(reader.get(), &msg);
        const grpc::StatusCode code = reader->Finish().error_code();
        if (code != grpc::StatusCode::OK &&
            code != grpc::StatusCode::CANCELLED) {
          ++bad;
        }
        v1::ExportStateRequest req;
        req.set_session_id("s");
        auto export_ctx = Ctx();
        auto exported =
            v1::Sessions::NewStub(tiny_)->ExportState(export_ctx.get(), req);
        v1::ExportStateResponse part;
        read_slowly(exported.get(), &part);
        const grpc::StatusCode export_code = exported->Finish().error_code();
        if (export_code != grpc::StatusCode::OK &&
            export_code != grpc::StatusCode::CANCELLED) {
          ++bad;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(Stalls("Generate") + Stalls("ExportState"), 0);
}

}  // namespace
}  // namespace statestream::worker
