// SPDX-License-Identifier: Apache-2.0
#include "services/gateway_router.h"

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/memory_state_store.h"
#include "state_store/testing/forwarding_store.h"

namespace statestream {
namespace {

class GatewayRouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MemoryStateStoreOptions options;
    options.clock = &clock_;
    store_ = *NewMemoryStateStore(options);
    for (const char* id : {"w1", "w2", "w3"}) Register(id, "fp-a", 0);
  }

  void Register(const std::string& id, const std::string& fingerprint,
                double load) {
    WorkerInfo info;
    info.worker_id = id;
    info.address = "addr-" + id;
    info.model_fingerprints = {fingerprint};
    info.load = load;
    ASSERT_TRUE(store_->RegisterWorker(info, absl::Seconds(3)).ok());
  }

  SessionKey CreateSession(const std::string& id) {
    CreateSessionRequest req;
    req.key = {"t", id};
    req.model_id =
        std::string(1, 'm');  // GCC 12 -Wrestrict false positive on = "m"
    req.initial_state.model_fingerprint = "fp-a";
    req.initial_state.state = {0.f, 1.f};
    EXPECT_TRUE(store_->CreateSession(req).ok());
    return req.key;
  }

  GatewayRouterOptions Options() {
    GatewayRouterOptions options;
    options.clock = &clock_;
    options.registry_refresh = absl::ZeroDuration();
    return options;
  }

  // Routes "k" (model fp-a) on a new thread with w1..w3 excluded, as a
  // failover that has crossed them off: `*out` gets the worker chosen or
  // the error, then `*routed` (if set) is notified.
  static std::thread FailoverPastW1ToW3(GatewayRouter* router, std::string* out,
                                        absl::Notification* routed = nullptr) {
    return std::thread([=] {
      auto route = router->RouteAny("k", "fp-a", {"w1", "w2", "w3"});
      *out = route.ok() ? route->worker_id : route.status().ToString();
      if (routed != nullptr) routed->Notify();
    });
  }

  // The registry loses w1..w3 and gains w4.
  void ReplaceWorkersWithW4() {
    for (const char* id : {"w1", "w2", "w3"}) {
      ASSERT_TRUE(store_->UnregisterWorker(id).ok());
    }
    Register("w4", "fp-a", 0);
  }

  FakeClock clock_;
  std::unique_ptr<StateStore> store_;
};

TEST_F(GatewayRouterTest, RendezvousIsStableAndSpreads) {
  GatewayRouter a(store_.get(), Options()), b(store_.get(), Options());
  std::map<std::string, int> per_worker;
  for (int i = 0; i < 300; ++i) {
    SessionKey key{"t", absl::StrCat("s", i)};
    auto ra = a.RouteSession(key, {});
    auto rb = b.RouteSession(key, {});
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_EQ(ra->worker_id, rb->worker_id);  // every gateway agrees
    EXPECT_FALSE(ra->owner);
    ++per_worker[ra->worker_id];
  }
  ASSERT_EQ(per_worker.size(), 3u);
  for (const auto& [id, n] : per_worker) EXPECT_GT(n, 50) << id;
}

TEST_F(GatewayRouterTest, SessionsStayPutWhenAnotherWorkerLeaves) {
  GatewayRouter router(store_.get(), Options());
  std::map<std::string, std::string> before;
  for (int i = 0; i < 100; ++i) {
    std::string id = absl::StrCat("s", i);
    before[id] = router.RouteSession({"t", id}, {})->worker_id;
  }
  // A background read the routes above started may still be out, and
  // may list w3: let it end first.
  router.AwaitBackgroundReads();
  ASSERT_TRUE(store_->UnregisterWorker("w3").ok());
  // The next route starts a registry read (in the background).
  router.RouteAny("k", "", {}).IgnoreError();
  router.AwaitBackgroundReads();
  for (const auto& [id, worker] : before) {
    auto now = router.RouteSession({"t", id}, {});
    ASSERT_TRUE(now.ok());
    if (worker != "w3") {
      EXPECT_EQ(now->worker_id, worker) << id;
    }
    EXPECT_NE(now->worker_id, "w3");
  }
}

