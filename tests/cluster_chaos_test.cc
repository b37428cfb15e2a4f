// SPDX-License-Identifier: Apache-2.0
// The cluster under operational faults and load (tests/cluster_harness.h:
// redis-server, 3 workers, 2 gateways as real processes): Redis restarted
// during traffic and restarted empty, workers added and removed under
// load, and a bounded load test. (Client retries after kills:
// cluster_retry_test.cc.) Results are compared with uninterrupted reference
// runs; faults are triggered at protocol points (after given numbers of acks),
// and nothing asserts on timing.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "tests/cluster_fixture.h"
#include "tests/e2e_calls.h"

namespace statestream {
namespace {

class ClusterChaosTest : public e2e::ClusterFixture {
 protected:
  // A cluster whose leases outlast the test (60 s: renewed every 20 s),
  // with session `id` created and `n` chunks of 64 bytes appended to it:
  // resident and leased on its owner.
  void StartWithResidentSession(const std::string& id, int n, uint32_t seed) {
    e2e::ClusterOptions options;
    options.worker_args = {"--lease-ttl=60s"};
    ASSERT_NO_FATAL_FAILURE(StartCluster(options));
    ASSERT_TRUE(cluster_->Create(id).ok());
    ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), id,
                                     e2e::TextChunks(n, 64, seed), 2,
                                     [](const grpc::Status&) { return false; })
                    .ok());
    ASSERT_NE(cluster_->Owner(id), nullptr);
  }
  // On a cluster whose Redis keeps snapshots only: sessions `ids` get six
  // 64-byte chunks, Redis saves a snapshot, they get six more (checkpointed
  // every two: clean), and Redis is SIGKILLed and restarted from the
  // snapshot while their owners still hold them. Returns their heads in
  // the snapshot (six chunks in).
  std::vector<SessionHead> StoreGoesBack(const std::vector<std::string>& ids) {
    const auto chunks = e2e::TextChunks(12, 64, 51);
    const auto never = [](const grpc::Status&) { return false; };
    std::vector<SessionHead> saved;
    for (const std::string& id : ids) {
      EXPECT_TRUE(cluster_->Create(id).ok());
      EXPECT_TRUE(e2e::AppendResumable(cluster_.get(), id,
                                       {chunks.begin(), chunks.begin() + 6}, 2,
                                       never)
                      .ok());
    }
    EXPECT_TRUE(cluster_->redis()->Command({"SAVE"}).ok());
    for (const std::string& id : ids) {
      EXPECT_TRUE(
          e2e::AppendResumable(cluster_.get(), id, chunks, 2, never).ok());
    }
    cluster_->redis()->Kill();
    EXPECT_TRUE(cluster_->redis()->Restart().ok());
    for (const std::string& id : ids) {
      auto head = cluster_->store()->GetHead({"default", id});
      EXPECT_TRUE(head.ok()) << head.status();
      if (!head.ok()) break;
      EXPECT_EQ(head->head.input_offset, 6u * 64)
          << id << ": Redis did not go back to the snapshot";
      saved.push_back(*head);
    }
    return saved;
  }
  // Creates session `id` through gateway `gw` as a new operation (a new
  // `request_id`: a worker remembers the first create's id and would
  // answer it again).
  absl::Status CreateAgain(const std::string& id, const std::string& request_id,
                           int gw) {
    v1::CreateSessionRequest create;
    create.set_request_id(request_id);
    create.set_session_id(id);
    v1::Session created;
    auto ctx = e2e::ClientContext();
    return FromGrpcStatus(
        cluster_->sessions(gw)->CreateSession(ctx.get(), create, &created));
  }
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
  std::atomic<int> acked[kSessions] = {};
  std::atomic<uint64_t> committed[kSessions] = {};
  std::vector<std::string> unexpected;
  absl::Mutex mu;
  // While `down`, a client that meets an error waits in its on_error until
  // Redis is back: so every client is known to have met the outage, no
  // acknowledgement arrives while the heads are checked, and nothing is
  // re-sent before the check (a resend would hide a lost commit).
  bool down = false;                    // guarded by mu
  bool give_up = false;                 // guarded by mu: the test failed
  bool met_outage[kSessions] = {};      // guarded by mu
  bool finished[kSessions] = {};        // guarded by mu: its stream ended
  bool redis_gone = false;              // guarded by mu: killed, not restarted
  bool finished_without_redis = false;  // guarded by mu
  std::vector<std::thread> clients;
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(cluster_->Create(absl::StrCat("r", i), i % 2).ok());
  }
  for (int i = 0; i < kSessions; ++i) {
    clients.emplace_back([&, i] {
      absl::Status st = e2e::AppendResumable(
          cluster_.get(), absl::StrCat("r", i), chunks, 5,
          [&](const grpc::Status& s) {
            {
              absl::MutexLock lock(&mu);
              // While Redis is away the service answers UNAVAILABLE (the
              // store, or no ready worker); a stream cut by it may end
              // CANCELLED/ABORTED too. Anything else is a bug.
              if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
                  s.error_code() != grpc::StatusCode::ABORTED &&
                  s.error_code() != grpc::StatusCode::CANCELLED) {
                unexpected.push_back(
                    absl::StrCat(s.error_code(), " ", s.error_message()));
                return false;
              }
              if (down) {
                met_outage[i] = true;
                mu.Await(absl::Condition(
                    +[](bool* d) { return !*d; }, &down));
              }
              if (give_up) return false;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            return true;
          },
          &committed[i], &acked[i]);
      absl::MutexLock lock(&mu);
      finished[i] = true;
      // Its last chunk is a checkpoint: no stream can end OK without Redis.
      if (st.ok() && redis_gone) finished_without_redis = true;
      if (!st.ok()) unexpected.push_back(st.ToString());
    });
  }
  // Whatever fails below, the clients are released and joined.
  absl::Cleanup join = [&] {
    {
      absl::MutexLock lock(&mu);
      down = false;
      give_up = ::testing::Test::HasFatalFailure();
    }
    for (auto& t : clients) t.join();
  };
  // Redis goes once every client is some way in (a client that finished
  // first cannot meet the outage, and is not required to below).
  for (int i = 0; i < kSessions; ++i) ASSERT_TRUE(WaitFor(acked[i], 10));
  {
    absl::MutexLock lock(&mu);
    down = true;
  }
  cluster_->redis()->Kill();
  {
    absl::MutexLock lock(&mu);
    redis_gone = true;
  }
  // A call that must touch the store fails cleanly while it is away.
  absl::Status create = cluster_->Create("during-outage", 1);
  EXPECT_EQ(create.code(), absl::StatusCode::kUnavailable) << create;
  // The store's address is the deployment's: the caller is not told it.
  EXPECT_FALSE(
      absl::StrContains(create.message(), cluster_->redis()->address()))
      << create;
  for (auto& w : cluster_->workers()) EXPECT_GT(w->pid(), 0);
  // Every client needs Redis within 5 chunks (its next checkpoint), so
  // each still running meets the outage; then none can be acknowledged
  // anything more.
  auto all_met = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (int i = 0; i < kSessions; ++i) {
      if (!met_outage[i] && !finished[i]) return false;
    }
    return true;
  };
  {
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(&all_met), absl::Seconds(120));
    EXPECT_TRUE(all_met()) << "a client never met the outage";
    EXPECT_TRUE(std::any_of(std::begin(met_outage), std::end(met_outage),
                            [](bool m) { return m; }));
  }
  uint64_t committed_before[kSessions];
  for (int i = 0; i < kSessions; ++i) committed_before[i] = committed[i];
  {
    absl::MutexLock lock(&mu);
    redis_gone = false;
    EXPECT_FALSE(finished_without_redis)
        << "a stream ended OK while Redis was gone";
  }
  ASSERT_TRUE(cluster_->redis()->Restart().ok());
  // Acknowledged commits survived the restart: read before any client
  // resumes (a client that re-sent lost input would hide the loss).
  for (int i = 0; i < kSessions; ++i) {
    const std::string id = absl::StrCat("r", i);
    auto head = cluster_->store()->GetHead({"default", id});
    ASSERT_TRUE(head.ok()) << id << ": " << head.status();
    EXPECT_GE(head->head.input_offset, committed_before[i]) << id;
  }
  EXPECT_GT(*std::max_element(std::begin(committed_before),
                              std::end(committed_before)),
            0u);
  std::move(join).Invoke();
  EXPECT_TRUE(unexpected.empty()) << absl::StrJoin(unexpected, "\n");
  for (auto& w : cluster_->workers()) EXPECT_GT(w->pid(), 0);
  for (auto& g : cluster_->gateways()) EXPECT_GT(g->pid(), 0);
  for (int i = 0; i < kSessions; ++i) {
    const std::string id = absl::StrCat("r", i);
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
}

