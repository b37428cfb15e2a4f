// SPDX-License-Identifier: Apache-2.0
// The gateway in process in front of scripted workers (real gRPC servers on
// 127.0.0.1 whose answers a test sets): what it forwards, resends and
// refuses when a worker fails part-way through a call. The cluster tests
// (tests/cluster_*_test.cc) run it against real workers.
#include "services/gateway.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "common/session_ids.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "services/gateway_metrics.h"
#include "services/gateway_router.h"
#include "services/server.h"
#include "services/tenants.h"
#include "state_store/memory_state_store.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {
namespace {

// A connection lost mid-call, as the gateway sees it: UNAVAILABLE without
// details.
grpc::Status Lost() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset");
}

// The worker side of the calls these tests make. Every call counts in
// `calls`, shared by the workers of a test, so a script can tell the first
// attempt from a failover.
class ScriptedWorker final : public v1::Sessions::Service,
                             public v1::Streams::Service,
                             public v1::Models::Service {
 public:
  explicit ScriptedWorker(std::atomic<int>* calls) : calls_(calls) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(static_cast<v1::Sessions::Service*>(this));
    builder.RegisterService(static_cast<v1::Streams::Service*>(this));
    builder.RegisterService(static_cast<v1::Models::Service*>(this));
    server_ = builder.BuildAndStart();
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  ~ScriptedWorker() override { server_->Shutdown(); }
  const std::string& address() const { return address_; }

  // Answers by call number (0 = the first call to any worker of the test).
  std::function<grpc::Status(int, grpc::ServerWriter<v1::ExportStateResponse>*)>
      export_state;
  std::function<grpc::Status(int, const v1::GenerateRequest&,
                             grpc::ServerWriter<v1::GenerateResponse>*)>
      generate;
  std::function<grpc::Status(int, v1::Session*)> create_session;
  std::function<grpc::Status(int)> get_session;
  // When set, answers an Append (after reading it whole) instead of acking
  // every request as committed.
  std::function<grpc::Status(
      int, const std::vector<v1::AppendRequest>&,
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>*)>
      append;

  int imports() const { return imports_.load(); }
  // Requests of the last Append that asked for a checkpoint.
  int checkpoints() const { return checkpoints_.load(); }

  // Reads the whole call first, then acks each request as committed.
  grpc::Status Append(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>* stream)
      override {
    const int call = calls_->fetch_add(1);
    std::vector<v1::AppendRequest> requests;
    v1::AppendRequest req;
    while (stream->Read(&req)) requests.push_back(req);
    if (append) return append(call, requests, stream);
    checkpoints_ = 0;
    for (const auto& r : requests) {
      checkpoints_ += r.checkpoint();
      v1::AppendResponse ack;
      ack.set_request_id(r.request_id());
      const uint64_t end = r.expected_input_offset() + r.text_utf8().size();
      ack.set_input_offset(end);
      ack.set_committed_input_offset(end);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status ExportState(
      grpc::ServerContext*, const v1::ExportStateRequest*,
      grpc::ServerWriter<v1::ExportStateResponse>* w) override {
    return export_state(calls_->fetch_add(1), w);
  }
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* w) override {
    return generate(calls_->fetch_add(1), *req, w);
  }
  grpc::Status CreateSession(grpc::ServerContext*,
                             const v1::CreateSessionRequest*,
                             v1::Session* resp) override {
    return create_session(calls_->fetch_add(1), resp);
  }
  grpc::Status GetSession(grpc::ServerContext*, const v1::GetSessionRequest*,
                          v1::Session*) override {
    return get_session(calls_->fetch_add(1));
  }
  grpc::Status ImportState(grpc::ServerContext*,
                           grpc::ServerReader<v1::ImportStateRequest>* r,
                           v1::Session*) override {
    ++imports_;
    v1::ImportStateRequest msg;
    while (r->Read(&msg)) {
    }
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "scripted");
  }
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* resp) override {
    v1::Model* m = resp->add_models();
    m->set_model_id("tiny");
    m->set_fingerprint("fp-tiny");
    return grpc::Status::OK;
  }

 private:
  std::atomic<int>* const calls_;
  std::atomic<int> imports_{0};
  std::atomic<int> checkpoints_{0};
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

class GatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto& w : workers_) w = std::make_unique<ScriptedWorker>(&calls_);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(1));
  }
  void Start(GatewayOptions options = {},
             std::shared_ptr<StateStore> store = nullptr) {
    for (auto& w : workers_) {
      options.router.static_workers.push_back(w->address());
    }
    auto services = GatewayServices(options, std::move(store));
    ASSERT_TRUE(services.ok()) << services.status();
    ServerOptions server;
    server.listen = "127.0.0.1:0";
    auto started = Server::Start(server, *std::move(services));
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
  }
  // A server-streaming call through the gateway on session "s": the
  // messages it delivered and how it ended.
  template <class Resp>
  struct Streamed {
    std::vector<Resp> messages;
    grpc::Status status;
  };
  Streamed<v1::ExportStateResponse> ExportS() {
    grpc::ClientContext ctx;
    v1::ExportStateRequest req;
    req.set_session_id("s");
    return Drain(v1::Sessions::NewStub(channel_)->ExportState(&ctx, req));
  }
  Streamed<v1::GenerateResponse> GenerateS(bool commit = false) {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_session_id("s");
    req.set_commit(commit);
    return Drain(v1::Streams::NewStub(channel_)->Generate(&ctx, req));
  }
  template <class Resp>
  static Streamed<Resp> Drain(std::unique_ptr<grpc::ClientReader<Resp>> r) {
    Streamed<Resp> out;
    Resp msg;
    while (r->Read(&msg)) out.messages.push_back(msg);
    out.status = r->Finish();
    return out;
  }
  // A creating import's first message, announcing `total_bytes`.
  static v1::ImportStateRequest ImportHeader(uint64_t total_bytes) {
    v1::ImportStateRequest header;
    header.mutable_header()->set_request_id("r");
    header.mutable_header()->set_mode(v1::IMPORT_MODE_CREATE);
    header.mutable_header()->mutable_state()->set_total_bytes(total_bytes);
    return header;
  }
  // Every worker answers `fn`.
  template <class F>
  void Script(std::function<F> ScriptedWorker::*member, std::function<F> fn) {
    for (auto& w : workers_) (*w).*member = fn;
  }

  std::atomic<int> calls_{0};
  std::unique_ptr<ScriptedWorker> workers_[2];
  GatewayMetrics metrics_;  // outlives the gateway (destroyed after server_)
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// An export whose worker is lost after its first message is not resent to
// another worker (the client would get a second header and chunk 0 again):
// it ends UNAVAILABLE for the client to retry whole.
TEST_F(GatewayTest, AnExportIsNotResentOnceItHasDeliveredAMessage) {
  using W = grpc::ServerWriter<v1::ExportStateResponse>;
  Script<grpc::Status(int, W*)>(&ScriptedWorker::export_state, [](int, W* w) {
    v1::ExportStateResponse header;
    header.mutable_header()->set_version(3);
    w->Write(header);
    return Lost();
  });
  Start();
  const auto exported = ExportS();
  EXPECT_EQ(exported.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << exported.status.error_message();
  EXPECT_EQ(exported.messages.size(), 1u);
  EXPECT_EQ(calls_.load(), 1);
}

// A generation whose `done` was delivered is over: a connection lost
// before the trailers neither fails the call nor runs it again (a second
// `done`).
TEST_F(GatewayTest, AGenerationIsNotRunAgainAfterItsDone) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate, [](int, const v1::GenerateRequest&, W* w) {
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->add_tokens(7);
        chunk.mutable_chunk()->add_tokens(8);
        w->Write(chunk);
        v1::GenerateResponse done;
        done.mutable_done()->set_committed(true);
        w->Write(done);
        return Lost();
      });
  Start();
  const auto generated = GenerateS();
  int dones = 0, tokens = 0;
  for (const auto& msg : generated.messages) {
    if (msg.has_done()) ++dones;
    if (msg.has_chunk()) tokens += msg.chunk().tokens_size();
  }
  EXPECT_TRUE(generated.status.ok()) << generated.status.error_message();
  EXPECT_EQ(dones, 1);
  EXPECT_EQ(tokens, 2);
  EXPECT_EQ(calls_.load(), 1);
}

