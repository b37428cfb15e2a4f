// SPDX-License-Identifier: Apache-2.0
// `statestream serve --client-stall-timeout`: with no gateway in front,
// the server itself cuts off a client that stays connected but stops
// moving — a Generate or export message left unread, an Append ack left
// unread, an import left unsent — so it cannot hold memory, the transfer
// budget or its stream slot for as long as its connection lives. A client
// that is idle but reads what it is sent is not cut off. Waits poll a
// condition up to a generous limit; nothing asserts on timing.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/serve_process.h"

namespace statestream {
namespace {

using e2e::AppendText;
using e2e::Create;
using e2e::Ctx;
using e2e::Eventually;
using e2e::ServeProcess;

// Every call of these servers has it, the well-behaved ones too: long
// enough that a loaded machine does not cut those off.
constexpr char kStallTimeout[] = "--client-stall-timeout=2s";

// A channel whose receive window stays at 1 KiB: what the server sends
// waits in the server until the client reads.
std::shared_ptr<grpc::Channel> TinyWindowChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

double Stalls(ServeProcess& s, const std::string& method) {
  return s.Metric(
      absl::StrCat("statestream_client_stalls_total{method=\"", method, "\"}"));
}

absl::StatusOr<v1::Session> Get(ServeProcess& s, const std::string& id) {
  v1::GetSessionRequest req;
  req.set_session_id(id);
  v1::Session out;
  auto ctx = Ctx();
  absl::Status st =
      FromGrpcStatus(s.sessions->GetSession(ctx.get(), req, &out));
  if (!st.ok()) return st;
  return out;
}

// Reads a whole export: its messages, and how the call ended.
struct Exported {
  std::vector<v1::ExportStateResponse> messages;
  absl::Status status;
};
Exported Export(ServeProcess& s, const std::string& id) {
  Exported out;
  v1::ExportStateRequest req;
  req.set_session_id(id);
  auto ctx = Ctx();
  auto reader = s.sessions->ExportState(ctx.get(), req);
  v1::ExportStateResponse msg;
  while (reader->Read(&msg)) out.messages.push_back(msg);
  out.status = FromGrpcStatus(reader->Finish());
  return out;
}

v1::AppendRequest AppendAt(const std::string& id, int i,
                           const std::string& text) {
  v1::AppendRequest r;
  r.set_session_id(id);
  r.set_request_id(absl::StrCat("r", i));
  r.set_expected_input_offset(static_cast<uint64_t>(i) * text.size());
  r.set_text_utf8(text);
  return r;
}

// A generation whose client leaves its messages unread is stopped: its
// tokens would pile up in the server without bound (a side branch runs up
// to max_tokens whether or not anyone reads). The session takes new work.
TEST(ServeClientStallTest, AGenerateWhoseClientStopsReadingIsCutOff) {
  auto server = ServeProcess::Start({kStallTimeout});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "unread").ok());
  ASSERT_TRUE(AppendText(*server, "unread", "a story that goes on").ok());
  auto streams = v1::Streams::NewStub(TinyWindowChannel(server->address));
  v1::GenerateRequest req = e2e::GenRequest("unread", "long", 8192,
                                            /*commit=*/false, /*seed=*/7);
  req.set_logprobs(true);
  req.set_top_logprobs(20);  // ~300 bytes a token: the window fills at once
  auto ctx = Ctx();
  auto reader = streams->Generate(ctx.get(), req);
  v1::GenerateResponse msg;
  // It runs; then nothing more is read.
  ASSERT_TRUE(reader->Read(&msg)) << FromGrpcStatus(reader->Finish());
  EXPECT_TRUE(Eventually([&] { return Stalls(*server, "Generate") == 1; }));
  EXPECT_TRUE(Eventually([&] {
    return server->Metric("statestream_scheduler_tasks") == 0 &&
           server->Metric("statestream_sessions_active") == 0;
  }));
  bool done = false;
  while (reader->Read(&msg)) done = done || msg.has_done();
  EXPECT_FALSE(done);
  EXPECT_EQ(FromGrpcStatus(reader->Finish()).code(),
            absl::StatusCode::kCancelled);
  e2e::Gen after =
      e2e::Generate(*server, e2e::GenRequest("unread", "after", 8, true, 1));
  EXPECT_TRUE(after.status.ok()) << after.status;
  EXPECT_EQ(after.tokens.size(), 8u);
}

