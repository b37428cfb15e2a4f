// SPDX-License-Identifier: Apache-2.0
// The session manager's leases against a store that lets the test stop a
// renewal midway: a renewal racing a session's eviction never outlives the
// release. And resident copies after a takeover: reads check the store's
// fence before answering from one, waiting at most copy_check_wait.
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/testing/forwarding_store.h"
#include "worker/metrics.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

// Holds the first renewal of `key` at the store's door (after notifying
// renewing) until that key's lease is released or `hold` passes.
class HeldRenewalStore final : public testing::ForwardingStore {
 public:
  HeldRenewalStore(StateStore* s, std::string key, absl::Duration hold)
      : ForwardingStore(s), key_(std::move(key)), hold_(hold) {}

  absl::Notification renewing;
  absl::Notification renewed;
  absl::Notification released;

  absl::StatusOr<Lease> RenewLease(const SessionKey& k, const std::string& o,
                                   uint64_t f, absl::Duration t) override {
    const bool held = k.session_id == key_ && !renewing.HasBeenNotified();
    if (held) {
      renewing.Notify();
      released.WaitForNotificationWithTimeout(hold_);
    }
    auto r = ForwardingStore::RenewLease(k, o, f, t);
    if (held) renewed.Notify();
    return r;
  }
  absl::Status ReleaseLease(const SessionKey& k, const std::string& o,
                            uint64_t f) override {
    auto st = ForwardingStore::ReleaseLease(k, o, f);
    if (k.session_id == key_ && !released.HasBeenNotified()) {
      released.Notify();
    }
    return st;
  }

 private:
  const std::string key_;
  const absl::Duration hold_;
};

// GetOwner hangs (a hung store) until `release`; counts the calls made.
class HungOwnerStore final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  absl::Notification release;
  std::atomic<int> calls{0};
  absl::StatusOr<Lease> GetOwner(const SessionKey& k) override {
    ++calls;
    release.WaitForNotification();
    return ForwardingStore::GetOwner(k);
  }
};

class SessionManagerLeaseTest : public SessionManagerTest {
 protected:
  void TearDown() override { manager_.reset(); }  // before held_
  // manager_ anew, with `o`, on `store`.
  void Remake(const SessionManagerOptions& o, StateStore* store) {
    manager_.reset();
    auto m = SessionManager::Create(o, model_.get(), tokenizer_.get(),
                                    scheduler_.get(), store);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
  }
  std::unique_ptr<HeldRenewalStore> held_;
};

