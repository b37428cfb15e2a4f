// SPDX-License-Identifier: Apache-2.0
// The cluster under operational faults and load (tests/cluster_harness.h:
// redis-server, 3 workers, 2 gateways as real processes): Redis restarted
// during traffic, workers added and removed under load, and a bounded load
// test. Results are compared with uninterrupted reference runs; faults are
// triggered at protocol points (after given numbers of acks), and nothing
// asserts on timing.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "gtest/gtest.h"
#include "tests/cluster_harness.h"

namespace statestream {
namespace {

class ClusterChaosTest : public ::testing::Test {
 protected:
  void StartCluster(e2e::ClusterOptions options) {
    auto c = e2e::Cluster::Start(STATESTREAM_BIN, options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
  }
  void TearDown() override {
    if (HasFailure() && cluster_) ADD_FAILURE() << cluster_->Logs();
  }
  // The reference: `chunks` appended to a fresh session with no fault.
  void Reference(const std::vector<std::string>& chunks, v1::Session* head,
                 std::string* state) {
    ASSERT_TRUE(cluster_->Create("reference").ok());
    ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), "reference", chunks, 5,
                                     [](const grpc::Status&) { return false; })
                    .ok());
    auto s = cluster_->Get("reference");
    ASSERT_TRUE(s.ok()) << s.status();
    *head = *s;
    auto blob = cluster_->Export("reference");
    ASSERT_TRUE(blob.ok()) << blob.status();
    *state = *blob;
  }
  static void WaitFor(const std::atomic<int>& n, int at_least) {
    while (n.load() < at_least) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  std::unique_ptr<e2e::Cluster> cluster_;
};

// Redis SIGKILLed (AOF, appendfsync always) and restarted under traffic.
// Clients resume from the committed offset, as the proto says. Two bugs
// this found: a worker answered GetSession from a copy another worker had
// taken over (clients skipped input), and a gateway that read the empty
// registry right after the restart had no worker to route to.
TEST_F(ClusterChaosTest, RedisRestartDuringTraffic) {
  e2e::ClusterOptions options;
  // Every write fsynced: a SIGKILLed Redis keeps what it acknowledged.
  options.redis_args = {"--appendonly", "yes", "--appendfsync", "always"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const auto chunks = e2e::TextChunks(60, 64, 11);
  v1::Session ref;
  std::string ref_state;
  ASSERT_NO_FATAL_FAILURE(Reference(chunks, &ref, &ref_state));
  constexpr int kSessions = 4;
  std::atomic<int> acked{0};
  std::atomic<uint64_t> committed[kSessions] = {};
  std::atomic<bool> down{false};
  std::atomic<int> errors_while_down{0};
  std::vector<std::string> unexpected;
  absl::Mutex mu;
  std::vector<std::thread> clients;
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(cluster_->Create(absl::StrCat("r", i), i % 2).ok());
  }
  for (int i = 0; i < kSessions; ++i) {
    clients.emplace_back([&, i] {
      absl::Status st = e2e::AppendResumable(
          cluster_.get(), absl::StrCat("r", i), chunks, 5,
          [&](const grpc::Status& s) {
            if (down.load()) errors_while_down.fetch_add(1);
            // While Redis is away the service answers UNAVAILABLE (the
            // store, or no ready worker); a stream cut by it may end
            // CANCELLED/ABORTED too. Anything else is a bug.
            if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
                s.error_code() != grpc::StatusCode::ABORTED &&
                s.error_code() != grpc::StatusCode::CANCELLED) {
              absl::MutexLock lock(&mu);
              unexpected.push_back(
                  absl::StrCat(s.error_code(), " ", s.error_message()));
              return false;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            return true;
          },
          &committed[i], &acked);
      if (!st.ok()) {
        absl::MutexLock lock(&mu);
        unexpected.push_back(st.ToString());
      }
    });
  }
  WaitFor(acked, kSessions * 15);
  uint64_t committed_before[kSessions];
  down = true;
  for (int i = 0; i < kSessions; ++i) committed_before[i] = committed[i];
  cluster_->redis()->Kill();
  // A call that must touch the store fails cleanly while it is away.
  absl::Status create = cluster_->Create("during-outage", 1);
  EXPECT_EQ(create.code(), absl::StatusCode::kUnavailable) << create;
  for (auto& w : cluster_->workers()) EXPECT_GT(w->pid(), 0);
  ASSERT_TRUE(cluster_->redis()->Restart().ok());
  down = false;
  for (auto& t : clients) t.join();
  EXPECT_TRUE(unexpected.empty()) << absl::StrJoin(unexpected, "\n");
  for (auto& w : cluster_->workers()) EXPECT_GT(w->pid(), 0);
  for (auto& g : cluster_->gateways()) EXPECT_GT(g->pid(), 0);
  for (int i = 0; i < kSessions; ++i) {
    const std::string id = absl::StrCat("r", i);
    // Acknowledged commits survived the restart.
    auto head = cluster_->store()->GetHead({"default", id});
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_GE(head->head.input_offset, committed_before[i]) << id;
    // The service recovers by itself: UNAVAILABLE may linger briefly
    // (workers re-register with their next heartbeat).
    auto s = cluster_->Get(id);
    for (int tries = 0; tries < 100 && !s.ok() &&
                        s.status().code() == absl::StatusCode::kUnavailable;
         ++tries) {
      absl::SleepFor(absl::Milliseconds(100));
      s = cluster_->Get(id);
    }
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->input_offset(), ref.input_offset()) << id;
    EXPECT_EQ(s->position(), ref.position()) << id;
    auto state = cluster_->Export(id);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_TRUE(*state == ref_state) << id << ": state differs";
  }
  std::printf("redis restart: %d client errors while Redis was down\n",
              errors_while_down.load());
}

