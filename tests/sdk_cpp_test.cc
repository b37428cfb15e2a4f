// SPDX-License-Identifier: Apache-2.0
// The C++ SDK against real `statestream serve` processes: a server killed
// with SIGKILL in the middle of an Append or a Generate and restarted on the
// same --data-dir is invisible to the SDK user (same final state, same
// tokens, nothing lost or applied twice); failover across targets; the
// session calls; typed errors, cancellation, deadlines, tenant metadata.
// No assertion depends on timing: servers commit only when asked
// (--checkpoint-tokens/--checkpoint-interval out of reach), and Generate
// output exceeds the client's fixed HTTP/2 window, so a kill always lands
// mid-stream.
#include <grpc/impl/codegen/grpc_types.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/client.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/sdk_cpp_fixture.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using client::Client;
using client::ClientOptions;
using sdk_test::SdkTest;
using sdk_test::Server;

TEST_F(SdkTest, AppendSurvivesKill9OfTheServer) {
  const std::string text = Text(30000);
  client::Session live = Create("live");
  client::AppendOptions options;
  options.max_chunk_bytes = 777;  // splits inside UTF-8 characters too
  auto writer = live.OpenAppend(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  const size_t half = text.size() / 2, three_q = text.size() * 3 / 4;
  ASSERT_TRUE((*writer)->Write(text.substr(0, half)).ok());
  auto ck = (*writer)->Checkpoint();
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->committed_input_offset(), half);
  // Applied but not committed when the server dies.
  ASSERT_TRUE((*writer)->Write(text.substr(half, three_q - half)).ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  EXPECT_EQ((*writer)->last_ack().input_offset(), three_q);
  EXPECT_EQ((*writer)->last_ack().committed_input_offset(), half);

  server_->KillAndRestart();

  ASSERT_TRUE((*writer)->Write(text.substr(three_q)).ok());
  ASSERT_TRUE((*writer)->Flush().ok());
  auto done = (*writer)->Close();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_GE((*writer)->reconnects(), 1);
  EXPECT_EQ(done->input_offset(), text.size());
  EXPECT_EQ(done->committed_input_offset(), text.size());
  // Closed: every call says so (docs/API.md).
  for (const absl::Status& s :
       {(*writer)->Sync(), (*writer)->Write("x"), (*writer)->Flush(),
        (*writer)->Close().status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_EQ(s.message(), "writer closed");
  }

  // The same text through a session that never saw a failure.
  client::Session ref = Create("ref");
  auto ref_ack = ref.AppendText(text);
  ASSERT_TRUE(ref_ack.ok()) << ref_ack.status();
  auto a = live.Get();
  auto b = ref.Get();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->input_offset(), b->input_offset());
  EXPECT_EQ(a->position(), b->position());
  EXPECT_EQ(a->pending_bytes(), 0u);
  ExpectSameState(live, ref);  // bit-identical state

  // And after one more restart, from the store alone.
  server_->KillAndRestart();
  auto again = live.Get();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->position(), b->position());
  ExpectSameState(live, ref);
}

// A bare Flush at an offset that is already committed (with the tail still
// pending) is not forgotten: the server dies before committing it, and the
// writer resends it ahead of the next text, so that text is tokenized after
// the flush exactly as in a run without the failure.
TEST_F(SdkTest, AFlushAtACommittedOffsetSurvivesKill9) {
  ASSERT_NO_FATAL_FAILURE(StartWorldServer());
  client::Session live = Create("flushed");
  auto writer = live.OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("Hello, inter").ok());
  auto ck = (*writer)->Checkpoint();
  ASSERT_TRUE(ck.ok()) << ck.status();
  ASSERT_GT(ck->pending_bytes(), 0u);  // committed with the tail pending
  ASSERT_TRUE((*writer)->Flush().ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  EXPECT_EQ((*writer)->last_ack().pending_bytes(), 0u);

  server_->KillAndRestart();

  ASSERT_TRUE((*writer)->Write("national").ok());
  ASSERT_TRUE((*writer)->Flush().ok());
  auto done = (*writer)->Close();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_GE((*writer)->reconnects(), 1);

  client::Session ref = Create("ref");
  auto ref_writer = ref.OpenAppend();
  ASSERT_TRUE(ref_writer.ok()) << ref_writer.status();
  ASSERT_TRUE((*ref_writer)->Write("Hello, inter").ok());
  ASSERT_TRUE((*ref_writer)->Flush().ok());
  ASSERT_TRUE((*ref_writer)->Write("national").ok());
  ASSERT_TRUE((*ref_writer)->Flush().ok());
  auto ref_done = (*ref_writer)->Close();
  ASSERT_TRUE(ref_done.ok()) << ref_done.status();
  EXPECT_EQ(done->position(), ref_done->position());
  ExpectSameState(live, ref);
}

