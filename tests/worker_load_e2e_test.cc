// SPDX-License-Identifier: Apache-2.0
// A real `statestream serve` process under load and retries: determinism
// under batching (50 concurrent sessions equal each alone), request-id
// idempotency (DUPLICATE_REQUEST, replay of committed generations, also
// after a restart), a client that disconnects mid-stream frees its
// resources (seen in /metrics), overload yields RESOURCE_EXHAUSTED, and
// max_duration / Score top_logprobs. No assertion depends on timing: waits
// poll a condition up to a generous limit.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
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
#include "tests/metrics_scrape.h"
#include "tests/serve_process.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using e2e::AppendText;
using e2e::Create;
using e2e::Ctx;
using e2e::Eventually;
using e2e::Gen;
using e2e::Generate;
using e2e::GenRequest;
using Server = e2e::ServeProcess;

std::string DocumentFor(int i) {
  std::string text = absl::StrCat("session ", i, ": ");
  for (int k = 0; k <= i % 7; ++k) absl::StrAppend(&text, "lorem ipsum ", k);
  return text;
}

TEST(WorkerLoadE2eTest, FiftyConcurrentSessionsEqualEachAlone) {
  auto server = Server::Start({});
  ASSERT_NE(server, nullptr);
  constexpr int kSessions = 50;
  struct Result {
    absl::Status status;
    std::vector<uint32_t> tokens;
    uint64_t position = 0;
  };
  auto run = [&](const std::string& prefix, int i) {
    Result r;
    const std::string id = absl::StrCat(prefix, i);
    r.status = Create(*server, id);
    if (r.status.ok()) r.status = AppendText(*server, id, DocumentFor(i));
    if (!r.status.ok()) return r;
    Gen g = Generate(*server, GenRequest(id, "gen", 24, true, 1000 + i));
    r.status = g.status;
    r.tokens = g.tokens;
    r.position = g.done.position();
    return r;
  };
  std::vector<Result> alone(kSessions), together(kSessions);
  for (int i = 0; i < kSessions; ++i) alone[i] = run("alone-", i);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSessions; ++i) {
    threads.emplace_back([&, i] { together[i] = run("together-", i); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(alone[i].status.ok()) << i << ": " << alone[i].status;
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status;
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "session " << i;
    EXPECT_EQ(together[i].tokens.size(), 24u);
    EXPECT_EQ(together[i].position, alone[i].position);
  }
  // The engine really ran several sessions in one batch at some point.
  const double single =
      server->Metric("statestream_batch_sequences_bucket{le=\"1\"}");
  const double batches = server->Metric("statestream_batch_sequences_count");
  ASSERT_GE(single, 0);  // -1: no such series
  EXPECT_LT(single, batches);
}

TEST(WorkerLoadE2eTest, RequestIdsAreIdempotentAndSurviveARestart) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/worker_load_e2e_", getpid());
  std::filesystem::remove_all(dir);
  auto server = Server::Start({"--data-dir=" + dir});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "idem").ok());
  // Same create request id, same content: the same session; other content:
  // DUPLICATE_REQUEST.
  EXPECT_TRUE(Create(*server, "idem").ok());
  absl::Status dup = Create(*server, "other", "create-idem");
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument) << dup;
  EXPECT_EQ(GetReason(dup), Reason::kDuplicateRequest) << dup;
  ASSERT_TRUE(AppendText(*server, "idem", "the same text every time").ok());

  const v1::GenerateRequest req = GenRequest("idem", "g1", 20, true, 5);
  Gen first = Generate(*server, req);
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_FALSE(first.done.replayed());
  ASSERT_EQ(first.tokens.size(), 20u);

  Gen retry = Generate(*server, req);
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_TRUE(retry.done.replayed());
  EXPECT_EQ(retry.tokens, first.tokens);
  EXPECT_EQ(retry.text, first.text);
  EXPECT_EQ(retry.done.version(), first.done.version());
  EXPECT_EQ(retry.done.input_offset(), first.done.input_offset());
  EXPECT_EQ(retry.done.usage().output_tokens(), 20u);

  v1::GenerateRequest changed = req;
  changed.set_max_tokens(21);
  Gen conflict = Generate(*server, changed);
  EXPECT_EQ(GetReason(conflict.status), Reason::kDuplicateRequest)
      << conflict.status;
  EXPECT_GE(server->Metric("statestream_replayed_generations_total"), 1);

  // A new request id samples anew and advances the session.
  Gen second = Generate(*server, GenRequest("idem", "g2", 20, true, 5));
  ASSERT_TRUE(second.status.ok()) << second.status;
  EXPECT_FALSE(second.done.replayed());
  EXPECT_EQ(second.done.version(), first.done.version() + 1);

  server->process->Signal(SIGTERM);
  auto code = server->process->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0) << server->process->stderr_text();
  server = Server::Start({"--data-dir=" + dir});
  ASSERT_NE(server, nullptr);
  // The records travelled with the state: both retries replay.
  Gen after = Generate(*server, req);
  ASSERT_TRUE(after.status.ok()) << after.status;
  EXPECT_TRUE(after.done.replayed());
  EXPECT_EQ(after.tokens, first.tokens);
  EXPECT_EQ(after.done.version(), second.done.version());
  Gen after2 = Generate(*server, GenRequest("idem", "g2", 20, true, 5));
  EXPECT_TRUE(after2.done.replayed());
  EXPECT_EQ(after2.tokens, second.tokens);
  server.reset();
  std::filesystem::remove_all(dir);
}

