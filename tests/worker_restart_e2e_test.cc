// SPDX-License-Identifier: Apache-2.0
// `statestream serve` processes of their own, started with flags: sessions
// survive a restart with --data-dir (weights as stored and int8, and a
// killed generation resumes from its checkpoint), an int8 state is a
// mismatch for the fp32 model, and state transfers in flight are bounded
// (--max-transfer-bytes).
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(60);

// A `statestream serve` process and stubs on it.
struct Serve {
  std::unique_ptr<e2e::Subprocess> process;
  std::unique_ptr<v1::Sessions::Stub> sessions;
  std::unique_ptr<v1::Streams::Stub> streams;
};

// Starts `statestream serve` with `args` (a null process and a test failure
// if it did not come up).
Serve StartServe(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {STATESTREAM_BIN, "serve",
                                   "--listen=127.0.0.1:0"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto started = e2e::StartServer(argv, kStartTimeout);
  EXPECT_TRUE(started.ok()) << started.status();
  if (!started.ok()) return {};
  auto channel =
      grpc::CreateChannel(started->address, grpc::InsecureChannelCredentials());
  return {std::move(started->process), v1::Sessions::NewStub(channel),
          v1::Streams::NewStub(channel)};
}

// Creates session `id` (request "create-ID") and appends `text` with
// flush and checkpoint at `durability`: the ack (a test failure if any
// step failed).
v1::AppendResponse CreateWithText(v1::Sessions::Stub* sessions,
                                  v1::Streams::Stub* streams,
                                  const std::string& id,
                                  const std::string& text,
                                  v1::Durability durability) {
  v1::CreateSessionRequest create;
  create.set_request_id("create-" + id);
  create.set_session_id(id);
  v1::Session s;
  grpc::ClientContext c1;
  EXPECT_TRUE(sessions->CreateSession(&c1, create, &s).ok());
  grpc::ClientContext c2;
  auto stream = streams->Append(&c2);
  v1::AppendRequest r;
  r.set_session_id(id);
  r.set_text_utf8(text);
  r.set_flush(true);
  r.set_checkpoint(true);
  r.set_durability(durability);
  v1::AppendResponse ack;
  EXPECT_TRUE(stream->Write(r));
  EXPECT_TRUE(stream->Read(&ack));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  return ack;
}

// State transfers in flight hold at most --max-transfer-bytes: with the
// budget taken by an import still streaming, another import's header is
// RESOURCE_EXHAUSTED/OVERLOADED (retry later); once it ends, it fits.
TEST(WorkerTransferTest, TransfersInFlightAreBounded) {
  Serve serve = StartServe({"--max-transfer-bytes=1"});
  ASSERT_NE(serve.process, nullptr);
  v1::Sessions::Stub* sessions = serve.sessions.get();
  auto ctx = [] {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(60));
    return c;
  };
  {
    v1::CreateSessionRequest create;
    create.set_session_id("src");
    create.set_request_id("create-src");
    v1::Session out;
    auto c = ctx();
    ASSERT_TRUE(sessions->CreateSession(c.get(), create, &out).ok());
  }
  v1::StateHeader header;
  std::string blob;
  {
    v1::ExportStateRequest req;
    req.set_session_id("src");
    auto c = ctx();
    auto reader = sessions->ExportState(c.get(), req);
    v1::ExportStateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_header()) header = msg.header();
      if (msg.has_chunk()) blob += msg.chunk().data();
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  auto open = [&](const std::string& id, grpc::ClientContext* c,
                  v1::Session* out) {
    auto writer = sessions->ImportState(c, out);
    v1::ImportStateRequest first;
    first.mutable_header()->set_request_id("import-" + id);
    first.mutable_header()->set_session_id(id);
    first.mutable_header()->set_mode(v1::IMPORT_MODE_CREATE);
    *first.mutable_header()->mutable_state() = header;
    EXPECT_TRUE(writer->Write(first));
    return writer;
  };
  auto finish = [&](grpc::ClientWriter<v1::ImportStateRequest>* writer) {
    for (uint32_t i = 0; size_t{i} * header.chunk_bytes() < blob.size(); ++i) {
      v1::ImportStateRequest c;
      c.mutable_chunk()->set_index(i);
      std::string piece =
          blob.substr(size_t{i} * header.chunk_bytes(), header.chunk_bytes());
      c.mutable_chunk()->set_data(piece);
      c.mutable_chunk()->set_crc32c(Crc32c(0, piece.data(), piece.size()));
      if (!writer->Write(c)) break;
    }
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  };
  // Once the worker read a first import's header (and took its budget), a
  // second transfer does not fit. The client cannot see when it has: a
  // second sent before holds the budget itself, and the first, read
  // meanwhile, is the one refused; then the round starts again, waiting
  // longer for the worker.
  absl::Status second = absl::UnknownError("not tried");
  absl::Status first = absl::UnknownError("not tried");
  for (int round = 0; round < 8 && !(first.ok() && !second.ok()); ++round) {
    auto first_ctx = ctx();
    v1::Session first_out;
    auto writer = open(absl::StrCat("a-", round), first_ctx.get(), &first_out);
    absl::SleepFor(absl::Milliseconds(100) * (1 << std::min(round, 5)));
    {
      auto c = ctx();
      v1::Session out;
      auto late = open(absl::StrCat("b-", round), c.get(), &out);
      second = finish(late.get());
    }
    first = finish(writer.get());
  }
  EXPECT_EQ(second.code(), absl::StatusCode::kResourceExhausted) << second;
  EXPECT_EQ(GetReason(second), Reason::kOverloaded);
  EXPECT_TRUE(GetErrorMetadata(second, "retry_after_ms").has_value());
  ASSERT_TRUE(first.ok()) << first;
  auto c = ctx();
  v1::Session out;
  auto again = open("b2", c.get(), &out);
  EXPECT_TRUE(finish(again.get()).ok());
}