TEST_F(GatewayRouterTest, LiveOwnerWinsUnlessExcludedOrSuspect) {
  GatewayRouter router(store_.get(), Options());
  SessionKey key = CreateSession("owned");
  std::string hashed = router.RouteSession(key, {})->worker_id;
  std::string owner = hashed == "w1" ? "w2" : "w1";
  ASSERT_TRUE(store_->AcquireLease(key, owner, absl::Seconds(30), true).ok());
  auto route = router.RouteSession(key, {});
  ASSERT_TRUE(route.ok());
  EXPECT_EQ(route->worker_id, owner);
  EXPECT_EQ(route->address, "addr-" + owner);
  EXPECT_TRUE(route->owner);
  // A failed owner is skipped; the session goes where hashing says.
  EXPECT_EQ(router.RouteSession(key, {owner})->worker_id, hashed);
  router.MarkSuspect(owner);
  EXPECT_EQ(router.RouteSession(key, {})->worker_id, hashed);
  clock_.Advance(absl::Seconds(6));  // suspicion ends (the lease is live)
  for (const char* id : {"w1", "w2", "w3"}) Register(id, "fp-a", 0);
  EXPECT_EQ(router.RouteSession(key, {})->worker_id, owner);
}

// An owner that restarted under its id serving other models (its lease
// still live) is not routed the session: it would answer MODEL_MISMATCH,
// which moves no call. The session goes where hashing among the workers
// serving its model says.
TEST_F(GatewayRouterTest, AnOwnerThatNoLongerServesTheModelIsPassedOver) {
  GatewayRouter router(store_.get(), Options());
  SessionKey key = CreateSession("owned");
  const std::string hashed = router.RouteSession(key, {})->worker_id;
  const std::string owner = hashed == "w1" ? "w2" : "w1";
  ASSERT_TRUE(store_->AcquireLease(key, owner, absl::Seconds(30), true).ok());
  EXPECT_EQ(router.RouteSession(key, {})->worker_id, owner);
  Register(owner, "fp-b", 0);                  // restarted with another model
  router.RouteSession(key, {}).IgnoreError();  // reads the registry again
  router.AwaitBackgroundReads();
  auto route = router.RouteSession(key, {});
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_NE(route->worker_id, owner);
  EXPECT_FALSE(route->owner);
}

// An owner is passed over on a list read within a refresh only: an older
// one (an idle gateway's, read again in the background) may predate the
// restart that gave the owner the model, and passing it over would have
// another worker take a live session from it.
TEST_F(GatewayRouterTest, AnOwnerIsNotPassedOverOnAStaleList) {
  GatewayRouter router(store_.get(), Options());
  Register("w1", "fp-b", 0);  // w1 serves another model at first
  SessionKey key = CreateSession("owned");
  EXPECT_NE(router.RouteSession(key, {})->worker_id, "w1");  // list read
  Register("w1", "fp-a", 0);  // restarted with the session's model
  ASSERT_TRUE(store_->AcquireLease(key, "w1", absl::Seconds(30), true).ok());
  clock_.Advance(absl::Seconds(1));  // the list is older than a refresh
  auto route = router.RouteSession(key, {});
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->worker_id, "w1");
  EXPECT_TRUE(route->owner);
  router.AwaitBackgroundReads();
  route = router.RouteSession(key, {});
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->worker_id, "w1");
  EXPECT_TRUE(route->owner);
}

TEST_F(GatewayRouterTest, FiltersByModelAndFailsWithoutWorkers) {
  Register("other", "fp-b", 0);
  GatewayRouter router(store_.get(), Options());
  SessionKey key = CreateSession("m");
  for (int i = 0; i < 20; ++i) {
    EXPECT_NE(router.RouteSession(key, {})->worker_id, "other");
  }
  auto none = router.RouteSession(key, {"w1", "w2", "w3"});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  // Typed, with a retry hint of one registry refresh (at least 1 ms; these
  // options read the registry on every route).
  EXPECT_EQ(GetReason(none.status()), Reason::kOverloaded) << none.status();
  EXPECT_EQ(GetErrorMetadata(none.status(), "retry_after_ms"), "1");
  // A suspect is still used when nothing else is left.
  router.MarkSuspect("w1");
  EXPECT_EQ(router.RouteSession(key, {"w2", "w3"})->worker_id, "w1");
}

