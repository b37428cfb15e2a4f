// SPDX-License-Identifier: Apache-2.0
// Commit and load latency of the Redis state store (chunked, pipelined) vs
// one plain SET/GET of the whole encoded state, and the time to renew the
// leases of many resident sessions one call each vs RenewLeases
// (pipelined), and the time to list them (ListSessions, pipelined) vs one
// GetHead each, on a redis-server this program starts on loopback.
// Usage: state_store_bench [iterations] [sessions]
// Results: bench/RESULTS.md.
#include <hiredis/hiredis.h>
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/malloc_tuning.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/redis_harness.h"

namespace statestream {
namespace {

struct Stats {
  double p50, p99;
};
Stats Summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]};
}

// Renews `n` sessions' leases, one RenewLease each and with one
// RenewLeases call, alternating `rounds` times; prints the medians.
int LeaseRenewal(StateStore* store, int n, int rounds) {
  std::vector<StateStore::LeaseToRenew> leases;
  StateSnapshot tiny;
  tiny.model_fingerprint = "bench";
  tiny.state.assign(16, 0.5f);
  for (int i = 0; i < n; ++i) {
    const SessionKey key{"bench", absl::StrCat("lease", i)};
    (void)store->DeleteSession(key);
    CreateSessionRequest cr;
    cr.key = key;
    cr.initial_state = tiny;
    cr.durability = Durability::kMemory;
    if (!store->CreateSession(cr).ok()) return 1;
    auto lease = store->AcquireLease(key, "bench", absl::Seconds(60), false);
    if (!lease.ok()) return 1;
    leases.push_back({key, lease->fence});
  }
  std::vector<double> one_each, batched;
  for (int round = 0; round < rounds; ++round) {
    absl::Time t0 = absl::Now();
    for (const auto& l : leases) {
      if (!store->RenewLease(l.key, "bench", l.fence, absl::Seconds(60)).ok()) {
        return 1;
      }
    }
    one_each.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    t0 = absl::Now();
    for (const auto& r :
         store->RenewLeases("bench", leases, absl::Seconds(60))) {
      if (!r.ok()) return 1;
    }
    batched.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
  }
  const double a = Summarize(one_each).p50, b = Summarize(batched).p50;
  std::printf(
      "\nrenew %d leases: one call each %.1f ms, RenewLeases %.1f ms "
      "(%.1fx), median of %d\n",
      n, a, b, a / b, rounds);
  // Listing them: ListSessions pages of 1000 (each batch's heads read in
  // one pipeline) vs one GetHead per session, as listings read before.
  std::vector<double> listed, one_by_one;
  for (int round = 0; round < rounds; ++round) {
    absl::Time t0 = absl::Now();
    ListSessionsRequest list;
    list.tenant = "bench";
    list.page_size = 1000;
    size_t count = 0;
    do {
      auto page = store->ListSessions(list);
      if (!page.ok()) return 1;
      count += page->sessions.size();
      list.page_token = page->next_page_token;
    } while (!list.page_token.empty());
    listed.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    if (count < leases.size()) return 1;
    t0 = absl::Now();
    for (const auto& l : leases) {
      if (!store->GetHead(l.key).ok()) return 1;
    }
    one_by_one.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
  }
  const double c = Summarize(one_by_one).p50, d = Summarize(listed).p50;
  std::printf(
      "list %d sessions: one GetHead each %.1f ms, ListSessions %.1f ms "
      "(%.1fx), median of %d\n",
      n, c, d, c / d, rounds);
  for (const auto& l : leases) (void)store->DeleteSession(l.key);
  return 0;
}

int Main(int argc, char** argv) {
  // Large values are malloc-bound in hiredis (docs/state-store.md).
  if (!TuneMallocForLargeBuffers()) std::fprintf(stderr, "mallopt refused\n");
  const int iters = argc > 1 ? std::atoi(argv[1]) : 50;
  auto server = testing::RedisServer::Start({});
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  o.keep_versions = 2;
  // Versions beyond keep_versions expire after a short grace, so Redis
  // reuses their memory as a busy server does in steady state (with the
  // default 30 s grace, this short run would only ever fault in fresh
  // pages on the server side).
  o.dropped_version_grace = absl::Milliseconds(100);
  auto store = NewRedisStateStore(o);
  if (!store.ok()) return 1;
  redisContext* plain = redisConnect("127.0.0.1", (*server)->port());
  std::printf("%-8s %-14s %10s %10s %10s %10s\n", "state", "method",
              "commit_p50", "commit_p99", "load_p50", "load_p99");
  for (const double mb : {2.4, 6.5, 34.0}) {
    StateSnapshot s;
    s.model_fingerprint = "bench";
    s.state.assign(static_cast<size_t>(mb * 1e6 / 4), 0.5f);
    const SessionKey key{"bench", "s"};
    (void)(*store)->DeleteSession(key);
    CreateSessionRequest cr;
    cr.key = key;
    cr.initial_state = s;
    auto created = (*store)->CreateSession(cr);
    if (!created.ok()) return 1;
    // The two methods alternate within each iteration, so load from other
    // processes on this shared machine hits both alike.
    std::vector<double> commit, load, plain_commit, plain_load;
    uint64_t version = 1;
    for (int i = 0; i < iters; ++i) {
      CommitRequest r;
      r.key = key;
      r.expected_version = version;
      r.fence = created->session.fence;
      r.state = s;
      absl::Time t0 = absl::Now();
      auto c = (*store)->Commit(r);
      commit.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      if (!c.ok()) return 1;
      version = c->version.version;
      t0 = absl::Now();
      auto l = (*store)->LoadVersion(key, 0);
      load.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      if (!l.ok()) return 1;

      // The baseline: encode + one SET; one GET + decode.
      t0 = absl::Now();
      const std::string bytes = EncodeState(s);
      auto* reply = static_cast<redisReply*>(
          redisCommand(plain, "SET plain %b", bytes.data(), bytes.size()));
      freeReplyObject(reply);
      plain_commit.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      t0 = absl::Now();
      reply = static_cast<redisReply*>(redisCommand(plain, "GET plain"));
      auto d = DecodeState(absl::string_view(reply->str, reply->len));
      freeReplyObject(reply);
      plain_load.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      if (!d.ok()) return 1;
    }
    for (const auto& [method, cs, ls] :
         {std::tuple{"store(chunked)", &commit, &load},
          std::tuple{"plain SET/GET", &plain_commit, &plain_load}}) {
      const Stats c = Summarize(*cs), l = Summarize(*ls);
      std::printf("%-8.1f %-14s %10.2f %10.2f %10.2f %10.2f\n", mb, method,
                  c.p50, c.p99, l.p50, l.p99);
    }
  }
  redisFree(plain);
  return LeaseRenewal(store->get(), argc > 2 ? std::atoi(argv[2]) : 10000, 5);
}

}  // namespace
}  // namespace statestream

int main(int argc, char** argv) { return statestream::Main(argc, argv); }