// With --data-dir the sessions survive a restart: same position, same
// state, and the same seeded generation as without the restart — with the
// weights as stored and with int8 weights.
class WorkerRestartPrecisionTest
    : public ::testing::TestWithParam<const char*> {};

TEST_P(WorkerRestartPrecisionTest, SessionsResumeAfterARestart) {
  const std::string dir = absl::StrCat(
      ::testing::TempDir(), "/worker_e2e_restart_", GetParam(), getpid());
  std::filesystem::remove_all(dir);
  auto start = [&] {
    return StartServe(
        {"--data-dir=" + dir, std::string("--precision=") + GetParam()});
  };
  auto generate = [](v1::Streams::Stub* stub, bool commit) {
    v1::GenerateRequest g;
    g.set_session_id("durable");
    g.set_request_id(commit ? "commit" : "peek");
    g.set_max_tokens(16);
    g.set_commit(commit);
    g.mutable_sampling()->set_seed(7);
    grpc::ClientContext ctx;
    auto reader = stub->Generate(&ctx, g);
    v1::GenerateResponse msg;
    std::vector<uint32_t> tokens;
    while (reader->Read(&msg)) {
      for (uint32_t t : msg.chunk().tokens()) tokens.push_back(t);
    }
    EXPECT_TRUE(reader->Finish().ok());
    return tokens;
  };

  std::vector<uint32_t> before;
  uint64_t position = 0;
  {
    auto [server, sessions, streams] = start();
    ASSERT_NE(server, nullptr);
    const v1::AppendResponse ack =
        CreateWithText(sessions.get(), streams.get(), "durable",
                       "persist me, please", v1::DURABILITY_FSYNC);
    ASSERT_FALSE(HasFailure());
    EXPECT_EQ(ack.durability(), v1::DURABILITY_FSYNC);
    position = ack.position();
    before = generate(streams.get(), false);
    server->Signal(SIGTERM);
    auto code = server->Wait(absl::Seconds(60));
    ASSERT_TRUE(code.ok());
    EXPECT_EQ(*code, 0) << server->stderr_text();
  }
  auto [server, sessions, streams] = start();
  ASSERT_NE(server, nullptr);
  v1::GetSessionRequest get;
  get.set_session_id("durable");
  v1::Session s;
  grpc::ClientContext c;
  ASSERT_TRUE(sessions->GetSession(&c, get, &s).ok());
  EXPECT_EQ(s.position(), position);
  EXPECT_EQ(s.input_offset(), 18u);
  EXPECT_EQ(s.version(), 2u);
  EXPECT_EQ(generate(streams.get(), false), before);
  EXPECT_EQ(generate(streams.get(), true), before);
  // An FSYNC ack survives a SIGKILL too, when no drain commits anything.
  const v1::AppendResponse killed_ack =
      CreateWithText(sessions.get(), streams.get(), "killed",
                     "kept across kill -9", v1::DURABILITY_FSYNC);
  ASSERT_FALSE(HasFailure());
  server->Signal(SIGKILL);
  ASSERT_TRUE(server->Wait(absl::Seconds(60)).ok());
  auto [again, sessions_again, streams_again] = start();
  ASSERT_NE(again, nullptr);
  get.set_session_id("killed");
  grpc::ClientContext after_kill;
  ASSERT_TRUE(sessions_again->GetSession(&after_kill, get, &s).ok());
  EXPECT_EQ(s.input_offset(), 19u);
  EXPECT_EQ(s.position(), killed_ack.position());
  EXPECT_EQ(s.version(), killed_ack.version());
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Weights, WorkerRestartPrecisionTest,
                         ::testing::Values("as-stored", "int8"));

