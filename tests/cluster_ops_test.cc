// SPDX-License-Identifier: Apache-2.0
// Operations through real gateways (tests/cluster_harness.h): model-aware
// routing and the aggregated Models service over workers serving two
// different models, the gateway's Prometheus `/metrics` after traffic
// that includes a failover, the bound on what a gateway buffers, a state
// damaged in Redis, and the durability levels Redis reaches.

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "tests/cluster_fixture.h"
#include "tests/cluster_harness.h"
#include "tests/metrics_scrape.h"

namespace statestream {
namespace {

class ClusterOpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    e2e::ClusterOptions options;
    options.workers = 2;  // tiny
    options.worker_args = {"--metrics-listen=127.0.0.1:0"};
    auto c = e2e::Cluster::Start(STATESTREAM_BIN, options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
    auto other = cluster_->MakeModel("other", 8);
    ASSERT_TRUE(other.ok()) << other.status();
    auto w = cluster_->AddWorker(*other);
    ASSERT_TRUE(w.ok()) << w.status();
  }
  static void TearDownTestSuite() { delete cluster_; }
  void TearDown() override {
    if (HasFailure()) ADD_FAILURE() << cluster_->Logs();
  }

  // Sample name (with labels) -> value from gateway `gw`'s /metrics.
  static std::map<std::string, double> Scrape(int gw) {
    return ScrapeAddress(cluster_->gateways()[gw]->metrics_address());
  }
  static std::map<std::string, double> ScrapeAddress(
      const std::string& address) {
    auto samples = e2e::ScrapeMetrics(address);
    if (!samples) ADD_FAILURE() << "GET /metrics at " << address << " failed";
    return samples.value_or(std::map<std::string, double>{});
  }

  static e2e::Cluster* cluster_;
};

e2e::Cluster* ClusterOpsTest::cluster_ = nullptr;

TEST_F(ClusterOpsTest, ListModelsAggregatesReadyWorkers) {
  for (int gw = 0; gw < 2; ++gw) {
    v1::ListModelsResponse resp;
    auto ctx = e2e::ClientContext();
    ASSERT_TRUE(cluster_->models(gw)->ListModels(ctx.get(), {}, &resp).ok());
    ASSERT_EQ(resp.models_size(), 2);
    EXPECT_EQ(resp.models(0).model_id(), "other");
    EXPECT_EQ(resp.models(0).workers(), 1u);
    EXPECT_EQ(resp.models(1).model_id(), "tiny");
    EXPECT_EQ(resp.models(1).workers(), 2u);
    EXPECT_NE(resp.models(0).fingerprint(), resp.models(1).fingerprint());
    EXPECT_EQ(resp.models(1).backends_size(), 1);
  }
  v1::GetModelRequest req;
  req.set_model_id("other");
  v1::Model model;
  auto ctx = e2e::ClientContext();
  ASSERT_TRUE(cluster_->models(1)->GetModel(ctx.get(), req, &model).ok());
  EXPECT_EQ(model.model_id(), "other");
  req.set_model_id("no-such-model");
  auto ctx2 = e2e::ClientContext();
  absl::Status missing =
      FromGrpcStatus(cluster_->models(1)->GetModel(ctx2.get(), req, &model));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(missing), Reason::kModelNotFound);
}

