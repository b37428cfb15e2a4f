// SPDX-License-Identifier: Apache-2.0
// The gateway tests' scripted workers (real gRPC servers on 127.0.0.1
// whose answers a test sets) and the fixture that starts a gateway in
// process in front of them.
#ifndef STATESTREAM_SERVICES_GATEWAY_TEST_UTIL_H_
#define STATESTREAM_SERVICES_GATEWAY_TEST_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "services/gateway.h"
#include "services/gateway_metrics.h"
#include "services/server.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {

// A connection lost mid-call, as the gateway sees it: UNAVAILABLE without
// details.
inline grpc::Status Lost() {
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
  std::function<grpc::Status(int)> delete_session;
  // ListModels' answer instead of model "tiny" (its call number is not
  // counted: the gateway asks on its own).
  std::function<grpc::Status(v1::ListModelsResponse*)> list_models;
  // When set, answers an Append (after reading it whole) instead of acking
  // every request as committed.
  std::function<grpc::Status(
      int, const std::vector<v1::AppendRequest>&,
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>*)>
      append;

  // When set, answers an ImportState (after reading it whole) instead of
  // INVALID_ARGUMENT.
  std::function<grpc::Status(int, const std::vector<v1::ImportStateRequest>&,
                             v1::Session*)>
      import_state;

  // When set, Append acks each request as it reads it, at version 1 with
  // everything committed (instead of reading the call whole first).
  bool ack_as_read = false;
  // With ack_as_read: the acks say nothing is committed.
  bool ack_uncommitted = false;
  // When set, answers GetSession with its session (instead of get_session).
  std::function<grpc::Status(const v1::GetSessionRequest&, v1::Session*)>
      session_view;
  // GetSession calls answered by session_view.
  int session_views() const { return session_views_.load(); }

  int imports() const { return imports_.load(); }
  // "<session>/<request id>" of each Append request read, in order.
  std::vector<std::string> appended() {
    absl::MutexLock lock(&appended_mu_);
    return appended_;
  }
  // The ack of `r` applied and committed up to its end.
  static v1::AppendResponse CommittedAck(const v1::AppendRequest& r) {
    v1::AppendResponse ack;
    ack.set_request_id(r.request_id());
    const uint64_t end = r.expected_input_offset() + r.text_utf8().size();
    ack.set_input_offset(end);
    ack.set_committed_input_offset(end);
    return ack;
  }
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
    auto seen = [this](const v1::AppendRequest& r) {
      absl::MutexLock lock(&appended_mu_);
      appended_.push_back(r.session_id() + "/" + r.request_id());
    };
    if (ack_as_read) {
      while (stream->Read(&req)) {
        seen(req);
        checkpoints_ += req.checkpoint();
        v1::AppendResponse ack = CommittedAck(req);
        ack.set_version(1);
        if (ack_uncommitted) ack.set_committed_input_offset(0);
        if (!stream->Write(ack)) break;
      }
      return grpc::Status::OK;
    }
    while (stream->Read(&req)) {
      seen(req);
      requests.push_back(req);
    }
    if (append) return append(call, requests, stream);
    checkpoints_ = 0;
    for (const auto& r : requests) {
      checkpoints_ += r.checkpoint();
      if (!stream->Write(CommittedAck(r))) break;
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
  grpc::Status GetSession(grpc::ServerContext*,
                          const v1::GetSessionRequest* req,
                          v1::Session* resp) override {
    if (session_view) {
      ++session_views_;
      return session_view(*req, resp);
    }
    return get_session(calls_->fetch_add(1));
  }
  grpc::Status DeleteSession(grpc::ServerContext*,
                             const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override {
    return delete_session(calls_->fetch_add(1));
  }
  grpc::Status ImportState(grpc::ServerContext*,
                           grpc::ServerReader<v1::ImportStateRequest>* r,
                           v1::Session* resp) override {
    ++imports_;
    std::vector<v1::ImportStateRequest> parts;
    v1::ImportStateRequest msg;
    while (r->Read(&msg)) parts.push_back(msg);
    if (import_state) return import_state(calls_->fetch_add(1), parts, resp);
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "scripted");
  }
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* resp) override {
    if (list_models) return list_models(resp);
    v1::Model* m = resp->add_models();
    m->set_model_id("tiny");
    m->set_fingerprint("fp-tiny");
    return grpc::Status::OK;
  }

 private:
  std::atomic<int>* const calls_;
  std::atomic<int> imports_{0};
  std::atomic<int> checkpoints_{0};
  std::atomic<int> session_views_{0};
  absl::Mutex appended_mu_;
  std::vector<std::string> appended_ ABSL_GUARDED_BY(appended_mu_);
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
  // `static_workers`: the workers are --workers (else only what `store`'s
  // registry lists).
  void Start(GatewayOptions options = {},
             std::shared_ptr<StateStore> store = nullptr,
             bool static_workers = true) {
    for (auto& w : workers_) {
      if (static_workers) options.router.static_workers.push_back(w->address());
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
    std::string attempts;  // the x-statestream-attempts trailer
  };
  Streamed<v1::ExportStateResponse> ExportS() {
    grpc::ClientContext ctx;
    v1::ExportStateRequest req;
    req.set_session_id("s");
    return Drain(&ctx, v1::Sessions::NewStub(channel_)->ExportState(&ctx, req));
  }
  // A Generate of session "s" (pinned at `expected_input_offset` if set).
  Streamed<v1::GenerateResponse> GenerateS(
      bool commit = false,
      std::optional<uint64_t> expected_input_offset = std::nullopt) {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_session_id("s");
    req.set_commit(commit);
    if (expected_input_offset) {
      req.set_expected_input_offset(*expected_input_offset);
    }
    return Drain(&ctx, v1::Streams::NewStub(channel_)->Generate(&ctx, req));
  }
  template <class Resp>
  static Streamed<Resp> Drain(grpc::ClientContext* ctx,
                              std::unique_ptr<grpc::ClientReader<Resp>> r) {
    Streamed<Resp> out;
    Resp msg;
    while (r->Read(&msg)) out.messages.push_back(msg);
    out.status = r->Finish();
    const auto& trailers = ctx->GetServerTrailingMetadata();
    if (auto it = trailers.find("x-statestream-attempts");
        it != trailers.end()) {
      out.attempts.assign(it->second.data(), it->second.size());
    }
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
  using AppendStream =
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>;
  // Every worker answers its Appends with `fn` (ScriptedWorker::append).
  void ScriptAppends(
      std::function<grpc::Status(int, const std::vector<v1::AppendRequest>&,
                                 AppendStream*)>
          fn) {
    Script(&ScriptedWorker::append, std::move(fn));
  }
  // The request ids the workers' later Append calls received.
  struct Replayed {
    absl::Mutex mu;
    std::vector<std::string> ids ABSL_GUARDED_BY(mu);
  };
  // Every worker's Appends, scripted for one failover: the first call
  // fails (UNAVAILABLE) when it reaches request `fail_at`; every other
  // request is acked as `fill` says (request id and input offset already
  // set), and what later calls receive goes to `replayed`.
  void ScriptFailover(
      const std::string& fail_at,
      std::function<void(int, const v1::AppendRequest&, v1::AppendResponse*)>
          fill,
      Replayed* replayed) {
    ScriptAppends([=](int call, const std::vector<v1::AppendRequest>& requests,
                      AppendStream* stream) {
      for (const auto& r : requests) {
        if (call > 0) {
          absl::MutexLock lock(&replayed->mu);
          replayed->ids.push_back(r.request_id());
        } else if (r.request_id() == fail_at) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker lost");
        }
        v1::AppendResponse ack;
        ack.set_request_id(r.request_id());
        ack.set_input_offset(r.expected_input_offset() + r.text_utf8().size());
        fill(call, r, &ack);
        if (!stream->Write(ack)) break;
      }
      return grpc::Status::OK;
    });
  }
  // A request of session "s" at input offset `at`, with `text` if any.
  static v1::AppendRequest AppendAt(const std::string& id, uint64_t at,
                                    const std::string& text = "") {
    v1::AppendRequest r;
    r.set_session_id("s");
    r.set_request_id(id);
    r.set_expected_input_offset(at);
    if (!text.empty()) r.set_text_utf8(text);
    return r;
  }
  // One Append call through the gateway: sends `requests`, half-closes,
  // then reads every ack (the request ids acked, in order) and the end.
  struct Appended {
    std::vector<std::string> acked;
    grpc::Status status;
  };
  Appended AppendThrough(const std::vector<v1::AppendRequest>& requests) {
    grpc::ClientContext ctx;
    auto stream = v1::Streams::NewStub(channel_)->Append(&ctx);
    for (const auto& r : requests) {
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
    Appended out;
    v1::AppendResponse ack;
    while (stream->Read(&ack)) out.acked.push_back(ack.request_id());
    out.status = stream->Finish();
    return out;
  }

  std::atomic<int> calls_{0};
  std::unique_ptr<ScriptedWorker> workers_[2];
  GatewayMetrics metrics_;  // outlives the gateway (destroyed after server_)
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_GATEWAY_TEST_UTIL_H_