// A word split by a kill -9: "inter" is held back (pending) in the
// committed checkpoint, the server dies, and "national" written after the
// restart joins it, so the words are tokenized as in one unbroken write
// (held-back bytes are part of the stored state).
TEST_F(SdkTest, AWordSplitByKill9IsTokenizedAsOne) {
  ASSERT_NO_FATAL_FAILURE(StartWorldServer());
  client::Session live = Create("split");
  auto writer = live.OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("Hello, inter").ok());
  auto ck = (*writer)->Checkpoint();
  ASSERT_TRUE(ck.ok()) << ck.status();
  ASSERT_GT(ck->pending_bytes(), 0u);  // "inter" not yet a token

  server_->KillAndRestart();

  ASSERT_TRUE((*writer)->Write("national").ok());
  ASSERT_TRUE((*writer)->Flush().ok());
  auto done = (*writer)->Close();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_GE((*writer)->reconnects(), 1);

  client::Session ref = Create("whole");
  auto ref_done = ref.AppendText("Hello, international");
  ASSERT_TRUE(ref_done.ok()) << ref_done.status();
  EXPECT_EQ(done->position(), ref_done->position());
  EXPECT_EQ(done->input_offset(), ref_done->input_offset());
  ExpectSameState(live, ref);
  // Split without the flush in between, not "inter" + "national" as two
  // words: a run that flushed "inter" would differ.
  client::Session flushed = Create("flushed-early");
  ASSERT_TRUE(flushed.AppendText("Hello, inter").ok());
  ASSERT_TRUE(flushed.AppendText("national").ok());
  auto early = flushed.Get();
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_NE(early->position(), ref_done->position());
}

// Cancelled before its first request went out: the writer fails with
// CANCELLED (it used to dereference a call it had not opened).
TEST_F(SdkTest, AWriterCancelledBeforeItsFirstWriteFailsCleanly) {
  client::Session s = Create("cancelled");
  client::Cancellation cancel;
  client::AppendOptions options;
  options.call.cancellation = &cancel;
  auto writer = s.OpenAppend(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  cancel.Cancel();
  const absl::Status written = (*writer)->Write("x");
  EXPECT_EQ(written.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*writer)->Flush().code(), absl::StatusCode::kCancelled);
  // The caller's own cancel: a retry loop on IsRetryable stops (docs/API.md).
  EXPECT_TRUE(client::IsCallerCancelled(written)) << written;
  EXPECT_FALSE(client::IsRetryable(written)) << written;
}

v1::GenerateRequest LongGeneration() {
  v1::GenerateRequest req;
  req.set_request_id("long-gen");
  req.set_max_tokens(8000);
  req.set_logprobs(true);
  req.set_top_logprobs(5);
  req.mutable_sampling()->set_seed(7);
  req.mutable_sampling()->set_temperature(1.0f);
  return req;
}