// A re-run after a failover that ends before the output already delivered
// is another generation: UNAVAILABLE with diverged_at, never its `done`.
TEST_F(GatewayTest, AShorterRerunAfterAFailoverIsDiverged) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate, [](int n, const v1::GenerateRequest&, W* w) {
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->add_tokens(7);
        chunk.mutable_chunk()->set_text_utf8("a");
        if (n == 0) {  // the first attempt: three tokens, then lost
          chunk.mutable_chunk()->add_tokens(8);
          chunk.mutable_chunk()->add_tokens(9);
          chunk.mutable_chunk()->set_text_utf8("abc");
          w->Write(chunk);
          return Lost();
        }
        w->Write(chunk);  // the re-run stops after one
        v1::GenerateResponse done;
        done.mutable_done()->set_finish_reason(v1::FINISH_REASON_CANCELLED);
        w->Write(done);
        return grpc::Status::OK;
      });
  Start();
  const auto generated = GenerateS();
  int dones = 0;
  for (const auto& msg : generated.messages) dones += msg.has_done();
  const absl::Status st = FromGrpcStatus(generated.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetErrorMetadata(st, "diverged_at"), "1");
  EXPECT_EQ(dones, 0);
  EXPECT_EQ(calls_.load(), 2);
}

// The first attempt's chunk says the side-branch generation started at
// input_offset 5: the re-run after a failover is pinned there (the request
// pinned nothing), and the client's first chunk says 5 too. A re-run the
// worker refuses because the session moved on is diverged, never joined. A
// committing request is not pinned.
TEST_F(GatewayTest, ARerunAfterAFailoverRunsOnTheInputItStartedFrom) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  std::vector<std::optional<uint64_t>> pins;
  absl::Mutex mu;
  bool moved = false;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate,
      [&](int n, const v1::GenerateRequest& req, W* w) {
        {
          absl::MutexLock lock(&mu);
          pins.push_back(
              req.has_expected_input_offset()
                  ? std::optional<uint64_t>(req.expected_input_offset())
                  : std::nullopt);
          if (n > 0 && moved) {
            return ToGrpcStatus(MakeError(absl::StatusCode::kFailedPrecondition,
                                          Reason::kPositionMismatch, "moved",
                                          {{"input_offset", "9"}}));
          }
        }
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->set_start_input_offset(5);
        chunk.mutable_chunk()->add_tokens(7);
        chunk.mutable_chunk()->add_tokens(8);
        chunk.mutable_chunk()->set_text_utf8("ab");
        if (n == 0) {
          w->Write(chunk);
          return Lost();
        }
        chunk.mutable_chunk()->add_tokens(9);
        chunk.mutable_chunk()->set_text_utf8("abc");
        w->Write(chunk);
        v1::GenerateResponse done;
        done.mutable_done()->set_finish_reason(v1::FINISH_REASON_MAX_TOKENS);
        w->Write(done);
        return grpc::Status::OK;
      });
  Start();
  const auto generated = GenerateS();
  ASSERT_TRUE(generated.status.ok()) << generated.status.error_message();
  std::vector<uint32_t> tokens;
  std::vector<std::optional<uint64_t>> starts;
  for (const auto& msg : generated.messages) {
    if (!msg.has_chunk()) continue;
    tokens.insert(tokens.end(), msg.chunk().tokens().begin(),
                  msg.chunk().tokens().end());
    starts.push_back(
        msg.chunk().has_start_input_offset()
            ? std::optional<uint64_t>(msg.chunk().start_input_offset())
            : std::nullopt);
  }
  EXPECT_EQ(tokens, (std::vector<uint32_t>{7, 8, 9}));
  EXPECT_EQ(starts, (std::vector<std::optional<uint64_t>>{5, std::nullopt}));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(pins, (std::vector<std::optional<uint64_t>>{std::nullopt, 5}));
    pins.clear();
    moved = true;
  }
  calls_ = 0;
  const auto refused = GenerateS();
  const absl::Status st = FromGrpcStatus(refused.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetErrorMetadata(st, "delivered_tokens"), "2");
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(pins, (std::vector<std::optional<uint64_t>>{std::nullopt, 5}));
    pins.clear();
    moved = false;
  }
  // A committing request is re-sent as it was: the digest that finds its
  // generation record (checkpointed or finished) covers the offset.
  calls_ = 0;
  const auto committed = GenerateS(/*commit=*/true);
  ASSERT_TRUE(committed.status.ok()) << committed.status.error_message();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(pins,
            (std::vector<std::optional<uint64_t>>{std::nullopt, std::nullopt}));
}

