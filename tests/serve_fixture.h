// SPDX-License-Identifier: Apache-2.0
// A test suite against one `statestream serve` (the demo model, in-memory
// store) started for the whole suite: stubs for its three services, and
// client contexts with a deadline and an optional tenant. On a failure the
// server's stderr is added to the report.
//
// Built with STATESTREAM_E2E_GATEWAY defined, the same suite runs against a
// gateway in front of one worker over a real redis-server (a random
// byte-level model `tiny`), so every case is checked through the gateway
// too (a test whose answer differs there is left out of that build).
#ifndef STATESTREAM_TESTS_SERVE_FIXTURE_H_
#define STATESTREAM_TESTS_SERVE_FIXTURE_H_

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/subprocess.h"
#ifdef STATESTREAM_E2E_GATEWAY
#include "tests/cluster_harness.h"
#endif

namespace statestream::e2e {

class ServeTest : public ::testing::Test {
 protected:
#ifdef STATESTREAM_E2E_GATEWAY
  static void SetUpTestSuite() {
    ClusterOptions o;
    o.workers = 1;
    o.gateways = 1;
    auto started = Cluster::Start(STATESTREAM_BIN, o);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = started->release();
    address_ = new std::string(cluster_->gateways()[0]->address());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete address_;
    address_ = nullptr;
  }
  static std::string ServerLogs() {
    return cluster_ == nullptr ? "" : cluster_->Logs();
  }
  static inline Cluster* cluster_ = nullptr;
#else
  static void SetUpTestSuite() {
    auto started = StartServer(
        {STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0"}, absl::Seconds(60));
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = started->process.release();
    address_ = new std::string(started->address);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete address_;
    address_ = nullptr;
  }
  static std::string ServerLogs() {
    if (server_ == nullptr) return "";
    auto code = server_->Wait(absl::Milliseconds(100));
    return absl::StrCat("server ",
                        code.ok() ? absl::StrCat("exited with ", *code)
                                  : std::string("running"),
                        "; stderr:\n", server_->stderr_text());
  }
  // One per test binary (a suite per binary uses this fixture).
  static inline Subprocess* server_ = nullptr;
#endif

  void SetUp() override {
    ASSERT_NE(address_, nullptr);
    auto channel =
        grpc::CreateChannel(*address_, grpc::InsecureChannelCredentials());
    sessions_ = v1::Sessions::NewStub(channel);
    streams_ = v1::Streams::NewStub(channel);
    models_ = v1::Models::NewStub(channel);
  }

  void TearDown() override {
    if (HasFailure()) ADD_FAILURE() << ServerLogs();
  }

  static std::unique_ptr<grpc::ClientContext> Ctx(
      const std::string& tenant = "") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(120));
    if (!tenant.empty()) ctx->AddMetadata("x-statestream-tenant", tenant);
    return ctx;
  }

  // One Append call: sends every request, reads the acks, half-closes.
  struct AppendResult {
    std::vector<v1::AppendResponse> acks;
    absl::Status status;
  };
  AppendResult Append(const std::vector<v1::AppendRequest>& requests,
                      const std::string& tenant = "") {
    AppendResult out;
    auto ctx = Ctx(tenant);
    auto stream = streams_->Append(ctx.get());
    for (const auto& r : requests) {
      if (!stream->Write(r)) break;
      v1::AppendResponse ack;
      if (!stream->Read(&ack)) break;
      out.acks.push_back(ack);
    }
    stream->WritesDone();
    v1::AppendResponse extra;
    while (stream->Read(&extra)) out.acks.push_back(extra);
    out.status = FromGrpcStatus(stream->Finish());
    return out;
  }

  static v1::AppendRequest Text(const std::string& id, uint64_t offset,
                                const std::string& text, bool flush = false,
                                bool checkpoint = false) {
    v1::AppendRequest r;
    r.set_session_id(id);
    r.set_expected_input_offset(offset);
    r.set_text_utf8(text);
    r.set_flush(flush);
    r.set_checkpoint(checkpoint);
    return r;
  }

  static inline std::string* address_ = nullptr;
  std::unique_ptr<v1::Sessions::Stub> sessions_;
  std::unique_ptr<v1::Streams::Stub> streams_;
  std::unique_ptr<v1::Models::Stub> models_;
};

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_SERVE_FIXTURE_H_
