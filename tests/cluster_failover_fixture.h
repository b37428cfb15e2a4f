// SPDX-License-Identifier: Apache-2.0
// ClusterFailoverTest: one cluster of real processes on 127.0.0.1 per
// test binary (one redis-server, three workers over a small random
// byte-level model, two gateways with few task threads), shared by the
// tests of cluster_failover_test.cc (workers killed and paused under
// calls) and cluster_threads_test.cc (what the gateway holds while calls
// wait), and helpers to call it, kill and pause its workers.
#ifndef STATESTREAM_TESTS_CLUSTER_FAILOVER_FIXTURE_H_
#define STATESTREAM_TESTS_CLUSTER_FAILOVER_FIXTURE_H_

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
#include "tests/e2e_calls.h"
#include "tests/metrics_scrape.h"
#include "tests/subprocess.h"

namespace statestream::e2e {

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
  // it has (kill returns before). The fixture's TearDown sends SIGCONT to
  // every paused worker, so a test that fails before resuming it leaves
  // none stopped for the next test of the suite.
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
    absl::StatusOr<std::string> blob =
        ExportBlob(sessions_[gw].get(), id, Ctx());
    EXPECT_TRUE(blob.ok()) << blob.status();
    return blob.ok() ? *std::move(blob) : "";
  }

  // Deterministic text of `n` chunks.
  static std::vector<std::string> Chunks(int n, int size, uint32_t seed) {
    return TextChunks(n, size, seed);
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

  static inline std::string* dir_ = nullptr;
  static inline testing::RedisServer* redis_ = nullptr;
  static inline StateStore* store_ = nullptr;
  static inline std::vector<std::unique_ptr<e2e::ClusterProcess>>* workers_ =
      nullptr;
  static inline std::vector<std::unique_ptr<e2e::ClusterProcess>>* gateways_ =
      nullptr;
  // Workers Pause stopped (each stays in workers_ until the suite ends).
  static inline std::vector<e2e::ClusterProcess*> paused_;
  std::unique_ptr<v1::Sessions::Stub> sessions_[2];
  std::unique_ptr<v1::Streams::Stub> streams_[2];
};

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_CLUSTER_FAILOVER_FIXTURE_H_