// A committing re-run, re-sent unpinned, that samples from another input
// offset than the output already delivered (the lost worker had applied
// input it never committed) is another generation: UNAVAILABLE with
// diverged_at, even when its first tokens happen to match.
TEST_F(GatewayTest, ACommittingRerunFromAnotherOffsetIsDiverged) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate, [&](int n, const v1::GenerateRequest&, W* w) {
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->set_start_input_offset(n == 0 ? 150 : 100);
        chunk.mutable_chunk()->add_tokens(5);
        chunk.mutable_chunk()->add_tokens(6);
        if (n == 0) {
          w->Write(chunk);
          return Lost();
        }
        chunk.mutable_chunk()->add_tokens(7);
        w->Write(chunk);
        v1::GenerateResponse done;
        done.mutable_done()->set_finish_reason(v1::FINISH_REASON_MAX_TOKENS);
        w->Write(done);
        return grpc::Status::OK;
      });
  Start();
  const auto generated = GenerateS(/*commit=*/true);
  const absl::Status st = FromGrpcStatus(generated.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetErrorMetadata(st, "diverged_at"), "0");
  EXPECT_EQ(GetErrorMetadata(st, "delivered_tokens"), "2");
  for (const auto& msg : generated.messages) EXPECT_FALSE(msg.has_done());
}

// Past its replay bound the gateway asks the worker for a checkpoint so the
// log can shrink: one request at a time, not every request read until that
// one is acked (each would commit the whole state).
TEST_F(GatewayTest, AnAppendPastTheReplayBoundAsksForOneCheckpoint) {
  GatewayOptions options;
  options.append_buffer_bytes = 5000;  // ~350 bytes an entry: ~14 fit
  Start(options);
  grpc::ClientContext ctx;
  auto stream = v1::Streams::NewStub(channel_)->Append(&ctx);
  uint64_t offset = 0;
  const std::string text(200, 'x');
  for (int i = 0; i < 20; ++i) {
    v1::AppendRequest r;
    r.set_session_id("s");
    r.set_request_id("r" + std::to_string(i));
    r.set_expected_input_offset(offset);
    r.set_text_utf8(text);
    offset += text.size();
    ASSERT_TRUE(stream->Write(r));
  }
  stream->WritesDone();
  int acks = 0;
  v1::AppendResponse ack;
  while (stream->Read(&ack)) ++acks;
  const grpc::Status st = stream->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(acks, 20);
  EXPECT_EQ(calls_.load(), 1);
  EXPECT_EQ(workers_[0]->checkpoints() + workers_[1]->checkpoints(), 1);
}