TEST_F(SdkTest, GenerateSurvivesKill9OfTheServer) {
  client::Session s = Create("gen");
  ASSERT_TRUE(s.AppendText("Once upon a time").ok());
  auto reference = s.GenerateAll(LongGeneration());
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ(reference->tokens.size(), 8000u);

  auto stream = s.Generate(LongGeneration());
  ASSERT_TRUE(stream.ok()) << stream.status();
  client::GenerateChunk chunk;
  std::vector<uint32_t> tokens;
  std::string text;
  ASSERT_TRUE((*stream)->Next(&chunk)) << (*stream)->status();
  tokens = chunk.tokens;
  text = chunk.text;
  server_->KillAndRestart();
  while ((*stream)->Next(&chunk)) {
    EXPECT_EQ(chunk.index, tokens.size());
    tokens.insert(tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
    text += chunk.text;
  }
  ASSERT_TRUE((*stream)->status().ok()) << (*stream)->status();
  EXPECT_GE((*stream)->reconnects(), 1);
  EXPECT_EQ(tokens, reference->tokens);
  EXPECT_EQ(text, reference->text);
  EXPECT_EQ((*stream)->done().finish_reason(), v1::FINISH_REASON_MAX_TOKENS);
}

// The session changes while a side-branch Generate is cut off: the
// resumed call would produce other tokens, and the stream ends
// FAILED_PRECONDITION (not retryable: the same call cannot continue the
// delivered output) instead of joining the first call's tokens to the
// second's.
TEST_F(SdkTest, AResumedGenerateThatDivergesIsNotJoined) {
  v1::GenerateRequest req = LongGeneration();
  // The server's seed: derived from the input_offset, which moves.
  req.mutable_sampling()->clear_seed();
  absl::Status st = ResumedAfterTheSessionMoved("diverge", req);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_FALSE(client::IsRetryable(st)) << st;
}

// Greedy output may repeat what was delivered from another state, so
// comparing tokens is not enough: a side-branch Generate that pinned no
// offset is resumed on the input it started from (its first chunk's
// start_input_offset), and the stream ends with the server's
// FAILED_PRECONDITION/POSITION_MISMATCH (its metadata kept) when the
// session moved.
TEST_F(SdkTest, AResumedGreedyGenerateOnAMovedSessionIsNotJoined) {
  v1::GenerateRequest req = LongGeneration();
  req.mutable_sampling()->set_temperature(0);
  absl::Status st = ResumedAfterTheSessionMoved("moved", req);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("input moved"), std::string::npos) << st;
  EXPECT_EQ(GetReason(st), Reason::kPositionMismatch) << st;
  EXPECT_TRUE(GetErrorMetadata(st, "actual_input_offset").has_value()) << st;
  EXPECT_FALSE(client::IsRetryable(st)) << st;
}

// A committing Generate killed mid-stream: the retry (same request id)
// either regenerates (nothing was committed) or replays the recorded output
// (the commit happened but `done` was lost); either way the caller sees the
// tokens of an uninterrupted run and the session advances exactly once.
TEST_F(SdkTest, CommittingGenerateSurvivesKill9) {
  client::Session s = Create("cgen");
  ASSERT_TRUE(s.AppendText("It was a dark and stormy night").ok());
  auto twin = s.Fork(0, "cgen-twin");
  ASSERT_TRUE(twin.ok()) << twin.status();
  v1::GenerateRequest req = LongGeneration();
  req.set_commit(true);
  auto reference = twin->GenerateAll(req);
  ASSERT_TRUE(reference.ok()) << reference.status();

  auto stream = s.Generate(req);
  ASSERT_TRUE(stream.ok()) << stream.status();
  client::GenerateChunk chunk;
  ASSERT_TRUE((*stream)->Next(&chunk)) << (*stream)->status();
  std::vector<uint32_t> tokens = chunk.tokens;
  server_->KillAndRestart();
  while ((*stream)->Next(&chunk)) {
    tokens.insert(tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
  }
  ASSERT_TRUE((*stream)->status().ok()) << (*stream)->status();
  EXPECT_GE((*stream)->reconnects(), 1);
  EXPECT_EQ(tokens, reference->tokens);
  EXPECT_TRUE((*stream)->done().committed());
  auto a = s.Get();
  auto b = twin->Get();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->input_offset(), b->input_offset());
  EXPECT_EQ(a->position(), b->position());
  EXPECT_EQ(ScoreOf(s), ScoreOf(*twin));
}