// A session whose model no live worker serves (retired) can still be
// read, exported and deleted: calls that do not run the model go to any
// worker, by the session's hash; the others stay UNAVAILABLE.
TEST_F(GatewayRouterTest, ASessionOfAModelNobodyServesIsReachableForReads) {
  Register("other", "fp-b", 0);
  GatewayRouter router(store_.get(), Options());
  SessionKey key = CreateSession("retired");
  for (const char* id : {"w1", "w2", "w3"}) {
    ASSERT_TRUE(store_->UnregisterWorker(id).ok());
  }
  EXPECT_EQ(router.RouteSession(key, {}).status().code(),
            absl::StatusCode::kUnavailable);
  auto read = router.RouteSession(key, {}, /*any_model=*/true);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->worker_id, "other");
  // Nobody left at all: still UNAVAILABLE.
  EXPECT_EQ(
      router.RouteSession(key, {"other"}, /*any_model=*/true).status().code(),
      absl::StatusCode::kUnavailable);
  // While the model's workers live, reads go to them as before.
  Register("w1", "fp-a", 0);
  GatewayRouter fresh(store_.get(), Options());
  auto back = fresh.RouteSession(key, {}, /*any_model=*/true);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->worker_id, "w1");
}

// An import into a session the store does not know routes by the state's
// model: to a worker serving it (which answers SESSION_NOT_FOUND), or
// MODEL_MISMATCH when none does, never to a worker of another model. An
// existing session routes by its own model whatever the hint.
TEST_F(GatewayRouterTest, AMissingSessionRoutesByTheImportedStatesModel) {
  Register("other", "fp-b", 0);
  GatewayRouter router(store_.get(), Options());
  for (int i = 0; i < 20; ++i) {
    const SessionKey missing{"t", absl::StrCat("missing-", i)};
    auto route = router.RouteSession(missing, {}, false, "fp-b");
    ASSERT_TRUE(route.ok()) << route.status();
    EXPECT_EQ(route->worker_id, "other");
  }
  const absl::Status unserved =
      router.RouteSession({"t", "missing"}, {}, false, "fp-z").status();
  EXPECT_EQ(GetReason(unserved), Reason::kModelMismatch) << unserved;
  SessionKey existing = CreateSession("exists");  // model fp-a
  for (int i = 0; i < 5; ++i) {
    auto route = router.RouteSession(existing, {}, false, "fp-b");
    ASSERT_TRUE(route.ok()) << route.status();
    EXPECT_NE(route->worker_id, "other");
  }
}

TEST_F(GatewayRouterTest, LoadShiftsNewSessions) {
  Register("w1", "fp-a", 50);  // heavily loaded
  GatewayRouter router(store_.get(), Options());
  int to_w1 = 0;
  for (int i = 0; i < 300; ++i) {
    if (router.RouteAny(absl::StrCat("k", i), "", {})->worker_id == "w1") {
      ++to_w1;
    }
  }
  EXPECT_LT(to_w1, 30);  // ~1/101 of an equal share
}

TEST_F(GatewayRouterTest, StaticWorkersWithoutStore) {
  GatewayRouterOptions options = Options();
  options.static_workers = {"127.0.0.1:1", "127.0.0.1:2"};
  GatewayRouter router(nullptr, options);
  auto route = router.RouteSession({"t", "s"}, {});
  ASSERT_TRUE(route.ok());
  EXPECT_EQ(route->worker_id, route->address);
}

