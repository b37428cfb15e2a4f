// SPDX-License-Identifier: Apache-2.0
// The gateway's ImportState and its buffers, in process in front of
// scripted workers (services/gateway_test_util.h): imports checked and
// bounded as they are read, the room calls take in the gateway's buffers,
// and clients that hold it without moving cut off.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "services/gateway.h"
#include "services/gateway_metrics.h"
#include "services/gateway_test_util.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/metrics_scrape.h"

namespace statestream {
namespace {

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

// A header whose state layout cannot be its model's (more bytes than
// such a state encodes to, or chunks that disagree with the total) is
// refused as the worker refuses it (DATA_LOSS/STATE_CORRUPT), right after
// the header, where the gateway knows the fingerprint's model from its
// workers: a ~100-byte header used to make the gateway read and buffer up
// to max_import_bytes of chunks for the worker to refuse. A header of a
// model the gateway does not know goes on to a worker.
TEST_F(GatewayTest, AnImportHeaderNoStateOfItsModelFitsIsRefusedUnread) {
  Start();
  Script(&ScriptedWorker::list_models,
         std::function<grpc::Status(v1::ListModelsResponse*)>(
             [](v1::ListModelsResponse* resp) {
               v1::Model* m = resp->add_models();
               m->set_model_id("tiny");
               m->set_fingerprint("fp-tiny");
               m->set_state_bytes(4096);
               m->set_n_embd(16);
               return grpc::Status::OK;
             }));
  // The most a state of this model encodes to (CheckImportStateLayout).
  const uint64_t most = 4096 + 16 * 4 + (uint64_t{4} << 20);
  auto header = [](const std::string& fingerprint, uint64_t total,
                   uint32_t chunk_bytes) {
    v1::ImportStateRequest h = ImportHeader(total);
    auto* state = h.mutable_header()->mutable_state();
    state->set_model_fingerprint(fingerprint);
    state->set_chunk_bytes(chunk_bytes);
    state->set_chunk_count(
        chunk_bytes == 0 ? 1 : (total + chunk_bytes - 1) / chunk_bytes);
    return h;
  };
  const struct {
    v1::ImportStateRequest header;
    const char* detail;
  } bad[] = {
      {header("fp-tiny", most + 1, 1 << 20), "total_bytes out of range"},
      {header("fp-tiny", 4096, 0),
       "chunk_bytes/chunk_count disagree with total_bytes"},
      {header("fp-tiny", 4096, (1 << 20) + 1),
       "chunk_bytes/chunk_count disagree with total_bytes"},
  };
  for (const auto& c : bad) {
    grpc::ClientContext ctx;
    // Without the check the gateway would wait for the chunks.
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    ASSERT_TRUE(writer->Write(c.header));
    // No WritesDone: the answer comes with the stream still open.
    const absl::Status st = FromGrpcStatus(writer->Finish());
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_EQ(GetReason(st), Reason::kStateCorrupt) << st;
    EXPECT_EQ(GetErrorMetadata(st, "detail"), c.detail) << st;
  }
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);

  // The largest state the model may send reaches a worker (which answers
  // "scripted"); one of a model the gateway does not know is not refused
  // for its layout (the gateway answers that no worker serves it).
  {
    grpc::ClientContext ctx;
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    ASSERT_TRUE(writer->Write(header("fp-tiny", most, 1 << 20)));
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_message(), "scripted");
  }
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 1);
  {
    grpc::ClientContext ctx;
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    ASSERT_TRUE(writer->Write(header("fp-other", most + 1, 1 << 20)));
    writer->WritesDone();
    const absl::Status st = FromGrpcStatus(writer->Finish());
    EXPECT_NE(GetReason(st), Reason::kStateCorrupt) << st;
    EXPECT_NE(st.code(), absl::StatusCode::kDataLoss) << st;
  }
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