// The int8 model is another model: after a restart with other weights, its
// sessions' states are refused as MODEL_MISMATCH, never run on the wrong
// weights, and the stored state is left intact for the right server.
TEST(WorkerRestartTest, AnInt8StateIsAMismatchForTheFp32Model) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/worker_e2e_int8_", getpid());
  std::filesystem::remove_all(dir);
  struct Appended {
    bool acked = false;
    v1::AppendResponse ack;
    absl::Status finished;
  };
  auto append = [](v1::Streams::Stub* stub) {
    grpc::ClientContext ctx;
    auto stream = stub->Append(&ctx);
    v1::AppendRequest r;
    r.set_session_id("q");
    r.set_text_utf8("quantized");
    r.set_flush(true);
    r.set_checkpoint(true);
    EXPECT_TRUE(stream->Write(r));
    Appended out;
    out.acked = stream->Read(&out.ack);
    stream->WritesDone();
    out.finished = FromGrpcStatus(stream->Finish());
    return out;
  };
  auto export_state = [](v1::Sessions::Stub* stub) {
    grpc::ClientContext ctx;
    v1::ExportStateRequest req;
    req.set_session_id("q");
    auto reader = stub->ExportState(&ctx, req);
    v1::ExportStateResponse msg;
    std::string blob;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) blob += msg.chunk().data();
    }
    return reader->Finish().ok() ? blob : std::string();
  };
  std::string int8_state;
  int run = 0;
  for (const char* precision : {"int8", "f32", "int8"}) {
    ++run;
    auto [server, sessions, streams] = StartServe(
        {"--data-dir=" + dir, std::string("--precision=") + precision});
    ASSERT_NE(server, nullptr);
    grpc::ClientContext c;
    v1::CreateSessionRequest create;
    create.set_request_id("create-q");
    create.set_session_id("q");
    v1::Session s;
    // A retry of the same request id after the first run: answered, not
    // created twice.
    const absl::Status created =
        FromGrpcStatus(sessions->CreateSession(&c, create, &s));
    if (run == 1) {
      EXPECT_TRUE(created.ok()) << created;
    }
    const Appended a = append(streams.get());
    if (std::string(precision) == "f32") {  // the int8 state: refused
      EXPECT_FALSE(a.acked);
      EXPECT_EQ(GetReason(a.finished), Reason::kModelMismatch) << a.finished;
    } else {  // applied, then (third run) acknowledged as a duplicate
      EXPECT_TRUE(a.acked) << a.finished;
      EXPECT_TRUE(a.finished.ok()) << a.finished;
      EXPECT_EQ(a.ack.input_offset(), 9u);
      EXPECT_EQ(a.ack.duplicate(), run == 3);
      const std::string state = export_state(sessions.get());
      EXPECT_FALSE(state.empty());
      if (run == 1) {
        int8_state = state;
      } else {  // the f32 server left it intact
        EXPECT_TRUE(state == int8_state) << "the int8 state changed";
      }
    }
    server->Signal(SIGTERM);
    ASSERT_TRUE(server->Wait(absl::Seconds(60)).ok());
  }
  std::filesystem::remove_all(dir);
}

