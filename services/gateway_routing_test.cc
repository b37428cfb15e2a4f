// SPDX-License-Identifier: Apache-2.0
// The gateway in process in front of scripted workers
// (services/gateway_test_util.h): where calls go and when they stop —
// suspects, unreachable workers, imports bounded and authenticated, the
// models listed, idle connections, the tenant session limit.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "common/session_ids.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "services/gateway.h"
#include "services/gateway_internal.h"
#include "services/gateway_metrics.h"
#include "services/gateway_router.h"
#include "services/gateway_test_util.h"
#include "services/server.h"
#include "services/tenants.h"
#include "state_store/memory_state_store.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/metrics_scrape.h"

namespace statestream {
namespace {

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

// A header without a mode or without its state is refused as a worker
// refuses it (INVALID_ARGUMENT, the field) before anything is buffered or
// routed: an UNSPECIFIED mode used to be taken for CREATE (and counted
// against the tenant's sessions), a missing state to read as DATA_LOSS.
TEST_F(GatewayTest, AnImportHeaderWithoutModeOrStateIsRefused) {
  Start();
  v1::ImportStateRequest no_mode = ImportHeader(10);
  no_mode.mutable_header()->set_mode(v1::IMPORT_MODE_UNSPECIFIED);
  v1::ImportStateRequest no_state = ImportHeader(10);
  no_state.mutable_header()->clear_state();
  for (const auto& [header, field] :
       {std::pair(no_mode, "mode"), std::pair(no_state, "state")}) {
    grpc::ClientContext ctx;
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    ASSERT_TRUE(writer->Write(header));
    v1::ImportStateRequest chunk;
    chunk.mutable_chunk()->set_data("0123456789");
    writer->Write(chunk);
    writer->WritesDone();
    const absl::Status st = FromGrpcStatus(writer->Finish());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_EQ(GetReason(st), Reason::kInvalidArgument) << st;
    EXPECT_EQ(GetErrorMetadata(st, "field"), field) << st;
  }
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
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
  // Typed as a worker types it: the field.
  EXPECT_EQ(GetErrorMetadata(st, "field"), "chunk") << st;
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
  // A first message that is no header, and more bytes than the header's.
  {
    grpc::ClientContext c2;
    auto w2 = v1::Sessions::NewStub(channel_)->ImportState(&c2, &resp);
    v1::ImportStateRequest chunk;
    chunk.mutable_chunk()->set_data("x");
    w2->Write(chunk);
    w2->WritesDone();
    const absl::Status no_header = FromGrpcStatus(w2->Finish());
    EXPECT_EQ(GetErrorMetadata(no_header, "field"), "header") << no_header;
  }
  {
    grpc::ClientContext c3;
    auto w3 = v1::Sessions::NewStub(channel_)->ImportState(&c3, &resp);
    ASSERT_TRUE(w3->Write(ImportHeader(10)));
    v1::ImportStateRequest chunk;
    chunk.mutable_chunk()->set_data(std::string(11, 'x'));
    w3->Write(chunk);
    w3->WritesDone();
    const absl::Status over = FromGrpcStatus(w3->Finish());
    EXPECT_EQ(GetReason(over), Reason::kStateCorrupt) << over;
    EXPECT_TRUE(GetErrorMetadata(over, "detail").has_value()) << over;
  }
  {
    // A message gRPC cannot parse (a request_id that is not UTF-8):
    // UNIMPLEMENTED, as for a unary call, not the end of the import.
    grpc::ClientContext c4;
    auto w4 = v1::Sessions::NewStub(channel_)->ImportState(&c4, &resp);
    ASSERT_TRUE(w4->Write(ImportHeader(10)));
    v1::ImportStateRequest garbled = ImportHeader(10);
    garbled.mutable_header()->set_request_id("\xFF");
    w4->Write(garbled);
    w4->WritesDone();
    const grpc::Status st4 = w4->Finish();
    EXPECT_EQ(st4.error_code(), grpc::StatusCode::UNIMPLEMENTED)
        << st4.error_message();
  }
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

// statestream_gateway_buffered_bytes as `metrics` shows it (-1: absent).
double BufferedBytes(const GatewayMetrics& metrics) {
  const auto samples = e2e::ParseMetrics(metrics.Render());
  const auto it = samples.find("statestream_gateway_buffered_bytes");
  return it == samples.end() ? -1 : it->second;
}

// A chunk of `bytes` state bytes.
v1::ImportStateRequest ImportChunk(size_t bytes) {
  v1::ImportStateRequest chunk;
  chunk.mutable_chunk()->set_data(std::string(bytes, 'x'));
  return chunk;
}

// Imports are read whole, so together they take at most the gateway's
// buffers (one always fits alone), room taken as their bytes arrive:
// another import while they are held is RESOURCE_EXHAUSTED/OVERLOADED
// with retry_after_ms once its bytes do not fit, and fits once the first
// is done. A header announcing more than an import may hold is refused at
// once.
TEST_F(GatewayTest, ImportsWaitForRoomInTheGatewaysBuffers) {
  // Outlives the gateway (the fixture stops it after this body).
  static GatewayMetrics* const metrics = new GatewayMetrics();
  auto buffered = [] { return BufferedBytes(*metrics); };
  GatewayOptions options;
  options.max_buffered_bytes = 1 << 20;
  options.metrics = metrics;
  Start(options);
  auto import = [&](uint64_t total) {
    grpc::ClientContext ctx;
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    if (writer->Write(ImportHeader(total))) writer->Write(ImportChunk(total));
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  };
  grpc::ClientContext first_ctx;
  v1::Session first_resp;
  auto first =
      v1::Sessions::NewStub(channel_)->ImportState(&first_ctx, &first_resp);
  ASSERT_TRUE(first->Write(ImportHeader(768 << 10)));
  // The header alone holds next to nothing: room is taken as bytes come.
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_LT(buffered(), 4096);
  ASSERT_TRUE(first->Write(ImportChunk(768 << 10)));
  for (int i = 0; i < 1000 && buffered() < (768 << 10); ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_GE(buffered(), 768 << 10);
  const absl::Status second = import(512 << 10);
  EXPECT_EQ(second.code(), absl::StatusCode::kResourceExhausted) << second;
  EXPECT_EQ(GetReason(second), Reason::kOverloaded);
  EXPECT_TRUE(GetErrorMetadata(second, "retry_after_ms").has_value());
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
  first->WritesDone();
  EXPECT_EQ(FromGrpcStatus(first->Finish()).code(),
            absl::StatusCode::kInvalidArgument);  // the worker's answer
  // Given back before the client saw the end: the next one fits at once.
  EXPECT_EQ(buffered(), 0);
  const absl::Status third = import(512 << 10);
  EXPECT_EQ(third.code(), absl::StatusCode::kInvalidArgument) << third;
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 2);
  // More than the whole budget is refused at the header, never read.
  const absl::Status huge = import((1 << 20) + 1);
  EXPECT_EQ(GetReason(huge), Reason::kMessageTooLarge) << huge;
  EXPECT_EQ(GetErrorMetadata(huge, "limit"), absl::StrCat(1 << 20));
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 2);
}

// An import sent in tiny chunks holds far more than its state (each message
// has its own overhead): that is taken from the buffers too, so such
// imports cannot hold more than the budget between them.
TEST_F(GatewayTest, AnImportsOverheadCountsInTheGatewaysBuffers) {
  static GatewayMetrics* const metrics = new GatewayMetrics();
  GatewayOptions options;
  options.max_buffered_bytes = 1 << 20;
  options.metrics = metrics;
  Start(options);
  grpc::ClientContext first_ctx;
  v1::Session first_resp;
  auto first =
      v1::Sessions::NewStub(channel_)->ImportState(&first_ctx, &first_resp);
  ASSERT_TRUE(first->Write(ImportHeader(512 << 10)));
  ASSERT_TRUE(first->Write(ImportChunk(512 << 10)));
  for (int i = 0; i < 1000 && BufferedBytes(*metrics) < (512 << 10); ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_GE(BufferedBytes(*metrics), 512 << 10);
  // 64 KiB announced, sent a byte a message: ~100 bytes held per byte.
  grpc::ClientContext ctx;
  v1::Session resp;
  auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
  ASSERT_TRUE(writer->Write(ImportHeader(64 << 10)));
  v1::ImportStateRequest tiny;
  tiny.mutable_chunk()->set_data("x");
  int written = 0;
  while (written < (64 << 10) && writer->Write(tiny)) ++written;
  writer->WritesDone();
  const absl::Status st = FromGrpcStatus(writer->Finish());
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_EQ(GetReason(st), Reason::kOverloaded) << st;
  EXPECT_LT(written, 64 << 10);
  EXPECT_LE(BufferedBytes(*metrics), 1 << 20);
  first->WritesDone();
  first->Finish();
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 1);
}

// An import whose client stops sending is cut off after
// client_stall_timeout and its room given back: idle clients cannot hold
// the gateway's buffers (and every other tenant's imports) for as long as
// their connections live.
TEST_F(GatewayTest, AnImportWhoseClientStopsSendingIsCutOff) {
  static GatewayMetrics* const metrics = new GatewayMetrics();
  GatewayOptions options;
  options.max_buffered_bytes = 1 << 20;
  options.client_stall_timeout = absl::Milliseconds(300);
  options.metrics = metrics;
  Start(options);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::Session resp;
  auto idle = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
  ASSERT_TRUE(idle->Write(ImportHeader(768 << 10)));
  ASSERT_TRUE(idle->Write(ImportChunk(512 << 10)));
  for (int i = 0; i < 1000 && BufferedBytes(*metrics) < (512 << 10); ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_GE(BufferedBytes(*metrics), 512 << 10);
  for (int i = 0; i < 1000 && BufferedBytes(*metrics) > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(BufferedBytes(*metrics), 0);
  EXPECT_EQ(FromGrpcStatus(idle->Finish()).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
  const auto samples = e2e::ParseMetrics(metrics->Render());
  const auto it = samples.find(
      "statestream_gateway_client_stalls_total{method=\"ImportState\"}");
  ASSERT_NE(it, samples.end());
  EXPECT_EQ(it->second, 1);
}

// An Append whose client leaves its acks unread (its replay log cannot be
// trimmed meanwhile) is cut off after client_stall_timeout, its log given
// back to the gateway's buffers.
TEST_F(GatewayTest, AnAppendWhoseClientLeavesAcksUnreadIsCutOff) {
  static GatewayMetrics* const metrics = new GatewayMetrics();
  GatewayOptions options;
  options.client_stall_timeout = absl::Milliseconds(300);
  options.metrics = metrics;
  Start(options);
  // A client whose receive window fills soon: acks stay in the gateway.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto channel = grpc::CreateCustomChannel(
      server_->address(), grpc::InsecureChannelCredentials(), args);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto stream = v1::Streams::NewStub(channel)->Append(&ctx);
  const std::string text(100, 'a');
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(stream->Write(
        AppendAt(absl::StrCat("r", i), static_cast<uint64_t>(i) * 100, text)));
  }
  stream->WritesDone();
  const auto stalls = [] {
    const auto samples = e2e::ParseMetrics(metrics->Render());
    const auto it = samples.find(
        "statestream_gateway_client_stalls_total{method=\"Append\"}");
    return it == samples.end() ? 0.0 : it->second;
  };
  for (int i = 0; i < 2000 && stalls() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(stalls(), 1);
  for (int i = 0; i < 1000 && BufferedBytes(*metrics) > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(BufferedBytes(*metrics), 0);
  v1::AppendResponse ack;
  int acks = 0;
  while (stream->Read(&ack)) ++acks;
  EXPECT_LT(acks, 5000);
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// A caller with a bad key is refused UNAUTHENTICATED as its call starts,
// before it is admitted: a gateway serving as many calls as it may
// (--max-calls, here 1, held by a GetSession its worker sits on) still
// says "unauthenticated", not "overloaded, retry", to every kind of call,
// and such calls take no call slot from real ones.
TEST_F(GatewayTest, ABadKeyIsRefusedBeforeTheCallTakesASlot) {
  absl::Notification release;
  std::atomic<int> waiting{0};
  Script<grpc::Status(int)>(&ScriptedWorker::get_session, [&](int) {
    waiting.fetch_add(1);
    release.WaitForNotificationWithTimeout(absl::Seconds(30));
    return grpc::Status::OK;
  });
  GatewayOptions options;
  options.auth = TenantAuth(
      std::map<std::string, std::string>{{"key-0123456789abcdef", "acme"}});
  options.max_calls = 1;
  Start(options);
  auto get = [&](const std::string& token) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp));
  };
  std::thread holder([&] { EXPECT_TRUE(get("key-0123456789abcdef").ok()); });
  while (waiting.load() == 0) absl::SleepFor(absl::Milliseconds(5));
  const std::string bad = "Bearer wrong-0123456789abcdef";
  std::vector<absl::Status> refused;
  refused.push_back(get("wrong-0123456789abcdef"));
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    v1::GenerateRequest req;
    req.set_session_id("s");
    refused.push_back(FromGrpcStatus(
        Drain(&ctx, v1::Streams::NewStub(channel_)->Generate(&ctx, req))
            .status));
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    v1::ExportStateRequest req;
    req.set_session_id("s");
    refused.push_back(FromGrpcStatus(
        Drain(&ctx, v1::Sessions::NewStub(channel_)->ExportState(&ctx, req))
            .status));
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    writer->Write(ImportHeader(10));
    writer->WritesDone();
    refused.push_back(FromGrpcStatus(writer->Finish()));
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    auto stream = v1::Streams::NewStub(channel_)->Append(&ctx);
    v1::AppendRequest req;
    req.set_session_id("s");
    stream->Write(req);
    stream->WritesDone();
    v1::AppendResponse ack;
    while (stream->Read(&ack)) {
    }
    refused.push_back(FromGrpcStatus(stream->Finish()));
  }
  for (size_t i = 0; i < refused.size(); ++i) {
    EXPECT_EQ(refused[i].code(), absl::StatusCode::kUnauthenticated)
        << i << ": " << refused[i];
    EXPECT_EQ(GetReason(refused[i]), Reason::kUnauthenticated) << i;
  }
  // A good key still finds the one slot taken.
  const absl::Status busy = get("key-0123456789abcdef");
  EXPECT_EQ(GetReason(busy), Reason::kOverloaded) << busy;
  release.Notify();
  holder.join();
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
    if (writer->Write(ImportHeader(uint64_t{1} << 28))) {
      v1::ImportStateRequest chunk;
      chunk.mutable_chunk()->set_data(std::string(1 << 20, 'x'));
      while (written < chunks && writer->Write(chunk)) ++written;
    }
    writer->WritesDone();
    return std::make_pair(FromGrpcStatus(writer->Finish()), written);
  };
  // The refusal comes first: the stream breaks long before 256 MiB is sent.
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

// No worker answering ListModels is the gateway's own UNAVAILABLE, typed
// like the router's "no live worker" (OVERLOADED, when to retry), not a
// bare status a client would take for a failed connection.
TEST_F(GatewayTest, NoWorkerAnsweringListModelsIsTyped) {
  Start();
  for (auto& w : workers_) w.reset();  // both gone: nothing answers
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  const grpc::Status st =
      v1::Models::NewStub(channel_)->ListModels(&ctx, {}, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
      << st.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(st)), Reason::kOverloaded)
      << st.error_message();
  EXPECT_TRUE(GetErrorMetadata(FromGrpcStatus(st), "retry_after_ms"));
}

// A model no worker is known to serve is NOT_FOUND/MODEL_NOT_FOUND only when
// every worker answered ListModels: one too slow to answer (paused,
// CPU-starved) may serve it, so that is UNAVAILABLE/OVERLOADED (retry),
// not a NOT_FOUND clients take as final. A worker that refuses ListModels
// counts as serving nothing.
TEST_F(GatewayTest, AModelIsNotFoundOnlyWhenEveryWorkerAnswered) {
  // Worker 0 serves "tiny"; worker 1 is slow to answer, or refuses.
  std::atomic<bool> slow{true};
  workers_[1]->list_models = [&](v1::ListModelsResponse*) {
    if (slow) absl::SleepFor(absl::Milliseconds(500));
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "an old build");
  };
  GatewayOptions options;
  options.models_timeout = absl::Milliseconds(100);
  Start(options);
  auto create = [&] {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_request_id("r");
    req.set_model_id("other");
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp));
  };
  const absl::Status unknown = create();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnavailable) << unknown;
  EXPECT_EQ(GetReason(unknown), Reason::kOverloaded) << unknown;
  EXPECT_EQ(GetErrorMetadata(unknown, "model_id"), "other");
  EXPECT_TRUE(GetErrorMetadata(unknown, "retry_after_ms").has_value());
  slow = false;
  const absl::Status refused = create();
  EXPECT_EQ(GetReason(refused), Reason::kModelNotFound) << refused;
}