// After a failure the registry is read again at once, so a replacement
// worker is routed to without waiting for the cache to age out.
TEST_F(GatewayRouterTest, ASuspectForcesARegistryRead) {
  GatewayRouterOptions options = Options();
  options.registry_refresh = absl::Hours(1);
  GatewayRouter router(store_.get(), options);
  ASSERT_TRUE(router.RouteAny("k", "", {}).ok());  // caches w1..w3
  ASSERT_NO_FATAL_FAILURE(ReplaceWorkersWithW4());
  auto stale = router.RouteAny("k", "", {});
  ASSERT_TRUE(stale.ok());
  EXPECT_NE(stale->worker_id, "w4");  // still the cached list
  router.MarkSuspect(stale->worker_id);
  auto fresh = router.RouteAny("k", "", {stale->worker_id});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->worker_id, "w4");
}

// An empty registry right after workers were known (a Redis restart
// before their next heartbeats) keeps the last known workers.
TEST_F(GatewayRouterTest, AnEmptyRegistryKeepsTheLastKnownWorkers) {
  GatewayRouter router(store_.get(), Options());
  auto before = router.RouteAny("k", "", {});
  ASSERT_TRUE(before.ok()) << before.status();
  for (const char* id : {"w1", "w2", "w3"}) {
    ASSERT_TRUE(store_->UnregisterWorker(id).ok());
  }
  auto after = router.RouteAny("k", "", {});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->worker_id, before->worker_id);
  router.AwaitBackgroundReads();  // the read of the empty registry ends
  Register("w9", "fp-a", 0);      // the next read sees the registry again
  router.RouteAny("k", "", {}).IgnoreError();  // reads it (in the background)
  router.AwaitBackgroundReads();
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    seen.insert(router.RouteAny(absl::StrCat("k", i), "", {})->worker_id);
  }
  EXPECT_EQ(seen, std::set<std::string>{"w9"});
}

// A registry that, once `down`, answers ListWorkers only after a while and
// with UNAVAILABLE (a Redis that stopped answering), counting the reads.
class SlowRegistry final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<bool> down{false};
  std::atomic<int> reads{0};
  // When set, a read waits for it (after notifying `reading`).
  absl::Notification* hold = nullptr;
  absl::Notification reading;
  // A held read lists the workers before it waits (a read that began
  // before a change and ends after it).
  bool list_first = false;
  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override {
    ++reads;
    absl::StatusOr<std::vector<WorkerInfo>> listed;
    if (list_first) listed = ForwardingStore::ListWorkers();
    if (hold != nullptr) {
      if (!reading.HasBeenNotified()) reading.Notify();
      hold->WaitForNotification();
    }
    if (list_first && !down) return listed;
    if (!down) return ForwardingStore::ListWorkers();
    absl::SleepFor(absl::Milliseconds(200));
    return absl::UnavailableError("registry down");
  }
};

// Lets the held registry reads go, then waits for `failover` and for the
// router's background reads.
void ReleaseAndJoin(absl::Notification* release, std::thread* failover,
                    GatewayRouter* router, SlowRegistry* registry) {
  release->Notify();
  failover->join();
  router->AwaitBackgroundReads();
  registry->hold = nullptr;
}

// A router over a SlowRegistry of `store` that re-reads it every second,
// with the registry's routes cached (w1..w3). `release` (for the held
// reads) is destroyed last, after the router has joined its reads.
struct SlowRouter {
  SlowRouter(StateStore* store, GatewayRouterOptions options)
      : registry(store), router(&registry, [&] {
          options.registry_refresh = absl::Seconds(1);
          return options;
        }()) {
    EXPECT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  }
  absl::Notification release;
  SlowRegistry registry;
  GatewayRouter router;
};

