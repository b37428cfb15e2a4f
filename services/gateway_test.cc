// SPDX-License-Identifier: Apache-2.0
// The gateway in process in front of scripted workers
// (services/gateway_test_util.h): what it resends and what it refuses to
// resend when a worker fails part-way through a streaming call (Export,
// Generate, Append). gateway_routing_test.cc has where calls go; the
// cluster tests (tests/cluster_*_test.cc) run it against real workers.
#include "services/gateway.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "services/gateway_test_util.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {
namespace {

// An export whose worker is lost after its first message is not resent to
// another worker (the client would get a second header and chunk 0 again):
// it ends UNAVAILABLE for the client to retry whole.
TEST_F(GatewayTest, AnExportIsNotResentOnceItHasDeliveredAMessage) {
  using W = grpc::ServerWriter<v1::ExportStateResponse>;
  Script<grpc::Status(int, W*)>(&ScriptedWorker::export_state, [](int, W* w) {
    v1::ExportStateResponse header;
    header.mutable_header()->set_version(3);
    w->Write(header);
    return Lost();
  });
  Start();
  const auto exported = ExportS();
  EXPECT_EQ(exported.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << exported.status.error_message();
  EXPECT_EQ(exported.messages.size(), 1u);
  EXPECT_EQ(exported.attempts, "1");
  EXPECT_EQ(calls_.load(), 1);
}

// An export whose worker is lost before its first message is resent to
// another: the client gets the second worker's export whole, in order.
TEST_F(GatewayTest, AnExportLostBeforeItsFirstMessageIsResent) {
  using W = grpc::ServerWriter<v1::ExportStateResponse>;
  Script<grpc::Status(int, W*)>(&ScriptedWorker::export_state, [](int n, W* w) {
    if (n == 0) return Lost();
    v1::ExportStateResponse header;
    header.mutable_header()->set_version(4);
    w->Write(header);
    for (uint32_t i = 0; i < 3; ++i) {
      v1::ExportStateResponse chunk;
      chunk.mutable_chunk()->set_index(i);
      chunk.mutable_chunk()->set_data(std::string(1 << 16, 'a' + i));
      w->Write(chunk);
    }
    return grpc::Status::OK;
  });
  Start();
  const auto exported = ExportS();
  EXPECT_TRUE(exported.status.ok()) << exported.status.error_message();
  ASSERT_EQ(exported.messages.size(), 4u);
  EXPECT_EQ(exported.messages[0].header().version(), 4u);
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(exported.messages[i + 1].chunk().index(), i);
    EXPECT_EQ(exported.messages[i + 1].chunk().data(),
              std::string(1 << 16, 'a' + i));
  }
  EXPECT_EQ(exported.attempts, "2");
  EXPECT_EQ(calls_.load(), 2);
}

// An import whose worker is lost is resent whole to another (the gateway
// kept it): the second worker gets every part, in order, and its answer
// reaches the client.
TEST_F(GatewayTest, AnImportLostByItsWorkerIsResentWhole) {
  using Parts = std::vector<v1::ImportStateRequest>;
  Script<grpc::Status(int, const Parts&, v1::Session*)>(
      &ScriptedWorker::import_state,
      [](int n, const Parts& parts, v1::Session* session) {
        if (n == 0) return Lost();
        if (parts.size() != 3 || !parts[0].has_header() ||
            parts[1].chunk().data() != std::string(1000, 'a') ||
            parts[2].chunk().data() != std::string(1000, 'b')) {
          return grpc::Status(grpc::StatusCode::DATA_LOSS, "parts differ");
        }
        session->set_session_id("imported");
        return grpc::Status::OK;
      });
  Start();
  grpc::ClientContext ctx;
  v1::Session session;
  auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &session);
  ASSERT_TRUE(writer->Write(ImportHeader(2000)));
  for (char c : {'a', 'b'}) {
    v1::ImportStateRequest chunk;
    chunk.mutable_chunk()->set_index(c - 'a');
    chunk.mutable_chunk()->set_data(std::string(1000, c));
    ASSERT_TRUE(writer->Write(chunk));
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(session.session_id(), "imported");
  EXPECT_EQ(calls_.load(), 2);
}

// A generation whose `done` was delivered is over: a connection lost
// before the trailers neither fails the call nor runs it again (a second
// `done`).
TEST_F(GatewayTest, AGenerationIsNotRunAgainAfterItsDone) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate, [](int, const v1::GenerateRequest&, W* w) {
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->add_tokens(7);
        chunk.mutable_chunk()->add_tokens(8);
        w->Write(chunk);
        v1::GenerateResponse done;
        done.mutable_done()->set_committed(true);
        w->Write(done);
        return Lost();
      });
  Start();
  const auto generated = GenerateS();
  int dones = 0, tokens = 0;
  for (const auto& msg : generated.messages) {
    if (msg.has_done()) ++dones;
    if (msg.has_chunk()) tokens += msg.chunk().tokens_size();
  }
  EXPECT_TRUE(generated.status.ok()) << generated.status.error_message();
  EXPECT_EQ(dones, 1);
  EXPECT_EQ(tokens, 2);
  EXPECT_EQ(calls_.load(), 1);
}

