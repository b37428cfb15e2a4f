// SPDX-License-Identifier: Apache-2.0
// The cluster under faults, with real processes on 127.0.0.1: one
// redis-server, two gateways and three workers (`statestream gateway` /
// `statestream worker` over a small random byte-level model). Workers are
// SIGKILLed mid-Append (repeatedly) and mid-Generate, and SIGSTOPped past a
// stall; results must equal an uninterrupted run bit for bit. Tenants are
// isolated through the gateway. No assertion depends on timing: kills
// happen at protocol points (after given acks or chunks).
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/cluster_process.h"
#include "tests/metrics_scrape.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(90);

class ClusterFailoverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(
        absl::StrCat(std::filesystem::temp_directory_path().string(),
                     "/ss-cluster-", getpid()));
    std::filesystem::create_directories(*dir_);
    absl::Status made =
        e2e::MakeTinyModel(STATESTREAM_BIN, *dir_ + "/tiny.safetensors");
    ASSERT_TRUE(made.ok()) << made;
    auto redis = testing::RedisServer::Start({});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = redis->release();
    RedisStateStoreOptions options;
    options.addresses = {redis_->address()};
    store_ = NewRedisStateStore(options)->release();
    workers_ = new std::vector<std::unique_ptr<e2e::ClusterProcess>>();
    for (int i = 0; i < 3; ++i) ASSERT_NO_FATAL_FAILURE(AddWorker());
    gateways_ = new std::vector<std::unique_ptr<e2e::ClusterProcess>>();
    for (int i = 0; i < 2; ++i) {
      auto g = e2e::ClusterProcess::Start(
          {STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
           "--redis=" + redis_->address(), "--upstream-stall-timeout=2s",
           "--suspect-for=2s", "--shutdown-grace=1s",
           // Few task threads: a call that held one while it waited (on
           // its worker or its client) would stall the others, and the
           // failover bursts below queue.
           "--max-task-threads=4"},
          absl::StrCat(*dir_, "/gateway", i, ".log"), kStartTimeout);
      ASSERT_TRUE(g.ok()) << g.status();
      gateways_->push_back(*std::move(g));
    }
  }

  static void TearDownTestSuite() {
    delete gateways_;
    delete workers_;
    delete store_;
    delete redis_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  // Starts one more worker with a fresh id.
  static void AddWorker() {
    static int next = 0;
    const std::string id = absl::StrCat("w", next++);
    auto w = e2e::ClusterProcess::Start(
        {STATESTREAM_BIN, "worker", "--listen=127.0.0.1:0",
         "--redis=" + redis_->address(),
         "--model=" + *dir_ + "/tiny.safetensors", "--worker-id=" + id,
         "--heartbeat-interval=300ms", "--checkpoint-tokens=300",
         "--shutdown-grace=1s", "--metrics-listen=127.0.0.1:0"},
        absl::StrCat(*dir_, "/", id, ".log"), kStartTimeout);
    ASSERT_TRUE(w.ok()) << w.status();
    workers_->push_back(*std::move(w));
  }

  // The worker's statestream_fenced_commits_total, or -1.
  static double FencedCommits(const e2e::ClusterProcess& w) {
    auto samples = e2e::ScrapeMetrics(w.metrics_address());
    if (!samples) return -1;
    auto it = samples->find("statestream_fenced_commits_total");
    return it == samples->end() ? -1 : it->second;
  }

  // The live worker holding the session's lease (nullptr if none).
  static e2e::ClusterProcess* Owner(const std::string& session,
                                    const std::string& tenant = "default") {
    auto lease = store_->GetOwner({tenant, session});
    if (!lease.ok() || lease->owner.empty()) return nullptr;
    auto listed = store_->ListWorkers();
    if (!listed.ok()) return nullptr;
    for (const auto& info : *listed) {
      if (info.worker_id != lease->owner) continue;
      for (auto& w : *workers_) {
        if (w->pid() > 0 && w->address() == info.address) return w.get();
      }
    }
    return nullptr;
  }

  // For a failure message: the session's lease and, for each live worker,
  // its id, address, whether it is `marked`, and its tokens out.
  static std::string Diagnose(const std::string& session,
                              const e2e::ClusterProcess* marked) {
    std::string out;
    auto lease = store_->GetOwner({"default", session});
    absl::StrAppend(&out, "lease: ",
                    lease.ok()
                        ? absl::StrCat(lease->owner, " fence ", lease->fence)
                        : lease.status().ToString(),
                    "\n");
    auto listed = store_->ListWorkers();
    for (auto& w : *workers_) {
      if (w->pid() <= 0) continue;
      std::string id = "(unlisted)";
      if (listed.ok()) {
        for (const auto& info : *listed) {
          if (info.address == w->address()) id = info.worker_id;
        }
      }
      double out_tokens = -1;  // a paused worker's metrics would not answer
      auto samples = w.get() == marked
                         ? std::nullopt
                         : e2e::ScrapeMetrics(w->metrics_address());
      if (samples) {
        for (const auto& [name, value] : *samples) {
          if (absl::StartsWith(name, "statestream_tokens_out_total")) {
            out_tokens = value;
          }
        }
      }
      absl::StrAppend(&out, id, " ", w->address(), " pid ", w->pid(), " state ",
                      std::string(1, ProcState(w->pid())),
                      w.get() == marked ? " (paused)" : "", " tokens out ",
                      out_tokens, "\n");
    }
    return out;
  }

  // The process's state letter in /proc (T: stopped), or '?'.
  static char ProcState(int pid) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    std::getline(stat, line);
    const size_t paren = line.rfind(") ");
    return paren == std::string::npos ? '?' : line[paren + 2];
  }

  // Stops `p` (SIGSTOP) and waits until the kernel says every thread of
  // it has (kill returns before).
  // Stops `p` (SIGSTOP). The fixture's TearDown sends SIGCONT to every
  // paused worker, so a test that fails before resuming it leaves none
  // stopped for the next test of the suite.
  static void Pause(e2e::ClusterProcess* p) {
    paused_.push_back(p);
    p->Signal(SIGSTOP);
    for (int i = 0; i < 500 && ProcState(p->pid()) != 'T'; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    ASSERT_EQ(ProcState(p->pid()), 'T');
  }

  // Kills the session's owner and starts a replacement worker.
  static bool KillOwner(const std::string& session) {
    e2e::ClusterProcess* owner = Owner(session);
    if (owner == nullptr) return false;
    owner->Kill();
    AddWorker();
    return true;
  }

  void SetUp() override {
    ASSERT_NE(gateways_, nullptr);
    ASSERT_EQ(gateways_->size(), 2u);
    for (int i = 0; i < 2; ++i) {
      auto channel = grpc::CreateChannel((*gateways_)[i]->address(),
                                         grpc::InsecureChannelCredentials());
      sessions_[i] = v1::Sessions::NewStub(channel);
      streams_[i] = v1::Streams::NewStub(channel);
    }
  }

  void TearDown() override {
    for (e2e::ClusterProcess* p : paused_) p->Signal(SIGCONT);
    paused_.clear();
    if (!HasFailure()) return;
    for (auto& g : *gateways_) ADD_FAILURE() << "gateway log:\n" << g->Log();
    for (auto& w : *workers_) ADD_FAILURE() << "worker log:\n" << w->Log();
  }

  static std::unique_ptr<grpc::ClientContext> Ctx(
      const std::string& tenant = "") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(180));
    if (!tenant.empty()) ctx->AddMetadata("x-statestream-tenant", tenant);
    return ctx;
  }

  absl::Status Create(const std::string& id, int gw = 0,
                      const std::string& tenant = "") {
    v1::CreateSessionRequest req;
    req.set_request_id("create-" + id);
    req.set_session_id(id);
    v1::Session s;
    auto ctx = Ctx(tenant);
    return FromGrpcStatus(sessions_[gw]->CreateSession(ctx.get(), req, &s));
  }

  absl::StatusOr<v1::Session> Get(const std::string& id, int gw = 0,
                                  const std::string& tenant = "") {
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session s;
    auto ctx = Ctx(tenant);
    grpc::Status st = sessions_[gw]->GetSession(ctx.get(), req, &s);
    if (!st.ok()) return FromGrpcStatus(st);
    return s;
  }

  std::string Export(const std::string& id, int gw = 0) {
    v1::ExportStateRequest req;
    req.set_session_id(id);
    auto ctx = Ctx();
    auto reader = sessions_[gw]->ExportState(ctx.get(), req);
    v1::ExportStateResponse msg;
    std::string blob;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) blob += msg.chunk().data();
    }
    grpc::Status st = reader->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
    return blob;
  }

  // Deterministic text of `n` chunks.
  static std::vector<std::string> Chunks(int n, int size, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::string> chunks;
    for (int i = 0; i < n; ++i) {
      std::string c;
      for (int j = 0; j < size; ++j) c.push_back(' ' + rng() % 90);
      chunks.push_back(c);
    }
    return chunks;
  }

  // Creates session `id` with `prompt` appended and committed (through
  // gateway 0).
  void CreateWithPrompt(const std::string& id, const std::string& prompt) {
    ASSERT_TRUE(Create(id).ok());
    v1::AppendRequest r = Text(id, 0, prompt);
    r.set_flush(true);
    r.set_checkpoint(true);
    auto ctx = Ctx();
    auto stream = streams_[0]->Append(ctx.get());
    ASSERT_TRUE(stream->Write(r));
    v1::AppendResponse ack;
    ASSERT_TRUE(stream->Read(&ack));
    stream->WritesDone();
    ASSERT_TRUE(stream->Finish().ok());
  }

  static v1::AppendRequest Text(const std::string& id, uint64_t offset,
                                const std::string& text) {
    v1::AppendRequest r;
    r.set_session_id(id);
    r.set_expected_input_offset(offset);
    r.set_text_utf8(text);
    return r;
  }

  static std::string Trailer(const grpc::ClientContext& ctx,
                             const std::string& key) {
    auto it = ctx.GetServerTrailingMetadata().find(key);
    if (it == ctx.GetServerTrailingMetadata().end()) return "";
    return std::string(it->second.data(), it->second.size());
  }

  // Appends `chunks` in one call through gateway `gw`, `batch` requests in
  // flight at a time; after the batches listed in `kill_after`, kills the
  // session's owner while the next batch is unacknowledged. Expects every
  // ack, in order, and OK. Returns the number of workers the gateway used.
  int AppendAll(const std::string& id, const std::vector<std::string>& chunks,
                int batch, const std::vector<int>& kill_after, int gw = 0) {
    auto ctx = Ctx();
    auto stream = streams_[gw]->Append(ctx.get());
    uint64_t offset = 0;
    size_t next = 0;
    int kills = 0;
    for (int b = 0; next < chunks.size(); ++b) {
      std::vector<uint64_t> ends;
      for (int i = 0; i < batch && next < chunks.size(); ++i, ++next) {
        EXPECT_TRUE(stream->Write(Text(id, offset, chunks[next])));
        offset += chunks[next].size();
        ends.push_back(offset);
      }
      if (std::find(kill_after.begin(), kill_after.end(), b) !=
          kill_after.end()) {
        if (KillOwner(id)) ++kills;
      }
      for (uint64_t end : ends) {
        v1::AppendResponse ack;
        EXPECT_TRUE(stream->Read(&ack));
        EXPECT_EQ(ack.input_offset(), end);
      }
    }
    stream->WritesDone();
    grpc::Status st = stream->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(kills, static_cast<int>(kill_after.size()));
    return std::atoi(Trailer(*ctx, "x-statestream-attempts").c_str());
  }

  static std::string* dir_;
  static testing::RedisServer* redis_;
  static StateStore* store_;
  static std::vector<std::unique_ptr<e2e::ClusterProcess>>* workers_;
  static std::vector<std::unique_ptr<e2e::ClusterProcess>>* gateways_;
  // Workers Pause stopped (each stays in workers_ until the suite ends).
  static inline std::vector<e2e::ClusterProcess*> paused_;
  std::unique_ptr<v1::Sessions::Stub> sessions_[2];
  std::unique_ptr<v1::Streams::Stub> streams_[2];
};