TEST_F(ClusterOpsTest, CreateSessionRoutesByModel) {
  // Whatever the rendezvous winner of each id, a session lands on a worker
  // serving its model.
  for (int i = 0; i < 8; ++i) {
    const std::string id = absl::StrCat("by-model-", i);
    const std::string model = i % 2 == 0 ? "other" : "tiny";
    ASSERT_TRUE(cluster_->Create(id, i % 2, model).ok()) << id;
    auto s = cluster_->Get(id, (i + 1) % 2);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->model_id(), model);
  }
  absl::Status unknown = cluster_->Create("by-model-x", 0, "no-such-model");
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(unknown), Reason::kModelNotFound);
  EXPECT_EQ(GetErrorMetadata(unknown, "model_id"), "no-such-model");

  // So does a state of a model no worker serves: MODEL_MISMATCH, not an
  // UNAVAILABLE a client would retry.
  v1::ImportStateRequest header;
  header.mutable_header()->set_request_id("import-unknown-model");
  header.mutable_header()->set_mode(v1::IMPORT_MODE_CREATE);
  v1::StateHeader* state = header.mutable_header()->mutable_state();
  state->set_model_fingerprint("x070-no-such-model");
  state->set_total_bytes(4);
  state->set_chunk_bytes(4);
  v1::ImportStateRequest chunk;
  chunk.mutable_chunk()->set_data("abcd");
  // (Retried while UNAVAILABLE, as the SDKs do: the gateway's list of
  // workers may be older than a refresh.)
  absl::Status foreign;
  for (int attempt = 0; attempt < 50; ++attempt) {
    v1::Session created;
    auto ctx = e2e::ClientContext();
    auto writer = cluster_->sessions(0)->ImportState(ctx.get(), &created);
    writer->Write(header);
    writer->Write(chunk);
    writer->WritesDone();
    foreign = FromGrpcStatus(writer->Finish());
    if (!absl::IsUnavailable(foreign)) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(foreign.code(), absl::StatusCode::kFailedPrecondition) << foreign;
  EXPECT_EQ(GetReason(foreign), Reason::kModelMismatch) << foreign;
  EXPECT_EQ(GetErrorMetadata(foreign, "actual_fingerprint"),
            "x070-no-such-model");
}

// A call its own client cancels, or whose deadline passes, mid-stream ends
// there: gRPC cancels the gateway's upstream call at once, and that
// CANCELLED is no worker failure — no failover, no suspect worker, and the
// session stays with its owner.
TEST_F(ClusterOpsTest, AClientsCancelOrDeadlineIsNoWorkerFailure) {
  ASSERT_TRUE(cluster_->Create("cancelled", 0, "tiny").ok());
  const auto failovers = [](std::map<std::string, double> m) {
    double n =
        m["statestream_gateway_routing_decisions_total{decision="
          "\"retry\"}"];
    for (const char* method : {"Append", "Generate", "ExportState"}) {
      n += m[absl::StrCat("statestream_gateway_failovers_total{method=\"",
                          method, "\"}")];
    }
    return n;
  };
  const double before = failovers(Scrape(0));
  const double exports_unavailable_before = Scrape(0)
      ["statestream_gateway_calls_total{method=\"ExportState\","
       "code=\"UNAVAILABLE\"}"];
  e2e::ClusterProcess* owner = nullptr;
  for (int i = 0; i < 24; ++i) {
    SCOPED_TRACE(i);
    auto ctx = e2e::ClientContext();
    const bool by_deadline = i % 3 == 2;
    if (by_deadline) {
      ctx->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(20 + 2 * i));
    }
    grpc::Status status;
    if (i % 3 == 1) {  // an export cut short after its first message
      v1::ExportStateRequest req;
      req.set_session_id("cancelled");
      auto reader = cluster_->sessions(0)->ExportState(ctx.get(), req);
      v1::ExportStateResponse msg;
      reader->Read(&msg);
      ctx->TryCancel();
      while (reader->Read(&msg)) {
      }
      status = reader->Finish();
    } else {  // a long generation cancelled after two chunks
      v1::GenerateRequest g;
      g.set_session_id("cancelled");
      g.set_request_id(absl::StrCat("cancelled-", i));
      g.set_prompt_text_utf8("once upon a time");
      g.set_max_tokens(8192);
      g.mutable_sampling()->set_seed(i);
      auto reader = cluster_->streams(0)->Generate(ctx.get(), g);
      v1::GenerateResponse msg;
      if (!by_deadline) {
        for (int read = 0; read < 2; ++read) {
          ASSERT_TRUE(reader->Read(&msg)) << reader->Finish().error_message();
        }
        ctx->TryCancel();
      }
      while (reader->Read(&msg)) {
      }
      status = reader->Finish();
    }
    // (An export may finish before its cancel.)
    if (i % 3 != 1 || !status.ok()) {
      EXPECT_EQ(status.error_code(), by_deadline
                                         ? grpc::StatusCode::DEADLINE_EXCEEDED
                                         : grpc::StatusCode::CANCELLED)
          << status.error_message();
    }
    if (i == 0) owner = cluster_->Owner("cancelled");
  }
  EXPECT_EQ(failovers(Scrape(0)) - before, 0);
  EXPECT_NE(owner, nullptr);
  EXPECT_EQ(cluster_->Owner("cancelled"), owner);
  // Exports cut short by their clients are counted as CANCELLED, not as
  // the gateway's UNAVAILABLE.
  EXPECT_EQ(Scrape(0)["statestream_gateway_calls_total{method=\"ExportState\","
                      "code=\"UNAVAILABLE\"}"],
            exports_unavailable_before);
}