// A bare flush ends where it starts, so a commit at that offset that
// predates it does not cover it: after a failover the new owner, which
// loaded that commit, gets the flush again before the text that follows
// (else it would tokenize the text before and after the flush as one).
TEST_F(GatewayTest, AFailoverReplaysAFlushTheLastCommitDoesNotCover) {
  absl::Mutex mu;
  std::vector<std::string> replayed;  // request ids the second worker got
  Script<grpc::Status(
      int, const std::vector<v1::AppendRequest>&,
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>*)>(
      &ScriptedWorker::append,
      [&](int call, const std::vector<v1::AppendRequest>& requests,
          grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>*
              stream) {
        if (call > 0) {
          absl::MutexLock lock(&mu);
          for (const auto& r : requests) replayed.push_back(r.request_id());
        }
        for (const auto& r : requests) {
          if (call == 0 && r.request_id() == "text-c") {
            return grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker lost");
          }
          // First worker: "ab" committed at 2 (version 2) by the
          // checkpoint; the flush after it applied, not committed. The
          // second commits everything (version 3).
          const uint64_t end = r.expected_input_offset() + r.text_utf8().size();
          v1::AppendResponse ack;
          ack.set_request_id(r.request_id());
          ack.set_input_offset(end);
          const bool first = call == 0 && r.request_id() == "text-ab";
          ack.set_committed_input_offset(first ? 0 : end);
          ack.set_version(call > 0 ? 3 : first ? 1 : 2);
          if (!stream->Write(ack)) break;
        }
        return grpc::Status::OK;
      });
  Start();
  grpc::ClientContext ctx;
  auto stream = v1::Streams::NewStub(channel_)->Append(&ctx);
  auto request = [](const std::string& id, uint64_t at) {
    v1::AppendRequest r;
    r.set_session_id("s");
    r.set_request_id(id);
    r.set_expected_input_offset(at);
    return r;
  };
  v1::AppendRequest ab = request("text-ab", 0);
  ab.set_text_utf8("ab");
  v1::AppendRequest checkpoint = request("checkpoint", 2);
  checkpoint.set_checkpoint(true);
  v1::AppendRequest flush = request("flush", 2);
  flush.set_flush(true);
  v1::AppendRequest c = request("text-c", 2);
  c.set_text_utf8("c");
  for (const auto* r : {&ab, &checkpoint, &flush, &c}) {
    ASSERT_TRUE(stream->Write(*r));
  }
  stream->WritesDone();
  std::vector<std::string> acked;
  v1::AppendResponse ack;
  while (stream->Read(&ack)) acked.push_back(ack.request_id());
  const grpc::Status st = stream->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(acked, (std::vector<std::string>{"text-ab", "checkpoint", "flush",
                                             "text-c"}));
  absl::MutexLock lock(&mu);
  ASSERT_GE(replayed.size(), 2u);
  EXPECT_EQ(replayed[replayed.size() - 2], "flush");
  EXPECT_EQ(replayed.back(), "text-c");
  EXPECT_EQ(std::count(replayed.begin(), replayed.end(), "text-ab"), 0);
}

// ABORTED/FENCED says another worker took that one session, not that the
// worker failed: the call moves on, but the worker is not avoided for the
// sessions it still serves (the next call on its sessions reaches it).
TEST_F(GatewayTest, AFencedAnswerDoesNotMakeTheWorkerSuspect) {
  std::atomic<int> got[2] = {0, 0};
  std::atomic<int> fenced{-1};  // the worker that answered FENCED
  for (int i = 0; i < 2; ++i) {
    workers_[i]->get_session = [&got, &fenced, i](int) {
      got[i].fetch_add(1);
      int none = -1;
      if (fenced.compare_exchange_strong(none, i)) {  // the first call
        return ToGrpcStatus(MakeError(absl::StatusCode::kAborted,
                                      Reason::kFenced, "another owner"));
      }
      return grpc::Status::OK;
    };
  }
  Start();
  auto get = [&] {
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    return v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
  };
  ASSERT_TRUE(get().ok());  // the fenced worker, then the other
  ASSERT_NE(fenced.load(), -1);
  ASSERT_EQ(got[0].load() + got[1].load(), 2);
  // "s" ranks the fenced worker first still: it is asked first again.
  ASSERT_TRUE(get().ok());
  EXPECT_EQ(got[fenced.load()].load(), 2);
  EXPECT_EQ(got[1 - fenced.load()].load(), 1);
}