// A re-run after a failover that ends before the output already delivered
// is another generation: UNAVAILABLE with diverged_at, never its `done`.
TEST_F(GatewayTest, AShorterRerunAfterAFailoverIsDiverged) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate, [](int n, const v1::GenerateRequest&, W* w) {
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->add_tokens(7);
        chunk.mutable_chunk()->set_text_utf8("a");
        if (n == 0) {  // the first attempt: three tokens, then lost
          chunk.mutable_chunk()->add_tokens(8);
          chunk.mutable_chunk()->add_tokens(9);
          chunk.mutable_chunk()->set_text_utf8("abc");
          w->Write(chunk);
          return Lost();
        }
        w->Write(chunk);  // the re-run stops after one
        v1::GenerateResponse done;
        done.mutable_done()->set_finish_reason(v1::FINISH_REASON_CANCELLED);
        w->Write(done);
        return grpc::Status::OK;
      });
  Start();
  const auto generated = GenerateS();
  int dones = 0;
  for (const auto& msg : generated.messages) dones += msg.has_done();
  const absl::Status st = FromGrpcStatus(generated.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetReason(st), Reason::kResumeDiverged) << st;
  EXPECT_EQ(GetErrorMetadata(st, "diverged_at"), "1");
  EXPECT_EQ(dones, 0);
  EXPECT_EQ(calls_.load(), 2);
}

// The first attempt's chunk says the side-branch generation started at
// input_offset 5: the re-run after a failover is pinned there (the request
// pinned nothing), and the client's first chunk says 5 too. A re-run the
// worker refuses because the session moved on is diverged, never joined. A
// committing request is not pinned.
TEST_F(GatewayTest, ARerunAfterAFailoverRunsOnTheInputItStartedFrom) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  std::vector<std::optional<uint64_t>> pins;
  absl::Mutex mu;
  bool moved = false;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate,
      [&](int n, const v1::GenerateRequest& req, W* w) {
        {
          absl::MutexLock lock(&mu);
          pins.push_back(
              req.has_expected_input_offset()
                  ? std::optional<uint64_t>(req.expected_input_offset())
                  : std::nullopt);
          if (n > 0 && moved) {
            return ToGrpcStatus(MakeError(absl::StatusCode::kFailedPrecondition,
                                          Reason::kPositionMismatch, "moved",
                                          {{"input_offset", "9"}}));
          }
        }
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->set_start_input_offset(5);
        chunk.mutable_chunk()->add_tokens(7);
        chunk.mutable_chunk()->add_tokens(8);
        chunk.mutable_chunk()->set_text_utf8("ab");
        if (n == 0) {
          w->Write(chunk);
          return Lost();
        }
        chunk.mutable_chunk()->add_tokens(9);
        chunk.mutable_chunk()->set_text_utf8("abc");
        w->Write(chunk);
        v1::GenerateResponse done;
        done.mutable_done()->set_finish_reason(v1::FINISH_REASON_MAX_TOKENS);
        w->Write(done);
        return grpc::Status::OK;
      });
  Start();
  const auto generated = GenerateS();
  ASSERT_TRUE(generated.status.ok()) << generated.status.error_message();
  std::vector<uint32_t> tokens;
  std::vector<std::optional<uint64_t>> starts;
  for (const auto& msg : generated.messages) {
    if (!msg.has_chunk()) continue;
    tokens.insert(tokens.end(), msg.chunk().tokens().begin(),
                  msg.chunk().tokens().end());
    starts.push_back(
        msg.chunk().has_start_input_offset()
            ? std::optional<uint64_t>(msg.chunk().start_input_offset())
            : std::nullopt);
  }
  EXPECT_EQ(tokens, (std::vector<uint32_t>{7, 8, 9}));
  EXPECT_EQ(starts, (std::vector<std::optional<uint64_t>>{5, std::nullopt}));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(pins, (std::vector<std::optional<uint64_t>>{std::nullopt, 5}));
    pins.clear();
    moved = true;
  }
  calls_ = 0;
  const auto refused = GenerateS();
  const absl::Status st = FromGrpcStatus(refused.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetErrorMetadata(st, "delivered_tokens"), "2");
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(pins, (std::vector<std::optional<uint64_t>>{std::nullopt, 5}));
    pins.clear();
    moved = false;
  }
  // A committing request is re-sent as it was: the digest that finds its
  // generation record (checkpointed or finished) covers the offset.
  calls_ = 0;
  const auto committed = GenerateS(/*commit=*/true);
  ASSERT_TRUE(committed.status.ok()) << committed.status.error_message();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(pins,
            (std::vector<std::optional<uint64_t>>{std::nullopt, std::nullopt}));
}