TEST_F(ClusterOpsTest, MetricsAfterTrafficAndAFailover) {
  const auto chunks = e2e::TextChunks(200, 64, 5);
  ASSERT_TRUE(cluster_->Create("metrics-ref", 1, "tiny").ok());
  ASSERT_TRUE(e2e::AppendResumable(cluster_, "metrics-ref", chunks, 0,
                                   [](const grpc::Status&) { return false; })
                  .ok());
  ASSERT_TRUE(cluster_->Create("metrics-s", 0, "tiny").ok());
  // Kill the owner once the session is loaded, mid-stream: the gateway
  // replays (or resends) on the other tiny worker.
  std::atomic<int> acked{0};
  int acked_at_kill = -1;
  absl::Status appended;
  std::atomic<bool> client_done{false};
  {
    std::thread client([&] {
      appended = e2e::AppendResumable(
          cluster_, "metrics-s", chunks, 0,
          [](const grpc::Status&) { return true; }, nullptr, &acked);
      client_done = true;
    });
    // (A client that failed early ends the wait: its status is reported.)
    while (acked.load() < 10 && !client_done.load()) std::this_thread::yield();
    e2e::ClusterProcess* owner = cluster_->Owner("metrics-s");
    if (owner != nullptr) {
      acked_at_kill = acked.load();
      owner->Kill();
    }
    client.join();
  }
  ASSERT_TRUE(appended.ok()) << appended;
  ASSERT_GE(acked_at_kill, 0) << "no owner to kill";
  ASSERT_LT(acked_at_kill, static_cast<int>(chunks.size()))
      << "the stream ended before the kill";
  {
    // The kill moved the stream (an Append failover) or its retry,
    // counted before anything else runs.
    auto m0 = Scrape(0);
    auto m1 = Scrape(1);
    auto sum = [&](const std::string& key) { return m0[key] + m1[key]; };
    EXPECT_GE(sum("statestream_gateway_failovers_total{method=\"Append\"}") +
                  sum("statestream_gateway_routing_decisions_total{decision="
                      "\"retry\"}"),
              1);
  }
  auto ref = cluster_->Export("metrics-ref");
  auto got = cluster_->Export("metrics-s");
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*ref == *got) << "the state after the failover differs";
  v1::GenerateRequest g;
  g.set_session_id("metrics-s");
  g.set_request_id("metrics-gen");
  g.set_max_tokens(16);
  auto ctx = e2e::ClientContext();
  auto reader = cluster_->streams(0)->Generate(ctx.get(), g);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_FALSE(cluster_->Get("no-such-session", 0).ok());

  auto m0 = Scrape(0);
  auto m1 = Scrape(1);
  auto sum = [&](const std::string& key) { return m0[key] + m1[key]; };
  EXPECT_GT(sum("statestream_gateway_rpc_seconds_count{method=\"Append\"}"), 0);
  EXPECT_GT(sum("statestream_gateway_rpc_seconds_count{method=\"Generate\"}"),
            0);
  EXPECT_GT(m0["statestream_gateway_rpc_seconds_count{method=\"GetSession\"}"],
            0);
  EXPECT_GT(
      m0["statestream_gateway_calls_total{method=\"Generate\",code=\"OK\"}"],
      0);
  EXPECT_GE(
      m0["statestream_gateway_errors_total{reason=\"SESSION_NOT_FOUND\"}"], 1);
  EXPECT_GT(sum("statestream_gateway_append_ack_seconds_count"), 0);
  EXPECT_GT(
      sum("statestream_gateway_routing_decisions_total{decision=\"owner\"}"),
      0);
  EXPECT_GT(sum("statestream_gateway_routing_decisions_total{decision="
                "\"rendezvous\"}"),
            0);
  EXPECT_GE(m0["statestream_gateway_workers_known"], 2);
  EXPECT_TRUE(m0.count("statestream_gateway_workers_ready") == 1);
  EXPECT_TRUE(m0.count("statestream_gateway_replayed_requests_total") == 1);
  // The gauge drops just after each call's status is sent.
  double active = m0["statestream_gateway_calls_active"];
  for (int i = 0; i < 100 && active != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    active = Scrape(0)["statestream_gateway_calls_active"];
  }
  EXPECT_EQ(active, 0);
}