// The gateway buffers an import whole before forwarding it, so every
// message after the header must carry a chunk: empty ones (which would
// fill its memory at a few bytes each on the wire) are INVALID_ARGUMENT,
// and nothing reaches a worker.
TEST_F(GatewayTest, AnImportOfEmptyMessagesIsRefused) {
  Start();
  grpc::ClientContext ctx;
  v1::Session resp;
  auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
  ASSERT_TRUE(writer->Write(ImportHeader(10)));
  for (int i = 0; i < 3; ++i) {
    if (!writer->Write(v1::ImportStateRequest())) break;
  }
  writer->WritesDone();
  const absl::Status st = FromGrpcStatus(writer->Finish());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
}

// An import past the gateway's bound ends at once, MESSAGE_TOO_LARGE as
// docs/errors.md has it (INVALID_ARGUMENT, field and limit).
TEST_F(GatewayTest, AnImportPastTheGatewaysBoundIsMessageTooLarge) {
  GatewayOptions options;
  options.max_import_bytes = 4096;
  Start(options);
  grpc::ClientContext ctx;
  v1::Session resp;
  auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
  ASSERT_TRUE(writer->Write(ImportHeader(1 << 20)));
  v1::ImportStateRequest chunk;
  chunk.mutable_chunk()->set_data(std::string(8192, 'x'));
  writer->Write(chunk);
  writer->WritesDone();
  const absl::Status st = FromGrpcStatus(writer->Finish());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(GetReason(st), Reason::kMessageTooLarge);
  EXPECT_EQ(GetErrorMetadata(st, "limit"), "4096");
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
}

// With API keys, an import without a valid token ends UNAUTHENTICATED before
// the gateway reads (and buffers) its messages; a valid token gets through.
TEST_F(GatewayTest, AnImportIsAuthenticatedBeforeItIsRead) {
  GatewayOptions options;
  options.auth = TenantAuth(
      std::map<std::string, std::string>{{"key-0123456789abcdef", "acme"}});
  Start(options);
  auto import = [&](const std::string& token, int chunks) {
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    int written = 0;
    if (writer->Write(ImportHeader(uint64_t{1} << 30))) {
      v1::ImportStateRequest chunk;
      chunk.mutable_chunk()->set_data(std::string(1 << 20, 'x'));
      while (written < chunks && writer->Write(chunk)) ++written;
    }
    writer->WritesDone();
    return std::make_pair(FromGrpcStatus(writer->Finish()), written);
  };
  // The refusal comes first: the stream breaks long before 1 GiB is sent.
  for (const std::string token : {"", "wrong-0123456789abcdef"}) {
    auto [st, written] = import(token, 1024);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
    EXPECT_EQ(GetReason(st), Reason::kUnauthenticated);
    EXPECT_LT(written, 1024);
  }
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
  // The scripted worker reads it and answers INVALID_ARGUMENT.
  auto [st, written] = import("key-0123456789abcdef", 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 1);
}

// A worker that failed one call (a suspect, avoided for a while) still
// serves its models: ListModels lists them instead of answering that no
// worker serves any.
TEST_F(GatewayTest, ASuspectWorkersModelsStayListed) {
  Script<grpc::Status(int)>(&ScriptedWorker::get_session,
                            [](int) { return Lost(); });
  Start();
  auto models = v1::Models::NewStub(channel_);
  {
    grpc::ClientContext ctx;
    v1::ListModelsResponse resp;
    ASSERT_TRUE(models->ListModels(&ctx, {}, &resp).ok());
    ASSERT_EQ(resp.models_size(), 1);
  }
  {
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    EXPECT_EQ(v1::Sessions::NewStub(channel_)
                  ->GetSession(&ctx, req, &resp)
                  .error_code(),
              grpc::StatusCode::UNAVAILABLE);  // both workers now suspect
  }
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  const grpc::Status st = models->ListModels(&ctx, {}, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.models_size(), 1);
  EXPECT_EQ(resp.models(0).model_id(), "tiny");
  EXPECT_EQ(resp.models(0).workers(), 2u);
}