// The same when the client pinned the generation itself: once output was
// delivered, a re-run the worker refuses because the session moved on is
// diverged (UNAVAILABLE, delivered_tokens), not the client's stale offset;
// before any output it is (POSITION_MISMATCH passes through).
TEST_F(GatewayTest, AClientPinnedRerunRefusedAfterOutputIsDiverged) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  std::atomic<bool> first_lost{true};
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate, [&](int n, const v1::GenerateRequest&, W* w) {
        if (n == 0 && first_lost.load()) {
          v1::GenerateResponse chunk;
          chunk.mutable_chunk()->set_start_input_offset(5);
          chunk.mutable_chunk()->add_tokens(7);
          chunk.mutable_chunk()->add_tokens(8);
          w->Write(chunk);
          return Lost();
        }
        return ToGrpcStatus(MakeError(absl::StatusCode::kFailedPrecondition,
                                      Reason::kPositionMismatch, "moved",
                                      {{"actual_input_offset", "9"}}));
      });
  Start();
  const auto refused = GenerateS(/*commit=*/false, /*expected=*/5);
  absl::Status st = FromGrpcStatus(refused.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetReason(st), Reason::kResumeDiverged) << st;
  EXPECT_EQ(GetErrorMetadata(st, "delivered_tokens"), "2");
  // Nothing delivered yet: the client's offset is stale, and it is told so.
  first_lost = false;
  calls_ = 0;
  const auto stale = GenerateS(/*commit=*/false, /*expected=*/5);
  st = FromGrpcStatus(stale.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(GetReason(st), Reason::kPositionMismatch) << st;
}

// A committing re-run, re-sent unpinned, that samples from another input
// offset than the output already delivered (the lost worker had applied
// input it never committed) is another generation: UNAVAILABLE with
// diverged_at, even when its first tokens happen to match.
TEST_F(GatewayTest, ACommittingRerunFromAnotherOffsetIsDiverged) {
  using W = grpc::ServerWriter<v1::GenerateResponse>;
  Script<grpc::Status(int, const v1::GenerateRequest&, W*)>(
      &ScriptedWorker::generate, [&](int n, const v1::GenerateRequest&, W* w) {
        v1::GenerateResponse chunk;
        chunk.mutable_chunk()->set_start_input_offset(n == 0 ? 150 : 100);
        chunk.mutable_chunk()->add_tokens(5);
        chunk.mutable_chunk()->add_tokens(6);
        if (n == 0) {
          w->Write(chunk);
          return Lost();
        }
        chunk.mutable_chunk()->add_tokens(7);
        w->Write(chunk);
        v1::GenerateResponse done;
        done.mutable_done()->set_finish_reason(v1::FINISH_REASON_MAX_TOKENS);
        w->Write(done);
        return grpc::Status::OK;
      });
  Start();
  const auto generated = GenerateS(/*commit=*/true);
  const absl::Status st = FromGrpcStatus(generated.status);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetReason(st), Reason::kResumeDiverged) << st;
  EXPECT_EQ(GetErrorMetadata(st, "diverged_at"), "0");
  EXPECT_EQ(GetErrorMetadata(st, "delivered_tokens"), "2");
  for (const auto& msg : generated.messages) EXPECT_FALSE(msg.has_done());
}