std::string* ClusterFailoverTest::dir_ = nullptr;
testing::RedisServer* ClusterFailoverTest::redis_ = nullptr;
StateStore* ClusterFailoverTest::store_ = nullptr;
std::vector<std::unique_ptr<e2e::ClusterProcess>>*
    ClusterFailoverTest::workers_ = nullptr;
std::vector<std::unique_ptr<e2e::ClusterProcess>>*
    ClusterFailoverTest::gateways_ = nullptr;

TEST_F(ClusterFailoverTest, AppendSurvivesRepeatedOwnerKills) {
  const auto chunks = Chunks(120, 97, 1);
  ASSERT_TRUE(Create("append-ref").ok());
  EXPECT_EQ(AppendAll("append-ref", chunks, 4, {}), 1);
  // 10 kills at different batch boundaries, each with 4 requests in
  // flight; the stream goes through the other gateway.
  ASSERT_TRUE(Create("append-victim", 1).ok());
  const std::vector<int> kill_after = {1, 3, 6, 8, 11, 14, 17, 20, 24, 27};
  EXPECT_GE(AppendAll("append-victim", chunks, 4, kill_after, 1), 11);

  auto ref = Get("append-ref");
  auto victim = Get("append-victim", 1);
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_TRUE(victim.ok()) << victim.status();
  EXPECT_EQ(victim->position(), ref->position());
  EXPECT_EQ(victim->input_offset(), ref->input_offset());
  EXPECT_EQ(victim->committed_input_offset(), victim->input_offset());
  const std::string a = Export("append-ref"), b = Export("append-victim", 1);
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "exported states differ";
}

