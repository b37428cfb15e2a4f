// SPDX-License-Identifier: Apache-2.0
// What a gateway holds while calls wait, with real processes on 127.0.0.1
// (the ClusterFailoverTest cluster, tests/cluster_failover_fixture.h): a
// gateway at --max-calls refuses more, typed; open Append, Generate,
// unary and import calls hold none of its threads, counted in
// /proc/PID/status while they wait on their clients or a paused worker.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/cluster_failover_fixture.h"
#include "tests/cluster_process.h"
#include "tests/metrics_scrape.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using e2e::ClusterFailoverTest;
using e2e::kStartTimeout;

// A gateway serving --max-calls calls refuses the next one, typed and
// retryable (RESOURCE_EXHAUSTED/OVERLOADED), instead of starting a thread
// per call without bound, and counts it in its metrics (a stream as well
// as a unary call); once a call ends the next one is served.
TEST_F(ClusterFailoverTest, AGatewayAtItsCallLimitRefusesMore) {
  auto g = e2e::ClusterProcess::Start(
      {STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
       "--redis=" + redis_->address(), "--max-calls=1", "--shutdown-grace=1s",
       "--metrics-listen=127.0.0.1:0"},
      absl::StrCat(*dir_, "/gateway-limited.log"), kStartTimeout);
  ASSERT_TRUE(g.ok()) << g.status();
  auto channel =
      grpc::CreateChannel((*g)->address(), grpc::InsecureChannelCredentials());
  auto sessions = v1::Sessions::NewStub(channel);
  auto streams = v1::Streams::NewStub(channel);
  const std::string id = "limited";
  ASSERT_TRUE(Create(id).ok());
  auto get = [&] {
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session s;
    auto ctx = Ctx();
    return sessions->GetSession(ctx.get(), req, &s);
  };
  // An open Append holds the one call.
  auto ctx = Ctx();
  auto stream = streams->Append(ctx.get());
  ASSERT_TRUE(stream->Write(Text(id, 0, "held")));
  v1::AppendResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  grpc::Status refused = get();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(refused)), Reason::kOverloaded);
  {
    auto second_ctx = Ctx();
    auto second = streams->Append(second_ctx.get());
    second->Write(Text(id, 4, "more"));
    second->WritesDone();
    const grpc::Status st = second->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << st.error_message();
  }
  auto metrics = e2e::ScrapeMetrics((*g)->metrics_address());
  ASSERT_TRUE(metrics.has_value());
  for (const char* method : {"GetSession", "Append"}) {
    EXPECT_EQ(
        (*metrics)[absl::StrCat("statestream_gateway_calls_total{method=\"",
                                method, "\",code=\"RESOURCE_EXHAUSTED\"}")],
        1)
        << method;
  }
  EXPECT_EQ(
      (*metrics)["statestream_gateway_errors_total{reason=\"OVERLOADED\"}"], 2);
  stream->WritesDone();
  ASSERT_TRUE(stream->Finish().ok());
  // The call's thread ends just after its status is sent.
  grpc::Status served = get();
  for (int i = 0; i < 100 && !served.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    served = get();
  }
  EXPECT_TRUE(served.ok()) << served.error_message();
}

// The process's thread count (/proc/PID/status), or -1.
int Threads(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "Threads:")) return std::atoi(line.c_str() + 8);
  }
  return -1;
}