// The call's session is its first request's: a first request naming none
// is INVALID_ARGUMENT whatever later requests name (it used to take a
// later request's id when that one was read before the call was routed).
TEST_F(GatewayTest, AnAppendWhoseFirstRequestNamesNoSessionIsRefused) {
  Start();
  for (int i = 0; i < 5; ++i) {
    v1::AppendRequest first = AppendAt("r0", 0, "ab");
    first.clear_session_id();
    const Appended out = AppendThrough({first, AppendAt("r1", 2, "cd")});
    const absl::Status st = FromGrpcStatus(out.status);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_EQ(GetReason(st), Reason::kInvalidArgument) << st;
    EXPECT_EQ(GetErrorMetadata(st, "field"), "session_id") << st;
    EXPECT_TRUE(out.acked.empty());
  }
  EXPECT_EQ(calls_.load(), 0);
}

// A message gRPC cannot parse (a request_id that is not UTF-8) ends the
// call UNIMPLEMENTED, as gRPC answers a unary call's, not as a half-close
// that ends OK: what came before it goes through, nothing after it.
TEST_F(GatewayTest, AnAppendMessageThatDoesNotParseEndsTheCall) {
  Start();
  v1::AppendRequest bad = AppendAt("\xFF", 2, "cd");
  const Appended out =
      AppendThrough({AppendAt("r0", 0, "ab"), bad, AppendAt("r2", 4, "ef")});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::UNIMPLEMENTED)
      << out.status.error_message();
  EXPECT_EQ(out.acked, std::vector<std::string>{"r0"});
  // A first message that does not parse: nothing reaches a worker.
  const Appended first = AppendThrough({bad, AppendAt("r2", 4, "ef")});
  EXPECT_EQ(first.status.error_code(), grpc::StatusCode::UNIMPLEMENTED)
      << first.status.error_message();
  EXPECT_TRUE(first.acked.empty());
  EXPECT_EQ(calls_.load(), 1);
}

// Past its replay bound the gateway asks the worker for a checkpoint so the
// log can shrink: one request at a time, not every request read until that
// one is acked (each would commit the whole state).
TEST_F(GatewayTest, AnAppendPastTheReplayBoundAsksForOneCheckpoint) {
  GatewayOptions options;
  options.append_buffer_bytes = 5000;  // ~350 bytes an entry: ~14 fit
  Start(options);
  std::vector<v1::AppendRequest> requests;
  const std::string text(200, 'x');
  for (int i = 0; i < 20; ++i) {
    requests.push_back(AppendAt(absl::StrCat("r", i), 200 * i, text));
  }
  const Appended out = AppendThrough(requests);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.acked.size(), 20u);
  EXPECT_EQ(calls_.load(), 1);
  EXPECT_EQ(workers_[0]->checkpoints() + workers_[1]->checkpoints(), 1);
}

// A request naming another session than the stream's first ends the
// client's input with INVALID_ARGUMENT (field session_id), as a worker
// ends it; it reaches no worker: after a failover it would have been the
// new attempt's first request and bound it to that session.
TEST_F(GatewayTest, AnAppendRequestForAnotherSessionIsRefused) {
  Start();
  v1::AppendRequest other = AppendAt("other", 2, "cd");
  other.set_session_id("b");
  const Appended out =
      AppendThrough({AppendAt("ab", 0, "ab"), other, AppendAt("ef", 2, "ef")});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << out.status.error_message();
  const absl::Status st = FromGrpcStatus(out.status);
  EXPECT_EQ(GetReason(st), Reason::kInvalidArgument) << st;
  EXPECT_EQ(GetErrorMetadata(st, "field"), "session_id") << st;
  EXPECT_EQ(out.acked, std::vector<std::string>{"ab"});
  std::vector<std::string> seen = workers_[0]->appended();
  for (const std::string& r : workers_[1]->appended()) seen.push_back(r);
  EXPECT_EQ(seen, std::vector<std::string>{"s/ab"});
}