TEST_F(ClusterChaosTest, WorkersAddedAndRemovedUnderLoad) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  const auto chunks = e2e::TextChunks(80, 48, 12);
  v1::Session ref;
  std::string ref_state;
  ASSERT_NO_FATAL_FAILURE(Reference(chunks, &ref, &ref_state));
  constexpr int kSessions = 8;
  std::atomic<int> acked{0};
  std::vector<std::string> failures;
  absl::Mutex mu;
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(cluster_->Create(absl::StrCat("m", i), i % 2).ok());
  }
  std::vector<std::thread> clients;
  for (int i = 0; i < kSessions; ++i) {
    clients.emplace_back([&, i] {
      // The gateway moves streams by itself; a client retry (resume from
      // the session's offset) is allowed only for UNAVAILABLE.
      absl::Status st = e2e::AppendResumable(
          cluster_.get(), absl::StrCat("m", i), chunks, 5,
          [](const grpc::Status& s) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            return s.error_code() == grpc::StatusCode::UNAVAILABLE;
          },
          nullptr, &acked);
      if (!st.ok()) {
        absl::MutexLock lock(&mu);
        failures.push_back(st.ToString());
      }
    });
  }
  const int total = kSessions * static_cast<int>(chunks.size());
  // Two workers join, then the owners of m0 and m1 leave: one drained
  // (SIGTERM), one killed.
  WaitFor(acked, total / 8);
  ASSERT_TRUE(cluster_->AddWorker().ok());
  WaitFor(acked, total / 4);
  ASSERT_TRUE(cluster_->AddWorker().ok());
  WaitFor(acked, total * 3 / 8);
  // (No ASSERT while the clients run.)
  auto owner_of_some_session = [&]() -> e2e::ClusterProcess* {
    for (int i = 0; i < kSessions; ++i) {
      e2e::ClusterProcess* p = cluster_->Owner(absl::StrCat("m", i));
      if (p != nullptr) return p;
    }
    for (auto& w : cluster_->workers()) {
      if (w->pid() > 0) return w.get();
    }
    return nullptr;
  };
  e2e::ClusterProcess* drained = owner_of_some_session();
  EXPECT_EQ(drained->Terminate(), 0);
  WaitFor(acked, total / 2);
  owner_of_some_session()->Kill();
  for (auto& t : clients) t.join();
  EXPECT_TRUE(failures.empty()) << failures.front();
  int live = 0;
  for (auto& w : cluster_->workers()) live += w->pid() > 0 ? 1 : 0;
  EXPECT_EQ(live, 3);
  for (int i = 0; i < kSessions; ++i) {
    const std::string id = absl::StrCat("m", i);
    auto s = cluster_->Get(id, i % 2);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->input_offset(), ref.input_offset()) << id;
    EXPECT_EQ(s->position(), ref.position()) << id;
    auto state = cluster_->Export(id);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_TRUE(*state == ref_state) << id << ": state differs";
  }
}