TEST(WorkerLoadE2eTest, ADisconnectedClientFreesItsResources) {
  // No periodic checkpoint of the generation (it could commit before the
  // cancel lands, on a fast model): the version checked below is exact.
  auto server = Server::Start(
      {"--generate-checkpoint-tokens=0", "--generate-checkpoint-interval=0"});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "gone").ok());
  ASSERT_TRUE(AppendText(*server, "gone", "a long story begins").ok());
  for (bool commit : {true, false}) {
    grpc::ClientContext ctx;
    auto reader = server->streams->Generate(
        &ctx,
        GenRequest("gone", commit ? "long-c" : "long-s", 8192, commit, 1));
    v1::GenerateResponse msg;
    ASSERT_TRUE(reader->Read(&msg));  // it is running
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
    EXPECT_FALSE(reader->Finish().ok());
    // The task leaves the scheduler and the session is idle again.
    EXPECT_TRUE(Eventually([&] {
      return server->Metric("statestream_scheduler_tasks") == 0 &&
             server->Metric("statestream_sessions_active") == 0;
    }));
  }
  // Nothing of the cancelled committing generation was applied, and the
  // session takes new work.
  v1::GetSessionRequest get;
  get.set_session_id("gone");
  v1::Session s;
  auto ctx = Ctx();
  ASSERT_TRUE(server->sessions->GetSession(ctx.get(), get, &s).ok());
  EXPECT_EQ(s.version(), 2u);
  Gen g = Generate(*server, GenRequest("gone", "after", 8, true, 1));
  EXPECT_TRUE(g.status.ok()) << g.status;
  EXPECT_EQ(g.done.version(), 3u);
}

TEST(WorkerLoadE2eTest, OverloadIsResourceExhaustedNotACrash) {
  auto server = Server::Start({"--max-tasks=2", "--max-queued-tokens=4000"});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "busy").ok());
  ASSERT_TRUE(AppendText(*server, "busy", "work work work").ok());
  // More tokens of work than the worker queues in all: too large, at once
  // (OVERLOADED would have it retried forever).
  Gen big = Generate(*server, GenRequest("busy", "big", 8000, false, 1));
  EXPECT_EQ(big.status.code(), absl::StatusCode::kInvalidArgument)
      << big.status;
  EXPECT_EQ(GetReason(big.status), Reason::kMessageTooLarge);
  // Many concurrent calls against two task slots: each succeeds or is
  // refused with OVERLOADED; the server survives.
  std::vector<absl::Status> results(16);
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      results[i] = Generate(*server, GenRequest("busy", absl::StrCat("c", i),
                                                500, false, i))
                       .status;
    });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& st : results) {
    if (st.ok()) continue;
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
    EXPECT_EQ(GetReason(st), Reason::kOverloaded) << st;
  }
  EXPECT_GE(server->Metric("statestream_errors_total{reason=\"OVERLOADED\"}"),
            1);
  Gen ok = Generate(*server, GenRequest("busy", "small", 8, false, 1));
  EXPECT_TRUE(ok.status.ok()) << ok.status;
  auto code = server->process->Wait(absl::Milliseconds(1));
  EXPECT_FALSE(code.ok()) << "the server exited";
}

