// SPDX-License-Identifier: Apache-2.0
// Clients retrying after real process kills (tests/cluster_harness.h:
// redis-server, 3 workers, 2 gateways): unary mutations retried with the
// same request id once every worker that could remember it is gone, a
// committing Generate retried after its worker and gateway died, and an
// owner killed with a checkpoint in flight. What a retry gets is what
// statestream.proto ("request ids") promises; nothing is applied twice.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/state_codec.h"
#include "tests/cluster_fixture.h"

namespace statestream {
namespace {

class ClusterRetryTest : public e2e::ClusterFixture {};

// Unary mutations retried with the same request_id after the worker that
// served them was SIGKILLed: the retry reaches a worker whose memory never
// saw the id, and gets what statestream.proto ("request ids") promises from
// the store: a create its session back (DUPLICATE_REQUEST for other
// content), a rollback the session (found by the kept version it made,
// with or without expected_version; nothing rolled back twice), a delete
// SESSION_NOT_FOUND unless allow_missing.
TEST_F(ClusterRetryTest, UnaryRetriesAfterTheirWorkerIsKilled) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  // Every worker SIGKILLed and replaced: whichever served the first call
  // (a session just created or rolled back may hold no lease to name it),
  // no live worker remembers its request id.
  auto replace_workers = [&] {
    int killed = 0;
    for (auto& w : cluster_->workers()) {
      if (w->pid() <= 0) continue;
      w->Kill();
      ++killed;
    }
    ASSERT_GT(killed, 0);
    for (int i = 0; i < killed; ++i) ASSERT_TRUE(cluster_->AddWorker().ok());
  };
  auto call = [](auto method, auto* stub, const auto& request, auto* reply) {
    auto ctx = e2e::ClientContext();
    return FromGrpcStatus(((*stub).*method)(ctx.get(), request, reply));
  };
  // Create.
  v1::CreateSessionRequest create;
  create.set_request_id("retry-create");
  create.set_session_id("retried");
  (*create.mutable_labels())["k"] = "v";
  v1::Session created, again;
  ASSERT_TRUE(call(&v1::Sessions::Stub::CreateSession, cluster_->sessions(0),
                   create, &created)
                  .ok());
  ASSERT_NO_FATAL_FAILURE(replace_workers());
  absl::Status st = call(&v1::Sessions::Stub::CreateSession,
                         cluster_->sessions(1), create, &again);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(again.session_id(), "retried");
  EXPECT_EQ(again.version(), created.version());
  EXPECT_EQ(again.create_time().seconds(), created.create_time().seconds());
  EXPECT_EQ(again.create_time().nanos(), created.create_time().nanos());
  v1::CreateSessionRequest other = create;
  (*other.mutable_labels())["k"] = "w";
  st = call(&v1::Sessions::Stub::CreateSession, cluster_->sessions(0), other,
            &again);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(GetReason(st), Reason::kDuplicateRequest) << st;
  // Three committed versions past the create's.
  ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), "retried",
                                   e2e::TextChunks(3, 32, 23), 1,
                                   [](const grpc::Status&) { return false; })
                  .ok());
  auto head = cluster_->Get("retried");
  ASSERT_TRUE(head.ok()) << head.status();
  ASSERT_GT(head->version(), created.version());
  // Rollback with expected_version.
  v1::RollbackSessionRequest rollback;
  rollback.set_request_id("retry-rollback-expected");
  rollback.set_session_id("retried");
  rollback.set_version(created.version());
  rollback.set_expected_version(head->version());
  v1::Session rolled;
  ASSERT_TRUE(call(&v1::Sessions::Stub::RollbackSession, cluster_->sessions(0),
                   rollback, &rolled)
                  .ok());
  EXPECT_GT(rolled.version(), head->version());
  ASSERT_NO_FATAL_FAILURE(replace_workers());
  // The new workers' memos are empty: the retry finds the version it
  // committed in the store (by its request id) and gets the session back.
  st = call(&v1::Sessions::Stub::RollbackSession, cluster_->sessions(1),
            rollback, &again);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(again.version(), rolled.version());
  head = cluster_->Get("retried", 1);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->version(), rolled.version()) << "the retry was applied";
  // Without expected_version: the same (once that version ages out of the
  // kept ones, only expected_version would make it exact).
  rollback.set_request_id("retry-rollback-plain");
  rollback.clear_expected_version();
  ASSERT_TRUE(call(&v1::Sessions::Stub::RollbackSession, cluster_->sessions(0),
                   rollback, &rolled)
                  .ok());
  ASSERT_NO_FATAL_FAILURE(replace_workers());
  st = call(&v1::Sessions::Stub::RollbackSession, cluster_->sessions(1),
            rollback, &again);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(again.version(), rolled.version());
  EXPECT_EQ(again.input_offset(), rolled.input_offset());
  // Delete.
  v1::DeleteSessionRequest del;
  del.set_request_id("retry-delete");
  del.set_session_id("retried");
  v1::DeleteSessionResponse deleted;
  ASSERT_TRUE(call(&v1::Sessions::Stub::DeleteSession, cluster_->sessions(0),
                   del, &deleted)
                  .ok());
  ASSERT_NO_FATAL_FAILURE(replace_workers());
  st = call(&v1::Sessions::Stub::DeleteSession, cluster_->sessions(1), del,
            &deleted);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_EQ(GetReason(st), Reason::kSessionNotFound) << st;
  del.set_allow_missing(true);
  st = call(&v1::Sessions::Stub::DeleteSession, cluster_->sessions(1), del,
            &deleted);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(cluster_->Get("retried").status().code(),
            absl::StatusCode::kNotFound);
}