TEST_F(SdkTest, CommittingGenerateAppliesOnce) {
  client::Session s = Create("commit");
  ASSERT_TRUE(s.AppendText("Hello").ok());
  auto before = s.Get();
  ASSERT_TRUE(before.ok());
  v1::GenerateRequest req;
  req.set_max_tokens(16);
  req.set_commit(true);
  req.mutable_sampling()->set_temperature(0);
  auto out = s.GenerateAll(req);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->done.committed());
  auto after = s.Get();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->input_offset(), before->input_offset() + 16);
  EXPECT_EQ(after->version(), before->version() + 1);
}

// A caller that sets request_id retries a committing Generate by sending
// it again: the server replays the committed generation (the SDK used to
// pin each call to the offset it read then, so the retry's content
// differed: DUPLICATE_REQUEST).
TEST_F(SdkTest, ACommittingGenerateRetriedUnderItsOwnIdIsReplayed) {
  client::Session s = Create("own-id");
  ASSERT_TRUE(s.AppendText("Hello there").ok());
  v1::GenerateRequest req;
  req.set_request_id("my-turn-1");
  req.set_max_tokens(6);
  req.set_commit(true);
  req.set_prompt_text_utf8("Say:");
  req.mutable_sampling()->set_temperature(1.0f);
  req.mutable_sampling()->set_seed(3);
  auto first = s.GenerateAll(req);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->done.committed());
  EXPECT_FALSE(first->done.replayed());
  auto again = s.GenerateAll(req);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->done.replayed());
  EXPECT_EQ(again->tokens, first->tokens);
}

TEST_F(SdkTest, FailsOverToTheNextTarget) {
  // A target nobody listens on any more, then the live server.
  Server dead((dir_ / "dead").string());
  std::filesystem::create_directories(dir_ / "dead");
  const std::string dead_address = dead.Start();
  ASSERT_FALSE(dead_address.empty());
  dead.Kill();
  ClientOptions options;
  options.targets = {dead_address, server_->address()};
  auto c = Client::Create(options);
  ASSERT_TRUE(c.ok());
  v1::CreateSessionRequest req;
  req.set_session_id("failover");
  ASSERT_TRUE((*c)->CreateSession(req).ok());
  auto ack = (*c)->OpenSession("failover").AppendText("over there");
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->committed_input_offset(), 10u);
}