TEST_F(ClusterFailoverTest, GenerateResumesWithIdenticalTokens) {
  const auto prompt = Chunks(1, 64, 2)[0];
  for (const char* id : {"gen-ref", "gen-victim"}) {
    ASSERT_NO_FATAL_FAILURE(CreateWithPrompt(id, prompt));
  }
  auto request = [](const std::string& id) {
    v1::GenerateRequest g;
    g.set_session_id(id);
    g.set_request_id("gen-1");
    g.set_max_tokens(8192);
    g.mutable_sampling()->set_seed(1234);
    g.mutable_sampling()->set_temperature(1.0f);
    // Large responses: flow control holds the worker back, so a kill after
    // the first chunk lands mid-generation.
    g.set_logprobs(true);
    g.set_top_logprobs(20);
    return g;
  };
  auto run = [&](const std::string& id, bool kill, int* attempts) {
    std::vector<uint32_t> tokens;
    std::string text;
    auto ctx = Ctx();
    auto reader = streams_[1]->Generate(ctx.get(), request(id));
    v1::GenerateResponse msg;
    bool killed = !kill;
    while (reader->Read(&msg)) {
      if (!msg.has_chunk()) continue;
      EXPECT_EQ(msg.chunk().index(), tokens.size());
      for (uint32_t t : msg.chunk().tokens()) tokens.push_back(t);
      text += msg.chunk().text_utf8();
      if (!killed) killed = KillOwner(id);
    }
    grpc::Status st = reader->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
    *attempts = std::atoi(Trailer(*ctx, "x-statestream-attempts").c_str());
    return std::make_pair(tokens, text);
  };
  int attempts = 0;
  auto ref = run("gen-ref", false, &attempts);
  EXPECT_EQ(attempts, 1);
  ASSERT_EQ(ref.first.size(), 8192u);
  // The kill may land after the worker finished (all output buffered);
  // retry until a failover really happened mid-stream.
  int failovers = 0;
  for (int i = 0; i < 4 && failovers == 0; ++i) {
    auto victim = run("gen-victim", true, &attempts);
    EXPECT_TRUE(victim.first == ref.first) << "token sequences differ";
    EXPECT_TRUE(victim.second == ref.second) << "texts differ";
    if (attempts > 1) ++failovers;
  }
  EXPECT_EQ(failovers, 1) << "no kill landed mid-generation";
}