// A committing Generate whose worker and gateway are SIGKILLed once a
// checkpoint of it is committed, retried by the client with the same
// request id through the other gateway: the output equals an
// uninterrupted run's, it is applied once
// (the session ends where the reference does, same state), and a third
// call with the same id replays it without applying anything.
TEST_F(ClusterRetryTest,
       ACommittingGenerateRetriedAfterItsWorkerAndGatewayDie) {
  e2e::ClusterOptions options;
  options.worker_args = {"--generate-checkpoint-tokens=32"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const auto prompt = e2e::TextChunks(1, 64, 31);
  for (const char* id : {"gen-ref", "gen-victim"}) {
    ASSERT_TRUE(cluster_->Create(id).ok()) << id;
    ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), id, prompt, 1,
                                     [](const grpc::Status&) { return false; })
                    .ok())
        << id;
  }
  constexpr uint32_t kMaxTokens = 2048;
  auto request = [&](const std::string& id) {
    v1::GenerateRequest g;
    g.set_session_id(id);
    g.set_request_id("gen-commit-1");
    g.set_max_tokens(kMaxTokens);
    g.set_commit(true);
    g.mutable_sampling()->set_seed(99);
    g.mutable_sampling()->set_temperature(1.0f);
    // Large responses: flow control holds the worker back while the test
    // does not read, so the kill lands mid-generation.
    g.set_logprobs(true);
    g.set_top_logprobs(20);
    return g;
  };
  struct Output {
    grpc::Status status;
    std::vector<uint32_t> tokens;
    v1::GenerateDone done;
  };
  auto read_all = [](grpc::ClientReader<v1::GenerateResponse>* reader) {
    Output out;
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) {
        for (uint32_t t : msg.chunk().tokens()) out.tokens.push_back(t);
      }
      if (msg.has_done()) out.done = msg.done();
    }
    out.status = reader->Finish();
    return out;
  };
  // The whole generation of `id`'s request through gateway `gw`.
  auto generate = [&](int gw, const std::string& id) {
    auto ctx = e2e::ClientContext();
    auto reader = cluster_->streams(gw)->Generate(ctx.get(), request(id));
    return read_all(reader.get());
  };
  const Output ref = generate(0, "gen-ref");
  ASSERT_TRUE(ref.status.ok()) << ref.status.error_message();
  ASSERT_EQ(ref.tokens.size(), kMaxTokens);
  ASSERT_TRUE(ref.done.committed());

  const uint64_t prompt_bytes = prompt[0].size();
  Output first;
  bool killed = false;
  {
    auto ctx = e2e::ClientContext();
    auto reader =
        cluster_->streams(1)->Generate(ctx.get(), request("gen-victim"));
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (absl::Now() < deadline) {
      auto s = cluster_->Get("gen-victim", 0);
      ASSERT_TRUE(s.ok()) << s.status();
      if (s->input_offset() == prompt_bytes + kMaxTokens) break;  // done
      if (s->committed_input_offset() > prompt_bytes) {
        // The worker and the gateway the call went through die together
        // (one machine lost): the call fails and the client retries.
        e2e::ClusterProcess* owner = cluster_->Owner("gen-victim");
        ASSERT_NE(owner, nullptr);
        owner->Kill();
        cluster_->gateways()[1]->Kill();
        killed = true;
        break;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    first = read_all(reader.get());
  }
  ASSERT_TRUE(killed) << "no checkpoint of the generation was seen";
  ASSERT_EQ(first.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << first.status.error_message();
  EXPECT_LT(first.tokens.size(), kMaxTokens);
  // The client's retry: the same request, through the other gateway.
  const Output got = generate(0, "gen-victim");
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_TRUE(got.tokens == ref.tokens) << "the token sequences differ";
  EXPECT_TRUE(got.done.committed());
  EXPECT_EQ(got.done.input_offset(), ref.done.input_offset());
  EXPECT_EQ(got.done.position(), ref.done.position());
  auto victim_state = cluster_->Export("gen-victim");
  auto ref_state = cluster_->Export("gen-ref");
  ASSERT_TRUE(victim_state.ok()) << victim_state.status();
  ASSERT_TRUE(ref_state.ok()) << ref_state.status();
  // The same state, position and input; the exports' generation records
  // differ only in their commit times and the requests' session ids.
  auto victim_snapshot = DecodeState(*victim_state);
  auto ref_snapshot = DecodeState(*ref_state);
  ASSERT_TRUE(victim_snapshot.ok()) << victim_snapshot.status();
  ASSERT_TRUE(ref_snapshot.ok()) << ref_snapshot.status();
  EXPECT_TRUE(victim_snapshot->state == ref_snapshot->state)
      << "the states differ";
  EXPECT_TRUE(victim_snapshot->last_hidden == ref_snapshot->last_hidden);
  EXPECT_EQ(victim_snapshot->position, ref_snapshot->position);
  EXPECT_EQ(victim_snapshot->input_offset, ref_snapshot->input_offset);
  EXPECT_EQ(victim_snapshot->tokenizer_tail, ref_snapshot->tokenizer_tail);
  // Once more with the same id: replayed, nothing applied again.
  const Output again = generate(0, "gen-victim");
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_TRUE(again.done.replayed());
  EXPECT_TRUE(again.tokens == ref.tokens);
  auto s = cluster_->Get("gen-victim", 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_offset(), ref.done.input_offset());
  double diverged = 0;
  for (auto& g : cluster_->gateways()) {
    if (g->pid() <= 0) continue;
    auto m = e2e::ScrapeMetrics(g->metrics_address());
    ASSERT_TRUE(m.has_value());
    diverged += (*m)["statestream_gateway_generate_diverged_total"];
  }
  EXPECT_EQ(diverged, 0);
}

// The owner SIGKILLed with a checkpoint's commit in flight: Redis is paused
// (SIGSTOP) when the checkpoint is asked for, the owner dies, then Redis
// resumes and runs whatever the dead worker had sent into its socket (its
// chunk writes; the commit script follows their replies, so here it never
// lands — the line printed says). The client resumes from the committed
// offset and ends with the reference's state, every kept version loads,
// versions only grow and fences never go back.
TEST_F(ClusterRetryTest, AnOwnerKilledWithACommitInFlight) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  const auto chunks = e2e::TextChunks(30, 64, 41);
  v1::Session ref;
  std::string ref_state;
  ASSERT_NO_FATAL_FAILURE(Reference(chunks, &ref, &ref_state));
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    const std::string id = absl::StrCat("inflight", round);
    ASSERT_TRUE(cluster_->Create(id).ok());
    const size_t before = 10 + 5 * static_cast<size_t>(round);
    {
      auto ctx = e2e::ClientContext();
      auto stream = cluster_->streams(0)->Append(ctx.get());
      uint64_t offset = 0;
      for (size_t i = 0; i <= before; ++i) {
        v1::AppendRequest r;
        r.set_session_id(id);
        r.set_expected_input_offset(offset);
        r.set_text_utf8(chunks[i]);
        r.set_checkpoint(true);
        if (i == before) {
          e2e::ClusterProcess* owner = cluster_->Owner(id);
          ASSERT_NE(owner, nullptr);
          cluster_->redis()->Pause();
          ASSERT_TRUE(stream->Write(r));
          // Time for the owner to apply the chunk and send its commit
          // (into the paused server's socket): either way is fine.
          absl::SleepFor(absl::Milliseconds(100 * round));
          owner->Kill();
          cluster_->redis()->Resume();
          break;
        }
        ASSERT_TRUE(stream->Write(r));
        v1::AppendResponse ack;
        ASSERT_TRUE(stream->Read(&ack));
        offset += chunks[i].size();
        ASSERT_EQ(ack.committed_input_offset(), offset);
      }
      ctx->TryCancel();
      stream->Finish();
    }
    ASSERT_TRUE(cluster_->AddWorker().ok());
    auto head = cluster_->store()->GetHead({"default", id});
    ASSERT_TRUE(head.ok()) << head.status();
    std::printf(
        "round %d: the in-flight commit %s\n", round,
        head->head.input_offset > before * 64 ? "landed" : "did not land");
    // The client's side: resume from the committed offset.
    const absl::Status st = e2e::AppendResumable(
        cluster_.get(), id, chunks, 1, [](const grpc::Status& s) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
          return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                 s.error_code() == grpc::StatusCode::ABORTED;
        });
    ASSERT_TRUE(st.ok()) << st;
    auto state = cluster_->Export(id);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_TRUE(*state == ref_state) << "the state differs";
    auto versions = cluster_->store()->ListVersions({"default", id});
    ASSERT_TRUE(versions.ok()) << versions.status();
    ASSERT_FALSE(versions->empty());
    for (size_t k = 0; k < versions->size(); ++k) {
      const VersionInfo& v = (*versions)[k];
      auto loaded = cluster_->store()->LoadVersion({"default", id}, v.version);
      EXPECT_TRUE(loaded.ok()) << v.version << ": " << loaded.status();
      if (k > 0) {
        EXPECT_GT(v.version, (*versions)[k - 1].version);
        EXPECT_GE(v.fence, (*versions)[k - 1].fence) << v.version;
        EXPECT_GE(v.input_offset, (*versions)[k - 1].input_offset) << v.version;
      }
    }
  }
}

}  // namespace
}  // namespace statestream
