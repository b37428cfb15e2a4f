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

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/state_codec.h"
#include "tests/cluster_harness.h"
#include "tests/metrics_scrape.h"

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
  // Whether `n` reached `at_least` within two minutes.
  [[nodiscard]] static bool WaitFor(const std::atomic<int>& n, int at_least) {
    const absl::Time deadline = absl::Now() + absl::Minutes(2);
    while (n.load() < at_least) {
      if (absl::Now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  // statestream_gateway_failovers_total{method="Append"} over the
  // gateways (-1 when one cannot be read).
  double AppendFailovers() {
    double sum = 0;
    for (auto& g : cluster_->gateways()) {
      auto samples = e2e::ScrapeMetrics(g->metrics_address());
      if (!samples) return -1;
      auto it = samples->find(
          "statestream_gateway_failovers_total{method=\"Append\"}");
      if (it != samples->end()) sum += it->second;
    }
    return sum;
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
  e2e::ClusterOptions options;
  options.worker_args = {"--lease-ttl=60s"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(options));
  const auto chunks = e2e::TextChunks(20, 64, 21);
  ASSERT_TRUE(cluster_->Create("lost").ok());
  ASSERT_TRUE(e2e::AppendResumable(cluster_.get(), "lost", chunks, 2,
                                   [](const grpc::Status&) { return false; })
                  .ok());
  ASSERT_NE(cluster_->Owner("lost"), nullptr);  // resident, leased
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
  }
  // No worker writes its stale copy back (its lease renewal, an idle
  // commit) over the next heartbeats.
  absl::SleepFor(absl::Seconds(3));
  auto head = cluster_->store()->GetHead({"default", "lost"});
  EXPECT_EQ(head.status().code(), absl::StatusCode::kNotFound)
      << (head.ok() ? "the stale state came back" : head.status().ToString());
  // A new session of the same id is a fresh one.
  // (A new logical operation: a new request id. The first create's id
  // is still remembered by the worker that served it.)
  v1::CreateSessionRequest create;
  create.set_request_id("create-lost-again");
  create.set_session_id("lost");
  v1::Session created;
  auto ctx = e2e::ClientContext();
  const absl::Status recreated = FromGrpcStatus(
      cluster_->sessions(1)->CreateSession(ctx.get(), create, &created));
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

// Unary mutations retried with the same request_id after the worker that
// served them was SIGKILLed: the retry reaches a worker whose memory never
// saw the id, and gets what statestream.proto ("request ids") promises from
// the store: a create its session back (DUPLICATE_REQUEST for other
// content), a rollback with expected_version VERSION_MISMATCH (one without
// it applied again), a delete SESSION_NOT_FOUND unless allow_missing.
TEST_F(ClusterChaosTest, UnaryRetriesAfterTheirWorkerIsKilled) {
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
  st = call(&v1::Sessions::Stub::RollbackSession, cluster_->sessions(1),
            rollback, &again);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(GetReason(st), Reason::kVersionMismatch) << st;
  head = cluster_->Get("retried", 1);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->version(), rolled.version()) << "the retry was applied";
  // Rollback without expected_version: applied again, as documented.
  rollback.set_request_id("retry-rollback-plain");
  rollback.clear_expected_version();
  ASSERT_TRUE(call(&v1::Sessions::Stub::RollbackSession, cluster_->sessions(0),
                   rollback, &rolled)
                  .ok());
  ASSERT_NO_FATAL_FAILURE(replace_workers());
  st = call(&v1::Sessions::Stub::RollbackSession, cluster_->sessions(1),
            rollback, &again);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(again.version(), rolled.version() + 1);
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
TEST_F(ClusterChaosTest,
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
  Output ref;
  {
    auto ctx = e2e::ClientContext();
    auto reader = cluster_->streams(0)->Generate(ctx.get(), request("gen-ref"));
    ref = read_all(reader.get());
  }
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
  Output got;
  {
    auto ctx = e2e::ClientContext();
    auto reader =
        cluster_->streams(0)->Generate(ctx.get(), request("gen-victim"));
    got = read_all(reader.get());
  }
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
  Output again;
  {
    auto ctx = e2e::ClientContext();
    auto reader =
        cluster_->streams(0)->Generate(ctx.get(), request("gen-victim"));
    again = read_all(reader.get());
  }
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
TEST_F(ClusterChaosTest, AnOwnerKilledWithACommitInFlight) {
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