// 200 sessions over 2 gateways for STATESTREAM_LOAD_SECONDS (default 15):
// each client thread appends to its sessions in turn (one Append stream per
// request) and every 8th operation generates 8 tokens. Reports throughput
// and latency percentiles; the only error allowed is backpressure
// (RESOURCE_EXHAUSTED). Every acknowledged append is in the final offsets.
TEST_F(ClusterChaosTest, BoundedLoad) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  constexpr int kSessions = 200;
  constexpr int kThreads = 16;
  const char* env = std::getenv("STATESTREAM_LOAD_SECONDS");
  const int seconds = env != nullptr ? std::max(1, std::atoi(env)) : 15;
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(cluster_->Create(absl::StrCat("load", i), i % 2).ok()) << i;
  }
  const std::string chunk(32, 'x');
  std::vector<uint64_t> offsets(kSessions, 0);
  std::atomic<int64_t> appends{0}, generates{0}, backpressure{0};
  std::vector<std::string> errors;
  std::vector<double> append_ms, generate_ms;
  absl::Mutex mu;
  const auto end =
      std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<double> my_append, my_generate;
      int op = 0;
      for (int i = t; std::chrono::steady_clock::now() < end;
           i = i + kThreads < kSessions ? i + kThreads : t, ++op) {
        const std::string id = absl::StrCat("load", i);
        const int gw = (i + op) % 2;
        const auto began = std::chrono::steady_clock::now();
        grpc::Status st;
        const bool generate = op % 8 == 7 && offsets[i] > 0;
        if (generate) {
          v1::GenerateRequest g;
          g.set_session_id(id);
          g.set_request_id(absl::StrCat("g", t, "-", op));
          g.set_max_tokens(8);
          g.mutable_sampling()->set_seed(op);
          auto ctx = e2e::ClientContext();
          auto reader = cluster_->streams(gw)->Generate(ctx.get(), g);
          v1::GenerateResponse msg;
          while (reader->Read(&msg)) {
          }
          st = reader->Finish();
        } else {
          v1::AppendRequest r;
          r.set_session_id(id);
          r.set_expected_input_offset(offsets[i]);
          r.set_text_utf8(chunk);
          auto ctx = e2e::ClientContext();
          auto stream = cluster_->streams(gw)->Append(ctx.get());
          v1::AppendResponse ack;
          if (stream->Write(r) && stream->Read(&ack)) {
            offsets[i] = ack.input_offset();
          }
          stream->WritesDone();
          st = stream->Finish();
        }
        const double ms = std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - began)
                              .count();
        if (st.ok()) {
          (generate ? my_generate : my_append).push_back(ms);
          (generate ? generates : appends).fetch_add(1);
        } else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          backpressure.fetch_add(1);
        } else {
          absl::MutexLock lock(&mu);
          errors.push_back(
              absl::StrCat(id, ": ", st.error_code(), " ", st.error_message()));
        }
      }
      absl::MutexLock lock(&mu);
      append_ms.insert(append_ms.end(), my_append.begin(), my_append.end());
      generate_ms.insert(generate_ms.end(), my_generate.begin(),
                         my_generate.end());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(errors.empty())
      << errors.size() << " errors, first: " << errors.front();
  auto pct = [](std::vector<double> v, double q) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
  };
  std::printf(
      "load: %d sessions, 2 gateways, 3 workers, %d s: %lld appends "
      "(%.0f/s, p50 %.2f ms, p99 %.2f ms), %lld generates of 8 tokens "
      "(%.0f/s, p50 %.2f ms, p99 %.2f ms), %lld RESOURCE_EXHAUSTED\n",
      kSessions, seconds, static_cast<long long>(appends.load()),
      appends.load() / static_cast<double>(seconds), pct(append_ms, 0.5),
      pct(append_ms, 0.99), static_cast<long long>(generates.load()),
      generates.load() / static_cast<double>(seconds), pct(generate_ms, 0.5),
      pct(generate_ms, 0.99), static_cast<long long>(backpressure.load()));
  EXPECT_GT(appends.load(), 0);
  // Acknowledged appends are all there, each once: one writer a session,
  // and an append applied without its ack would have failed the next one
  // (POSITION_MISMATCH, an error above).
  for (int i = 0; i < kSessions; ++i) {
    auto s = cluster_->Get(absl::StrCat("load", i));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->input_offset(), offsets[i]) << i;
  }
}

}  // namespace
}  // namespace statestream