// `statestream worker --metrics-listen` serves the worker's own series
// (tokens, state commits to Redis, residency) like `serve` does.
TEST_F(ClusterOpsTest, WorkersServeTheirMetrics) {
  ASSERT_TRUE(cluster_->Create("worker-metrics", 0, "tiny").ok());
  const auto chunks = e2e::TextChunks(4, 32, 21);
  ASSERT_TRUE(e2e::AppendResumable(
                  cluster_, "worker-metrics", chunks, 2,
                  [](const grpc::Status&) { return false; }, nullptr, nullptr)
                  .ok());
  e2e::ClusterProcess* owner = cluster_->Owner("worker-metrics");
  ASSERT_NE(owner, nullptr);
  ASSERT_FALSE(owner->metrics_address().empty());
  const auto samples = ScrapeAddress(owner->metrics_address());
  EXPECT_GE(samples.count("statestream_tokens_in_total"), 1u);
  EXPECT_GE(samples.at("statestream_tokens_in_total"), 4 * 32);
  EXPECT_GE(samples.count("statestream_sessions_resident"), 1u);
  // The session manager's counts: the session was loaded and committed.
  ASSERT_EQ(samples.count("statestream_session_loads_total"), 1u);
  EXPECT_GE(samples.at("statestream_session_loads_total"), 1);
  ASSERT_EQ(samples.count("statestream_session_commits_total"), 1u);
  EXPECT_GE(samples.at("statestream_session_commits_total"), 1);
  EXPECT_EQ(samples.count("statestream_session_evictions_total"), 1u);
  bool committed = false;
  for (const auto& [name, value] : samples) {
    if (absl::StartsWith(name, "statestream_state_commit_seconds_count") &&
        value > 0) {
      committed = true;
    }
  }
  EXPECT_TRUE(committed) << "no state commit observed";
}

// A state damaged in Redis (a flipped byte in every chunk of the session's
// versions), found by a worker loading it after its owner was killed:
// Append, Generate, Score and ExportState through a gateway end DATA_LOSS
// with STATE_CORRUPT and are not moved from worker to worker; GetSession
// (which reads no state) still answers; no process exits, and another
// session goes on as before.
class ClusterDamageTest : public e2e::ClusterFixture {};

