// SPDX-License-Identifier: Apache-2.0
// The public API served by a real `statestream serve` process (built-in
// byte-level demo model): sessions, exactly-once Append under duplicates
// and gaps, chunking independence (incl. mid-UTF-8 splits), seeded Generate,
// side branches, Score, export/import and superseding writers. Typed errors
// and tenant isolation: worker_e2e_errors_test.cc. No assertion depends on
// timing. Servers started with flags of their own:
// worker_restart_e2e_test.cc.
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/worker_e2e_fixture.h"

namespace statestream {
namespace {

TEST_F(WorkerE2eTest, ModelsDescribeTheDemoModel) {
  v1::ListModelsResponse list;
  auto ctx = Ctx();
  ASSERT_TRUE(models_->ListModels(ctx.get(), {}, &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).model_id(), "demo-random-bytes");
  EXPECT_EQ(list.models(0).vocab_size(), 256u);
  EXPECT_FALSE(list.models(0).fingerprint().empty());
}

TEST_F(WorkerE2eTest, AppendIsExactlyOnce) {
  v1::Session s = Create("exactly-once");
  EXPECT_EQ(s.version(), 1u);
  AppendResult a = Append({Text("exactly-once", 0, "Hello, "),
                           Text("exactly-once", 0, "Hello, "),  // resend
                           Text("exactly-once", 7, "world", false, true),
                           Text("exactly-once", 3, "lo, ")});  // inside
  ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_EQ(a.acks.size(), 4u);
  EXPECT_FALSE(a.acks[0].duplicate());
  EXPECT_EQ(a.acks[0].input_offset(), 7u);
  EXPECT_TRUE(a.acks[1].duplicate());
  EXPECT_EQ(a.acks[1].input_offset(), 7u);
  EXPECT_EQ(a.acks[2].input_offset(), 12u);
  EXPECT_EQ(a.acks[2].committed_input_offset(), 12u);
  EXPECT_EQ(a.acks[2].version(), 2u);
  EXPECT_TRUE(a.acks[3].duplicate());
  EXPECT_EQ(a.acks[3].position(), 12u);  // bytes model: one token per byte

  // A gap fails with the actual offsets; nothing of it is applied.
  AppendResult gap = Append({Text("exactly-once", 20, "!")});
  EXPECT_EQ(gap.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetReason(gap.status), Reason::kPositionMismatch);
  EXPECT_EQ(GetErrorMetadata(gap.status, "actual_input_offset"), "12");
  EXPECT_EQ(GetErrorMetadata(gap.status, "committed_input_offset"), "12");
  // A payload straddling the offset too.
  AppendResult straddle = Append({Text("exactly-once", 10, "ld!!")});
  EXPECT_EQ(GetReason(straddle.status), Reason::kPositionMismatch);
  auto got = Get("exactly-once");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->input_offset(), 12u);
  EXPECT_EQ(got->position(), 12u);
}

// A client that writes without reading its acks (here: the same 1 KiB
// again and again, each a duplicate acked at once) is held back by flow
// control: the worker stops reading once a few dozen acks wait, instead of
// queueing an ack per request without bound. The writer blocks long before
// 200,000 requests (200 MB), and stays blocked; reading the acks lets it
// go on.
TEST_F(WorkerE2eTest, AnAppendClientThatDoesNotReadIsHeldBack) {
  Create("unread-acks");
  // A client that takes acks in slowly: a 1 KiB receive window, no growth.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto stub = v1::Streams::NewStub(grpc::CreateCustomChannel(
      *address_, grpc::InsecureChannelCredentials(), args));
  auto ctx = Ctx();
  auto stream = stub->Append(ctx.get());
  const v1::AppendRequest same = Text("unread-acks", 0, std::string(1024, 'x'));
  ASSERT_TRUE(stream->Write(same));
  constexpr int kRequests = 200000;
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < kRequests && stream->Write(same); ++i) ++written;
  });
  // Until the count stops moving (the writer is blocked) or all is sent.
  int last = -1;
  for (int i = 0; i < 300 && written.load() != last; ++i) {
    last = written.load();
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_LT(written.load(), kRequests);
  // Reading the acks unblocks it; cancel the rest.
  v1::AppendResponse ack;
  for (int i = 0; i < 1000 && stream->Read(&ack); ++i) {
  }
  ctx->TryCancel();
  writer.join();
  stream->Finish().IgnoreError();
}