// A gateway forwards Append streams without a thread per stream: 200 open
// streams, idle between requests, leave its thread count where it was (it
// was three threads a stream), every one still acks after idling, and
// when the owner of some is killed (SIGKILL) they all fail over at once
// and commit every request, none lost or doubled.
TEST_F(ClusterFailoverTest, IdleAppendStreamsHoldNoGatewayThreads) {
  constexpr int kStreams = 200;
  const pid_t gateway = (*gateways_)[1]->pid();
  struct Open {
    std::string id;
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<
        grpc::ClientReaderWriter<v1::AppendRequest, v1::AppendResponse>>
        stream;
    uint64_t offset = 0;
  };
  std::vector<Open> open(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    open[i].id = absl::StrCat("idle-", i);
    ASSERT_TRUE(Create(open[i].id, 1).ok());
  }
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  // Every stream sends `text` before any reads its ack.
  auto step = [&](const std::string& text) {
    for (Open& o : open) {
      ASSERT_TRUE(o.stream->Write(Text(o.id, o.offset, text))) << o.id;
      o.offset += text.size();
    }
    for (Open& o : open) {
      v1::AppendResponse ack;
      ASSERT_TRUE(o.stream->Read(&ack)) << o.id;
      EXPECT_EQ(ack.input_offset(), o.offset) << o.id;
    }
  };
  for (Open& o : open) {
    o.ctx = Ctx();
    o.stream = streams_[1]->Append(o.ctx.get());
  }
  ASSERT_NO_FATAL_FAILURE(step("opened, "));
  const int idle = Threads(gateway);
  EXPECT_LT(idle - before, kStreams / 4)
      << before << " threads before the streams opened, " << idle
      << " with them open and idle";
  absl::SleepFor(absl::Seconds(1));
  ASSERT_NO_FATAL_FAILURE(step("idled, "));
  ASSERT_TRUE(KillOwner(open[0].id));
  ASSERT_NO_FATAL_FAILURE(step("failed over."));
  for (Open& o : open) {
    o.stream->WritesDone();
    grpc::Status st = o.stream->Finish();
    EXPECT_TRUE(st.ok()) << o.id << ": " << st.error_message();
  }
  for (const Open& o : open) {
    auto s = Get(o.id, 1);
    ASSERT_TRUE(s.ok()) << o.id << ": " << s.status();
    EXPECT_EQ(s->committed_input_offset(), o.offset) << o.id;
  }
}

// Generate calls in progress hold no gateway thread either: 40 of them,
// each read one chunk at a time by a slow client (so flow control holds
// their workers back), leave the gateway's thread count where it was (it
// was one thread a call); one then runs to its end, the others are
// cancelled, and the gateway is back to its threads at rest.
TEST_F(ClusterFailoverTest, OpenGeneratesHoldNoGatewayThreads) {
  constexpr int kCalls = 40;
  const pid_t gateway = (*gateways_)[1]->pid();
  const auto prompt = Chunks(1, 32, 5)[0];
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_NO_FATAL_FAILURE(
        CreateWithPrompt(absl::StrCat("gen-open-", i), prompt));
  }
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>>
      readers;
  for (int i = 0; i < kCalls; ++i) {
    v1::GenerateRequest g;
    g.set_session_id(absl::StrCat("gen-open-", i));
    g.set_request_id("open");
    g.set_max_tokens(4096);
    g.mutable_sampling()->set_seed(7);
    g.set_logprobs(true);
    g.set_top_logprobs(20);
    ctxs.push_back(Ctx());
    readers.push_back(streams_[1]->Generate(ctxs.back().get(), g));
  }
  for (auto& reader : readers) {
    v1::GenerateResponse msg;
    if (!reader->Read(&msg)) {
      grpc::Status st = reader->Finish();
      FAIL() << st.error_code() << ": " << st.error_message();
    }
    EXPECT_TRUE(msg.has_chunk());
  }
  const int open = Threads(gateway);
  EXPECT_LT(open - before, kCalls / 4)
      << before << " threads before the calls, " << open << " with them open";
  v1::GenerateResponse msg;
  uint32_t tokens = 0;
  bool done = false;
  while (readers[0]->Read(&msg)) {
    if (msg.has_chunk()) tokens += msg.chunk().tokens_size();
    if (msg.has_done()) done = true;
  }
  grpc::Status first = readers[0]->Finish();
  EXPECT_TRUE(first.ok()) << first.error_message();
  EXPECT_TRUE(done);
  EXPECT_GT(tokens, 0u);
  for (int i = 1; i < kCalls; ++i) {
    ctxs[i]->TryCancel();
    EXPECT_EQ(readers[i]->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
}

// Unary calls waiting on a worker hold no gateway thread: 40 GetSession
// calls to the sessions of a paused owner (SIGSTOP, over a connection the
// gateway has open, so each waits for an answer until the gateway's pings
// go unanswered) leave the gateway's thread count where it was (it was one
// thread a call); then each fails over and ends OK on another worker.
TEST_F(ClusterFailoverTest, UnaryCallsWaitingOnAWorkerHoldNoGatewayThreads) {
  constexpr int kCalls = 40;
  const pid_t gateway = (*gateways_)[1]->pid();
  std::vector<std::string> ids;
  e2e::ClusterProcess* owner = nullptr;
  for (int i = 0; ids.size() < kCalls && i < 400; ++i) {
    const std::string id = absl::StrCat("unary-wait-", i);
    ASSERT_NO_FATAL_FAILURE(CreateWithPrompt(id, "leased"));
    e2e::ClusterProcess* o = Owner(id);
    if (owner == nullptr) owner = o;
    if (o != nullptr && o == owner) ids.push_back(id);
  }
  ASSERT_EQ(ids.size(), static_cast<size_t>(kCalls));
  // The gateway's connection to the owner is open and in use.
  ASSERT_TRUE(Get(ids[0], 1).ok());
  ASSERT_NO_FATAL_FAILURE(Pause(owner));
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  struct Call {
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::GetSessionRequest req;
    v1::Session resp;
    grpc::Status status;
  };
  std::vector<Call> calls(kCalls);
  absl::Mutex mu;
  int ended = 0;
  for (int i = 0; i < kCalls; ++i) {
    Call& c = calls[i];
    c.ctx = Ctx();
    c.ctx->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(20));
    c.req.set_session_id(ids[i]);
    sessions_[1]->async()->GetSession(c.ctx.get(), &c.req, &c.resp,
                                      [&c, &mu, &ended](grpc::Status st) {
                                        absl::MutexLock lock(&mu);
                                        c.status = std::move(st);
                                        ++ended;
                                      });
  }
  // Well inside the 2 s stall timeout: the calls wait on the paused owner.
  absl::SleepFor(absl::Milliseconds(500));
  const int waiting = Threads(gateway);
  {
    absl::MutexLock lock(&mu);
    ASSERT_LT(ended, kCalls / 2) << "the calls did not wait on the owner";
  }
  EXPECT_LT(waiting - before, kCalls / 4)
      << before << " threads before the calls, " << waiting
      << " while they waited";
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* n) { return *n == kCalls; }, &ended));
  }
  owner->Signal(SIGCONT);
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_TRUE(calls[i].status.ok())
        << ids[i] << ": " << calls[i].status.error_code() << " "
        << calls[i].status.error_message();
    EXPECT_EQ(calls[i].resp.session_id(), ids[i]);
  }
}