// `serve --api-keys` authenticates every call itself (no gateway in front)
// and enforces the tenants' limits: sessions counted in its store (a retry
// of a create that succeeded still gets its session at the limit), and
// Append/Generate/Export streams and Scores open at once.
TEST_F(SdkTest, ServeWithApiKeysAuthenticatesAndLimitsTenants) {
  const std::string keys = (dir_ / "keys.txt").string();
  const std::string key_a = "key-a-0123456789abcdef";
  const std::string key_b = "key-b-0123456789abcdef";
  std::ofstream(keys) << "# token tenant [limits]\n"
                      << key_a << " tenant-a max_sessions=2 max_streams=1\n"
                      << key_b << " tenant-b\n";
  ASSERT_NO_FATAL_FAILURE(
      StartServer({"--api-keys=" + keys, "--tenant-max-streams=4"}));
  auto connect = [&](const std::string& key, const std::string& tenant) {
    ClientOptions options;
    options.targets = {server_->address()};
    options.api_key = key;
    options.tenant = tenant;
    return std::move(Client::Create(options).value());
  };
  auto a = connect(key_a, "");
  auto b = connect(key_b, "");

  // Authentication: no key, an unknown key, or a tenant header instead.
  for (const auto& [key, tenant] :
       std::vector<std::pair<std::string, std::string>>{
           {"", ""}, {"unknown-0123456789abcdef", ""}, {"", "tenant-a"}}) {
    absl::Status st = connect(key, tenant)->ListModels().status();
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
    EXPECT_EQ(GetReason(st), Reason::kUnauthenticated) << st;
  }
  ASSERT_TRUE(a->ListModels().ok());

  // Sessions: two for tenant-a (a chosen id, a generated one); a retry of
  // either create is its session, not one more; a third create or a fork
  // is refused; tenant-b is not affected and cannot see tenant-a's.
  v1::CreateSessionRequest first;
  first.set_session_id("a1");
  first.set_request_id("create-a1");
  ASSERT_TRUE(a->CreateSession(first).ok());
  v1::CreateSessionRequest second;
  second.set_request_id("create-a2");
  auto generated = a->CreateSession(second);
  ASSERT_TRUE(generated.ok()) << generated.status();
  const std::string a2 = generated->session_id();
  for (const v1::CreateSessionRequest& retry : {first, second}) {
    auto again = a->CreateSession(retry);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->session_id(),
              retry.session_id().empty() ? a2 : retry.session_id());
  }
  v1::CreateSessionRequest third;
  third.set_session_id("a3");
  v1::CreateSessionRequest fork;
  fork.mutable_fork_from()->set_session_id("a1");
  for (const v1::CreateSessionRequest& more : {third, fork}) {
    absl::Status refused = a->CreateSession(more).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
    EXPECT_EQ(GetReason(refused), Reason::kTenantLimit);
    EXPECT_EQ(GetErrorMetadata(refused, "limit"), "max_sessions");
  }
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b->CreateSession({}).ok());
  EXPECT_EQ(GetReason(b->OpenSession("a1").Get().status()),
            Reason::kSessionNotFound);
  // The session limit a gateway forwards to its workers is not a client's
  // to send: serve is the edge and ignores it (it applied it, lowering
  // the caller's own limit).
  {
    auto stub = v1::Sessions::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + key_b);
    ctx.AddMetadata("x-statestream-max-sessions", "1");
    v1::CreateSessionRequest req;
    req.set_request_id("create-b-with-a-limit");
    v1::Session out;
    const grpc::Status st = stub->CreateSession(&ctx, req, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  // Streams authenticate too.
  EXPECT_EQ(GetReason(connect("", "tenant-a")
                          ->OpenSession("a1")
                          .AppendText("anonymous")
                          .status()),
            Reason::kUnauthenticated);

  // Streams: tenant-a may have one open; a second Append or a Generate is
  // refused while it is; tenant-b streams meanwhile.
  auto writer = a->OpenSession("a1").OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("open stream").ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  absl::Status busy = a->OpenSession(a2).AppendText("refused").status();
  EXPECT_EQ(GetReason(busy), Reason::kTenantLimit) << busy;
  EXPECT_EQ(GetErrorMetadata(busy, "limit"), "max_streams");
  v1::GenerateRequest g;
  g.set_max_tokens(4);
  EXPECT_EQ(GetReason(a->OpenSession("a1").GenerateAll(g).status()),
            Reason::kTenantLimit);
  EXPECT_EQ(GetReason(a->OpenSession("a1").Export().status()),
            Reason::kTenantLimit);
  // A Score runs the model as a Generate does: it takes a slot too.
  v1::ScoreRequest score;
  score.set_text_utf8(" more");
  EXPECT_EQ(GetReason(a->OpenSession("a1").Score(score).status()),
            Reason::kTenantLimit);
  auto b_session = b->CreateSession({});
  ASSERT_TRUE(b_session.ok()) << b_session.status();
  EXPECT_TRUE(b->OpenSession(b_session->session_id()).AppendText("b").ok());
  // Closing the stream frees the slot before the client sees it end.
  ASSERT_TRUE((*writer)->Close().ok());
  writer->reset();
  auto ack = a->OpenSession(a2).AppendText("now");
  EXPECT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(a->OpenSession(a2).Export().ok());
  auto scored = a->OpenSession(a2).Score(score);
  EXPECT_TRUE(scored.ok()) << scored.status();
  // A Score's slot is free again once it answered.
  EXPECT_TRUE(a->OpenSession(a2).Score(score).ok());
}