TEST_F(ClusterChaosTest, WorkersAddedAndRemovedUnderLoad) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  const auto chunks = e2e::TextChunks(400, 48, 12);
  v1::Session ref;
  std::string ref_state;
  ASSERT_NO_FATAL_FAILURE(Reference(chunks, &ref, &ref_state));
  constexpr int kSessions = 8;
  std::atomic<int> acked[kSessions] = {};
  std::atomic<int> acked_total{0}, client_retries{0};
  std::vector<std::string> failures;
  absl::Mutex mu;
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(cluster_->Create(absl::StrCat("m", i), i % 2).ok());
  }
  const double failovers_before = AppendFailovers();
  ASSERT_GE(failovers_before, 0) << "a gateway's /metrics cannot be read";
  std::vector<std::thread> clients;
  absl::Cleanup join = [&] {
    for (auto& t : clients) t.join();
  };
  for (int i = 0; i < kSessions; ++i) {
    clients.emplace_back([&, i] {
      // The gateway moves streams by itself; a client retry (resume from
      // the session's offset) is allowed only for UNAVAILABLE.
      absl::Status st = e2e::AppendResumable(
          cluster_.get(), absl::StrCat("m", i), chunks, 5,
          [&](const grpc::Status& s) {
            client_retries.fetch_add(1);
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            return s.error_code() == grpc::StatusCode::UNAVAILABLE;
          },
          nullptr, &acked[i]);
      if (!st.ok()) {
        absl::MutexLock lock(&mu);
        failures.push_back(st.ToString());
      }
    });
  }
  // AppendResumable counts per session; the total for the waits.
  auto total_acked = [&] {
    int n = 0;
    for (auto& a : acked) n += a.load();
    acked_total = n;
    return n;
  };
  auto wait_total = [&](int at_least) {
    const absl::Time deadline = absl::Now() + absl::Minutes(2);
    while (total_acked() < at_least && absl::Now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return acked_total.load() >= at_least;
  };
  const int total = kSessions * static_cast<int>(chunks.size());
  // Two workers join, then the owners of two sessions whose streams still
  // run leave: one killed, one drained (SIGTERM).
  ASSERT_TRUE(wait_total(total / 8));
  ASSERT_TRUE(cluster_->AddWorker().ok());
  ASSERT_TRUE(wait_total(total / 4));
  ASSERT_TRUE(cluster_->AddWorker().ok());
  ASSERT_TRUE(wait_total(total * 3 / 8));
  // (A moved session's lease may name its old worker for a moment.)
  auto owner_of_a_running_stream = [&]() -> e2e::ClusterProcess* {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    do {
      for (int i = 0; i < kSessions; ++i) {
        if (acked[i].load() + 10 >= static_cast<int>(chunks.size())) continue;
        e2e::ClusterProcess* p = cluster_->Owner(absl::StrCat("m", i));
        if (p != nullptr) return p;
      }
      absl::SleepFor(absl::Milliseconds(20));
    } while (absl::Now() < deadline);
    return nullptr;
  };
  // Killed first: a drain (SIGTERM) takes long enough for every stream to
  // end meanwhile.
  e2e::ClusterProcess* killed = owner_of_a_running_stream();
  ASSERT_NE(killed, nullptr);
  killed->Kill();
  e2e::ClusterProcess* drained = owner_of_a_running_stream();
  ASSERT_NE(drained, nullptr);
  EXPECT_EQ(drained->Terminate(), 0);
  std::move(join).Invoke();
  EXPECT_TRUE(failures.empty()) << failures.front();
  // The departures moved streams: the gateways failed them over, or (a
  // drained worker's streams end UNAVAILABLE) the clients resumed. (The
  // two workers' sessions were mid-stream when their workers left, and
  // every session ends equal to the reference below, so each one's rest
  // was applied elsewhere.)
  const double failovers_after = AppendFailovers();
  ASSERT_GE(failovers_after, 0) << "a gateway's /metrics cannot be read";
  EXPECT_GE(failovers_after - failovers_before + client_retries.load(), 2)
      << "failovers " << failovers_after - failovers_before
      << ", client retries " << client_retries.load();
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

// Redis restarted empty (no persistence: everything it held is gone)
// while a worker holds the session resident. Its next heartbeat finds its
// registry entry gone and it re-checks its leases at once (not at its next
// renewal, lease_ttl / 3 = 20 s here): the session is dropped, no worker
// answers from or re-commits the stale copy, and a new session of the same
// id starts from nothing.
TEST_F(ClusterChaosTest, RedisRestartedEmptyResurrectsNothing) {
  ASSERT_NO_FATAL_FAILURE(StartWithResidentSession("lost", 20, 21));
  cluster_->redis()->Kill();
  ASSERT_TRUE(cluster_->redis()->Restart().ok());
  // Until the owner's next heartbeat (300 ms) it may still answer from
  // its copy (and the gateways UNAVAILABLE while the registry is empty).
  for (int gw = 0; gw < 2; ++gw) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    absl::StatusOr<v1::Session> s = cluster_->Get("lost", gw);
    while (s.status().code() != absl::StatusCode::kNotFound &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
      s = cluster_->Get("lost", gw);
    }
    EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound)
        << "gateway " << gw << ": "
        << (s.ok() ? s->DebugString() : s.status().ToString());
    EXPECT_EQ(GetReason(s.status()), Reason::kSessionNotFound);
  }
  // An append at the old offset or at 0 finds no session either.
  for (uint64_t offset : {uint64_t{20 * 64}, uint64_t{0}}) {
    auto ctx = e2e::ClientContext();
    auto stream = cluster_->streams(offset == 0 ? 1 : 0)->Append(ctx.get());
    v1::AppendRequest r;
    r.set_session_id("lost");
    r.set_expected_input_offset(offset);
    r.set_text_utf8("more");
    stream->Write(r);
    stream->WritesDone();
    v1::AppendResponse ack;
    EXPECT_FALSE(stream->Read(&ack)) << ack.DebugString();
    const absl::Status st = FromGrpcStatus(stream->Finish());
    EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
    EXPECT_EQ(GetReason(st), Reason::kSessionNotFound) << st;
  }
  // No worker writes its stale copy back (its lease renewal, an idle
  // commit) over the next heartbeats.
  absl::SleepFor(absl::Seconds(3));
  auto head = cluster_->store()->GetHead({"default", "lost"});
  EXPECT_EQ(head.status().code(), absl::StatusCode::kNotFound)
      << (head.ok() ? "the stale state came back" : head.status().ToString());
  // A new session of the same id is a fresh one.
  const absl::Status recreated = CreateAgain("lost", "create-lost-again", 1);
  ASSERT_TRUE(recreated.ok()) << recreated;
  ASSERT_TRUE(cluster_->Create("fresh").ok());
  const auto more = e2e::TextChunks(5, 64, 22);
  for (const char* id : {"lost", "fresh"}) {
    ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), id, more, 2,
                                     [](const grpc::Status&) { return false; })
                    .ok())
        << id;
  }
  auto lost = cluster_->Export("lost");
  auto fresh = cluster_->Export("fresh");
  ASSERT_TRUE(lost.ok()) << lost.status();
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_TRUE(*lost == *fresh) << "the recreated session kept old state";
  auto s = cluster_->Get("lost", 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_offset(), 5u * 64);
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