// A renewal that read the session resident, then met its eviction: the
// release comes after the renewal, so the lease ends free, and another
// worker takes the session without waiting out a revived lease.
TEST_F(SessionManagerLeaseTest, ARenewalRacingAnEvictionDoesNotReviveTheLease) {
  held_ =
      std::make_unique<HeldRenewalStore>(store_.get(), "a", absl::Seconds(2));
  SessionManagerOptions o;
  o.owner = "test-worker";
  o.residency_bytes = 1;  // the next session's load evicts the idle one
  o.lease_ttl = absl::Seconds(3);  // renewals every second
  ASSERT_NO_FATAL_FAILURE(Remake(o, held_.get()));
  Create("b");
  Create("a");  // resident; "b" evicted
  auto w = Open("a");
  ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  ASSERT_TRUE(
      held_->renewing.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // Loading "b" evicts "a" while its renewal is at the store's door.
  auto b = Open("b");
  ASSERT_TRUE(Append(b, 0, "y", true, true).ok());
  ASSERT_TRUE(Close(b).ok());
  ASSERT_TRUE(held_->renewed.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(manager_->IsResident("t", "a"));  // evicted by b's load
  auto owner = store_->GetOwner({"t", "a"});
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_TRUE(owner->owner.empty()) << "held by " << owner->owner;
  EXPECT_TRUE(
      store_->AcquireLease({"t", "a"}, "other", absl::Seconds(30), false).ok());
}

// Counts RenewLeases calls and the leases in each.
class CountingStore final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::vector<absl::StatusOr<Lease>> RenewLeases(
      const std::string& owner, const std::vector<LeaseToRenew>& leases,
      absl::Duration ttl) override {
    {
      absl::MutexLock lock(&mu_);
      sizes_.push_back(leases.size());
    }
    return ForwardingStore::RenewLeases(owner, leases, ttl);
  }
  std::vector<size_t> sizes() {
    absl::MutexLock lock(&mu_);
    return sizes_;
  }

 private:
  absl::Mutex mu_;
  std::vector<size_t> sizes_;
};

// The resident sessions' leases are renewed together, one store call per
// round (pipelined on Redis), and a session another worker took over in
// the meantime is dropped by that call's answer.
TEST_F(SessionManagerLeaseTest, LeasesAreRenewedInOneCallPerRound) {
  CountingStore counting(store_.get());
  SessionManagerOptions o;
  o.owner = "test-worker";
  // Renewed when asked (no periodic round comes before all three load,
  // however slow the machine).
  o.lease_ttl = absl::Hours(1);
  ASSERT_NO_FATAL_FAILURE(Remake(o, &counting));
  for (const char* id : {"a", "b", "c"}) {
    Create(id);
    auto w = Open(id);  // loads it: resident, holding the lease
    ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
    ASSERT_TRUE(manager_->IsResident("t", id));
  }
  ASSERT_TRUE(
      store_->AcquireLease({"t", "b"}, "other", absl::Seconds(30), true).ok());
  manager_->RenewLeasesNow();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (manager_->IsResident("t", "b") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_FALSE(manager_->IsResident("t", "b"));  // fenced out
  EXPECT_TRUE(manager_->IsResident("t", "a"));
  EXPECT_TRUE(manager_->IsResident("t", "c"));
  // All three in one call, the only one.
  EXPECT_EQ(counting.sizes(), std::vector<size_t>{3});
  manager_.reset();  // before `counting`
}

// Unasked, a resident session's lease is renewed every third of its TTL,
// and stays this worker's. Run again with the wall clock stepped
// (clock_step.lease_renewals): the rounds are timed on the steady clock.
TEST_F(SessionManagerLeaseTest, LeasesAreRenewedEveryThirdOfTheirTtl) {
  CountingStore counting(store_.get());
  SessionManagerOptions o;
  o.owner = "test-worker";
  o.lease_ttl = absl::Milliseconds(600);
  ASSERT_NO_FATAL_FAILURE(Remake(o, &counting));
  Create("a");
  auto w = Open("a");
  ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  for (int i = 0; i < 1000 && counting.sizes().size() < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GE(counting.sizes().size(), 3u);
  EXPECT_TRUE(manager_->IsResident("t", "a"));
  manager_.reset();  // before `counting`
}

// RenewLeasesNow renews at once, not at the next period (an hour away
// here): sessions the store lost or another worker took over are dropped,
// the rest stay.
TEST_F(SessionManagerLeaseTest, RenewLeasesNowDropsWhatTheStoreNoLongerHas) {
  SessionManagerOptions o;
  o.owner = "test-worker";
  o.lease_ttl = absl::Hours(3);  // renewals every hour
  ASSERT_NO_FATAL_FAILURE(Remake(o, store_.get()));
  for (const char* id : {"kept", "lost", "taken"}) {
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
    ASSERT_TRUE(manager_->IsResident("t", id));
  }
  ASSERT_TRUE(store_->DeleteSession({"t", "lost"}).ok());
  ASSERT_TRUE(
      store_->AcquireLease({"t", "taken"}, "other", absl::Seconds(30), true)
          .ok());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_TRUE(manager_->IsResident("t", "lost"));  // no renewal yet
  manager_->RenewLeasesNow();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while ((manager_->IsResident("t", "lost") ||
          manager_->IsResident("t", "taken")) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(manager_->IsResident("t", "lost"));
  EXPECT_FALSE(manager_->IsResident("t", "taken"));
  EXPECT_TRUE(manager_->IsResident("t", "kept"));
  auto lost = manager_->GetSession("t", "lost");
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kNotFound) << lost.status();
}

// Renews nothing while `refusing` (a store refusing writes: UNAVAILABLE
// for each lease), counting the rounds.
class RefusingRenewals final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<bool> refusing{false};
  std::atomic<int> refused_rounds{0};
  std::vector<absl::StatusOr<Lease>> RenewLeases(
      const std::string& owner, const std::vector<LeaseToRenew>& leases,
      absl::Duration ttl) override {
    if (!refusing.load()) {
      return ForwardingStore::RenewLeases(owner, leases, ttl);
    }
    std::vector<absl::StatusOr<Lease>> out(
        leases.size(), MakeError(absl::StatusCode::kUnavailable,
                                 Reason::kStoreUnavailable, "READONLY"));
    ++refused_rounds;
    return out;
  }
};

// Renewals the store refuses keep the sessions (a lapsed lease nobody took
// lets this owner commit still) but are counted: operators see leases
// lapsing before other workers take the sessions over.
TEST_F(SessionManagerLeaseTest, RefusedRenewalsAreCounted) {
  RefusingRenewals refusing(store_.get());
  WorkerMetrics metrics("memory");
  SessionManagerOptions o;
  o.owner = "test-worker";
  o.lease_ttl = absl::Hours(3);  // renewals only when asked
  o.metrics = &metrics;
  ASSERT_NO_FATAL_FAILURE(Remake(o, &refusing));
  for (const char* id : {"a", "b"}) {
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
  }
  refusing.refusing = true;
  manager_->RenewLeasesNow();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (refusing.refused_rounds.load() == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  manager_.reset();  // the round is over (and before `refusing`)
  EXPECT_NE(
      metrics.Render().find("\nstatestream_lease_renewal_failures_total 2\n"),
      std::string::npos)
      << metrics.Render();
}

// A resident session deleted through another worker (a gateway sends a
// delete anywhere when the session's model has no live worker) is gone
// here at the next GetSession, not answered from the copy held.
// Reads served from a resident copy (Score, a side-branch Generate,
// UpdateSession's answer) check the store first: after another worker took
// the session over and moved it on, this worker's copy is older. It is
// dropped (FENCED: a gateway asks the owner instead), and the next read
// loads what the store has.
TEST_F(SessionManagerTest, ReadsAfterATakeoverAreNotAnsweredFromTheStaleCopy) {
  // The store's answer always waited for (a loaded machine's checker thread
  // could miss 200 ms, and the copy would serve, by design).
  SessionManagerOptions patient;
  patient.copy_check_wait = absl::Seconds(60);
  Start(patient);
  CreatePrompted("s");  // resident here, at input offset 6
  ASSERT_TRUE(manager_->IsResident("t", "s"));
  auto score = [&](absl::StatusOr<ScoreOutcome>* out) {
    ScoreInput in;
    in.tokens = {1, 2, 3};
    absl::Notification done;
    manager_->Score("t", "s", in, [&](absl::StatusOr<ScoreOutcome> o) {
      *out = std::move(o);
      done.Notify();
    });
    done.WaitForNotification();
  };
  std::unique_ptr<SessionManager> mine = std::move(manager_);
  manager_ = OtherWorker();
  {
    auto w = Open("s");  // takes the lease over
    ASSERT_TRUE(Append(w, 6, " more", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
  }
  absl::StatusOr<ScoreOutcome> theirs;
  score(&theirs);
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  ASSERT_EQ(theirs->input_offset, 11u);
  std::unique_ptr<SessionManager> other = std::move(manager_);
  manager_ = std::move(mine);

  absl::StatusOr<ScoreOutcome> stale;
  score(&stale);
  EXPECT_EQ(GetReason(stale.status()), Reason::kFenced) << stale.status();
  EXPECT_FALSE(manager_->IsResident("t", "s"));
  absl::StatusOr<ScoreOutcome> fresh;
  score(&fresh);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->input_offset, 11u);
  EXPECT_EQ(fresh->version, theirs->version);
  EXPECT_EQ(fresh->logprobs, theirs->logprobs);

  // The other worker moves the session on again (its own copy is stale by
  // now: its first commit is fenced, and a second writer loads afresh).
  auto move_on = [&](uint64_t offset, const std::string& text) {
    return AppendElsewhere(other, "s", offset, text);
  };
  ASSERT_TRUE(move_on(11, "!").ok());
  ASSERT_TRUE(manager_->IsResident("t", "s"));
  GenerateInput side;
  side.max_tokens = 2;
  side.commit = false;
  EXPECT_EQ(GetReason(GenerateStatus("s", side)), Reason::kFenced);
  EXPECT_FALSE(manager_->IsResident("t", "s"));

  ScoreInput none;
  none.tokens = {1};
  ASSERT_TRUE(ScoreStatus("s", none).ok());  // loaded again, at 12
  ASSERT_TRUE(move_on(12, "#").ok());
  // A committing generation: no token from the older state.
  GenerateInput commit;
  commit.request_id = "commit-after-takeover";
  commit.max_tokens = 2;
  commit.commit = true;
  {
    int pieces = 0;
    absl::Notification done;
    absl::Status ended;
    manager_->Generate(
        "t", "s", commit, [&](const GeneratedPiece&) { ++pieces; },
        [&](absl::StatusOr<GenerateOutcome> o) {
          ended = o.status();
          done.Notify();
        });
    done.WaitForNotification();
    EXPECT_EQ(GetReason(ended), Reason::kFenced) << ended;
    EXPECT_EQ(pieces, 0);  // was the older state's output, then FENCED
  }
  EXPECT_FALSE(manager_->IsResident("t", "s"));
  ASSERT_TRUE(ScoreStatus("s", none).ok());  // loaded again, at 13
  ASSERT_TRUE(move_on(13, "+").ok());
  ASSERT_TRUE(manager_->IsResident("t", "s"));
  SessionUpdate update;
  update.labels = std::map<std::string, std::string>{{"k", "v"}};
  auto updated = manager_->UpdateSession("t", "s", update);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->input_offset, 14u);
  EXPECT_EQ(updated->labels.at("k"), "v");
  EXPECT_FALSE(manager_->IsResident("t", "s"));
}

// A write's expected_version that the copy's head does not match is
// judged against the store: after another worker took the session over and
// moved it on, this worker's older copy answers FENCED (a gateway then asks
// the owner), not VERSION_MISMATCH with the copy's older head, for a
// Rollback and for an Import as a new version alike.
TEST_F(SessionManagerTest, AnExpectedVersionOnAStaleCopyIsFencedNotAMismatch) {
  CreatePrompted("s");  // resident here
  ASSERT_TRUE(manager_->IsResident("t", "s"));
  const std::string blob = Blob("s");
  std::unique_ptr<SessionManager> mine = std::move(manager_);
  std::unique_ptr<SessionManager> other = OtherWorker();
  // The other worker takes the lease over and moves the session on (its
  // own copy, once stale, is fenced at the first try: a second loads
  // afresh).
  auto move_on = [&](uint64_t offset, const std::string& text) -> uint64_t {
    const absl::Status moved = AppendElsewhere(other, "s", offset, text);
    EXPECT_TRUE(moved.ok()) << moved;
    auto got = other->GetSession("t", "s");
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? got->version : 0;
  };
  manager_ = std::move(mine);
  uint64_t head = move_on(6, " more");
  ASSERT_GT(head, 2u);
  auto rolled = manager_->Rollback("t", "s", 1, head, std::nullopt, "roll");
  EXPECT_EQ(GetReason(rolled.status()), Reason::kFenced) << rolled.status();
  EXPECT_FALSE(manager_->IsResident("t", "s"));
  rolled = manager_->Rollback("t", "s", 1, head, std::nullopt, "roll");
  ASSERT_TRUE(rolled.ok()) << rolled.status();  // loaded afresh: it matches
  EXPECT_EQ(rolled->version, head + 1);
  EXPECT_EQ(rolled->input_offset, 0u);

  head = move_on(0, "again");
  CreateParams p;
  p.session_id = "s";
  auto imported = manager_->Import("t", blob, /*new_version=*/true, p, head);
  EXPECT_EQ(GetReason(imported.status()), Reason::kFenced) << imported.status();
  imported = manager_->Import("t", blob, /*new_version=*/true, p, head);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->version, head + 1);
  EXPECT_EQ(imported->input_offset, 6u);
  // A version that is truly not the head is still VERSION_MISMATCH.
  rolled = manager_->Rollback("t", "s", 1, head, std::nullopt, "roll-2");
  EXPECT_EQ(GetReason(rolled.status()), Reason::kVersionMismatch)
      << rolled.status();
}

// Reads on a resident copy wait for a hung store's answer only
// copy_check_wait, then serve the copy; the checks they gave up on are not
// sent once a checker thread is free (a hung store would otherwise work
// through every one, new checks queued behind them, and a shutdown too).
TEST_F(SessionManagerLeaseTest, AbandonedCopyChecksAreNotSent) {
  CreatePrompted("c");  // resident on manager_ (the test's own store)
  ASSERT_TRUE(manager_->IsResident("t", "c"));
  auto hung = std::make_unique<HungOwnerStore>(store_.get());
  SessionManagerOptions o;
  o.copy_check_wait = absl::Milliseconds(20);
  o.owner = "hung-worker";
  auto m = SessionManager::Create(o, model_.get(), tokenizer_.get(),
                                  scheduler_.get(), hung.get());
  ASSERT_TRUE(m.ok()) << m.status();
  std::swap(manager_, *m);
  ScoreInput in;
  in.tokens = {1};
  ASSERT_TRUE(ScoreStatus("c", in).ok());  // loads it (no check)
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(ScoreStatus("c", in).ok()) << i;  // the copy, after 20 ms
  }
  // At most the two checker threads are in the store; the other checks
  // were abandoned while queued.
  const int sent = hung->calls.load();
  EXPECT_LE(sent, 2);
  hung->release.Notify();
  manager_.reset();  // runs what is queued
  EXPECT_EQ(hung->calls.load(), sent);
  manager_ = std::move(*m);
}

TEST_F(SessionManagerLeaseTest, ASessionDeletedElsewhereIsNotShownAgain) {
  Create("gone");
  auto w = Open("gone");
  ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  ASSERT_TRUE(manager_->IsResident("t", "gone"));
  ASSERT_TRUE(store_->DeleteSession({"t", "gone"}).ok());
  auto got = manager_->GetSession("t", "gone");
  EXPECT_EQ(GetReason(got.status()), Reason::kSessionNotFound) << got.status();
  EXPECT_FALSE(manager_->IsResident("t", "gone"));
}

}  // namespace
}  // namespace statestream::worker