// An export left unread and an import left unsent each hold a whole state
// in --max-transfer-bytes (here: room for one at a time); each is cut off
// and gives its room back, so the next transfer fits (it would be
// RESOURCE_EXHAUSTED/OVERLOADED for as long as the idle call lived).
TEST(ServeClientStallTest, StalledTransfersGiveTheirBudgetBack) {
  auto server = ServeProcess::Start({kStallTimeout, "--max-transfer-bytes=1"});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "src").ok());
  ASSERT_TRUE(AppendText(*server, "src", "state worth moving").ok());
  const Exported whole = Export(*server, "src");
  ASSERT_TRUE(whole.status.ok()) << whole.status;
  ASSERT_GE(whole.messages.size(), 2u);
  ASSERT_GT(whole.messages[0].header().total_bytes(), 1024u);
  const auto transfer_refused = [&] {
    const Exported e = Export(*server, "src");
    return GetReason(e.status) == Reason::kOverloaded;
  };

  {  // An export read up to its header, then left unread.
    auto sessions = v1::Sessions::NewStub(TinyWindowChannel(server->address));
    v1::ExportStateRequest req;
    req.set_session_id("src");
    auto ctx = Ctx();
    auto idle = sessions->ExportState(ctx.get(), req);
    v1::ExportStateResponse first;
    ASSERT_TRUE(idle->Read(&first));
    ASSERT_TRUE(first.has_header());
    EXPECT_TRUE(
        Eventually([&] { return Stalls(*server, "ExportState") == 1; }));
    EXPECT_TRUE(Eventually([&] { return !transfer_refused(); }));
    while (idle->Read(&first)) {
    }
    // CANCELLED; OK only if the write got through just as it was cut off.
    const absl::StatusCode code = FromGrpcStatus(idle->Finish()).code();
    EXPECT_TRUE(code == absl::StatusCode::kCancelled ||
                code == absl::StatusCode::kOk)
        << code;
  }

  {  // An import that sends its header and nothing more.
    v1::ImportStateRequest header;
    *header.mutable_header()->mutable_state() = whole.messages[0].header();
    header.mutable_header()->set_request_id("import-idle");
    header.mutable_header()->set_session_id("copy");
    header.mutable_header()->set_mode(v1::IMPORT_MODE_CREATE);
    auto ctx = Ctx();
    v1::Session out;
    auto idle = server->sessions->ImportState(ctx.get(), &out);
    ASSERT_TRUE(idle->Write(header));
    EXPECT_TRUE(
        Eventually([&] { return Stalls(*server, "ImportState") == 1; }));
    EXPECT_TRUE(Eventually([&] { return !transfer_refused(); }));
    EXPECT_EQ(FromGrpcStatus(idle->Finish()).code(),
              absl::StatusCode::kCancelled);
    EXPECT_EQ(Get(*server, "copy").status().code(),
              absl::StatusCode::kNotFound);
  }
}

// An Append whose client leaves its acks unread is cut off; what it sent
// is not lost or applied twice: resending everything from the start (as
// the SDKs do after a failure) leaves each request applied once.
TEST(ServeClientStallTest, AnAppendWhoseClientLeavesAcksUnreadIsCutOff) {
  auto server = ServeProcess::Start({kStallTimeout});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "acks").ok());
  const std::string text(64, 'a');
  constexpr int kRequests = 1000;
  {
    auto streams = v1::Streams::NewStub(TinyWindowChannel(server->address));
    auto ctx = Ctx();
    auto stream = streams->Append(ctx.get());
    // Sent while nothing is read (they wait in the windows once the
    // server stops reading).
    for (int i = 0; i < kRequests && stream->Write(AppendAt("acks", i, text));
         ++i) {
    }
    EXPECT_TRUE(Eventually([&] { return Stalls(*server, "Append") == 1; }));
    v1::AppendResponse ack;
    int acks = 0;
    while (stream->Read(&ack)) ++acks;
    EXPECT_LT(acks, kRequests);
    EXPECT_EQ(FromGrpcStatus(stream->Finish()).code(),
              absl::StatusCode::kCancelled);
  }
  auto ctx = Ctx();
  auto stream = server->streams->Append(ctx.get());
  std::thread reader([&] {
    v1::AppendResponse ack;
    while (stream->Read(&ack)) {
    }
  });
  for (int i = 0; i < kRequests && stream->Write(AppendAt("acks", i, text));
       ++i) {
  }
  stream->WritesDone();
  reader.join();
  EXPECT_TRUE(stream->Finish().ok());
  auto got = Get(*server, "acks");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->input_offset(), uint64_t{kRequests} * text.size());
}

// A client that reads what it is sent but sends nothing for longer than
// the timeout is idle, not stalled: its Append stream stays open.
TEST(ServeClientStallTest, AnIdleAppendIsNotCutOff) {
  auto server = ServeProcess::Start({kStallTimeout});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "idle").ok());
  auto ctx = Ctx();
  auto stream = server->streams->Append(ctx.get());
  v1::AppendResponse ack;
  ASSERT_TRUE(stream->Write(AppendAt("idle", 0, "first")));
  ASSERT_TRUE(stream->Read(&ack));
  absl::SleepFor(absl::Seconds(5));  // longer than the timeout, idle
  ASSERT_TRUE(stream->Write(AppendAt("idle", 1, "again")));
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.input_offset(), 10u);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_GE(server->Metric("statestream_scheduler_tasks"), 0);  // scraped
  EXPECT_EQ(Stalls(*server, "Append"), -1);  // no such series: none cut
}

}  // namespace
}  // namespace statestream