// A client that goes away in the middle of a big Append stops its ingest:
// the scheduler and the session are free at once (not after every token
// went through the model), and nothing of the request is applied.
TEST(WorkerLoadE2eTest, AnAppendsIngestStopsWhenItsClientGoesAway) {
  // One engine thread and a wider model than the demo: 262,144 tokens take
  // tens of seconds.
  const std::string model = absl::StrCat(
      ::testing::TempDir(), "/ingest_cancel_", getpid(), ".safetensors");
  auto made =
      e2e::Run({STATESTREAM_BIN, "model", "random", "--layers=4", "--embd=256",
                "--head-size=64", "--vocab=256", "--out=" + model});
  ASSERT_TRUE(made.ok() && made->exit_code == 0) << made->err;
  auto server = Server::Start({"--model=" + model, "--threads=1"});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "big").ok());
  grpc::ClientContext ctx;
  auto stream = server->streams->Append(&ctx);
  v1::AppendRequest r;
  r.set_session_id("big");
  r.set_expected_input_offset(0);
  for (int i = 0; i < 262144; ++i) r.mutable_tokens()->add_ids(i % 256);
  ASSERT_TRUE(stream->Write(r));
  ASSERT_TRUE(Eventually(
      [&] { return server->Metric("statestream_scheduler_tasks") == 1; }));
  ctx.TryCancel();
  EXPECT_FALSE(stream->Finish().ok());
  const absl::Time cancelled = absl::Now();
  EXPECT_TRUE(Eventually([&] {
    return server->Metric("statestream_scheduler_tasks") == 0 &&
           server->Metric("statestream_sessions_active") == 0;
  }));
  v1::GetSessionRequest get;
  get.set_session_id("big");
  v1::Session s;
  auto get_ctx = Ctx();
  ASSERT_TRUE(server->sessions->GetSession(get_ctx.get(), get, &s).ok());
  EXPECT_EQ(s.input_offset(), 0u)
      << "the ingest ran to its end, " << absl::Now() - cancelled
      << " after the cancel";
  std::filesystem::remove(model);
}

TEST(WorkerLoadE2eTest, SigtermCommitsTheRunningGenerationAndExits) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/worker_load_drain_", getpid());
  std::filesystem::remove_all(dir);
  auto server = Server::Start({"--data-dir=" + dir});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "drain").ok());
  ASSERT_TRUE(AppendText(*server, "drain", "keep going").ok());
  Gen g;
  {
    auto ctx = Ctx();
    auto reader = server->streams->Generate(
        ctx.get(), GenRequest("drain", "long", 8192, true, 9));
    v1::GenerateResponse msg;
    ASSERT_TRUE(reader->Read(&msg));  // running
    for (uint32_t t : msg.chunk().tokens()) g.tokens.push_back(t);
    server->process->Signal(SIGTERM);
    while (reader->Read(&msg)) {
      for (uint32_t t : msg.chunk().tokens()) g.tokens.push_back(t);
      if (msg.has_done()) g.done = msg.done();
    }
    g.status = FromGrpcStatus(reader->Finish());
  }
  // Stopped early (or finished first): either way what the client got is
  // committed, and the server exits cleanly.
  ASSERT_TRUE(g.status.ok()) << g.status;
  EXPECT_TRUE(g.done.committed());
  EXPECT_EQ(g.done.usage().output_tokens(), g.tokens.size());
  // Exactly what the client received is committed: the byte-level demo
  // model's tokens are one input byte each, after "keep going".
  EXPECT_EQ(g.done.input_offset(), 10 + g.tokens.size());
  if (g.done.finish_reason() == v1::FINISH_REASON_CANCELLED) {
    EXPECT_LT(g.tokens.size(), 8192u);
  } else {
    EXPECT_EQ(g.done.finish_reason(), v1::FINISH_REASON_MAX_TOKENS);
  }
  auto code = server->process->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0) << server->process->stderr_text();
  server = Server::Start({"--data-dir=" + dir});
  ASSERT_NE(server, nullptr);
  v1::GetSessionRequest get;
  get.set_session_id("drain");
  v1::Session s;
  auto ctx = Ctx();
  ASSERT_TRUE(server->sessions->GetSession(ctx.get(), get, &s).ok());
  EXPECT_EQ(s.version(), g.done.version());
  EXPECT_EQ(s.input_offset(), g.done.input_offset());
  server.reset();
  std::filesystem::remove_all(dir);
}

