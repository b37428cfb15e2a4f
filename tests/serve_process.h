// SPDX-License-Identifier: Apache-2.0
// One `statestream serve` process (the demo model, in-memory store, its
// /metrics on a port of its own) started with a test's flags, stubs to it,
// and the calls the tests against it share.
#ifndef STATESTREAM_TESTS_SERVE_PROCESS_H_
#define STATESTREAM_TESTS_SERVE_PROCESS_H_

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/metrics_scrape.h"
#include "tests/subprocess.h"

namespace statestream::e2e {

inline constexpr absl::Duration kServeStartTimeout = absl::Seconds(60);

// A running server and stubs to it.
struct ServeProcess {
  std::unique_ptr<Subprocess> process;
  std::string address, metrics;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Sessions::Stub> sessions;
  std::unique_ptr<v1::Streams::Stub> streams;

  static std::unique_ptr<ServeProcess> Start(std::vector<std::string> flags) {
    std::vector<std::string> argv = {STATESTREAM_BIN, "serve",
                                     "--listen=127.0.0.1:0",
                                     "--metrics-listen=127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto started = StartServer(argv, kServeStartTimeout);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return nullptr;
    auto s = std::make_unique<ServeProcess>();
    s->process = std::move(started->process);
    s->address = started->address;
    s->metrics = started->metrics_address;
    EXPECT_FALSE(s->metrics.empty());
    s->channel =
        grpc::CreateChannel(s->address, grpc::InsecureChannelCredentials());
    s->sessions = v1::Sessions::NewStub(s->channel);
    s->streams = v1::Streams::NewStub(s->channel);
    return s;
  }

  // The value of the series `name` (with its labels, if any), or -1.
  double Metric(const std::string& name) {
    auto samples = ScrapeMetrics(metrics);
    if (!samples) return -1;
    auto it = samples->find(name);
    return it == samples->end() ? -1 : it->second;
  }
};

inline std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(300));
  return ctx;
}

inline absl::Status Create(ServeProcess& s, const std::string& id,
                           const std::string& request_id = "") {
  v1::CreateSessionRequest req;
  req.set_request_id(request_id.empty() ? "create-" + id : request_id);
  req.set_session_id(id);
  v1::Session out;
  auto ctx = Ctx();
  return FromGrpcStatus(s.sessions->CreateSession(ctx.get(), req, &out));
}

inline absl::Status AppendText(ServeProcess& s, const std::string& id,
                               const std::string& text) {
  auto ctx = Ctx();
  auto stream = s.streams->Append(ctx.get());
  v1::AppendRequest r;
  r.set_session_id(id);
  r.set_request_id("append-" + id);
  r.set_expected_input_offset(0);
  r.set_text_utf8(text);
  r.set_flush(true);
  r.set_checkpoint(true);
  stream->Write(r);
  v1::AppendResponse ack;
  stream->Read(&ack);
  stream->WritesDone();
  return FromGrpcStatus(stream->Finish());
}

struct Gen {
  std::vector<uint32_t> tokens;
  std::string text;
  v1::GenerateDone done;
  absl::Status status;
};

inline v1::GenerateRequest GenRequest(const std::string& id,
                                      const std::string& request_id,
                                      int max_tokens, bool commit,
                                      uint64_t seed) {
  v1::GenerateRequest g;
  g.set_session_id(id);
  g.set_request_id(request_id);
  g.set_max_tokens(max_tokens);
  g.set_commit(commit);
  g.mutable_sampling()->set_seed(seed);
  g.mutable_sampling()->set_temperature(0.9f);
  return g;
}

inline Gen Generate(ServeProcess& s, const v1::GenerateRequest& req) {
  Gen out;
  auto ctx = Ctx();
  auto reader = s.streams->Generate(ctx.get(), req);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      for (uint32_t t : msg.chunk().tokens()) out.tokens.push_back(t);
      out.text += msg.chunk().text_utf8();
    } else {
      out.done = msg.done();
    }
  }
  out.status = FromGrpcStatus(reader->Finish());
  return out;
}

// Polls `cond` every 50 ms for up to 120 s.
inline bool Eventually(const std::function<bool()>& cond) {
  const absl::Time end = absl::Now() + absl::Seconds(120);
  while (absl::Now() < end) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return cond();
}

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_SERVE_PROCESS_H_