TEST_F(ClusterFailoverTest, PausedOwnerIsFencedOut) {
  const auto chunks = Chunks(40, 50, 3);
  ASSERT_TRUE(Create("pause-ref").ok());
  AppendAll("pause-ref", chunks, 2, {});
  ASSERT_TRUE(Create("pause-victim").ok());
  auto ctx = Ctx();
  auto stream = streams_[0]->Append(ctx.get());
  uint64_t offset = 0;
  e2e::ClusterProcess* paused = nullptr;
  double fenced_before = -1;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i == 20) {
      paused = Owner("pause-victim");
      ASSERT_NE(paused, nullptr);
      fenced_before = FencedCommits(*paused);
      // The gateway's stall timeout moves it.
      ASSERT_NO_FATAL_FAILURE(Pause(paused));
    }
    ASSERT_TRUE(stream->Write(Text("pause-victim", offset, chunks[i])));
    offset += chunks[i].size();
    v1::AppendResponse ack;
    ASSERT_TRUE(stream->Read(&ack));
    EXPECT_EQ(ack.input_offset(), offset);
  }
  e2e::ClusterProcess* now_owner = Owner("pause-victim");
  paused->Signal(SIGCONT);  // its late commit must be refused (fenced)
  ASSERT_NE(now_owner, nullptr) << "no live worker holds the lease";
  EXPECT_NE(now_owner, paused);
  stream->WritesDone();
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_GE(std::atoi(Trailer(*ctx, "x-statestream-attempts").c_str()), 2);
  // Compare only once the resumed owner met the fence (its idle commit or
  // its lease renewal, within seconds): before, a late commit that got
  // through could still land after the comparison.
  ASSERT_GE(fenced_before, 0);
  double fenced = fenced_before;
  for (int i = 0; i < 600 && fenced <= fenced_before; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    fenced = FencedCommits(*paused);
  }
  EXPECT_GT(fenced, fenced_before) << "the paused owner never met the fence";
  auto ref = Get("pause-ref");
  auto victim = Get("pause-victim");
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_TRUE(victim.ok()) << victim.status();
  EXPECT_EQ(victim->input_offset(), ref->input_offset());
  EXPECT_TRUE(Export("pause-ref") == Export("pause-victim"));
}