// While the registry is slow or down, one background read at a time asks
// it and every call routes with the workers known (calls used to queue
// behind the read, each a store timeout, under the router's lock; then one
// call waited for each read); after a failed read the registry is not
// asked again until the refresh period has passed.
TEST_F(GatewayRouterTest, ASlowRegistryIsReadOnceWhileCallsRouteOn) {
  SlowRegistry registry(store_.get());
  GatewayRouterOptions options = Options();
  options.registry_refresh = absl::Seconds(1);
  GatewayRouter router(&registry, options);
  ASSERT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  ASSERT_EQ(registry.reads.load(), 1);
  clock_.Advance(absl::Seconds(2));
  registry.down = true;
  std::vector<std::thread> calls;
  std::atomic<int> routed{0};
  for (int i = 0; i < 8; ++i) {
    calls.emplace_back([&, i] {
      if (router.RouteAny(absl::StrCat("k", i), "fp-a", {}).ok()) ++routed;
    });
  }
  for (std::thread& t : calls) t.join();
  EXPECT_EQ(routed.load(), 8);
  router.AwaitBackgroundReads();
  EXPECT_EQ(registry.reads.load(), 2);  // the one failed read
  EXPECT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  router.AwaitBackgroundReads();
  EXPECT_EQ(registry.reads.load(), 2);  // not again within the period
  clock_.Advance(absl::Seconds(2));
  EXPECT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  router.AwaitBackgroundReads();
  EXPECT_EQ(registry.reads.load(), 3);
  // A read that hangs holds no call: they route on while it is out.
  absl::Notification release;
  registry.hold = &release;
  clock_.Advance(absl::Seconds(2));
  EXPECT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  registry.reading.WaitForNotification();
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(router.RouteAny(absl::StrCat("k", i), "fp-a", {}).ok());
  }
  EXPECT_EQ(registry.reads.load(), 4);
  release.Notify();
  router.AwaitBackgroundReads();
  registry.hold = nullptr;
}

// With no workers known yet and the registry down, the calls that waited
// for the one read take its error instead of each reading in turn.
TEST_F(GatewayRouterTest, CallsThatWaitedForAFailedReadShareItsError) {
  SlowRegistry registry(store_.get());
  registry.down = true;
  GatewayRouterOptions options = Options();
  options.registry_refresh = absl::Seconds(1);
  GatewayRouter router(&registry, options);
  std::vector<std::thread> calls;
  std::atomic<int> failed{0};
  for (int i = 0; i < 8; ++i) {
    calls.emplace_back([&, i] {
      if (!router.RouteAny(absl::StrCat("k", i), "fp-a", {}).ok()) ++failed;
    });
  }
  for (std::thread& t : calls) t.join();
  EXPECT_EQ(failed.load(), 8);
  EXPECT_LE(registry.reads.load(), 2);  // one, or two if a call came late
}

// A store whose session reads, once `down`, fail UNAVAILABLE (a Redis that
// stopped answering, after its timeout), counting them; reads of session
// `held` wait for `hold` (if set) first.
class DownHeads final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<bool> down{false};
  std::atomic<int> reads{0};
  std::string held;
  absl::Notification* hold = nullptr;
  absl::Notification reading;
  absl::StatusOr<SessionHead> GetHead(const SessionKey& k) override {
    ++reads;
    if (hold != nullptr && k.session_id == held) {
      if (!reading.HasBeenNotified()) reading.Notify();
      hold->WaitForNotification();
    }
    if (down) return absl::UnavailableError("store down");
    return ForwardingStore::GetHead(k);
  }
};