// Requests that change nothing (no payload: a no-op asking for the current
// ack, or a checkpoint of nothing new) are dropped from the replay log once
// acknowledged: no commit ever covers them, and a stream of them filled the
// log past its bound, where the gateway stopped reading the client for
// good while holding its share of the gateway's buffers.
TEST_F(GatewayTest, RequestsThatChangeNothingLeaveTheReplayLog) {
  GatewayOptions options;
  options.append_buffer_bytes = 5000;
  Start(options);
  for (auto& w : workers_) w->ack_as_read = true;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto stream = v1::Streams::NewStub(channel_)->Append(&ctx);
  v1::AppendResponse ack;
  int acked = 0;
  for (int i = 0; i < 300; ++i) {
    v1::AppendRequest r = AppendAt(absl::StrCat("noop", i), 0);
    r.set_checkpoint(i % 2 == 0);
    ASSERT_TRUE(stream->Write(r)) << i;
    ASSERT_TRUE(stream->Read(&ack)) << "no ack for request " << i;
    ++acked;
  }
  ASSERT_TRUE(stream->Write(AppendAt("text", 0, "abc")));
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.request_id(), "text");
  stream->WritesDone();
  const grpc::Status done = stream->Finish();
  EXPECT_TRUE(done.ok()) << done.error_message();
  EXPECT_EQ(acked, 300);
  // Only the client's own checkpoints: the log never reached its bound.
  EXPECT_EQ(workers_[0]->checkpoints() + workers_[1]->checkpoints(), 150);
}

// The bound counts what the log holds in memory: token ids below 128 are a
// byte each on the wire and four in a request, so 15 requests of 200 such
// ids (~3 KB on the wire, ~15 KB held) pass a 12 KB bound.
TEST_F(GatewayTest, TheReplayBoundCountsTokensAsHeldNotAsSent) {
  GatewayOptions options;
  options.append_buffer_bytes = 12000;
  Start(options);
  std::vector<v1::AppendRequest> requests;
  for (int i = 0; i < 15; ++i) {
    requests.push_back(AppendAt(absl::StrCat("r", i), 200 * i));
    for (int t = 0; t < 200; ++t) requests.back().mutable_tokens()->add_ids(7);
  }
  const Appended out = AppendThrough(requests);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.acked.size(), 15u);
  EXPECT_EQ(workers_[0]->checkpoints() + workers_[1]->checkpoints(), 1);
}

// A bare flush ends where it starts, so a commit at that offset that
// predates it does not cover it: after a failover the new owner, which
// loaded that commit, gets the flush again before the text that follows
// (else it would tokenize the text before and after the flush as one).
TEST_F(GatewayTest, AFailoverReplaysAFlushTheLastCommitDoesNotCover) {
  Replayed replayed;
  ScriptFailover(
      "text-c",
      [](int call, const v1::AppendRequest& r, v1::AppendResponse* ack) {
        // First worker: "ab" committed at 2 (version 2) by the
        // checkpoint; the flush after it applied, not committed. The
        // second commits everything (version 3).
        const bool first = call == 0 && r.request_id() == "text-ab";
        ack->set_committed_input_offset(first ? 0 : ack->input_offset());
        ack->set_version(call > 0 ? 3 : first ? 1 : 2);
        // The flush tokenizes the tail "ab" left (a flush that consumed
        // nothing changed nothing, and is not replayed).
        if (r.flush()) ack->set_tokens_consumed(1);
      },
      &replayed);
  Start();
  v1::AppendRequest checkpoint = AppendAt("checkpoint", 2);
  checkpoint.set_checkpoint(true);
  v1::AppendRequest flush = AppendAt("flush", 2);
  flush.set_flush(true);
  const Appended out = AppendThrough({AppendAt("text-ab", 0, "ab"), checkpoint,
                                      flush, AppendAt("text-c", 2, "c")});
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.acked, (std::vector<std::string>{"text-ab", "checkpoint",
                                                 "flush", "text-c"}));
  absl::MutexLock lock(&replayed.mu);
  ASSERT_GE(replayed.ids.size(), 2u);
  EXPECT_EQ(replayed.ids[replayed.ids.size() - 2], "flush");
  EXPECT_EQ(replayed.ids.back(), "text-c");
  EXPECT_EQ(std::count(replayed.ids.begin(), replayed.ids.end(), "text-ab"), 0);
}