// A committing generation checkpoints while it runs; after kill -9 and a
// restart, retrying the request replays the checkpointed tokens and
// continues exactly as the uninterrupted generation of a twin session.
TEST(WorkerRestartTest, AKilledGenerationResumesFromItsLastCheckpoint) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/worker_e2e_resume_", getpid());
  std::filesystem::remove_all(dir);
  auto start = [&] {
    return StartServe({"--data-dir=" + dir, "--generate-checkpoint-tokens=32",
                       "--generate-checkpoint-interval=0"});
  };
  constexpr int kMaxTokens = 8192;
  auto request = [](const std::string& id) {
    v1::GenerateRequest g;
    g.set_session_id(id);
    g.set_request_id("long");
    g.set_max_tokens(kMaxTokens);
    g.set_commit(true);
    g.set_durability(v1::DURABILITY_FSYNC);
    g.mutable_sampling()->set_seed(7);
    g.set_logprobs(true);
    return g;
  };
  struct Output {
    std::vector<uint32_t> tokens;
    v1::GenerateDone done;
    grpc::Status status;
    size_t with_logprobs = 0;  // tokens that came with a logprob entry
  };
  auto read_all = [](grpc::ClientReader<v1::GenerateResponse>* reader) {
    Output out;
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      const v1::GenerateChunk& chunk = msg.chunk();
      // A chunk's logprobs are parallel to all its tokens, or absent (the
      // tokens a resumed generation replays from its checkpoint).
      if (chunk.logprobs_size() > 0) {
        EXPECT_EQ(chunk.logprobs_size(), chunk.tokens_size());
        for (int i = 0;
             i < std::min(chunk.logprobs_size(), chunk.tokens_size()); ++i) {
          EXPECT_EQ(chunk.logprobs(i).token(), chunk.tokens(i));
        }
        out.with_logprobs += chunk.tokens_size();
      }
      for (uint32_t t : chunk.tokens()) out.tokens.push_back(t);
      if (msg.has_done()) out.done = msg.done();
    }
    out.status = reader->Finish();
    return out;
  };
  auto prepare = [](v1::Sessions::Stub* sessions, v1::Streams::Stub* streams,
                    const std::string& id) {
    CreateWithText(sessions, streams, id, "a long story begins",
                   v1::DURABILITY_UNSPECIFIED);
  };

  Output reference;
  std::string killed;  // the session whose generation was killed midway
  uint64_t checkpoint_offset = 0;
  {
    auto [server, sessions, streams] = start();
    ASSERT_NE(server, nullptr);
    prepare(sessions.get(), streams.get(), "reference");
    {
      grpc::ClientContext ctx;
      auto reader = streams->Generate(&ctx, request("reference"));
      reference = read_all(reader.get());
    }
    ASSERT_TRUE(reference.status.ok()) << reference.status.error_message();
    ASSERT_EQ(reference.tokens.size(), size_t{kMaxTokens});
    // Start the twin's generation and kill the server once a checkpoint
    // of it is committed (its input_offset moved) but it is not finished.
    // Should a generation finish first, another twin tries again.
    const uint64_t prompt = 19;
    for (int attempt = 0; attempt < 5 && killed.empty(); ++attempt) {
      const std::string id = absl::StrCat("twin", attempt);
      prepare(sessions.get(), streams.get(), id);
      grpc::ClientContext ctx;
      auto reader = streams->Generate(&ctx, request(id));
      for (;;) {
        v1::GetSessionRequest get;
        get.set_session_id(id);
        v1::Session s;
        grpc::ClientContext c;
        ASSERT_TRUE(sessions->GetSession(&c, get, &s).ok());
        if (s.input_offset() == prompt + kMaxTokens) break;  // finished
        if (s.committed_input_offset() > prompt) {
          killed = id;
          checkpoint_offset = s.committed_input_offset();
          server->Signal(SIGKILL);
          break;
        }
      }
      if (killed.empty()) read_all(reader.get());
    }
    ASSERT_FALSE(killed.empty()) << "every generation finished before a "
                                    "checkpoint was seen";
    ASSERT_TRUE(server->Wait(absl::Seconds(60)).ok());
  }
  auto [server, sessions, streams] = start();
  ASSERT_NE(server, nullptr);
  v1::GetSessionRequest get;
  get.set_session_id(killed);
  v1::Session s;
  grpc::ClientContext c;
  ASSERT_TRUE(sessions->GetSession(&c, get, &s).ok());
  EXPECT_GE(s.input_offset(), checkpoint_offset);  // the last checkpoint
  EXPECT_LT(s.input_offset(), 19u + kMaxTokens);
  EXPECT_EQ(s.durability(), v1::DURABILITY_FSYNC);
  grpc::ClientContext ctx;
  auto reader = streams->Generate(&ctx, request(killed));
  Output resumed = read_all(reader.get());
  ASSERT_TRUE(resumed.status.ok()) << resumed.status.error_message();
  EXPECT_EQ(resumed.tokens, reference.tokens);
  EXPECT_EQ(reference.with_logprobs, size_t{kMaxTokens});
  // The checkpointed prefix is replayed without logprobs; the rest has them.
  EXPECT_EQ(resumed.with_logprobs,
            reference.done.input_offset() - s.input_offset());
  EXPECT_FALSE(resumed.done.replayed());
  EXPECT_TRUE(resumed.done.committed());
  EXPECT_EQ(resumed.done.usage().output_tokens(), uint32_t{kMaxTokens});
  EXPECT_EQ(resumed.done.input_offset(), reference.done.input_offset());
  EXPECT_EQ(resumed.done.position(), reference.done.position());
  server->Signal(SIGTERM);
  ASSERT_TRUE(server->Wait(absl::Seconds(60)).ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace statestream