// An export whose client stops reading is cut off after
// client_stall_timeout: the worker's stream waits behind it, holding the
// whole blob in the worker's transfer budget (a few idle exports filled
// it, and every tenant's imports and exports on that worker were refused).
TEST_F(GatewayTest, AnExportWhoseClientStopsReadingIsCutOff) {
  static GatewayMetrics* const metrics = new GatewayMetrics();
  std::atomic<bool> worker_ended{false};
  using W = grpc::ServerWriter<v1::ExportStateResponse>;
  Script<grpc::Status(int, W*)>(
      &ScriptedWorker::export_state, [&worker_ended](int, W* w) {
        v1::ExportStateResponse header;
        header.mutable_header()->set_version(2);
        w->Write(header);
        for (uint32_t i = 0; i < 64; ++i) {  // 64 MiB: more than any window
          v1::ExportStateResponse chunk;
          chunk.mutable_chunk()->set_index(i);
          chunk.mutable_chunk()->set_data(std::string(1 << 20, 'x'));
          if (!w->Write(chunk)) break;
        }
        worker_ended = true;
        return grpc::Status::OK;
      });
  GatewayOptions options;
  options.client_stall_timeout = absl::Milliseconds(300);
  options.metrics = metrics;
  Start(options);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::ExportStateRequest req;
  req.set_session_id("s");
  auto idle = v1::Sessions::NewStub(channel_)->ExportState(&ctx, req);
  v1::ExportStateResponse first;
  ASSERT_TRUE(idle->Read(&first));  // then reads no more
  for (int i = 0; i < 1000 && !worker_ended; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(worker_ended) << "the worker's export still waits";
  const auto samples = e2e::ParseMetrics(metrics->Render());
  const auto it = samples.find(
      "statestream_gateway_client_stalls_total{method=\"ExportState\"}");
  ASSERT_NE(it, samples.end());
  EXPECT_EQ(it->second, 1);
  ctx.TryCancel();
  idle->Finish().IgnoreError();
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

// An Append stream that goes quiet with its requests acked but not
// committed (a worker commits idle input on its own, and acks only
// requests) asks its worker what the session has committed once it has
// been idle for append_idle_probe, and gives back what that covers. Its
// log was kept until the client sent again: a few quiet streams held the
// gateway's buffers, and every other tenant's Append and import with them.
TEST_F(GatewayTest, AnIdleAppendGivesBackWhatItsWorkerCommitted) {
  static GatewayMetrics* const metrics = new GatewayMetrics();
  static std::atomic<uint64_t> committed{200};
  static std::atomic<uint64_t> input{300};
  for (auto& w : workers_) {
    w->ack_as_read = true;
    w->ack_uncommitted = true;
    w->session_view = [](const v1::GetSessionRequest& r, v1::Session* s) {
      s->set_session_id(r.session_id());
      // A version a commit.
      s->set_version(committed.load() / 100);
      s->set_committed_input_offset(committed.load());
      s->set_input_offset(input.load());
      return grpc::Status::OK;
    };
  }
  GatewayOptions options;
  options.append_idle_probe = absl::Milliseconds(200);
  options.metrics = metrics;
  Start(options);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = v1::Streams::NewStub(channel_)->Append(&ctx);
  const std::string text(100, 'a');
  v1::AppendResponse ack;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stream->Write(
        AppendAt(absl::StrCat("r", i), static_cast<uint64_t>(i) * 100, text)));
    ASSERT_TRUE(stream->Read(&ack));
    EXPECT_EQ(ack.committed_input_offset(), 0u);
  }
  const double all = BufferedBytes(*metrics);
  ASSERT_GT(all, 300);
  // Two of the three are committed: the third stays, however long.
  for (int i = 0; i < 2000 && BufferedBytes(*metrics) == all; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const double one = BufferedBytes(*metrics);
  EXPECT_LT(one, all);
  EXPECT_GT(one, 100);
  const auto probes = [this] {
    return workers_[0]->session_views() + workers_[1]->session_views();
  };
  const int before = probes();
  for (int i = 0; i < 500 && probes() < before + 2; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GE(probes(), before + 2);  // asked again, every append_idle_probe
  EXPECT_EQ(BufferedBytes(*metrics), one);
  committed = 300;
  for (int i = 0; i < 2000 && BufferedBytes(*metrics) > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(BufferedBytes(*metrics), 0);
  // The stream goes on as before.
  ASSERT_TRUE(stream->Write(AppendAt("r3", 300, text)));
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.input_offset(), 400u);
  // An answer about another history (the copy fenced, the input moved
  // back) trims nothing, and no further probe goes until the stream moves.
  committed = 500;
  input = 500;
  const int asked = probes();
  for (int i = 0; i < 500 && probes() == asked; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(probes(), asked + 1);
  absl::SleepFor(absl::Seconds(1));  // five probe periods
  EXPECT_EQ(probes(), asked + 1);
  EXPECT_GT(BufferedBytes(*metrics), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

}  // namespace
}  // namespace statestream