// The rule above holds within one owner's history only: a second owner
// replaying from an older commit may commit a newer version at the
// flush's offset before it has applied the flush again. The flush, acked
// with version 5 by the first worker, was dropped from the log when the
// second committed version 6 at its offset on the text before it, then
// failed before it committed the flush: the third never got it, and
// tokenized "ab" and "c" as one. A version covers a bare flush only once
// the same attempt acked the flush with an older one.
TEST_F(GatewayTest, AFlushSurvivesAnOwnerThatCommittedBeforeReapplyingIt) {
  Replayed replayed;
  // A third worker: a call tries each worker once.
  ScriptedWorker third(&calls_);
  GatewayOptions options;
  options.router.static_workers.push_back(third.address());
  ScriptAppends([&](int call, const std::vector<v1::AppendRequest>& requests,
                    AppendStream* stream) {
    for (const auto& r : requests) {
      if (call == 2) {
        absl::MutexLock lock(&replayed.mu);
        replayed.ids.push_back(r.request_id());
      }
      // First worker: "ab" and the flush applied at version 5, nothing
      // committed; lost before "c". Second: the replayed "ab" makes it
      // commit version 6 at 2 (a policy commit); lost before the flush.
      // Third: everything committed, version 7.
      if ((call == 0 && r.request_id() == "text-c") ||
          (call == 1 && r.request_id() == "flush")) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker lost");
      }
      v1::AppendResponse ack;
      ack.set_request_id(r.request_id());
      ack.set_input_offset(r.expected_input_offset() + r.text_utf8().size());
      ack.set_version(call == 0 ? 5 : call == 1 ? 6 : 7);
      ack.set_committed_input_offset(call == 0 ? 0 : ack.input_offset());
      if (r.flush()) ack.set_tokens_consumed(1);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  });
  third.append = workers_[0]->append;
  Start(options);
  v1::AppendRequest flush = AppendAt("flush", 2);
  flush.set_flush(true);
  const Appended out = AppendThrough(
      {AppendAt("text-ab", 0, "ab"), flush, AppendAt("text-c", 2, "c")});
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.acked,
            (std::vector<std::string>{"text-ab", "flush", "text-c"}));
  absl::MutexLock lock(&replayed.mu);
  EXPECT_EQ(replayed.ids, (std::vector<std::string>{"flush", "text-c"}));
}

// A rollback commits a newer version at an earlier offset, and an open
// Append continues from there: what the stream sends after it is
// uncommitted though the offsets committed before it cover them, so a
// failover replays it (else the new owner, at the rolled-back offset, would
// see a gap); what it sent before, applied but not committed ("x"), the
// rollback discarded, so a failover does not replay it (the new owner
// would refuse it: POSITION_MISMATCH).
TEST_F(GatewayTest, AFailoverAfterARollbackReplaysWhatFollowedIt) {
  Replayed replayed;
  ScriptFailover(
      "c",
      [](int call, const v1::AppendRequest& r, v1::AppendResponse* ack) {
        // First worker: "a" committed to 10 (version 2), "x" applied
        // after it; then a rollback to offset 5 (version 3) and "b"
        // applied from there, not committed. The second commits
        // everything (version 4).
        const bool before = r.request_id() == "a" || r.request_id() == "x";
        ack->set_committed_input_offset(call > 0 ? ack->input_offset()
                                        : before ? 10
                                                 : 5);
        ack->set_version(call > 0 ? 4 : before ? 2 : 3);
      },
      &replayed);
  Start();
  const Appended out =
      AppendThrough({AppendAt("a", 0, "0123456789"), AppendAt("x", 10, "ab"),
                     AppendAt("b", 5, "5678"), AppendAt("c", 9, "9")});
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.acked, (std::vector<std::string>{"a", "x", "b", "c"}));
  absl::MutexLock lock(&replayed.mu);
  EXPECT_EQ(replayed.ids, (std::vector<std::string>{"b", "c"}));
}