TEST_F(ClusterDamageTest, ADamagedStoredStateIsCorruptAndHarmsNothingElse) {
  e2e::ClusterOptions options;
  options.workers = 2;
  options.gateways = 1;
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const auto chunks = e2e::TextChunks(6, 32, 9);
  for (const char* id : {"damaged", "healthy"}) {
    ASSERT_TRUE(cluster_->Create(id).ok());
    ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), id, chunks, 2,
                                     [](const grpc::Status&) { return false; })
                    .ok());
  }
  auto before = cluster_->Get("damaged");
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->committed_input_offset(), before->input_offset());
  e2e::ClusterProcess* owner = cluster_->Owner("damaged");
  ASSERT_NE(owner, nullptr);
  owner->Kill();  // its copy in memory goes; the next worker loads it
  auto keys = cluster_->redis()->Command({"KEYS", "ss:{default/damaged}:v*"});
  ASSERT_TRUE(keys.ok()) << keys.status();
  int damaged = 0;
  for (absl::string_view key : absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
    if (!absl::StrContains(key, ":c")) continue;  // a chunk
    auto length = cluster_->redis()->Command({"STRLEN", std::string(key)});
    int64_t n = 0;
    ASSERT_TRUE(length.ok() && absl::SimpleAtoi(*length, &n) && n > 0) << key;
    const std::string at = absl::StrCat(n / 2);
    auto byte =
        cluster_->redis()->Command({"GETRANGE", std::string(key), at, at});
    ASSERT_TRUE(byte.ok() && byte->size() == 1) << key;
    const std::string flipped(1, static_cast<char>((*byte)[0] ^ 0x01));
    ASSERT_TRUE(cluster_->redis()
                    ->Command({"SETRANGE", std::string(key), at, flipped})
                    .ok());
    ++damaged;
  }
  ASSERT_GT(damaged, 0) << *keys;

  // Calls the gateway moved to another worker.
  auto failovers = [&] {
    auto m = e2e::ScrapeMetrics(cluster_->gateways()[0]->metrics_address());
    EXPECT_TRUE(m.has_value());
    double n = 0;
    for (const auto& [name, value] :
         m.value_or(std::map<std::string, double>{})) {
      if (absl::StartsWith(name, "statestream_gateway_failovers_total")) {
        n += value;
      }
    }
    return n;
  };
  auto expect_corrupt = [](const absl::Status& s, const char* call) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << call << ": " << s;
    EXPECT_EQ(GetReason(s), Reason::kStateCorrupt) << call << ": " << s;
  };
  {
    auto ctx = e2e::ClientContext();
    auto stream = cluster_->streams(0)->Append(ctx.get());
    v1::AppendRequest r;
    r.set_session_id("damaged");
    r.set_expected_input_offset(before->input_offset());
    r.set_text_utf8("more");
    r.set_flush(true);
    stream->Write(r);
    v1::AppendResponse ack;
    EXPECT_FALSE(stream->Read(&ack)) << "acked on a damaged state";
    stream->WritesDone();
    expect_corrupt(FromGrpcStatus(stream->Finish()), "Append");
  }
  // The Append found the killed owner gone (at most one move); a damaged
  // state is no worker's failure: nothing after it is moved.
  const double moved = failovers();
  EXPECT_LE(moved, 1);
  v1::GenerateRequest g;
  g.set_session_id("damaged");
  g.set_request_id("gen-damaged");
  g.set_max_tokens(4);
  g.set_commit(true);
  e2e::Generated generated = e2e::GenerateAll(cluster_->streams(0), g);
  EXPECT_EQ(generated.messages, 0);
  expect_corrupt(generated.status, "Generate");
  {
    v1::ScoreRequest score;
    score.set_session_id("damaged");
    score.set_text_utf8("x");
    v1::ScoreResponse out;
    auto ctx = e2e::ClientContext();
    expect_corrupt(
        FromGrpcStatus(cluster_->streams(0)->Score(ctx.get(), score, &out)),
        "Score");
  }
  {
    v1::ExportStateRequest req;
    req.set_session_id("damaged");
    auto ctx = e2e::ClientContext();
    auto reader = cluster_->sessions(0)->ExportState(ctx.get(), req);
    v1::ExportStateResponse msg;
    while (reader->Read(&msg)) {
    }
    expect_corrupt(FromGrpcStatus(reader->Finish()), "ExportState");
  }
  EXPECT_EQ(failovers(), moved);
  auto after = cluster_->Get("damaged");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->version(), before->version());  // nothing was written
  EXPECT_EQ(after->input_offset(), before->input_offset());

  // Every other process is still up, and the other session works.
  for (auto& w : cluster_->workers()) {
    if (w.get() != owner) {
      EXPECT_EQ(kill(w->pid(), 0), 0) << "worker " << w->address() << " exited";
    }
  }
  EXPECT_EQ(kill(cluster_->gateways()[0]->pid(), 0), 0) << "the gateway exited";
  auto healthy = cluster_->Get("healthy");
  ASSERT_TRUE(healthy.ok()) << healthy.status();
  EXPECT_TRUE(cluster_->Export("healthy").ok());
  g.set_session_id("healthy");
  g.set_request_id("gen-healthy");
  generated = e2e::GenerateAll(cluster_->streams(0), g);
  EXPECT_TRUE(generated.status.ok()) << generated.status;
  EXPECT_EQ(generated.tokens.size(), 4u);
}