// statestream_errors_total counts every service's errors: the Models
// service's (GetModel of an unknown id) were missing.
TEST(WorkerLoadE2eTest, EveryServicesErrorsAreCounted) {
  auto server = Server::Start({});
  ASSERT_NE(server, nullptr);
  auto models = v1::Models::NewStub(server->channel);
  for (const std::string id : {"no-such-model", ""}) {
    v1::GetModelRequest req;
    req.set_model_id(id);
    v1::Model out;
    auto ctx = Ctx();
    const absl::Status s =
        FromGrpcStatus(models->GetModel(ctx.get(), req, &out));
    ASSERT_EQ(GetReason(s), Reason::kModelNotFound) << s;
  }
  v1::GetSessionRequest get;
  get.set_session_id("no-such-session");
  v1::Session session;
  auto ctx = Ctx();
  ASSERT_EQ(GetReason(FromGrpcStatus(
                server->sessions->GetSession(ctx.get(), get, &session))),
            Reason::kSessionNotFound);
  // Exports and imports too (they were never counted).
  v1::ExportStateRequest exp;
  exp.set_session_id("no-such-session");
  auto export_ctx = Ctx();
  auto reader = server->sessions->ExportState(export_ctx.get(), exp);
  v1::ExportStateResponse chunk;
  while (reader->Read(&chunk)) {
  }
  ASSERT_EQ(GetReason(FromGrpcStatus(reader->Finish())),
            Reason::kSessionNotFound);
  v1::Session imported;
  auto import_ctx = Ctx();
  auto writer = server->sessions->ImportState(import_ctx.get(), &imported);
  v1::ImportStateRequest headless;
  headless.mutable_chunk()->set_index(0);
  writer->Write(headless);
  writer->WritesDone();
  ASSERT_EQ(GetReason(FromGrpcStatus(writer->Finish())),
            Reason::kInvalidArgument);
  EXPECT_EQ(
      server->Metric("statestream_errors_total{reason=\"MODEL_NOT_FOUND\"}"),
      2);
  EXPECT_EQ(
      server->Metric("statestream_errors_total{reason=\"SESSION_NOT_FOUND\"}"),
      2);
  EXPECT_EQ(
      server->Metric("statestream_errors_total{reason=\"INVALID_ARGUMENT\"}"),
      1);
}

TEST(WorkerLoadE2eTest, MaxDurationAndScoreTopLogprobs) {
  auto server = Server::Start({});
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Create(*server, "limits").ok());
  ASSERT_TRUE(AppendText(*server, "limits", "stop soon").ok());
  v1::GenerateRequest req = GenRequest("limits", "short", 8192, true, 3);
  req.mutable_max_duration()->set_nanos(1);
  Gen g = Generate(*server, req);
  ASSERT_TRUE(g.status.ok()) << g.status;
  EXPECT_EQ(g.done.finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(g.tokens.size(), 1u);
  EXPECT_TRUE(g.done.committed());

  v1::ScoreRequest score;
  score.set_session_id("limits");
  score.set_text_utf8("abc");
  score.set_top_logprobs(5);
  v1::ScoreResponse out;
  auto ctx = Ctx();
  ASSERT_TRUE(server->streams->Score(ctx.get(), score, &out).ok());
  ASSERT_EQ(out.tokens_size(), 3);
  for (const auto& t : out.tokens()) {
    ASSERT_EQ(t.top_size(), 5);
    EXPECT_GE(t.top(0).logprob(), t.logprob());
    EXPECT_GE(t.top(0).logprob(), t.top(4).logprob());
    EXPECT_EQ(t.greedy(), t.top(0).token() == t.token());
  }
}

}  // namespace
}  // namespace statestream