// A paused owner (SIGSTOP: its kernel still accepts and acknowledges TCP,
// its gRPC answers nothing) under a Generate on an open connection (the
// gateway's pings go unanswered) and a unary call through the other
// gateway (its connection attempt never completes): both fail over and
// finish on another worker, well before gRPC's 20 s connect timeout.
TEST_F(ClusterFailoverTest, CallsToAPausedOwnerFailOver) {
  const std::string id = "pause-generate";
  ASSERT_NO_FATAL_FAILURE(CreateWithPrompt(id, Chunks(1, 64, 4)[0]));
  e2e::ClusterProcess* paused = Owner(id);
  ASSERT_NE(paused, nullptr);
  const std::string before = Diagnose(id, paused);
  ASSERT_NO_FATAL_FAILURE(Pause(paused));
  // The gateways' stall timeout is 2 s; without pings and a connect
  // timeout of their own both calls wait past this deadline.
  auto deadline = [] {
    return std::chrono::system_clock::now() + std::chrono::seconds(15);
  };
  v1::GenerateRequest g;
  g.set_session_id(id);
  g.set_request_id("paused-1");
  g.set_max_tokens(16);
  g.mutable_sampling()->set_seed(5);
  auto ctx = Ctx();
  ctx->set_deadline(deadline());
  auto reader = streams_[0]->Generate(ctx.get(), g);
  v1::GenerateResponse msg;
  int tokens = 0;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) tokens += msg.chunk().tokens_size();
  }
  grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(tokens, 16);
  const int used = std::atoi(Trailer(*ctx, "x-statestream-attempts").c_str());
  EXPECT_GE(used, 2) << "before:\n"
                     << before << "after:\n"
                     << Diagnose(id, paused);
  v1::GetSessionRequest get;
  get.set_session_id(id);
  v1::Session s;
  auto get_ctx = Ctx();
  get_ctx->set_deadline(deadline());
  grpc::Status got = sessions_[1]->GetSession(get_ctx.get(), get, &s);
  EXPECT_TRUE(got.ok()) << got.error_code() << " " << got.error_message();
  paused->Signal(SIGCONT);
  e2e::ClusterProcess* now_owner = Owner(id);
  ASSERT_NE(now_owner, nullptr) << Diagnose(id, nullptr);
  EXPECT_NE(now_owner, paused) << Diagnose(id, nullptr);
}

// A request the owner takes longer to apply than the stall timeout (512 KiB
// of text; the gateways' stall timeout is 2 s) is slow, not a dead worker:
// its connection answers pings, so the call stays on it and ends OK after
// one attempt.
TEST_F(ClusterFailoverTest, ASlowRequestIsNotAStall) {
  const std::string id = "slow-append";
  ASSERT_TRUE(Create(id).ok());
  auto ctx = Ctx();
  auto stream = streams_[0]->Append(ctx.get());
  const std::string small = Chunks(1, 100, 5)[0];
  std::string big = Chunks(1, 1 << 16, 6)[0];
  while (big.size() < (1u << 19)) big += big.substr(0, (1 << 19) - big.size());
  const absl::Time start = absl::Now();
  ASSERT_TRUE(stream->Write(Text(id, 0, small)));
  ASSERT_TRUE(stream->Write(Text(id, small.size(), big)));
  v1::AppendResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.input_offset(), small.size());
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.input_offset(), small.size() + big.size());
  stream->WritesDone();
  grpc::Status st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(Trailer(*ctx, "x-statestream-attempts"), "1")
      << "took " << absl::Now() - start;
}

// The gateway keeps an import whole (for a replay on failover), so it
// ends one that sends more state than its header announces as soon as it
// does, before buffering the rest; one without a header first is
// malformed.
TEST_F(ClusterFailoverTest, GatewayBoundsImports) {
  auto import = [&](bool header_first, int* written) {
    auto ctx = Ctx();
    v1::Session session;
    auto writer = sessions_[0]->ImportState(ctx.get(), &session);
    *written = 0;
    if (header_first) {
      v1::ImportStateRequest h;
      h.mutable_header()->set_request_id("import-flood");
      h.mutable_header()->set_mode(v1::IMPORT_MODE_CREATE);
      h.mutable_header()->mutable_state()->set_total_bytes(1024);
      h.mutable_header()->mutable_state()->set_chunk_bytes(1024);
      h.mutable_header()->mutable_state()->set_chunk_count(1);
      EXPECT_TRUE(writer->Write(h));
    }
    v1::ImportStateRequest chunk;
    chunk.mutable_chunk()->set_data(std::string(1 << 20, 'x'));
    for (int i = 0; i < 2000 && writer->Write(chunk); ++i) ++*written;
    writer->WritesDone();
    return writer->Finish();
  };
  int written = 0;
  grpc::Status st = import(true, &written);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS) << st.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(st)), Reason::kStateCorrupt);
  EXPECT_LT(written, 2000);  // ended early: 2 GB were never buffered
  st = import(false, &written);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << st.error_message();
  EXPECT_LT(written, 2000);
}

TEST_F(ClusterFailoverTest, TenantsAreIsolatedThroughTheGateway) {
  ASSERT_TRUE(Create("shared-name", 0, "alpha").ok());
  EXPECT_TRUE(Get("shared-name", 1, "alpha").ok());
  auto other = Get("shared-name", 1, "beta");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(other.status()), Reason::kSessionNotFound);
  auto missing = Get("no-such-session", 1, "alpha");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(missing.status()), Reason::kSessionNotFound);
  // The same id in another tenant is another session.
  EXPECT_TRUE(Create("shared-name", 1, "beta").ok());
  auto bad = Get("shared-name", 0, "Not A Tenant");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnauthenticated);
}