// Static workers (--workers) name no models: the gateway learns them from
// ListModels, so a create of a model goes to a worker serving it, never to
// one that would answer MODEL_NOT_FOUND.
TEST_F(GatewayTest, StaticWorkersGetCreatesOfTheirOwnModel) {
  workers_[1]->list_models = [](v1::ListModelsResponse* resp) {
    v1::Model* m = resp->add_models();
    m->set_model_id("other");
    m->set_fingerprint("fp-other");
    return grpc::Status::OK;
  };
  std::atomic<int> on[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    workers_[i]->create_session = [&on, i](int, v1::Session*) {
      ++on[i];
      return grpc::Status::OK;
    };
  }
  Start();
  for (const char* model : {"other", "tiny"}) {
    for (int i = 0; i < 8; ++i) {
      grpc::ClientContext ctx;
      v1::CreateSessionRequest req;
      req.set_request_id(absl::StrCat("r-", model, i));
      req.set_session_id(absl::StrCat(model, i));
      req.set_model_id(model);
      v1::Session resp;
      const grpc::Status st =
          v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp);
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
    const int served_by = std::string(model) == "other" ? 1 : 0;
    EXPECT_EQ(on[served_by].load(), 8) << model;
    EXPECT_EQ(on[1 - served_by].load(), 0) << model;
    on[0] = on[1] = 0;
  }
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

// A worker that is leaving (draining, or its scheduler shutting down) says
// so with stopping=true, and the gateway moves the call; a worker that is
// only overloaded does not get its call moved (the client backs off).
TEST(GatewayFailoverTest, ALeavingWorkerIsFailedOverAnOverloadedOneIsNot) {
  auto unavailable = [](const char* message, ErrorMetadata metadata) {
    return ToGrpcStatus(MakeError(absl::StatusCode::kUnavailable,
                                  Reason::kOverloaded, message, metadata));
  };
  EXPECT_TRUE(gateway::Gateway::ShouldFailover(
      unavailable("the worker is shutting down",
                  {{"retry_after_ms", "100"}, {"stopping", "true"}})));
  EXPECT_TRUE(gateway::Gateway::ShouldFailover(
      unavailable("the worker is draining", {{"retry_after_ms", "100"}})));
  EXPECT_FALSE(gateway::Gateway::ShouldFailover(
      unavailable("queue full", {{"retry_after_ms", "100"}})));
  EXPECT_TRUE(gateway::Gateway::ShouldFailover(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused")));
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