// A store that went back (Redis restored from an older snapshot) has the
// owner commit its copy over the older head, so versions are numbered
// again from there. A lower version than the stream saw before commits no
// more than before (a stale copy answers the same way), but once a newer
// one follows, the count goes on from it: what it covers is not replayed
// (else the log would never shrink again).
TEST_F(GatewayTest, ALowerVersionStartsTheCommittedCountOver) {
  Replayed replayed;
  ScriptFailover(
      "d",
      [](int call, const v1::AppendRequest& r, v1::AppendResponse* ack) {
        // First worker: "a" committed as version 10; the store then went
        // back to version 4, "b" was committed over it as version 5 and
        // "c" as version 6.
        ack->set_committed_input_offset(ack->input_offset());
        const std::string& id = r.request_id();
        ack->set_version(call > 0 ? 7 : id == "a" ? 10 : id == "b" ? 5 : 6);
      },
      &replayed);
  Start();
  const Appended out =
      AppendThrough({AppendAt("a", 0, "0123456789"), AppendAt("b", 10, "ab"),
                     AppendAt("c", 12, "cd"), AppendAt("d", 14, "ef")});
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.acked, (std::vector<std::string>{"a", "b", "c", "d"}));
  absl::MutexLock lock(&replayed.mu);
  EXPECT_EQ(replayed.ids, (std::vector<std::string>{"d"}));
}

// A client that reconnected resends what it kept; the worker that still
// holds it answers duplicates that report where the session stands (past
// them). After that worker dies, the new owner applies the replay from the
// last commit: the first request delivered from it starts below what the
// lost worker reported, which is no rollback, so nothing is dropped, and a
// second failover replays everything uncommitted again.
TEST_F(GatewayTest, AReplayAfterDuplicatesIsNotTakenForARollback) {
  absl::Mutex mu;
  std::vector<std::string> third;  // request ids the third attempt got
  ScriptAppends([&](int call, const std::vector<v1::AppendRequest>& requests,
                    AppendStream* stream) {
    for (const auto& r : requests) {
      const uint64_t end = r.expected_input_offset() + r.text_utf8().size();
      v1::AppendResponse ack;
      ack.set_request_id(r.request_id());
      ack.set_version(call == 2 ? 2 : 1);
      if (call == 0) {
        // Holds r1..r5 applied (at 50), nothing committed; lost at r4.
        if (r.request_id() == "r4") {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost");
        }
        ack.set_duplicate(true);
        ack.set_input_offset(50);
      } else {
        // From the last commit (0): applies each; the second is lost
        // after r5, the third commits everything.
        ack.set_input_offset(end);
        ack.set_committed_input_offset(call == 2 ? end : 0);
        if (call == 2) {
          absl::MutexLock lock(&mu);
          third.push_back(r.request_id());
        }
      }
      if (!stream->Write(ack)) break;
    }
    return call == 1 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost")
                     : grpc::Status::OK;
  });
  Start();
  std::vector<v1::AppendRequest> requests;
  for (int i = 0; i < 5; ++i) {
    requests.push_back(
        AppendAt(absl::StrCat("r", i + 1), 10 * i, "0123456789"));
  }
  const Appended out = AppendThrough(requests);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.acked,
            (std::vector<std::string>{"r1", "r2", "r3", "r4", "r5"}));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(third, (std::vector<std::string>{"r1", "r2", "r3", "r4", "r5"}));
}

// A worker's own CANCELLED (it is shutting down) moves a call, but only
// after the gateway waited kCancelNotice (250 ms) for a sign that the
// client cancelled it instead. That wait holds no task thread: 16 calls
// cancelled at once by their worker all wait together, then fail over
// with one task thread. (When each wait held the thread, they waited one
// after another, 4 s in all, and most missed their 3 s deadlines.)
TEST_F(GatewayTest, CallsWaitingForTheirClientsCancelHoldNoTaskThread) {
  constexpr int kCalls = 16;
  Script<grpc::Status(int)>(&ScriptedWorker::get_session, [](int n) {
    return n < kCalls ? grpc::Status(grpc::StatusCode::CANCELLED,
                                     "the worker is shutting down")
                      : grpc::Status::OK;
  });
  GatewayOptions options;
  options.max_task_threads = 1;
  Start(options);
  std::vector<grpc::Status> ended(kCalls);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCalls; ++i) {
    callers.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(3));
      v1::GetSessionRequest req;
      req.set_session_id("s");
      v1::Session resp;
      ended[i] = v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
    });
  }
  for (auto& c : callers) c.join();
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_TRUE(ended[i].ok()) << i << ": " << ended[i].error_code() << " "
                               << ended[i].error_message();
  }
  EXPECT_EQ(calls_.load(), 2 * kCalls);
}

}  // namespace
}  // namespace statestream