// A gateway serving --max-calls calls refuses the next one, typed and
// retryable (RESOURCE_EXHAUSTED/OVERLOADED), instead of starting a thread
// per call without bound, and counts it in its metrics (a stream as well
// as a unary call); once a call ends the next one is served.
TEST_F(ClusterFailoverTest, AGatewayAtItsCallLimitRefusesMore) {
  auto g = e2e::ClusterProcess::Start(
      {STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
       "--redis=" + redis_->address(), "--max-calls=1", "--shutdown-grace=1s",
       "--metrics-listen=127.0.0.1:0"},
      absl::StrCat(*dir_, "/gateway-limited.log"), kStartTimeout);
  ASSERT_TRUE(g.ok()) << g.status();
  auto channel =
      grpc::CreateChannel((*g)->address(), grpc::InsecureChannelCredentials());
  auto sessions = v1::Sessions::NewStub(channel);
  auto streams = v1::Streams::NewStub(channel);
  const std::string id = "limited";
  ASSERT_TRUE(Create(id).ok());
  auto get = [&] {
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session s;
    auto ctx = Ctx();
    return sessions->GetSession(ctx.get(), req, &s);
  };
  // An open Append holds the one call.
  auto ctx = Ctx();
  auto stream = streams->Append(ctx.get());
  ASSERT_TRUE(stream->Write(Text(id, 0, "held")));
  v1::AppendResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  grpc::Status refused = get();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(refused)), Reason::kOverloaded);
  {
    auto second_ctx = Ctx();
    auto second = streams->Append(second_ctx.get());
    second->Write(Text(id, 4, "more"));
    second->WritesDone();
    const grpc::Status st = second->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << st.error_message();
  }
  auto metrics = e2e::ScrapeMetrics((*g)->metrics_address());
  ASSERT_TRUE(metrics.has_value());
  for (const char* method : {"GetSession", "Append"}) {
    EXPECT_EQ(
        (*metrics)[absl::StrCat("statestream_gateway_calls_total{method=\"",
                                method, "\",code=\"RESOURCE_EXHAUSTED\"}")],
        1)
        << method;
  }
  EXPECT_EQ(
      (*metrics)["statestream_gateway_errors_total{reason=\"OVERLOADED\"}"], 2);
  stream->WritesDone();
  ASSERT_TRUE(stream->Finish().ok());
  // The call's thread ends just after its status is sent.
  grpc::Status served = get();
  for (int i = 0; i < 100 && !served.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    served = get();
  }
  EXPECT_TRUE(served.ok()) << served.error_message();
}

// The process's thread count (/proc/PID/status), or -1.
int Threads(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "Threads:")) return std::atoi(line.c_str() + 8);
  }
  return -1;
}

// A gateway forwards Append streams without a thread per stream: 200 open
// streams, idle between requests, leave its thread count where it was (it
// was three threads a stream), every one still acks after idling, and
// when the owner of some is killed (SIGKILL) they all fail over at once
// and commit every request, none lost or doubled.
TEST_F(ClusterFailoverTest, IdleAppendStreamsHoldNoGatewayThreads) {
  constexpr int kStreams = 200;
  const pid_t gateway = (*gateways_)[1]->pid();
  struct Open {
    std::string id;
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<
        grpc::ClientReaderWriter<v1::AppendRequest, v1::AppendResponse>>
        stream;
    uint64_t offset = 0;
  };
  std::vector<Open> open(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    open[i].id = absl::StrCat("idle-", i);
    ASSERT_TRUE(Create(open[i].id, 1).ok());
  }
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  // Every stream sends `text` before any reads its ack.
  auto step = [&](const std::string& text) {
    for (Open& o : open) {
      ASSERT_TRUE(o.stream->Write(Text(o.id, o.offset, text))) << o.id;
      o.offset += text.size();
    }
    for (Open& o : open) {
      v1::AppendResponse ack;
      ASSERT_TRUE(o.stream->Read(&ack)) << o.id;
      EXPECT_EQ(ack.input_offset(), o.offset) << o.id;
    }
  };
  for (Open& o : open) {
    o.ctx = Ctx();
    o.stream = streams_[1]->Append(o.ctx.get());
  }
  ASSERT_NO_FATAL_FAILURE(step("opened, "));
  const int idle = Threads(gateway);
  EXPECT_LT(idle - before, kStreams / 4)
      << before << " threads before the streams opened, " << idle
      << " with them open and idle";
  absl::SleepFor(absl::Seconds(1));
  ASSERT_NO_FATAL_FAILURE(step("idled, "));
  ASSERT_TRUE(KillOwner(open[0].id));
  ASSERT_NO_FATAL_FAILURE(step("failed over."));
  for (Open& o : open) {
    o.stream->WritesDone();
    grpc::Status st = o.stream->Finish();
    EXPECT_TRUE(st.ok()) << o.id << ": " << st.error_message();
  }
  for (const Open& o : open) {
    auto s = Get(o.id, 1);
    ASSERT_TRUE(s.ok()) << o.id << ": " << s.status();
    EXPECT_EQ(s->committed_input_offset(), o.offset) << o.id;
  }
}