// Durability through a gateway and a worker, as Redis reaches it: with
// `appendfsync always` an Append, a committing Generate and a create that
// ask FSYNC are acknowledged at FSYNC (and GetSession says so); REPLICATED
// with no replica is STORE_UNAVAILABLE naming the level reached, the
// version kept at it; with one, it is reached. Without AOF, FSYNC fails the
// same way at MEMORY.
class ClusterDurabilityTest : public e2e::ClusterFixture {
 protected:
  // One checkpointed Append of `text` at `offset` asking `durability`: the
  // ack, or the call's error.
  absl::StatusOr<v1::AppendResponse> Checkpoint(const std::string& id,
                                                uint64_t offset,
                                                const std::string& text,
                                                v1::Durability durability) {
    auto ctx = e2e::ClientContext();
    auto stream = cluster_->streams(0)->Append(ctx.get());
    v1::AppendRequest r;
    r.set_session_id(id);
    r.set_expected_input_offset(offset);
    r.set_text_utf8(text);
    r.set_flush(true);
    r.set_checkpoint(true);
    r.set_durability(durability);
    stream->Write(r);
    v1::AppendResponse ack;
    const bool acked = stream->Read(&ack);
    stream->WritesDone();
    const absl::Status st = FromGrpcStatus(stream->Finish());
    if (!st.ok()) return st;
    if (!acked) return absl::InternalError("no ack");
    return ack;
  }
  static void ExpectNotReached(const absl::Status& st, const char* reached) {
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_EQ(GetReason(st), Reason::kStoreUnavailable) << st;
    EXPECT_EQ(GetErrorMetadata(st, "durability_reached"), reached) << st;
  }
};