TEST_F(WorkerE2eTest, AnyChunkingGivesTheSameState) {
  const std::string text =
      "Grüße, 世界! \xF0\x9F\x98\x80 naïve café — stateful streams.";
  Create("whole");
  AppendResult whole = Append({Text("whole", 0, text, true, true)});
  ASSERT_TRUE(whole.status.ok()) << whole.status;
  const std::string want = Export("whole");
  ASSERT_FALSE(want.empty());
  for (size_t step : {1u, 2u, 3u, 5u, 7u}) {
    const std::string id = "chunks-" + std::to_string(step);
    Create(id);
    std::vector<v1::AppendRequest> reqs;
    for (size_t at = 0; at < text.size(); at += step) {
      reqs.push_back(Text(id, at, text.substr(at, step)));
    }
    v1::AppendRequest last;
    last.set_expected_input_offset(text.size());
    last.set_flush(true);
    last.set_checkpoint(true);
    reqs.push_back(last);
    AppendResult r = Append(reqs);
    ASSERT_TRUE(r.status.ok()) << step << ": " << r.status;
    auto got = Get(id);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->input_offset(), text.size()) << step;
    EXPECT_EQ(got->position(), whole.acks[0].position()) << step;
    EXPECT_EQ(Export(id), want) << "chunk size " << step;
  }
}

TEST_F(WorkerE2eTest,
       SeededGenerateIsReproducibleAndSideBranchesChangeNothing) {
  Create("gen");
  ASSERT_TRUE(
      Append({Text("gen", 0, "Once upon a time", true, true)}).status.ok());
  const std::string before = Export("gen");
  GenResult a = Generate(GenRequest("gen", "side-1", 24, false));
  GenResult b = Generate(GenRequest("gen", "side-2", 24, false));
  ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_TRUE(b.status.ok()) << b.status;
  EXPECT_EQ(a.tokens.size(), 24u);
  EXPECT_EQ(a.tokens, b.tokens);  // same seed, same state
  EXPECT_EQ(a.done.finish_reason(), v1::FINISH_REASON_MAX_TOKENS);
  EXPECT_FALSE(a.done.committed());
  EXPECT_EQ(a.done.usage().output_tokens(), 24u);
  EXPECT_EQ(Export("gen"), before);  // untouched
  auto s = Get("gen");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->version(), 2u);

  // Committed with the same seed: the same tokens, and the session moves.
  GenResult c = Generate(GenRequest("gen", "commit-1", 24, true));
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.tokens, a.tokens);
  EXPECT_TRUE(c.done.committed());
  EXPECT_EQ(c.done.version(), 3u);
  EXPECT_EQ(c.done.input_offset(), 16u + 24u);
  s = Get("gen");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->input_offset(), 40u);
  EXPECT_EQ(s->committed_input_offset(), 40u);
  // The text is the bytes of the tokens.
  std::string bytes;
  for (uint32_t t : c.tokens) bytes.push_back(static_cast<char>(t));
  EXPECT_EQ(c.text, bytes);
}