// Generate calls in progress hold no gateway thread either: 40 of them,
// each read one chunk at a time by a slow client (so flow control holds
// their workers back), leave the gateway's thread count where it was (it
// was one thread a call); one then runs to its end, the others are
// cancelled, and the gateway is back to its threads at rest.
TEST_F(ClusterFailoverTest, OpenGeneratesHoldNoGatewayThreads) {
  constexpr int kCalls = 40;
  const pid_t gateway = (*gateways_)[1]->pid();
  const auto prompt = Chunks(1, 32, 5)[0];
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_NO_FATAL_FAILURE(
        CreateWithPrompt(absl::StrCat("gen-open-", i), prompt));
  }
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>>
      readers;
  for (int i = 0; i < kCalls; ++i) {
    v1::GenerateRequest g;
    g.set_session_id(absl::StrCat("gen-open-", i));
    g.set_request_id("open");
    g.set_max_tokens(4096);
    g.mutable_sampling()->set_seed(7);
    g.set_logprobs(true);
    g.set_top_logprobs(20);
    ctxs.push_back(Ctx());
    readers.push_back(streams_[1]->Generate(ctxs.back().get(), g));
  }
  for (auto& reader : readers) {
    v1::GenerateResponse msg;
    if (!reader->Read(&msg)) {
      grpc::Status st = reader->Finish();
      FAIL() << st.error_code() << ": " << st.error_message();
    }
    EXPECT_TRUE(msg.has_chunk());
  }
  const int open = Threads(gateway);
  EXPECT_LT(open - before, kCalls / 4)
      << before << " threads before the calls, " << open << " with them open";
  v1::GenerateResponse msg;
  uint32_t tokens = 0;
  bool done = false;
  while (readers[0]->Read(&msg)) {
    if (msg.has_chunk()) tokens += msg.chunk().tokens_size();
    if (msg.has_done()) done = true;
  }
  grpc::Status first = readers[0]->Finish();
  EXPECT_TRUE(first.ok()) << first.error_message();
  EXPECT_TRUE(done);
  EXPECT_GT(tokens, 0u);
  for (int i = 1; i < kCalls; ++i) {
    ctxs[i]->TryCancel();
    EXPECT_EQ(readers[i]->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
}

// Unary calls waiting on a worker hold no gateway thread: 40 GetSession
// calls to the sessions of a paused owner (SIGSTOP, over a connection the
// gateway has open, so each waits for an answer until the gateway's pings
// go unanswered) leave the gateway's thread count where it was (it was one
// thread a call); then each fails over and ends OK on another worker.
TEST_F(ClusterFailoverTest, UnaryCallsWaitingOnAWorkerHoldNoGatewayThreads) {
  constexpr int kCalls = 40;
  const pid_t gateway = (*gateways_)[1]->pid();
  std::vector<std::string> ids;
  e2e::ClusterProcess* owner = nullptr;
  for (int i = 0; ids.size() < kCalls && i < 400; ++i) {
    const std::string id = absl::StrCat("unary-wait-", i);
    ASSERT_NO_FATAL_FAILURE(CreateWithPrompt(id, "leased"));
    e2e::ClusterProcess* o = Owner(id);
    if (owner == nullptr) owner = o;
    if (o != nullptr && o == owner) ids.push_back(id);
  }
  ASSERT_EQ(ids.size(), static_cast<size_t>(kCalls));
  // The gateway's connection to the owner is open and in use.
  ASSERT_TRUE(Get(ids[0], 1).ok());
  ASSERT_NO_FATAL_FAILURE(Pause(owner));
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  struct Call {
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::GetSessionRequest req;
    v1::Session resp;
    grpc::Status status;
  };
  std::vector<Call> calls(kCalls);
  absl::Mutex mu;
  int ended = 0;
  for (int i = 0; i < kCalls; ++i) {
    Call& c = calls[i];
    c.ctx = Ctx();
    c.ctx->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(20));
    c.req.set_session_id(ids[i]);
    sessions_[1]->async()->GetSession(c.ctx.get(), &c.req, &c.resp,
                                      [&c, &mu, &ended](grpc::Status st) {
                                        absl::MutexLock lock(&mu);
                                        c.status = std::move(st);
                                        ++ended;
                                      });
  }
  // Well inside the 2 s stall timeout: the calls wait on the paused owner.
  absl::SleepFor(absl::Milliseconds(500));
  const int waiting = Threads(gateway);
  {
    absl::MutexLock lock(&mu);
    ASSERT_LT(ended, kCalls / 2) << "the calls did not wait on the owner";
  }
  EXPECT_LT(waiting - before, kCalls / 4)
      << before << " threads before the calls, " << waiting
      << " while they waited";
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* n) { return *n == kCalls; }, &ended));
  }
  owner->Signal(SIGCONT);
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_TRUE(calls[i].status.ok())
        << ids[i] << ": " << calls[i].status.error_code() << " "
        << calls[i].status.error_message();
    EXPECT_EQ(calls[i].resp.session_id(), ids[i]);
  }
}