// `serve` rereads its keys file (--secrets-reload-interval): a key
// rotated on disk works at once; an Append open under the revoked one ends
// UNAUTHENTICATED at its next request, what it had sent committed; one
// left idle ends so without another request, and one whose request is
// still being applied ends once that request is acked.
TEST_F(SdkTest, ServeRereadsItsApiKeys) {
  const std::string keys = (dir_ / "keys.txt").string();
  const std::string old_key = "old-key-0123456789abcdef";
  const std::string new_key = "new-key-0123456789abcdef";
  std::ofstream(keys) << old_key << " tenant-a\n";
  ASSERT_NO_FATAL_FAILURE(
      StartServer({"--api-keys=" + keys, "--secrets-reload-interval=1s"}));
  auto connect = [&](const std::string& key) {
    ClientOptions options;
    options.targets = {server_->address()};
    options.api_key = key;
    return std::move(Client::Create(options).value());
  };
  auto old_client = connect(old_key);
  auto new_client = connect(new_key);
  v1::CreateSessionRequest req;
  req.set_session_id("rotated");
  ASSERT_TRUE(old_client->CreateSession(req).ok());
  auto writer = old_client->OpenSession("rotated").OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("before ").ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  // A second stream under the key, idle when it is revoked.
  req.set_session_id("idle");
  ASSERT_TRUE(old_client->CreateSession(req).ok());
  auto raw = v1::Streams::NewStub(grpc::CreateChannel(
      server_->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext idle_ctx;
  idle_ctx.AddMetadata("authorization", "Bearer " + old_key);
  idle_ctx.set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(60));
  auto idle = raw->Append(&idle_ctx);
  {
    v1::AppendRequest r;
    r.set_session_id("idle");
    r.set_text_utf8("quiet");
    ASSERT_TRUE(idle->Write(r));
    v1::AppendResponse ack;
    ASSERT_TRUE(idle->Read(&ack));
    EXPECT_EQ(ack.input_offset(), 5u);
  }
  // A third with a long request in flight as the key goes (or just done:
  // then it is idle, and ends the same way).
  req.set_session_id("busy");
  ASSERT_TRUE(old_client->CreateSession(req).ok());
  grpc::ClientContext busy_ctx;
  busy_ctx.AddMetadata("authorization", "Bearer " + old_key);
  busy_ctx.set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(180));
  auto busy = raw->Append(&busy_ctx);
  const std::string long_text(256 << 10, 'x');
  {
    v1::AppendRequest r;
    r.set_session_id("busy");
    r.set_text_utf8(long_text);
    ASSERT_TRUE(busy->Write(r));
  }

  std::ofstream(keys + ".new") << new_key << " tenant-a\n";
  std::filesystem::rename(keys + ".new", keys);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!new_client->ListModels().ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(new_client->ListModels().ok());
  EXPECT_EQ(GetReason(old_client->ListModels().status()),
            Reason::kUnauthenticated);
  (*writer)->Write("after").IgnoreError();  // may fail here or at Close
  absl::Status revoked = (*writer)->Close().status();
  EXPECT_EQ(GetReason(revoked), Reason::kUnauthenticated) << revoked;
  writer->reset();
  auto session = new_client->OpenSession("rotated").Get();
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->input_offset(), 7u);  // "before ", committed
  // The idle stream ended without another request from its client, its
  // input committed.
  v1::AppendResponse more;
  EXPECT_FALSE(idle->Read(&more));
  grpc::Status idle_end = idle->Finish();
  EXPECT_EQ(idle_end.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << idle_end.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(idle_end)), Reason::kUnauthenticated);
  auto idle_session = new_client->OpenSession("idle").Get();
  ASSERT_TRUE(idle_session.ok()) << idle_session.status();
  EXPECT_EQ(idle_session->input_offset(), 5u);
  EXPECT_EQ(idle_session->committed_input_offset(), 5u);
  v1::AppendResponse busy_ack;
  ASSERT_TRUE(busy->Read(&busy_ack));
  EXPECT_EQ(busy_ack.input_offset(), long_text.size());
  EXPECT_FALSE(busy->Read(&busy_ack));
  grpc::Status busy_end = busy->Finish();
  EXPECT_EQ(busy_end.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << busy_end.error_message();
  auto busy_session = new_client->OpenSession("busy").Get();
  ASSERT_TRUE(busy_session.ok()) << busy_session.status();
  EXPECT_EQ(busy_session->committed_input_offset(), long_text.size());
}