TEST_F(ClusterDurabilityTest, FsyncAndReplicatedAreWhatRedisReached) {
  e2e::ClusterOptions options;
  options.workers = 1;
  options.gateways = 1;
  options.redis_args = {"--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--no-appendfsync-on-rewrite",
                        "no"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  v1::CreateSessionRequest create;
  create.set_request_id("create-durable");
  create.set_session_id("durable");
  create.set_durability(v1::DURABILITY_FSYNC);
  v1::Session created;
  {
    auto ctx = e2e::ClientContext();
    const grpc::Status st =
        cluster_->sessions(0)->CreateSession(ctx.get(), create, &created);
    ASSERT_TRUE(st.ok()) << FromGrpcStatus(st);
  }
  EXPECT_EQ(created.durability(), v1::DURABILITY_FSYNC);
  auto ack = Checkpoint("durable", 0, "written down", v1::DURABILITY_FSYNC);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->durability(), v1::DURABILITY_FSYNC);
  EXPECT_EQ(ack->committed_input_offset(), 12u);
  v1::GenerateRequest g;
  g.set_session_id("durable");
  g.set_request_id("gen-durable");
  g.set_max_tokens(3);
  g.set_commit(true);
  g.set_durability(v1::DURABILITY_FSYNC);
  const e2e::Generated generated = e2e::GenerateAll(cluster_->streams(0), g);
  ASSERT_TRUE(generated.status.ok()) << generated.status;
  EXPECT_TRUE(generated.done.committed());
  EXPECT_EQ(generated.done.durability(), v1::DURABILITY_FSYNC);
  auto head = cluster_->Get("durable");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->durability(), v1::DURABILITY_FSYNC);
  const uint64_t version = head->version();

  // No replica: REPLICATED is not reached; the version is kept at FSYNC.
  const absl::Status replicated = Checkpoint("durable", head->input_offset(),
                                             "!", v1::DURABILITY_REPLICATED)
                                      .status();
  ExpectNotReached(replicated, "FSYNC");
  head = cluster_->Get("durable");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->version(), version + 1);
  EXPECT_EQ(head->durability(), v1::DURABILITY_FSYNC);

  // With a replica of the primary: REPLICATED is reached.
  testing::RedisServerOptions replica_options;
  replica_options.args = {"--replicaof", "127.0.0.1",
                          absl::StrCat(cluster_->redis()->port())};
  auto replica = testing::RedisServer::Start(replica_options);
  ASSERT_TRUE(replica.ok()) << replica.status();
  for (int i = 0; i < 200; ++i) {  // until the primary counts it
    auto info = cluster_->redis()->Command({"INFO", "replication"});
    if (info.ok() && absl::StrContains(*info, "connected_slaves:1") &&
        absl::StrContains(*info, "state=online")) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ack = Checkpoint("durable", head->input_offset(), "?",
                   v1::DURABILITY_REPLICATED);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->durability(), v1::DURABILITY_REPLICATED);
  head = cluster_->Get("durable");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->durability(), v1::DURABILITY_REPLICATED);
}

TEST_F(ClusterDurabilityTest, WithoutAppendOnlyFsyncIsNotReached) {
  e2e::ClusterOptions options;
  options.workers = 1;
  options.gateways = 1;
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  ASSERT_TRUE(cluster_->Create("volatile").ok());
  ExpectNotReached(
      Checkpoint("volatile", 0, "gone with the power", v1::DURABILITY_FSYNC)
          .status(),
      "MEMORY");
  auto head = cluster_->Get("volatile");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->version(), 2u);  // committed, at the level reached
  EXPECT_EQ(head->committed_input_offset(), 19u);
  EXPECT_EQ(head->durability(), v1::DURABILITY_MEMORY);
}

// A gateway keeps at most --max-buffered-bytes of Append requests (plus two
// requests per call) and never stalls a stream on it: past it each call's
// next request asks for a commit, which frees its log. Workers here commit
// only when asked, so without those commits four 65 KiB Appends would
// hold 260 KiB, 16 times the bound. (Sized so that under ASan, beside
// another test, the calls end well within their 120 s deadline: with 4
// KiB chunks they did not always.)
class GatewayBuffersTest : public e2e::ClusterFixture {};