// When every worker's answer meant "try another" the call ends UNAVAILABLE
// (retry later), never a worker's CANCELLED (a client would take it for its
// own cancellation) or the internal ABORTED/FENCED.
TEST_F(GatewayTest, ACallNoWorkerCompletedIsUnavailable) {
  for (const grpc::Status& answer :
       {ToGrpcStatus(MakeError(absl::StatusCode::kAborted, Reason::kFenced,
                               "taken over")),
        grpc::Status(grpc::StatusCode::CANCELLED, "shutting down")}) {
    Script<grpc::Status(int)>(&ScriptedWorker::get_session,
                              [answer](int) { return answer; });
    if (server_ == nullptr) Start();
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    const grpc::Status st =
        v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
        << st.error_message();
    // The gateway's own answer, typed like a draining worker's.
    EXPECT_EQ(GetReason(FromGrpcStatus(st)), Reason::kOverloaded);
    EXPECT_TRUE(GetErrorMetadata(FromGrpcStatus(st), "retry_after_ms"));
  }
}

// A loopback port bound but not listening: connections to it are refused,
// as to a killed worker's, and nothing else can take it while this lives.
class RefusingPort {
 public:
  RefusingPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "cannot bind a loopback port";
      return;
    }
    address_ = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  }
  ~RefusingPort() {
    if (fd_ >= 0) close(fd_);
  }
  RefusingPort(const RefusingPort&) = delete;
  RefusingPort& operator=(const RefusingPort&) = delete;
  const std::string& address() const { return address_; }

 private:
  int fd_ = -1;
  std::string address_;
};

// After a burst of worker deaths the registry lists dead workers until
// their heartbeats expire. A worker that could not be reached never got
// the call, so a failover from it costs no attempt: with max_attempts 2
// and eight dead workers ranked ahead of the two live ones, unary and
// streaming calls still reach a live worker.
TEST_F(GatewayTest, UnreachableWorkersCostNoAttempts) {
  std::atomic<int> got[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    workers_[i]->get_session = [&got, i](int) {
      got[i].fetch_add(1);
      return grpc::Status::OK;
    };
  }
  GatewayOptions options;
  options.max_attempts = 2;
  // Each call meets every dead worker (none stays avoided as a suspect).
  options.router.suspect_for = absl::ZeroDuration();
  std::vector<std::unique_ptr<RefusingPort>> dead;
  for (int i = 0; i < 8; ++i) {
    dead.push_back(std::make_unique<RefusingPort>());
    options.router.static_workers.push_back(dead.back()->address());
  }
  // A session every dead worker outranks.
  std::string session;
  for (int n = 0; session.empty(); ++n) {
    const std::string key = absl::StrCat("default/s", n);
    const double best_live =
        std::max(RendezvousScore(key, workers_[0]->address(), 0),
                 RendezvousScore(key, workers_[1]->address(), 0));
    bool dead_first = true;
    for (const std::string& a : options.router.static_workers) {
      dead_first &= RendezvousScore(key, a, 0) > best_live;
    }
    if (dead_first) session = absl::StrCat("s", n);
  }
  Start(options);
  grpc::ClientContext ctx;
  v1::GetSessionRequest req;
  req.set_session_id(session);
  v1::Session resp;
  const grpc::Status st =
      v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(got[0].load() + got[1].load(), 1);

  // An Append: every request acked, by a live worker, the ninth tried.
  grpc::ClientContext actx;
  auto stream = v1::Streams::NewStub(channel_)->Append(&actx);
  v1::AppendRequest r;
  r.set_session_id(session);
  r.set_text_utf8("hello");
  ASSERT_TRUE(stream->Write(r));
  stream->WritesDone();
  v1::AppendResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.input_offset(), 5u);
  EXPECT_TRUE(stream->Finish().ok());
  auto attempts =
      actx.GetServerTrailingMetadata().find("x-statestream-attempts");
  ASSERT_NE(attempts, actx.GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(attempts->second.data(), attempts->second.size()), "9");
}