TEST_F(SdkTest, SessionCalls) {
  client::Session s = Create("calls");
  ASSERT_TRUE(s.AppendText("hello world").ok());
  auto versions = s.Versions();
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[0].version(), 2u);  // newest first
  EXPECT_EQ((*versions)[0].input_offset(), 11u);

  auto fork = s.Fork(0, "calls-fork");
  ASSERT_TRUE(fork.ok()) << fork.status();
  auto forked = fork->Get();
  ASSERT_TRUE(forked.ok());
  EXPECT_EQ(forked->input_offset(), 11u);
  EXPECT_EQ(forked->parent().session_id(), "calls");
  EXPECT_EQ(ScoreOf(*fork), ScoreOf(s));

  auto exported = s.Export(2);
  ASSERT_TRUE(exported.ok()) << exported.status();
  auto imported = client_->ImportSession(*exported, "calls-import");
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->input_offset(), 11u);
  EXPECT_EQ(ScoreOf(client_->OpenSession("calls-import")), ScoreOf(s));

  auto rolled = s.Rollback(1);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->input_offset(), 0u);
  EXPECT_EQ(rolled->version(), 3u);
  auto reimported = s.Import(*exported);
  ASSERT_TRUE(reimported.ok()) << reimported.status();
  EXPECT_EQ(reimported->input_offset(), 11u);
  EXPECT_EQ(reimported->version(), 4u);

  v1::ListSessionsRequest list;
  auto listed = client_->ListSessions(list);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->sessions_size(), 3);

  v1::UpdateSessionRequest update;
  (*update.mutable_labels())["kind"] = "fork";
  update.mutable_update_mask()->add_paths("labels");
  auto updated = fork->Update(update);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->labels().at("kind"), "fork");

  ASSERT_TRUE(fork->Delete().ok());
  absl::Status gone = fork->Get().status();
  EXPECT_EQ(gone.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(gone), Reason::kSessionNotFound);
  EXPECT_TRUE(fork->Delete(/*allow_missing=*/true).ok());

  // Models: the list, one by id, an unknown id.
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 1);
  auto model = client_->GetModel(models->models(0).model_id());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->fingerprint(), models->models(0).fingerprint());
  absl::Status unknown = client_->GetModel("no-such-model").status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound) << unknown;
  EXPECT_EQ(GetReason(unknown), Reason::kModelNotFound);
}

// CommitOptions reach the server: an import or a rollback with a stale
// expected_version is refused (so a retry elsewhere cannot apply it twice),
// and Fork and ImportSession set the new session's labels and TTL.
TEST_F(SdkTest, CommitOptionsReachTheServer) {
  client::Session s = Create("opts");
  ASSERT_TRUE(s.AppendText("hello").ok());  // version 2
  auto exported = s.Export();
  ASSERT_TRUE(exported.ok()) << exported.status();
  client::CommitOptions stale;
  stale.expected_version = 1;
  auto refused = s.ImportWith(*exported, stale);
  EXPECT_EQ(GetReason(refused.status()), Reason::kVersionMismatch)
      << refused.status();
  EXPECT_EQ(GetReason(s.RollbackWith(1, stale).status()),
            Reason::kVersionMismatch);
  client::CommitOptions current;
  current.expected_version = 2;
  current.durability = v1::DURABILITY_MEMORY;
  auto imported = s.ImportWith(*exported, current);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->version(), 3u);

  client::CommitOptions labelled;
  labelled.labels = {{"kind", "copy"}};
  labelled.ttl = absl::Hours(2);
  auto copy = client_->ImportSessionWith(*exported, "opts-copy", labelled);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->labels().at("kind"), "copy");
  EXPECT_EQ(copy->ttl().seconds(), 7200);
  auto fork = s.ForkWith(0, "opts-fork", labelled);
  ASSERT_TRUE(fork.ok()) << fork.status();
  auto forked = fork->Get();
  ASSERT_TRUE(forked.ok()) << forked.status();
  EXPECT_EQ(forked->labels().at("kind"), "copy");
  EXPECT_EQ(forked->ttl().seconds(), 7200);
}