// Once a session lookup finds the store unreachable, calls for a session
// whose owner was seen route at once to it instead of each waiting out the
// store (others still ask the store: hashing would take a session from its
// owner). After the pause one background lookup, which no call waits for,
// tries again; the failures of other lookups meanwhile do not start a
// second; its success resumes lookups.
TEST_F(GatewayRouterTest, AnUnreachableStorePausesLookupsForTheOwnerLastSeen) {
  absl::Notification release;  // outlives the router's background lookup
  DownHeads heads(store_.get());
  GatewayRouterOptions options = Options();
  options.lookup_pause = absl::Seconds(1);
  GatewayRouter router(&heads, options);
  SessionKey key = CreateSession("owned");
  SessionKey other = CreateSession("other");
  const std::string hashed = router.RouteSession(key, {})->worker_id;
  const std::string owner = hashed == "w1" ? "w2" : "w1";
  ASSERT_TRUE(store_->AcquireLease(key, owner, absl::Seconds(30), true).ok());
  auto route = router.RouteSession(key, {});  // seen with its owner
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->worker_id, owner);
  EXPECT_FALSE(route->remembered);
  int reads = heads.reads;

  heads.down = true;
  route = router.RouteSession(key, {});  // this lookup fails
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->worker_id, owner);
  EXPECT_TRUE(route->owner);
  EXPECT_TRUE(route->remembered);
  EXPECT_EQ(heads.reads, ++reads);
  // Paused: no reads for the session seen; the owner last seen.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(router.RouteSession(key, {})->worker_id, owner);
  }
  EXPECT_EQ(heads.reads, reads);
  // One never seen with an owner still asks (and hashes when that fails).
  EXPECT_FALSE(router.RouteSession(other, {})->owner);
  EXPECT_EQ(heads.reads, ++reads);
  // A failed or excluded owner is not used, and is forgotten.
  EXPECT_EQ(router.RouteSession(key, {owner})->worker_id, hashed);
  EXPECT_EQ(heads.reads, reads);
  route = router.RouteSession(key, {});  // nothing remembered: asks
  EXPECT_FALSE(route->owner);
  EXPECT_EQ(heads.reads, ++reads);
  heads.down = false;
  ASSERT_TRUE(router.RouteSession(key, {})->owner);  // seen again
  EXPECT_EQ(heads.reads, ++reads);
  heads.down = true;
  EXPECT_TRUE(router.RouteSession(key, {})->remembered);  // pauses again
  EXPECT_EQ(heads.reads, ++reads);

  // After the pause, a call starts the background lookup and routes on;
  // so do the others while it waits on the store, even when other lookups
  // fail meanwhile.
  clock_.Advance(absl::Seconds(2));
  heads.held = "owned";
  heads.hold = &release;
  EXPECT_EQ(router.RouteSession(key, {})->worker_id, owner);
  heads.reading.WaitForNotification();
  EXPECT_EQ(heads.reads, ++reads);
  EXPECT_FALSE(router.RouteSession(other, {})->owner);  // fails at once
  EXPECT_EQ(heads.reads, ++reads);
  clock_.Advance(absl::Seconds(2));
  for (int i = 0; i < 5; ++i) {
    route = router.RouteSession(key, {});
    EXPECT_EQ(route->worker_id, owner);
    EXPECT_TRUE(route->remembered);
  }
  EXPECT_EQ(heads.reads, reads);  // no second background lookup
  // The store answers again (and the lease is gone): the lookup's success
  // resumes lookups, and the store decides again.
  ASSERT_TRUE(
      store_->ReleaseLease(key, owner, store_->GetOwner(key)->fence).ok());
  heads.down = false;
  release.Notify();
  router.AwaitBackgroundReads();
  route = router.RouteSession(key, {});
  EXPECT_FALSE(route->remembered);
  EXPECT_FALSE(route->owner);
  EXPECT_EQ(route->worker_id, hashed);
}

// With the store unreachable (the last registry read failed), a failover
// (MarkSuspect) routes at once among the workers known, the failed one
// aside, while one background read asks the registry; it used to read the
// registry inline, each failover waiting out the store.
TEST_F(GatewayRouterTest, AFailoverWithTheStoreUnreachableDoesNotWaitForIt) {
  absl::Notification release;  // outlives the router's background read
  SlowRegistry registry(store_.get());
  GatewayRouterOptions options = Options();
  options.registry_refresh = absl::Seconds(1);
  GatewayRouter router(&registry, options);
  ASSERT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  registry.down = true;
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(router.RouteAny("k", "fp-a", {}).ok());  // starts a read
  router.AwaitBackgroundReads();                       // which failed
  const int reads = registry.reads.load();
  registry.hold = &release;  // the store hangs now
  const std::string failed = router.RouteAny("k", "fp-a", {})->worker_id;
  router.MarkSuspect(failed);
  absl::Notification routed;
  std::string next;
  std::thread failover([&] {
    next = router.RouteAny("k", "fp-a", {failed})->worker_id;
    routed.Notify();
  });
  // Routed while the registry read is still held (a hang guard, not a
  // timing: the old router waited for the held read).
  EXPECT_TRUE(routed.WaitForNotificationWithTimeout(absl::Seconds(30)));
  release.Notify();
  failover.join();
  EXPECT_NE(next, failed);
  EXPECT_FALSE(next.empty());
  router.AwaitBackgroundReads();
  EXPECT_EQ(registry.reads.load(), reads + 1);  // one background read
}