// Redis restarted from a snapshot older than the sessions' last commits
// (snapshots only, no AOF: what a crash of Redis saving every few minutes
// leaves) while their owner still holds them. The store kept the owner's
// leases, so their fences still match, but not their latest versions: the
// owner writes its copy over the store's older head (every commit was
// VERSION_MISMATCH for as long as it held the lease), and no acknowledged
// input is lost — for a session written to again, and for a clean one
// when its owner is stopped.
TEST_F(ClusterChaosTest, RedisBackFromAnOlderSnapshotLosesNoAcknowledgedInput) {
  e2e::ClusterOptions options;
  options.redis_args = {"--appendonly", "no", "--save", ""};
  options.worker_args = {"--lease-ttl=60s"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const auto chunks = e2e::TextChunks(16, 64, 31);
  v1::Session ref;
  std::string ref_state;
  ASSERT_NO_FATAL_FAILURE(Reference(chunks, &ref, &ref_state));
  const auto never = [](const grpc::Status&) { return false; };
  const std::vector<std::string> six(chunks.begin(), chunks.begin() + 6);
  const std::vector<std::string> twelve(chunks.begin(), chunks.begin() + 12);
  for (const char* id : {"back", "idle"}) {
    ASSERT_TRUE(cluster_->Create(id).ok());
    ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), id, six, 2, never).ok());
  }
  ASSERT_TRUE(cluster_->redis()->Command({"SAVE"}).ok());
  const SessionKey key{"default", "back"}, idle{"default", "idle"};
  auto saved = cluster_->store()->GetHead(key);
  ASSERT_TRUE(saved.ok()) << saved.status();
  for (const char* id : {"back", "idle"}) {
    ASSERT_TRUE(
        e2e::AppendResumable(cluster_.get(), id, twelve, 2, never).ok());
  }
  auto before = cluster_->Get("back");
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_GT(before->version(), saved->head.version);
  cluster_->redis()->Kill();
  ASSERT_TRUE(cluster_->redis()->Restart().ok());
  auto restored = cluster_->store()->GetHead(key);
  ASSERT_TRUE(restored.ok()) << restored.status();
  ASSERT_EQ(restored->head.version, saved->head.version)
      << "Redis did not go back to the snapshot";
  // The client goes on from where it was acknowledged (retrying only
  // while the gateways find no worker: their registry went back too).
  uint64_t at = 12 * 64;
  for (size_t c = 12; c < chunks.size(); ++c) {
    v1::AppendResponse ack;
    grpc::Status st;
    for (int tries = 0; tries < 50; ++tries) {
      st = e2e::AppendText(cluster_->streams(0), "", "back", at, chunks[c],
                           /*checkpoint=*/true, &ack);
      if (st.error_code() != grpc::StatusCode::UNAVAILABLE) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(st.ok()) << "chunk " << c << ": " << st.error_code() << " "
                         << st.error_message();
    EXPECT_FALSE(ack.duplicate()) << "chunk " << c;
    at += chunks[c].size();
    EXPECT_EQ(ack.input_offset(), at);
    EXPECT_EQ(ack.committed_input_offset(), at);
    if (c == 12) {
      // Committed over the snapshot's head, not after the lost versions.
      EXPECT_EQ(ack.version(), saved->head.version + 1);
    }
  }
  auto after = cluster_->Get("back");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->input_offset(), ref.input_offset());
  EXPECT_EQ(after->committed_input_offset(), ref.input_offset());
  auto head = cluster_->store()->GetHead(key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.version, after->version());
  EXPECT_EQ(head->head.input_offset, ref.input_offset());
  auto state = cluster_->Export("back");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(*state == ref_state) << "the state differs from the reference";
  // "idle" saw no input since: its owner, stopped, writes it back.
  e2e::ClusterProcess* owner = cluster_->Owner("idle");
  ASSERT_NE(owner, nullptr);
  EXPECT_EQ(owner->Terminate(), 0);
  auto idle_head = cluster_->store()->GetHead(idle);
  ASSERT_TRUE(idle_head.ok()) << idle_head.status();
  EXPECT_EQ(idle_head->head.input_offset, 12u * 64);
}