// A Fork or an ImportSession retried under the caller's request id (after
// the first gave up, say) gets the same server-named session back instead
// of a second one.
TEST_F(SdkTest, AForkOrImportRetriedUnderItsRequestIdIsTheSameSession) {
  client::Session s = Create("exact");
  ASSERT_TRUE(s.AppendText("hello").ok());
  auto exported = s.Export();
  ASSERT_TRUE(exported.ok()) << exported.status();
  client::CommitOptions fork_once;
  fork_once.request_id = "fork-exact-1";
  auto a = s.ForkWith(0, "", fork_once);
  auto b = s.ForkWith(0, "", fork_once);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_FALSE(a->id().empty());
  EXPECT_EQ(a->id(), b->id());
  client::CommitOptions import_once;
  import_once.request_id = "import-exact-1";
  auto c = client_->ImportSessionWith(*exported, "", import_once);
  auto d = client_->ImportSessionWith(*exported, "", import_once);
  ASSERT_TRUE(c.ok() && d.ok()) << c.status() << d.status();
  EXPECT_EQ(c->session_id(), d->session_id());
  EXPECT_NE(c->session_id(), a->id());
  // Without one, each call is a new session.
  auto e = s.ForkWith(0, "", client::CommitOptions());
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_NE(e->id(), a->id());
}

TEST_F(SdkTest, TypedErrorsCancellationDeadlinesAndTenants) {
  client::Session s = Create("errs");
  // A superseded writer: not retried, typed.
  auto writer = s.OpenAppend();
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Write("abc").ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  auto other = s.OpenAppend();  // supersedes the first writer's call
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE((*other)->Write("de").ok());
  ASSERT_TRUE((*other)->Sync().ok());
  absl::Status busy = (*writer)->Write("x");
  if (busy.ok()) busy = (*writer)->Sync();
  // ABORTED/SESSION_BUSY, never retried: a writer that reconnected would
  // supersede the newer one in turn.
  EXPECT_EQ(busy.code(), absl::StatusCode::kAborted) << busy;
  EXPECT_EQ(GetReason(busy), Reason::kSessionBusy) << busy;
  ASSERT_TRUE((*other)->Write("f").ok());
  ASSERT_TRUE((*other)->Sync().ok());
  // A failed writer returns its error from every later call, Close twice
  // included (the second Close used to say "writer closed").
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(GetReason((*writer)->Close().status()), GetReason(busy)) << i;
  }
  EXPECT_EQ(GetReason((*writer)->Sync()), GetReason(busy));

  client::Cancellation cancel;
  cancel.Cancel();
  client::CallOptions cancelled;
  cancelled.cancellation = &cancel;
  const absl::Status got = s.Get(cancelled).status();
  EXPECT_EQ(got.code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(client::IsRetryable(got)) << got;
  // A CANCELLED of the service's (a worker shutting down) is retried.
  EXPECT_TRUE(client::IsRetryable(absl::CancelledError("shutting down")));

  client::CallOptions past;
  past.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(s.Get(past).status().code(), absl::StatusCode::kDeadlineExceeded);
  // Before 1970 too (gRPC took it for no deadline, and the call ran).
  past.deadline = absl::InfinitePast();
  EXPECT_EQ(s.Get(past).status().code(), absl::StatusCode::kDeadlineExceeded);

  ClientOptions other_tenant;
  other_tenant.targets = {server_->address()};
  other_tenant.tenant = "someone-else";
  other_tenant.api_key = "unused-in-development-mode";
  auto c = Client::Create(other_tenant);
  ASSERT_TRUE(c.ok());
  absl::Status hidden = (*c)->OpenSession("errs").Get().status();
  EXPECT_EQ(GetReason(hidden), Reason::kSessionNotFound) << hidden;
}

}  // namespace
}  // namespace statestream