// Connections to worker addresses no call has used for a while are closed
// (a rescheduled pod comes back on another address: without this the
// gateway would keep one per address ever seen).
TEST_F(GatewayTest, IdleWorkerConnectionsAreClosed) {
  Script<grpc::Status(int)>(&ScriptedWorker::get_session,
                            [](int) { return grpc::Status::OK; });
  GatewayOptions options;
  options.metrics = &metrics_;
  options.idle_channel_timeout = absl::Seconds(2);
  Start(options);
  grpc::ClientContext ctx;
  v1::GetSessionRequest req;
  req.set_session_id("s");
  v1::Session resp;
  ASSERT_TRUE(
      v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp).ok());
  auto channels = [&] {
    const std::string text = metrics_.Render();
    const std::string key = "\nstatestream_gateway_worker_channels ";
    const size_t at = text.find(key);
    return at == std::string::npos ? -1
                                   : std::stoi(text.substr(at + key.size()));
  };
  EXPECT_EQ(channels(), 1);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (channels() != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(channels(), 0);
}

// A tenant at its session limit may still retry a create that succeeded
// (its reply was lost): the session exists, so the create goes to a worker
// (which returns it) instead of TENANT_LIMIT. A create of a new session is
// refused, and so is a request id whose derived session is past the
// request-id window.
TEST_F(GatewayTest, ARetriedCreateAtTheSessionLimitReachesAWorker) {
  // The store's clock: "old" is created two hours back.
  FakeClock clock(absl::Now() - absl::Hours(2));
  MemoryStateStoreOptions store_options;
  store_options.clock = &clock;
  std::shared_ptr<StateStore> store(*NewMemoryStateStore(store_options));
  auto made = [&](const std::string& id) {
    CreateSessionRequest r;
    r.key = {"default", id};
    r.model_id = "tiny";
    r.initial_state.model_fingerprint = "fp";
    ASSERT_TRUE(store->CreateSession(r).ok());
  };
  made(DerivedSessionId("default", "create-old"));
  clock.Advance(absl::Hours(2));
  made("named");
  made(DerivedSessionId("default", "create-generated"));
  Script<grpc::Status(int, v1::Session*)>(&ScriptedWorker::create_session,
                                          [](int, v1::Session* s) {
                                            s->set_session_id("returned");
                                            return grpc::Status::OK;
                                          });
  TenantLimitsOptions limits;
  limits.defaults.max_sessions = 3;
  GatewayOptions options;
  options.limits = std::make_shared<TenantLimits>(limits, store.get());
  Start(options, store);
  auto create = [&](const std::string& session_id,
                    const std::string& request_id) {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id(session_id);
    req.set_request_id(request_id);
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp));
  };
  EXPECT_TRUE(create("named", "create-named").ok());
  EXPECT_TRUE(create("", "create-generated").ok());
  EXPECT_EQ(calls_.load(), 2);
  EXPECT_EQ(GetReason(create("new", "create-new")), Reason::kTenantLimit);
  EXPECT_EQ(GetReason(create("", "create-other")), Reason::kTenantLimit);
  // A request id reused past the workers' window (an hour): its derived
  // session is another request's, and a worker would make a new one.
  EXPECT_EQ(GetReason(create("", "create-old")), Reason::kTenantLimit);
  EXPECT_EQ(calls_.load(), 2);
}

}  // namespace
}  // namespace statestream