TEST_F(GatewayBuffersTest, AppendsThroughSmallBuffersLandExactlyOnce) {
  constexpr int64_t kMax = 16 << 10;
  constexpr int kChunk = 1024;
  constexpr int kCalls = 4;
  e2e::ClusterOptions options;
  options.workers = 1;
  options.gateways = 1;
  options.worker_args = {"--checkpoint-tokens=100000000",
                         "--checkpoint-interval=10000h"};
  options.gateway_args = {absl::StrCat("--max-buffered-bytes=", kMax)};
  StartCluster(options);
  // 65 chunks: the reference asks for a commit every 5th, these calls only
  // at their last, so both end committed at the same offset.
  const auto chunks = e2e::TextChunks(65, kChunk, 31);
  v1::Session reference;
  std::string reference_state;
  Reference(chunks, &reference, &reference_state);

  // The most the gateway buffered, sampled until the calls are over (or
  // an assertion below returns: the thread is joined either way).
  struct Scraper {
    std::atomic<bool> done{false};
    std::atomic<double> most{0};
    std::thread thread;
    ~Scraper() {
      done = true;
      if (thread.joinable()) thread.join();
    }
  } scraper;
  scraper.thread = std::thread([&] {
    while (!scraper.done.load()) {
      auto samples =
          e2e::ScrapeMetrics(cluster_->gateways()[0]->metrics_address());
      if (samples) {
        scraper.most =
            std::max(scraper.most.load(),
                     (*samples)["statestream_gateway_buffered_bytes"]);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  std::vector<std::thread> writers;
  std::vector<absl::Status> results(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(cluster_->Create(absl::StrCat("buffered-", i)).ok());
    ASSERT_TRUE(cluster_->Create(absl::StrCat("pipelined-", i)).ok());
  }
  for (int i = 0; i < kCalls; ++i) {
    const std::string id = absl::StrCat("buffered-", i);
    writers.emplace_back([&, i, id] {
      results[i] = e2e::AppendResumable(
          cluster_.get(), id, chunks, /*checkpoint_every=*/65,
          [](const grpc::Status&) { return false; });
    });
  }
  for (auto& w : writers) w.join();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i];
    const std::string id = absl::StrCat("buffered-", i);
    auto head = cluster_->Get(id);
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_EQ(head->input_offset(), reference.input_offset());
    auto state = cluster_->Export(id);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_TRUE(*state == reference_state) << id;
  }
  // Clients that pipeline (as the SDK writers do, up to 32 requests ahead)
  // read on while a forced commit is in flight: a call past the bound
  // still moves, one committed request at a time.
  std::vector<std::thread> pipelined;
  std::vector<grpc::Status> ended(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    const std::string id = absl::StrCat("pipelined-", i);
    pipelined.emplace_back([&, i, id] {
      auto ctx = e2e::ClientContext();
      auto stream = cluster_->streams(0)->Append(ctx.get());
      std::thread sender([&] {
        uint64_t at = 0;
        for (size_t c = 0; c < chunks.size(); ++c) {
          v1::AppendRequest r;
          r.set_session_id(id);
          r.set_expected_input_offset(at);
          r.set_text_utf8(chunks[c]);
          r.set_checkpoint(c + 1 == chunks.size());
          at += chunks[c].size();
          if (!stream->Write(r)) return;
        }
        stream->WritesDone();
      });
      v1::AppendResponse ack;
      while (stream->Read(&ack)) {
      }
      sender.join();
      ended[i] = stream->Finish();
    });
  }
  for (auto& p : pipelined) p.join();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(ended[i].ok()) << ended[i].error_message();
    auto state = cluster_->Export(absl::StrCat("pipelined-", i));
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_TRUE(*state == reference_state) << i;
  }
  scraper.done = true;
  scraper.thread.join();
  // Within the bound plus two requests (a chunk of text each, and their
  // encoding) per call; nothing left once the calls are over.
  EXPECT_GT(scraper.most.load(), 0);
  EXPECT_LE(scraper.most.load(), kMax + kCalls * 2 * (2 * kChunk));
  auto after = e2e::ScrapeMetrics(cluster_->gateways()[0]->metrics_address());
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ((*after)["statestream_gateway_buffered_bytes"], 0);
}

}  // namespace
}  // namespace statestream