// Imports in progress hold no gateway thread while their clients upload:
// 40 of them, each stopped after its header, leave the gateway's thread
// count where it was (it was one thread an import); each then sends its
// chunks and creates a session with the exported state.
TEST_F(ClusterFailoverTest, OpenImportsHoldNoGatewayThreads) {
  constexpr int kCalls = 40;
  const pid_t gateway = (*gateways_)[1]->pid();
  ASSERT_NO_FATAL_FAILURE(CreateWithPrompt("import-source", "exported"));
  std::vector<v1::ExportStateResponse> exported;
  {
    v1::ExportStateRequest req;
    req.set_session_id("import-source");
    auto ctx = Ctx();
    auto reader = sessions_[1]->ExportState(ctx.get(), req);
    v1::ExportStateResponse msg;
    while (reader->Read(&msg)) exported.push_back(msg);
    ASSERT_TRUE(reader->Finish().ok());
  }
  ASSERT_GE(exported.size(), 2u);
  ASSERT_TRUE(exported[0].has_header());
  const int before = Threads(gateway);
  ASSERT_GT(before, 0);
  struct Open {
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::Session session;
    std::unique_ptr<grpc::ClientWriter<v1::ImportStateRequest>> writer;
  };
  std::vector<Open> open(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    Open& o = open[i];
    o.ctx = Ctx();
    o.writer = sessions_[1]->ImportState(o.ctx.get(), &o.session);
    v1::ImportStateRequest header;
    header.mutable_header()->set_session_id(absl::StrCat("imported-", i));
    header.mutable_header()->set_request_id(absl::StrCat("import-", i));
    header.mutable_header()->set_mode(v1::IMPORT_MODE_CREATE);
    *header.mutable_header()->mutable_state() = exported[0].header();
    ASSERT_TRUE(o.writer->Write(header));
  }
  // The headers are read (and each import admitted) within this.
  absl::SleepFor(absl::Milliseconds(500));
  const int uploading = Threads(gateway);
  EXPECT_LT(uploading - before, kCalls / 4)
      << before << " threads before the imports, " << uploading
      << " while their clients uploaded";
  for (int i = 0; i < kCalls; ++i) {
    Open& o = open[i];
    for (size_t k = 1; k < exported.size(); ++k) {
      v1::ImportStateRequest chunk;
      *chunk.mutable_chunk() = exported[k].chunk();
      ASSERT_TRUE(o.writer->Write(chunk));
    }
    o.writer->WritesDone();
    grpc::Status st = o.writer->Finish();
    EXPECT_TRUE(st.ok()) << i << ": " << st.error_message();
    EXPECT_EQ(o.session.session_id(), absl::StrCat("imported-", i));
  }
}

// The owner drained (SIGTERM) under an open Append: the sessions it evicts
// answer "the worker is draining", so the gateway moves the stream to
// another worker and the client sees every ack and OK, never the drain.
TEST_F(ClusterFailoverTest, AppendSurvivesADrainedOwner) {
  const std::string id = "drain-victim";
  const auto chunks = Chunks(60, 40, 8);
  ASSERT_TRUE(Create(id).ok());
  auto ctx = Ctx();
  auto stream = streams_[0]->Append(ctx.get());
  uint64_t offset = 0;
  std::thread drain;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i == 20) {
      e2e::ClusterProcess* owner = Owner(id);
      ASSERT_NE(owner, nullptr);
      drain = std::thread([owner] { EXPECT_EQ(owner->Terminate(), 0); });
    }
    if (i > 20) absl::SleepFor(absl::Milliseconds(100));
    ASSERT_TRUE(stream->Write(Text(id, offset, chunks[i])));
    offset += chunks[i].size();
    v1::AppendResponse ack;
    ASSERT_TRUE(stream->Read(&ack)) << "chunk " << i;
    EXPECT_EQ(ack.input_offset(), offset);
  }
  stream->WritesDone();
  grpc::Status st = stream->Finish();
  drain.join();
  AddWorker();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_GE(std::atoi(Trailer(*ctx, "x-statestream-attempts").c_str()), 2);
  auto s = Get(id);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_offset(), offset);
}

}  // namespace
}  // namespace statestream