// Imports in progress hold no gateway thread while their clients upload:
// 40 of them, each stopped after its header, leave the gateway's thread
// count where it was (it was one thread an import); each then sends its
// chunks and creates a session with the exported state.
TEST_F(ClusterFailoverTest, OpenImportsHoldNoGatewayThreads) {
  constexpr int kCalls = 40;
  const pid_t gateway = (*gateways_)[1]->pid();
  ASSERT_NO_FATAL_FAILURE(CreateWithPrompt("import-source", "exported"));
  std::vector<v1::ExportStateResponse> exported;
  {
    v1::ExportStateRequest req;
    req.set_session_id("import-source");
    auto ctx = Ctx();
    auto reader = sessions_[1]->ExportState(ctx.get(), req);
    v1::ExportStateResponse msg;
    while (reader->Read(&msg)) exported.push_back(msg);
    ASSERT_TRUE(reader->Finish().ok());
  }
  ASSERT_GE(exported.size(), 2u);
  ASSERT_TRUE(exported[0].has_header());
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  struct Open {
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::Session session;
    std::unique_ptr<grpc::ClientWriter<v1::ImportStateRequest>> writer;
  };
  std::vector<Open> open(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    Open& o = open[i];
    o.ctx = Ctx();
    o.writer = sessions_[1]->ImportState(o.ctx.get(), &o.session);
    v1::ImportStateRequest header;
    header.mutable_header()->set_session_id(absl::StrCat("imported-", i));
    header.mutable_header()->set_request_id(absl::StrCat("import-", i));
    header.mutable_header()->set_mode(v1::IMPORT_MODE_CREATE);
    *header.mutable_header()->mutable_state() = exported[0].header();
    ASSERT_TRUE(o.writer->Write(header));
  }
  // The headers are read (and each import admitted) within this.
  absl::SleepFor(absl::Milliseconds(500));
  const int uploading = Threads(gateway);
  EXPECT_LT(uploading - before, kCalls / 4)
      << before << " threads before the imports, " << uploading
      << " while their clients uploaded";
  for (int i = 0; i < kCalls; ++i) {
    Open& o = open[i];
    for (size_t k = 1; k < exported.size(); ++k) {
      v1::ImportStateRequest chunk;
      *chunk.mutable_chunk() = exported[k].chunk();
      ASSERT_TRUE(o.writer->Write(chunk));
    }
    o.writer->WritesDone();
    grpc::Status st = o.writer->Finish();
    EXPECT_TRUE(st.ok()) << i << ": " << st.error_message();
    EXPECT_EQ(o.session.session_id(), absl::StrCat("imported-", i));
  }
}

}  // namespace
}  // namespace statestream