TEST_F(WorkerE2eTest, ScoreMatchesGreedyGeneration) {
  Create("score");
  ASSERT_TRUE(Append({Text("score", 0, "abc", true, true)}).status.ok());
  v1::GenerateRequest g = GenRequest("score", "greedy", 8, false);
  g.mutable_sampling()->set_temperature(0);
  g.set_logprobs(true);
  g.set_top_logprobs(2);
  GenResult greedy = Generate(g);
  ASSERT_TRUE(greedy.status.ok()) << greedy.status;
  ASSERT_EQ(greedy.logprobs.size(), greedy.tokens.size());
  v1::ScoreRequest req;
  req.set_session_id("score");
  for (uint32_t t : greedy.tokens) req.mutable_tokens()->add_ids(t);
  v1::ScoreResponse resp;
  auto ctx = Ctx();
  grpc::Status st = streams_->Score(ctx.get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.tokens_size(), 8);
  EXPECT_TRUE(resp.all_greedy());
  // The generation's logprobs are the scores, bit for bit; greedy, each
  // token is its position's most likely.
  for (int i = 0; i < 8; ++i) {
    const v1::TokenLogprob& lp = greedy.logprobs[i];
    EXPECT_EQ(lp.token(), greedy.tokens[i]) << i;
    EXPECT_EQ(lp.logprob(), resp.tokens(i).logprob()) << i;
    ASSERT_EQ(lp.top_size(), 2) << i;
    EXPECT_EQ(lp.top(0).token(), greedy.tokens[i]) << i;
    EXPECT_EQ(lp.top(0).logprob(), lp.logprob()) << i;
    EXPECT_LE(lp.top(1).logprob(), lp.top(0).logprob()) << i;
  }
  EXPECT_LT(resp.sum_logprob(), 0);
  EXPECT_EQ(resp.position(), 3u);
  // Scoring from version 1 (nothing consumed) is a precondition failure.
  req.set_version(1);
  auto ctx2 = Ctx();
  st = streams_->Score(ctx2.get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // What would not fit a response is refused up front, typed: text of more
  // tokens than the limit, and tokens x (1 + top_logprobs) past 524,288.
  auto too_large = [&](const v1::ScoreRequest& r) {
    auto c = Ctx();
    v1::ScoreResponse out;
    grpc::Status big = streams_->Score(c.get(), r, &out);
    EXPECT_EQ(big.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << big.error_message();
    EXPECT_EQ(GetReason(FromGrpcStatus(big)), Reason::kMessageTooLarge);
  };
  v1::ScoreRequest text;
  text.set_session_id("score");
  text.set_text_utf8(std::string(65537, 'a'));  // a token per byte
  too_large(text);
  v1::ScoreRequest wide;
  wide.set_session_id("score");
  for (int i = 0; i < 30000; ++i) wide.mutable_tokens()->add_ids(97);
  wide.set_top_logprobs(20);
  too_large(wide);
}

// The first chunk of a generation sampled now says which input_offset it
// started from (before the tail and the prompt), so a client can pin its
// resumes there; replayed output carries none.
TEST_F(WorkerE2eTest, TheFirstChunkSaysWhereTheGenerationStarted) {
  Create("start");
  ASSERT_TRUE(Append({Text("start", 0, "abc", true), Text("start", 3, "de")})
                  .status.ok());
  using Starts = std::vector<std::pair<uint32_t, uint64_t>>;
  v1::GenerateRequest side = GenRequest("start", "side", 40, false);
  side.set_prompt_text_utf8("fg");
  GenResult a = Generate(side);
  ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_EQ(a.tokens.size(), 40u);
  EXPECT_EQ(a.starts, (Starts{{0, 5}}));

  v1::GenerateRequest commit = GenRequest("start", "commit", 12, true);
  commit.set_expected_input_offset(5);
  GenResult b = Generate(commit);
  ASSERT_TRUE(b.status.ok()) << b.status;
  EXPECT_EQ(b.starts, (Starts{{0, 5}}));
  ASSERT_TRUE(b.done.committed());
  // The same request again: replayed from its record, no start offset.
  GenResult replay = Generate(commit);
  ASSERT_TRUE(replay.status.ok()) << replay.status;
  EXPECT_TRUE(replay.done.replayed());
  EXPECT_EQ(replay.tokens, b.tokens);
  EXPECT_TRUE(replay.starts.empty());
  // The session moved on by the committed output.
  GenResult c = Generate(GenRequest("start", "after", 3, false));
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.starts, (Starts{{0, b.done.input_offset()}}));
  EXPECT_GT(b.done.input_offset(), 5u);
}

// A reader that falls behind gets its tokens grouped into chunks of at most
// about 256 KiB: they once all went into one message, megabytes with
// top_logprobs (past the 4 MiB a stock gRPC client receives).
TEST_F(WorkerE2eTest, ASlowReadersChunksStaySmall) {
  Create("slow-reader");
  ASSERT_TRUE(Append({Text("slow-reader", 0, "abc", true)}).status.ok());
  v1::GenerateRequest req = GenRequest("slow-reader", "slow", 8192, false);
  req.set_logprobs(true);
  req.set_top_logprobs(20);  // ~250 bytes a token: ~2 MB in all
  // A client that takes messages in slowly: a 1 KiB receive window.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  args.SetMaxReceiveMessageSize(-1);  // to see how large chunks get
  auto stub = v1::Streams::NewStub(grpc::CreateCustomChannel(
      *address_, grpc::InsecureChannelCredentials(), args));
  auto ctx = Ctx();
  auto reader = stub->Generate(ctx.get(), req);
  absl::SleepFor(absl::Seconds(3));  // the worker runs ahead meanwhile
  v1::GenerateResponse msg;
  size_t tokens = 0;
  size_t largest = 0;
  bool done = false;
  while (reader->Read(&msg)) {
    largest = std::max(largest, msg.ByteSizeLong());
    tokens += msg.chunk().tokens_size();
    EXPECT_EQ(msg.chunk().logprobs_size(), msg.chunk().tokens_size());
    done = done || msg.has_done();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(done);
  EXPECT_EQ(tokens, 8192u);
  EXPECT_LE(largest, 256u << 10);
}

TEST_F(WorkerE2eTest, ExportImportRoundTripsAndRejectsBadBlobs) {
  Create("exp");
  ASSERT_TRUE(Append({Text("exp", 0, "some state", true, true)}).status.ok());
  v1::StateHeader header;
  const std::string blob = Export("exp", nullptr, &header);
  ASSERT_EQ(header.total_bytes(), blob.size());

  // Imports `data` as session `id`; `edit` changes the header first.
  auto import =
      [&](const std::string& id, v1::StateHeader h, const std::string& data,
          const std::function<void(v1::ImportHeader*)>& edit = nullptr) {
        v1::ImportHeader first;
        first.set_request_id("import-" + id);
        first.set_session_id(id);
        first.set_mode(v1::IMPORT_MODE_CREATE);
        *first.mutable_state() = h;
        if (edit) edit(&first);
        return Import(first, data);
      };
  ASSERT_TRUE(import("imported", header, blob).ok());
  EXPECT_EQ(Export("imported"), blob);
  auto got = Get("imported");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->input_offset(), 10u);

  // A client that sent everything and then cancelled, never half-closing,
  // gave the import up: nothing is created (gRPC ends the read as a
  // half-close would, and the session was made for a call that failed).
  {
    v1::ImportHeader first;
    first.set_request_id("import-cancelled");
    first.set_session_id("cancelled");
    first.set_mode(v1::IMPORT_MODE_CREATE);
    *first.mutable_state() = header;
    auto ctx = Ctx();
    v1::Session out;
    auto writer = sessions_->ImportState(ctx.get(), &out);
    v1::ImportStateRequest msg;
    *msg.mutable_header() = first;
    ASSERT_TRUE(writer->Write(msg));
    const uint32_t chunk = header.chunk_bytes();
    for (uint32_t i = 0; size_t{i} * chunk < blob.size(); ++i) {
      v1::ImportStateRequest c;
      c.mutable_chunk()->set_index(i);
      std::string piece = blob.substr(size_t{i} * chunk, chunk);
      c.mutable_chunk()->set_crc32c(Crc32c(0, piece.data(), piece.size()));
      c.mutable_chunk()->set_data(std::move(piece));
      ASSERT_TRUE(writer->Write(c));
    }
    absl::SleepFor(absl::Milliseconds(300));  // the worker has read it all
    ctx->TryCancel();
    EXPECT_FALSE(writer->Finish().ok());
    // Never created, also not late (the worker's pool finishing the import
    // after the call ended): absent for two seconds on.
    for (int i = 0; i < 20; ++i) {
      ASSERT_EQ(GetReason(Get("cancelled").status()), Reason::kSessionNotFound)
          << "after " << i * 100 << " ms";
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  v1::StateHeader foreign = header;
  foreign.set_model_fingerprint("x070-other");
  EXPECT_EQ(GetReason(import("foreign-model", foreign, blob)),
            Reason::kModelMismatch);
  // The header's own fields are checked as CreateSession's are.
  for (const auto& [field, edit] : std::vector<
           std::pair<std::string, std::function<void(v1::ImportHeader*)>>>{
           {"labels",
            [](v1::ImportHeader* h) { (*h->mutable_labels())["a b"] = "v"; }},
           {"durability",
            [](v1::ImportHeader* h) {
              h->set_durability(static_cast<v1::Durability>(9));
            }},
           {"ttl", [](v1::ImportHeader* h) {
              h->mutable_ttl()->set_seconds(60);
              h->mutable_ttl()->set_nanos(-5);
            }}}) {
    const absl::Status refused = import("bad-" + field, header, "", edit);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
    EXPECT_EQ(GetErrorMetadata(refused, "field"), field) << refused;
  }
  std::string corrupt = blob;
  corrupt[corrupt.size() / 2] ^= 1;
  absl::Status bad = import("corrupt", header, corrupt);
  EXPECT_EQ(bad.code(), absl::StatusCode::kDataLoss) << bad;
  EXPECT_EQ(GetReason(bad), Reason::kStateCorrupt);
  EXPECT_FALSE(Get("corrupt").ok());
}

TEST_F(WorkerE2eTest, ANewWriterSupersedesTheOld) {
  Create("busy");
  auto ctx1 = Ctx();
  auto first = streams_->Append(ctx1.get());
  ASSERT_TRUE(first->Write(Text("busy", 0, "one")));
  v1::AppendResponse ack;
  ASSERT_TRUE(first->Read(&ack));
  AppendResult second = Append({Text("busy", 3, "two", false, true)});
  ASSERT_TRUE(second.status.ok()) << second.status;
  EXPECT_FALSE(first->Read(&ack));
  absl::Status st = FromGrpcStatus(first->Finish());
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_EQ(GetReason(st), Reason::kSessionBusy);
}

// A new call whose first request is malformed fails alone: the session's
// live writer is not superseded by it.
TEST_F(WorkerE2eTest, AMalformedFirstRequestLeavesTheLiveWriter) {
  Create("live");
  auto ctx = Ctx();
  auto live = streams_->Append(ctx.get());
  ASSERT_TRUE(live->Write(Text("live", 0, "one")));
  v1::AppendResponse ack;
  ASSERT_TRUE(live->Read(&ack));
  v1::AppendRequest bad_durability = Text("live", 3, "two");
  bad_durability.set_durability(static_cast<v1::Durability>(99));
  v1::AppendRequest bad_token;
  bad_token.set_session_id("live");
  bad_token.set_expected_input_offset(3);
  bad_token.mutable_tokens()->add_ids(1 << 30);
  v1::AppendRequest bad_request_id = Text("live", 3, "two");
  bad_request_id.set_request_id(std::string(1000, 'r'));
  for (const v1::AppendRequest& bad :
       {bad_durability, bad_token, bad_request_id}) {
    AppendResult r = Append({bad});
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  }
  ASSERT_TRUE(live->Write(Text("live", 3, "two")));
  ASSERT_TRUE(live->Read(&ack));
  EXPECT_EQ(ack.input_offset(), 6u);
  live->WritesDone();
  EXPECT_TRUE(live->Finish().ok());
}

TEST_F(WorkerE2eTest, StopStringsAndSamplingControlsReachTheSampler) {
  Create("ctl");
  ASSERT_TRUE(
      Append({Text("ctl", 0, "the story so far", true, true)}).status.ok());
  // Output in printable ASCII (the demo model is byte-level): a stop
  // string is a proto string, valid UTF-8.
  auto request = [](const std::string& id) {
    v1::GenerateRequest g = GenRequest("ctl", id, 16, false);
    g.mutable_sampling()->set_temperature(0);
    auto& bias = *g.mutable_sampling()->mutable_logit_bias();
    for (uint32_t t = 0; t < 256; ++t) {
      if (t < 0x20 || t > 0x7e) bias[t] = -1e9f;
    }
    return g;
  };
  const GenResult whole = Generate(request("whole"));
  ASSERT_TRUE(whole.status.ok()) << whole.status;
  ASSERT_EQ(whole.tokens.size(), 16u);
  EXPECT_EQ(whole.done.finish_reason(), v1::FINISH_REASON_MAX_TOKENS);
  const std::string stop = whole.text.substr(5, 3);  // tokens 6-8
  const size_t end = whole.text.find(stop) + stop.size();
  for (bool commit : {false, true}) {
    SCOPED_TRACE(commit ? "committing" : "side branch");
    v1::GenerateRequest g = request(commit ? "stop-commit" : "stop");
    g.set_commit(commit);
    g.add_stop_strings("never in it \x01\x02");
    g.add_stop_strings(stop);
    const GenResult stopped = Generate(g);
    ASSERT_TRUE(stopped.status.ok()) << stopped.status;
    EXPECT_EQ(stopped.done.finish_reason(), v1::FINISH_REASON_STOP_STRING);
    EXPECT_EQ(stopped.done.stop_string(), stop);
    EXPECT_EQ(stopped.tokens,
              std::vector<uint32_t>(whole.tokens.begin(),
                                    whole.tokens.begin() + end));
    EXPECT_EQ(stopped.text, whole.text.substr(0, end));
    if (commit) {
      EXPECT_TRUE(stopped.done.committed());
      EXPECT_EQ(stopped.done.input_offset(), 16u + end);
      EXPECT_EQ(Get("ctl")->input_offset(), 16u + end);
    }
  }
  // From here on the session holds the committed output too.
  const GenResult base = Generate(request("base"));
  ASSERT_TRUE(base.status.ok()) << base.status;
  v1::GenerateRequest banned = request("banned");
  (*banned.mutable_sampling()->mutable_logit_bias())[base.tokens[0]] = -1e9f;
  const GenResult other = Generate(banned);
  ASSERT_TRUE(other.status.ok()) << other.status;
  ASSERT_FALSE(other.tokens.empty());
  EXPECT_NE(other.tokens[0], base.tokens[0]);
  for (uint32_t t : other.tokens) EXPECT_NE(t, base.tokens[0]);
  v1::GenerateRequest top1 = request("top-k-1");
  top1.mutable_sampling()->set_temperature(1.5f);
  top1.mutable_sampling()->set_top_k(1);
  top1.mutable_sampling()->set_seed(77);
  const GenResult greedy = Generate(top1);
  ASSERT_TRUE(greedy.status.ok()) << greedy.status;
  EXPECT_EQ(greedy.tokens, base.tokens);
  // A top_k of at least the vocabulary's size keeps every token, however
  // large (one past INT32_MAX was refused "too large"): as top_k 0.
  v1::GenerateRequest all = request("top-k-all");
  all.mutable_sampling()->set_temperature(1.5f);
  all.mutable_sampling()->set_seed(77);
  const GenResult untruncated = Generate(all);
  ASSERT_TRUE(untruncated.status.ok()) << untruncated.status;
  for (uint32_t k : {256u, 4294967295u}) {
    all.mutable_sampling()->set_top_k(k);
    const GenResult huge = Generate(all);
    ASSERT_TRUE(huge.status.ok()) << k << ": " << huge.status;
    EXPECT_EQ(huge.tokens, untruncated.tokens) << k;
  }
}

}  // namespace
}  // namespace statestream