// A call that has excluded every worker it knows (a burst of worker
// deaths: its failovers crossed them off one by one, routing on the list
// cached before) reads the registry before it gives up, and finds their
// replacement.
TEST_F(GatewayRouterTest, ACallWithEveryKnownWorkerExcludedReadsTheRegistry) {
  GatewayRouterOptions options = Options();
  options.registry_refresh = absl::Hours(1);
  GatewayRouter router(store_.get(), options);
  ASSERT_TRUE(router.RouteAny("k", "", {}).ok());  // caches w1..w3
  ASSERT_NO_FATAL_FAILURE(ReplaceWorkersWithW4());
  auto fresh = router.RouteAny("k", "", {"w1", "w2", "w3"});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->worker_id, "w4");
  // With nobody left in the registry either: UNAVAILABLE, as before.
  auto none = router.RouteAny("k", "", {"w1", "w2", "w3", "w4"});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
}

// ... and when its own route started a background read (the list cached
// had aged), it waits for that read instead of making another.
TEST_F(GatewayRouterTest, ACallWithEveryKnownWorkerExcludedJoinsItsRead) {
  SlowRouter t(store_.get(), Options());
  auto& [release, registry, router] = t;
  ASSERT_NO_FATAL_FAILURE(ReplaceWorkersWithW4());
  registry.hold = &release;
  clock_.Advance(absl::Seconds(2));  // the list cached has aged
  std::string next;
  absl::Notification routed;
  std::thread failover = FailoverPastW1ToW3(&router, &next, &routed);
  registry.reading.WaitForNotification();
  // It waits for the held read (the old router answered "no live worker"
  // at once; a slow thread only makes this pass without testing it).
  EXPECT_FALSE(routed.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  ReleaseAndJoin(&release, &failover, &router, &registry);
  EXPECT_EQ(next, "w4");
  EXPECT_EQ(registry.reads.load(), 2);
}

// ... but not the outcome of a read out that began before it routed (it
// may predate the replacements): it reads the registry again after that.
TEST_F(GatewayRouterTest, ACallWithEveryKnownWorkerExcludedSkipsAnOlderRead) {
  SlowRouter t(store_.get(), Options());
  auto& [release, registry, router] = t;
  registry.list_first = true;
  registry.hold = &release;
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(router.RouteAny("k", "fp-a", {}).ok());  // starts a read
  registry.reading.WaitForNotification();  // which has listed w1..w3
  ASSERT_NO_FATAL_FAILURE(ReplaceWorkersWithW4());
  std::string next;
  std::thread failover = FailoverPastW1ToW3(&router, &next);
  ReleaseAndJoin(&release, &failover, &router, &registry);
  EXPECT_EQ(next, "w4");
  EXPECT_EQ(registry.reads.load(), 3);
}

// With the registry down (its last read failed) such a call answers at
// once, as before: it does not wait a store timeout for another read.
TEST_F(GatewayRouterTest, ACallWithEveryKnownWorkerExcludedAndTheStoreDown) {
  SlowRouter t(store_.get(), Options());
  auto& [release, registry, router] = t;
  registry.down = true;
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(router.RouteAny("k", "fp-a", {}).ok());  // starts a read
  router.AwaitBackgroundReads();                       // which failed
  registry.hold = &release;                            // the store hangs now
  absl::Notification routed;
  std::string answer;
  std::thread failover = FailoverPastW1ToW3(&router, &answer, &routed);
  // A hang guard, not a timing: it must not wait for the held read.
  EXPECT_TRUE(routed.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ReleaseAndJoin(&release, &failover, &router, &registry);
  EXPECT_TRUE(absl::StartsWith(answer, "UNAVAILABLE")) << answer;
}

// A call for a model no worker serves, with nothing excluded, is answered
// from the list cached: a client cannot make each call read the registry.
// It is MODEL_MISMATCH, not a worker lost: a retry would not help.
TEST_F(GatewayRouterTest, AModelNoWorkerServesCostsNoRegistryRead) {
  SlowRegistry registry(store_.get());
  GatewayRouterOptions options = Options();
  options.registry_refresh = absl::Hours(1);
  GatewayRouter router(&registry, options);
  ASSERT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  for (int i = 0; i < 5; ++i) {
    const absl::Status st = router.RouteAny("k", "fp-unknown", {}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_EQ(GetReason(st), Reason::kModelMismatch) << st;
    EXPECT_EQ(GetErrorMetadata(st, "actual_fingerprint"), "fp-unknown");
    EXPECT_EQ(GetErrorMetadata(st, "expected_fingerprint"), "fp-a");
  }
  EXPECT_EQ(registry.reads.load(), 1);
  // A list older than a refresh may predate the model's workers: it is
  // read again before the answer, which finds a model registered since.
  clock_.Advance(absl::Hours(2));
  for (const char* id : {"w1", "w2", "w3"}) Register(id, "fp-a", 0);
  Register("w9", "fp-new", 0);
  auto found = router.RouteAny("k", "fp-new", {});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->worker_id, "w9");
  EXPECT_EQ(GetReason(router.RouteAny("k", "fp-unknown", {}).status()),
            Reason::kModelMismatch);
  EXPECT_EQ(registry.reads.load(), 2);
  // The registry unreachable: not a mismatch (it may list the model).
  clock_.Advance(absl::Hours(2));
  registry.down = true;
  const absl::Status down = router.RouteAny("k", "fp-unknown", {}).status();
  EXPECT_EQ(down.code(), absl::StatusCode::kUnavailable) << down;
}

// A model the registry listed lately is one whose workers may be
// restarting: with none listed now, a call for it is UNAVAILABLE (the
// client retries) until served_memory has passed, then MODEL_MISMATCH.
TEST_F(GatewayRouterTest, AModelServedLatelyIsUnavailableNotAMismatch) {
  GatewayRouter router(store_.get(), Options());  // reads at every route
  ASSERT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  for (const char* id : {"w1", "w2", "w3"}) {
    ASSERT_TRUE(store_->UnregisterWorker(id).ok());
  }
  clock_.Advance(absl::Minutes(9));
  Register("w5", "fp-b", 0);  // another model only
  // The route that finds the list stale reads it in the background.
  router.RouteAny("k", "fp-a", {}).IgnoreError();
  router.AwaitBackgroundReads();
  absl::Status restarting = router.RouteAny("k", "fp-a", {}).status();
  EXPECT_EQ(restarting.code(), absl::StatusCode::kUnavailable) << restarting;
  clock_.Advance(absl::Minutes(2));
  Register("w5", "fp-b", 0);
  router.RouteAny("k", "fp-a", {}).IgnoreError();
  router.AwaitBackgroundReads();
  absl::Status gone = router.RouteAny("k", "fp-a", {}).status();
  EXPECT_EQ(GetReason(gone), Reason::kModelMismatch) << gone;
}

// A worker marked suspect while the registry is being read: the list read
// may predate its failure, so the next route reads the registry again.
TEST_F(GatewayRouterTest, ASuspectMarkedDuringAReadForcesTheNextRead) {
  SlowRegistry registry(store_.get());
  GatewayRouterOptions options = Options();
  options.registry_refresh = absl::Seconds(60);
  GatewayRouter router(&registry, options);
  absl::Notification hold;
  registry.hold = &hold;
  std::thread first(
      [&] { EXPECT_TRUE(router.RouteAny("k", "fp-a", {}).ok()); });
  registry.reading.WaitForNotification();
  router.MarkSuspect("w1");
  hold.Notify();
  first.join();
  registry.hold = nullptr;
  const int reads = registry.reads.load();
  EXPECT_TRUE(router.RouteAny("k", "fp-a", {}).ok());
  EXPECT_EQ(registry.reads.load(), reads + 1);
}

}  // namespace
}  // namespace statestream