// The same store going back, met by an eviction: a worker with room for
// one resident session evicts a clean copy that is ahead of the store, and
// writes it back first.
TEST_F(ClusterChaosTest, AnEvictionAfterTheStoreWentBackWritesTheCopyBack) {
  e2e::ClusterOptions options;
  options.workers = 1;
  options.redis_args = {"--appendonly", "no", "--save", ""};
  options.worker_args = {"--lease-ttl=60s", "--residency-bytes=1"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const std::vector<SessionHead> saved = StoreGoesBack({"kept"});
  ASSERT_EQ(saved.size(), 1u);
  const SessionKey key{"default", "kept"};
  // Another session loads on the only worker: "kept" is evicted.
  absl::Status other;
  for (int tries = 0; tries < 50; ++tries) {
    other = CreateAgain("other", "create-other", 0);
    if (other.code() != absl::StatusCode::kUnavailable) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(other.ok()) << other;
  v1::AppendResponse ack;
  const grpc::Status st = e2e::AppendText(cluster_->streams(0), "", "other", 0,
                                          "x", /*checkpoint=*/true, &ack);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto head = cluster_->store()->GetHead(key);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, 12u * 64);
  EXPECT_EQ(head->head.version, saved[0].head.version + 1);
}

// The same store going back, met by a resent checkpoint that asks for more
// durability than the copy's head has: the copy is written back (the level
// asked for is out of reach without an AOF, so the call fails
// UNAVAILABLE, with the version written below it).
TEST_F(ClusterChaosTest, ADurableCheckpointAfterTheStoreWentBackWritesTheCopy) {
  e2e::ClusterOptions options;
  options.redis_args = {"--appendonly", "no", "--save", ""};
  options.worker_args = {"--lease-ttl=60s"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const std::vector<SessionHead> saved = StoreGoesBack({"durable"});
  ASSERT_EQ(saved.size(), 1u);
  const auto chunks = e2e::TextChunks(12, 64, 51);
  v1::AppendRequest resend;  // the last chunk again
  resend.set_session_id("durable");
  resend.set_request_id("resend-last");
  resend.set_expected_input_offset(11 * 64);
  resend.set_text_utf8(chunks[11]);
  resend.set_checkpoint(true);
  resend.set_durability(v1::DURABILITY_FSYNC);
  grpc::Status st;
  for (int tries = 0; tries < 50; ++tries) {
    auto ctx = e2e::ClientContext();
    auto stream = cluster_->streams(0)->Append(ctx.get());
    stream->Write(resend);
    stream->WritesDone();
    v1::AppendResponse ack;
    while (stream->Read(&ack)) {
    }
    st = stream->Finish();
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE ||
        st.error_message().find("durab") != std::string::npos) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
      << st.error_message();
  auto head = cluster_->store()->GetHead({"default", "durable"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, 12u * 64);
  EXPECT_EQ(head->head.version, saved[0].head.version + 1);
}

// The same store going back, met by a committing Generate: the
// generation's commit goes over the store's older head, with the input the
// copy holds beneath it.
TEST_F(ClusterChaosTest, AGenerationAfterTheStoreWentBackCommitsOverIt) {
  e2e::ClusterOptions options;
  options.redis_args = {"--appendonly", "no", "--save", ""};
  options.worker_args = {"--lease-ttl=60s"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const std::vector<SessionHead> saved = StoreGoesBack({"gen"});
  ASSERT_EQ(saved.size(), 1u);
  v1::GenerateRequest g;
  g.set_session_id("gen");
  g.set_request_id("gen-after-restore");
  g.set_max_tokens(4);
  g.set_commit(true);
  g.mutable_sampling()->set_temperature(0);
  grpc::Status st;
  v1::GenerateDone done;
  for (int tries = 0; tries < 50; ++tries) {
    auto ctx = e2e::ClientContext();
    auto reader = cluster_->streams(0)->Generate(ctx.get(), g);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_done()) done = msg.done();
    }
    st = reader->Finish();
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_TRUE(done.committed());
  EXPECT_EQ(done.version(), saved[0].head.version + 1);
  auto head = cluster_->store()->GetHead({"default", "gen"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.version, done.version());
  EXPECT_EQ(head->head.input_offset, done.input_offset());
  EXPECT_GE(head->head.input_offset, 12u * 64);
  EXPECT_EQ(head->head.position, done.position());
}

// A session deleted behind its owner's back (straight in the store, as a
// delete resent through another worker or an expiry does) must not be
// answered from the owner's copy: input for it is not taken for a resend
// of the old session's, and a new session of the same id starts empty.
TEST_F(ClusterChaosTest, ADeletedSessionIsNotAnsweredFromItsOwnersCopy) {
  ASSERT_NO_FATAL_FAILURE(StartWithResidentSession("again", 4, 41));
  e2e::ClusterProcess* owner = cluster_->Owner("again");
  auto channel =
      grpc::CreateChannel(owner->address(), grpc::InsecureChannelCredentials());
  auto streams = v1::Streams::NewStub(channel);
  ASSERT_TRUE(cluster_->store()->DeleteSession({"default", "again"}).ok());
  v1::AppendResponse ack;
  grpc::Status st = e2e::AppendText(streams.get(), "default", "again", 0,
                                    "hello", true, &ack);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND)
      << st.error_message() << "; acknowledged " << ack.DebugString();
  // Created again (a new operation: a new request id), the same worker
  // takes the new session's first input.
  const absl::Status recreated = CreateAgain("again", "create-again-2", 1);
  ASSERT_TRUE(recreated.ok()) << recreated;
  ack.Clear();
  st = e2e::AppendText(streams.get(), "default", "again", 0, "hello", true,
                       &ack);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(ack.duplicate());
  EXPECT_EQ(ack.input_offset(), 5u);
  EXPECT_EQ(ack.committed_input_offset(), 5u);
  auto s = cluster_->Get("again");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_offset(), 5u);
  // Deleted and created again before the copy sees any input: the new
  // session's fence tells the copy it is stale (FENCED, retried by clients
  // and gateways), and the retry starts the new session.
  ASSERT_TRUE(cluster_->store()->DeleteSession({"default", "again"}).ok());
  const absl::Status third = CreateAgain("again", "create-again-3", 0);
  ASSERT_TRUE(third.ok()) << third;
  ack.Clear();
  st = e2e::AppendText(streams.get(), "default", "again", 0, "hi", true, &ack);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED)
      << st.error_message() << "; acknowledged " << ack.DebugString();
  ack.Clear();
  st = e2e::AppendText(streams.get(), "default", "again", 0, "hi", true, &ack);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(ack.duplicate());
  EXPECT_EQ(ack.committed_input_offset(), 2u);
}

}  // namespace
}  // namespace statestream
