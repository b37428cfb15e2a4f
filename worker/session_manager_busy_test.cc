// SPDX-License-Identifier: Apache-2.0
// The session manager with busy sessions and drains: an ingest that stops
// with its call, Generate and Rollback meeting a live Append, commits by
// policy at the input's durability, and what a drain commits, retries and
// refuses. The fixture: session_manager_test_fixture.h.
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "common/testing/scratch_dir.h"
#include "gtest/gtest.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

// An Append's ingest stops when its call does — the writer abandoned
// (client gone), superseded, or its session deleted — instead of holding
// the session (and a delete or drain behind it) until all its tokens went
// through the model. The state is as if it never ran; the next call resends.
TEST_F(SessionManagerTest, AnAppendsIngestStopsWithItsCall) {
  StartSlow();  // 262,144 tokens take seconds
  Create("big");
  AppendInput in;
  in.kind = AppendInput::Kind::kTokens;
  in.tokens.assign(262144, 7);
  // Starts the big append on a new writer; its outcome lands in `*out`.
  auto start = [&](absl::Notification* ended, absl::StatusOr<AppendAck>* out) {
    auto w = Open("big");
    AppendWhileIngesting(w, in, ended, out);
    return w;
  };
  {  // abandoned
    absl::Notification ended;
    absl::StatusOr<AppendAck> out;
    auto w = start(&ended, &out);
    manager_->AbandonWriter(w);
    ended.WaitForNotification();
    EXPECT_EQ(out.status().code(), absl::StatusCode::kCancelled)
        << out.status();
  }
  {  // superseded: the retry on a new writer runs instead
    absl::Notification ended;
    absl::StatusOr<AppendAck> out;
    start(&ended, &out);
    auto retry = Open("big");
    ended.WaitForNotification();
    EXPECT_EQ(GetReason(out.status()), Reason::kSessionBusy) << out.status();
    absl::StatusOr<AppendAck> ack = Append(retry, 0, "x");
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->input_offset, 1u);  // the cancelled tokens left nothing
    ASSERT_TRUE(Close(retry).ok());
  }
  {  // deleted
    absl::Notification ended;
    absl::StatusOr<AppendAck> out;
    in.expected_input_offset = 1;
    start(&ended, &out);
    ASSERT_TRUE(manager_->DeleteSession("t", "big", false, "delete-big").ok());
    ended.WaitForNotification();
    // The delete's own answer, not SESSION_NOT_FOUND (a delete may fail).
    EXPECT_EQ(GetReason(out.status()), Reason::kSessionBusy) << out.status();
  }
  EXPECT_EQ(scheduler_->stats().active_tasks, 0);
}

// A committing Generate that is malformed on its own (max_tokens over the
// limit, bad sampling) is refused before it takes the writer slot, also
// while the session is busy with a live Append's ingest: the Append goes
// on to its ack. A well-formed one ends the Append and runs (it used to
// take the session's lock twice on that path: a deadlock).
TEST_F(SessionManagerTest, AMalformedGenerateLeavesABusySessionsAppendAlone) {
  StartSlow();
  Create("busy");
  AppendInput in;
  in.kind = AppendInput::Kind::kTokens;
  in.tokens.assign(20000, 7);  // ~1 s of ingest at one token a step
  in.expected_input_offset = 0;
  auto w = Open("busy");
  absl::Notification ended;
  absl::StatusOr<AppendAck> out;
  AppendWhileIngesting(w, in, &ended, &out);
  GenerateInput too_long;
  too_long.request_id = "gen-too-long";
  too_long.commit = true;
  too_long.max_tokens = 1 << 30;
  EXPECT_EQ(GetReason(GenerateStatus("busy", too_long)),
            Reason::kMessageTooLarge);
  GenerateInput bad_sampling;
  bad_sampling.request_id = "gen-bad-sampling";
  bad_sampling.commit = true;
  bad_sampling.sampling.temperature = -1;
  EXPECT_EQ(GenerateStatus("busy", bad_sampling).code(),
            absl::StatusCode::kInvalidArgument);
  ended.WaitForNotification();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->input_offset, 20000u);
  ASSERT_TRUE(Close(w).ok());
  // A well-formed one supersedes the live Append (SESSION_BUSY) and runs.
  absl::Notification second_ended;
  absl::StatusOr<AppendAck> second;
  in.expected_input_offset = 20000;
  w = Open("busy");
  AppendWhileIngesting(w, in, &second_ended, &second);
  GenerateInput good;
  good.request_id = "gen-good";
  good.commit = true;
  good.max_tokens = 2;
  EXPECT_TRUE(GenerateStatus("busy", good).ok());
  second_ended.WaitForNotification();
  EXPECT_EQ(GetReason(second.status()), Reason::kSessionBusy)
      << second.status();
}

// A rollback and its retry that both arrive while the session is busy
// (the client timed out waiting) apply once: the retry, in turn after the
// original, finds it done and answers with the session.
TEST_F(SessionManagerTest, ARollbackAndItsRetryQueuedTogetherApplyOnce) {
  StartSlow();
  Create("r");
  auto w = Open("r");
  ASSERT_TRUE(Append(w, 0, "abc", false, true).ok());
  AppendInput in;
  in.kind = AppendInput::Kind::kTokens;
  in.tokens.assign(4000, 7);
  in.expected_input_offset = 3;
  in.checkpoint = true;
  absl::Notification ended;
  absl::StatusOr<AppendAck> ingested;
  AppendWhileIngesting(w, in, &ended, &ingested);
  absl::StatusOr<SessionView> results[2];
  std::thread calls[2];
  for (int i = 0; i < 2; ++i) {
    calls[i] = std::thread([&, i] {
      results[i] = manager_->Rollback("t", "r", 2, std::nullopt, std::nullopt,
                                      "rollback-once");
    });
  }
  for (auto& t : calls) t.join();
  ended.WaitForNotification();
  EXPECT_TRUE(ingested.ok()) << ingested.status();
  ASSERT_TRUE(Close(w).ok());
  for (const auto& r : results) ASSERT_TRUE(r.ok()) << r.status();
  auto versions = manager_->ListVersions("t", "r");
  ASSERT_TRUE(versions.ok()) << versions.status();
  int rollbacks = 0;
  for (const VersionInfo& v : *versions) rollbacks += v.rolled_back_from != 0;
  EXPECT_EQ(rollbacks, 1);
  EXPECT_EQ(results[0]->version, results[1]->version);
}

// A drain retries a dirty session's commit that the store refuses for now,
// so its input survives a store blip during shutdown; one still refused at
// the drain's deadline is counted (and reported), not silently dropped.
TEST_F(SessionManagerTest, ADrainRetriesACommitTheStoreRefusesForNow) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  for (bool recovers : {true, false}) {
    SCOPED_TRACE(recovers ? "recovers" : "stays down");
    SessionManagerOptions o;
    o.drain_commit_timeout = absl::Milliseconds(recovers ? 5000 : 200);
    Start(o);
    const std::string id = recovers ? "blip" : "down";
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, "not yet committed").ok());
    faulty_->refuse_commits = recovers ? 3 : 1 << 30;
    manager_->Drain();  // the writer still attached: its input is dirty
    manager_->AbandonWriter(w);
    EXPECT_EQ(manager_->stats().drain_commit_failures, recovers ? 0 : 1);
    faulty_->refuse_commits = 0;
    Start(SessionManagerOptions{});
    auto view = manager_->GetSession("t", id);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->input_offset, recovers ? 17u : 0u);
  }
}

// A store that does not answer during a drain costs the drain its deadline,
// not a commit attempt (each waiting out the store client's timeouts) per
// dirty session after it: once three calls in a row (commits, lease
// releases past the deadline) found the store down, the other dirty
// sessions are reported at once without one.
TEST_F(SessionManagerTest, ADrainPastItsDeadlineStopsCallingADownStore) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  SessionManagerOptions o;
  o.drain_commit_timeout = absl::Milliseconds(200);
  Start(o);
  std::vector<std::shared_ptr<SessionManager::Writer>> writers;
  for (int i = 0; i < 5; ++i) {
    const std::string id = absl::StrCat("down", i);
    Create(id);
    writers.push_back(Open(id));
    ASSERT_TRUE(Append(writers.back(), 0, "not yet committed").ok());
  }
  faulty_->hung = true;
  manager_->Drain();
  faulty_->hung = false;
  for (auto& w : writers) manager_->AbandonWriter(w);
  EXPECT_EQ(manager_->stats().drain_commit_failures, 5);
  // The first commit's tries until the deadline (200 ms at 50 ms each and
  // backoff), its lease release and one more commit; none for the rest.
  EXPECT_LE(faulty_->hung_calls.load(), 8);
}

// Clean sessions count too: each releases its lease, and with the store
// hung every release waited out the client's timeout (300 sessions at 5 s,
// 25 minutes), and a dirty session after them was never reported. Past
// the deadline, three unanswered calls in a row end the store calls.
TEST_F(SessionManagerTest, ADrainOfCleanSessionsStopsCallingAHungStore) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  SessionManagerOptions o;
  o.drain_commit_timeout = absl::Milliseconds(200);
  Start(o);
  constexpr int kClean = 30;
  for (int i = 0; i < kClean; ++i) {
    const std::string id = absl::StrCat("clean", i);
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, "committed").ok());
    ASSERT_TRUE(Close(w).ok());
  }
  faulty_->hung = true;
  manager_->Drain();
  faulty_->hung = false;
  // Calls until the deadline (200 ms at 50 ms each) and three past it.
  EXPECT_LT(faulty_->hung_calls.load(), 15);
  EXPECT_EQ(manager_->stats().resident, 0);
}

// Copies the database at `from` over the one at `to` (SQLite's online
// backup, so connections open on `to` see the copy): a store that lost its
// writes since `from` was taken.
bool CopyDatabase(const std::string& from, const std::string& to) {
  sqlite3* src = nullptr;
  sqlite3* dst = nullptr;
  bool ok = sqlite3_open(from.c_str(), &src) == SQLITE_OK &&
            sqlite3_open(to.c_str(), &dst) == SQLITE_OK;
  if (ok) {
    sqlite3_busy_timeout(dst, 10000);
    sqlite3_backup* b = sqlite3_backup_init(dst, "main", src, "main");
    ok = b != nullptr && sqlite3_backup_step(b, -1) == SQLITE_DONE;
    ok = sqlite3_backup_finish(b) == SQLITE_OK && ok;
  }
  sqlite3_close(src);
  sqlite3_close(dst);
  return ok;
}

// A store that lost the FSYNC version of a session's input (restored from
// a copy taken before it, under the same lease): the next commit finds it
// gone and writes the resident state over the older head at once, at the
// level clients were told of the lost one, not the level the new request
// asks (the input it carries was acknowledged at FSYNC).
TEST_F(SessionManagerTest, InputRecommittedAfterTheStoreLostItKeepsItsLevel) {
  const testing::ScratchDir dir("ss-lost");
  const std::string path = dir.File("sessions.db");
  std::unique_ptr<StateStore> sqlite;
  ASSERT_NO_FATAL_FAILURE(StartOnSqlite(path, &sqlite));
  Create("s");
  auto w = Open("s");
  ASSERT_TRUE(Append(w, 0, "a", false, true).ok());  // v2 at MEMORY
  const std::string saved = dir.File("saved.db");
  ASSERT_TRUE(CopyDatabase(path, saved));
  auto durable = Append(w, 1, "b", false, true, Durability::kFsync);  // v3
  ASSERT_TRUE(durable.ok()) << durable.status();
  ASSERT_EQ(sqlite->GetHead({"t", "s"})->head.durability, Durability::kFsync);
  ASSERT_TRUE(CopyDatabase(saved, path));  // v3 is lost
  ASSERT_EQ(sqlite->GetHead({"t", "s"})->head.version, 2u);

  auto next = Append(w, 2, "c", false, true);  // asks MEMORY
  ASSERT_TRUE(next.ok()) << next.status();
  auto head = sqlite->GetHead({"t", "s"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, 3u);
  EXPECT_GE(head->head.durability, Durability::kFsync);
  ASSERT_TRUE(Close(w).ok());
  manager_.reset();
  faulty_.reset();
  sqlite.reset();
}

// Input whose requests asked for FSYNC is committed at FSYNC whatever
// commits it: a policy commit (here the drain's; the idle and eviction
// commits alike), a half-close, a committing generation or a duplicate's
// checkpoint, each asking for less itself. A writer drops what a commit
// covers, and a MEMORY commit of it would have been the only copy.
TEST_F(SessionManagerTest, EveryCommitReachesTheDurabilityItsInputAskedFor) {
  // Removed with everything SQLite put in it (the database and its -wal
  // and -shm files) when the test ends.
  const testing::ScratchDir dir("ss-policy");
  const std::string path = dir.File("sessions.db");
  std::unique_ptr<StateStore> sqlite;
  ASSERT_NO_FATAL_FAILURE(StartOnSqlite(path, &sqlite));
  for (const std::string end : {"close", "generate", "duplicate", "drain"}) {
    SCOPED_TRACE(end);
    Create(end);
    auto w = Open(end);
    ASSERT_TRUE(Append(w, 0, "keep ", false, false, Durability::kFsync).ok());
    // A later request of the same input asks for the default (MEMORY).
    ASSERT_TRUE(Append(w, 5, "me").ok());
    if (end == "close") {
      ASSERT_TRUE(Close(w).ok());
    } else if (end == "generate") {
      manager_->AbandonWriter(w);
      Generate(end, /*commit=*/true, "generate-" + end);
    } else if (end == "duplicate") {
      // A resend of the second request, now with a checkpoint.
      auto dup = Append(w, 5, "me", false, /*checkpoint=*/true);
      ASSERT_TRUE(dup.ok()) << dup.status();
      EXPECT_TRUE(dup->duplicate);
      ASSERT_TRUE(Close(w).ok());
    } else {
      manager_->Drain();
      manager_->AbandonWriter(w);
    }
    auto head = sqlite->GetHead({"t", end});
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_GE(head->head.input_offset, 7u);
    EXPECT_EQ(head->head.durability, Durability::kFsync);
  }
  manager_.reset();
  faulty_.reset();
  sqlite.reset();
}

// A session expires `ttl` after its last write, and input a worker holds
// uncommitted is none: with a TTL shorter than the checkpoint interval, a
// writer that keeps sending, then stops, still finds its session and all
// its input in the store: the policy commits input half a TTL after the
// store's last write (Impl::CommitDue), and the sweep looks at sessions
// with a short TTL often enough to.
TEST_F(SessionManagerTest, AWritersInputIsCommittedBeforeItsSessionExpires) {
  std::shared_ptr<SessionManager::Writer> w;
  ASSERT_NO_FATAL_FAILURE(OpenShortLived(&w));
  uint64_t at = 0;
  for (int i = 0; i < 8; ++i) {  // past the TTL
    auto ack = Append(w, at, "x");
    ASSERT_TRUE(ack.ok()) << i << ": " << ack.status();
    at = ack->input_offset;
    absl::SleepFor(absl::Milliseconds(400));
  }
  auto last = Append(w, at, "y");  // not yet committed
  ASSERT_TRUE(last.ok()) << last.status();
  at = last->input_offset;
  // Silence: the input is committed while the session lives (once the
  // TTL ran out with it uncommitted, the store answers NOT_FOUND).
  absl::StatusOr<SessionHead> head = store_->GetHead({"t", "short"});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (head.ok() && head->head.input_offset < at && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    head = store_->GetHead({"t", "short"});
  }
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, at);
  ASSERT_TRUE(Close(w).ok());
}

// A renewal asked for at once (RenewLeasesNow: a registry resync) sweeps
// too: it skipped the sweep and waited its full period after, so input
// due before a short TTL ran out was committed after the session expired.
TEST_F(SessionManagerTest, ARenewalAskedForAtOnceStillCommitsInputDueSoon) {
  std::shared_ptr<SessionManager::Writer> w;
  ASSERT_NO_FATAL_FAILURE(OpenShortLived(&w));
  auto ack = Append(w, 0, "not yet committed");
  ASSERT_TRUE(ack.ok()) << ack.status();
  manager_->RenewLeasesNow();
  // Due at about 1 s (half the TTL); committed before the TTL runs out
  // (after, the store answers NOT_FOUND).
  const absl::Time until = absl::Now() + absl::Seconds(30);
  absl::StatusOr<SessionHead> head = store_->GetHead({"t", "short"});
  while (head.ok() && head->head.input_offset != ack->input_offset &&
         absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
    head = store_->GetHead({"t", "short"});
  }
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.input_offset, ack->input_offset);
  ASSERT_TRUE(Close(w).ok());
}

// A drain whose first commit falls short of its level (this store never
// reaches FSYNC) commits the other sessions at the default level at once,
// instead of waiting out the durability timeout session by session; all
// their input is stored.
TEST_F(SessionManagerTest, ADrainStopsWaitingForALevelNoCommitReaches) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  std::vector<std::shared_ptr<SessionManager::Writer>> writers;
  for (const char* id : {"d1", "d2", "d3"}) {
    Create(id);
    writers.push_back(Open(id));
    ASSERT_TRUE(
        Append(writers.back(), 0, "input", false, false, Durability::kFsync)
            .ok());
  }
  manager_->Drain();
  for (auto& w : writers) manager_->AbandonWriter(w);
  EXPECT_EQ(faulty_->durable_commits.load(), 1);
  for (const char* id : {"d1", "d2", "d3"}) {
    EXPECT_EQ(store_->GetHead({"t", id})->head.input_offset, 5u) << id;
  }
  EXPECT_EQ(manager_->stats().drain_commit_failures, 0);
}

// Once draining, nothing new starts: a create, an import and a Score of a
// stored version (which loads no resident session) are UNAVAILABLE with a
// retry hint, for the client to go elsewhere.
TEST_F(SessionManagerTest, NothingNewStartsWhileDraining) {
  Create("d");
  auto w = Open("d");
  ASSERT_TRUE(Append(w, 0, "text", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  const std::string blob = Blob("d");
  manager_->Drain();
  CreateParams create;
  create.request_id = "create-after-drain";
  create.session_id = "new";
  EXPECT_EQ(GetReason(manager_->CreateSession("t", create).status()),
            Reason::kOverloaded);
  CreateParams import;
  import.request_id = "import-after-drain";
  import.session_id = "imported";
  absl::Status imported =
      manager_->Import("t", blob, false, import, std::nullopt).status();
  EXPECT_EQ(imported.code(), absl::StatusCode::kUnavailable) << imported;
  EXPECT_EQ(GetReason(imported), Reason::kOverloaded);
  ScoreInput score;
  score.version = 2;
  score.tokens = {1, 2};
  absl::Notification scored;
  absl::Status st;
  manager_->Score("t", "d", score, [&](absl::StatusOr<ScoreOutcome> o) {
    st = o.status();
    scored.Notify();
  });
  scored.WaitForNotification();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(GetReason(st), Reason::kOverloaded);
}

// A session whose load was under way when the drain began is not kept
// (the drain never saw it): the call is UNAVAILABLE/OVERLOADED like any
// after the drain, and the lease goes back at once.
TEST_F(SessionManagerTest, ASessionLoadedDuringTheDrainIsNotKept) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  Create("late");
  Start(SessionManagerOptions{});  // a fresh manager: "late" not resident
  absl::Notification release;
  faulty_->hold_loads = &release;
  absl::StatusOr<std::shared_ptr<SessionManager::Writer>> opened;
  std::thread loader([&] {
    opened = manager_->OpenWriter("t", "late", [](const absl::Status&) {});
  });
  faulty_->load_started.WaitForNotification();
  manager_->Drain();
  release.Notify();
  loader.join();
  EXPECT_EQ(GetReason(opened.status()), Reason::kOverloaded) << opened.status();
  EXPECT_FALSE(manager_->IsResident("t", "late"));
  auto head = store_->GetHead({"t", "late"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->owner, "");
}

// A writer whose call went away while its session loaded (a slow store)
// takes no writer slot: the live writer (maybe the same client's
// reconnect, which loaded first) goes on instead of being superseded by a
// call nobody is waiting on.
TEST_F(SessionManagerTest, AWriterWhoseCallWentAwayDoesNotSupersede) {
  Create("live");
  auto superseded = std::make_shared<absl::Notification>();
  auto live = Open("live", superseded);
  ASSERT_NE(live, nullptr);
  int asked = 0;
  auto gone = manager_->OpenWriter(
      "t", "live", [](const absl::Status&) {}, /*may_load=*/true,
      [&] {
        ++asked;
        return true;
      });
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kCancelled)
      << gone.status();
  EXPECT_EQ(asked, 1);
  // Still the session's writer (a superseded one's input is refused).
  EXPECT_TRUE(Append(live, 0, "more", true, true).ok());
  EXPECT_TRUE(Close(live).ok());
  EXPECT_FALSE(superseded->HasBeenNotified());
}

// A load that waited for its turn while a drain began gives up before it
// takes the lease over: the session may be another worker's by now, and a
// takeover (a fence bump) would fence that worker's writer.
TEST_F(SessionManagerTest, ALoadQueuedWhenTheDrainBeganTakesNoLease) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  Create("first");
  Create("queued");
  Start(SessionManagerOptions{});  // a fresh manager: neither resident
  auto before = store_->GetHead({"t", "queued"});
  ASSERT_TRUE(before.ok()) << before.status();
  absl::Notification release;
  faulty_->hold_loads = &release;
  absl::StatusOr<std::shared_ptr<SessionManager::Writer>> first, queued;
  std::thread loading([&] {
    first = manager_->OpenWriter("t", "first", [](const absl::Status&) {});
  });
  faulty_->load_started.WaitForNotification();
  // Past the draining check, waiting for the load ahead of it.
  std::thread waiting([&] {
    queued = manager_->OpenWriter("t", "queued", [](const absl::Status&) {});
  });
  absl::SleepFor(absl::Milliseconds(200));
  manager_->Drain();
  release.Notify();
  loading.join();
  waiting.join();
  EXPECT_EQ(GetReason(queued.status()), Reason::kOverloaded) << queued.status();
  auto after = store_->GetHead({"t", "queued"});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->fence, before->fence);
  faulty_->hold_loads = nullptr;
}

// A delete that lands while a load of the session is between reading it
// and making it resident leaves no copy behind: that copy, deleted in the
// store, was served (appends acknowledged, scores of the old state) until
// the next lease renewal.
TEST_F(SessionManagerTest, ADeleteDuringALoadLeavesNoCopyResident) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  Create("x");
  Start(SessionManagerOptions{});  // a fresh manager: "x" not resident
  absl::Notification release;
  faulty_->hold_after_read = true;
  faulty_->hold_loads = &release;
  absl::StatusOr<std::shared_ptr<SessionManager::Writer>> opened;
  std::thread loader([&] {
    opened = manager_->OpenWriter("t", "x", [](const absl::Status&) {});
  });
  faulty_->load_started.WaitForNotification();
  absl::Status deleted;
  std::thread deleter(
      [&] { deleted = manager_->DeleteSession("t", "x", false, "d-x"); });
  absl::SleepFor(absl::Milliseconds(200));
  release.Notify();
  loader.join();
  deleter.join();
  EXPECT_TRUE(deleted.ok()) << deleted;
  EXPECT_FALSE(manager_->IsResident("t", "x"));
  // The writer the load opened acknowledges nothing more: its session is
  // gone (the delete ran after the load, or the load found it deleted).
  if (opened.ok()) {
    EXPECT_EQ(GetReason(Append(*opened, 0, "y").status()),
              Reason::kSessionNotFound);
  } else {
    EXPECT_EQ(GetReason(opened.status()), Reason::kSessionNotFound);
  }
  EXPECT_EQ(GetReason(manager_->GetSession("t", "x").status()),
            Reason::kSessionNotFound);
  faulty_->hold_loads = nullptr;
}

// A refused delete's "being deleted" ends only the writers it ended: a
// later writer of the same session whose ingest the drain cancels hears
// the drain's OVERLOADED (which a gateway moves elsewhere), not
// SESSION_BUSY (which nobody retries).
TEST_F(SessionManagerTest, ARefusedDeleteDoesNotEndLaterWritersAsBusy) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  StartSlow();  // 262,144 tokens take seconds
  Create("big");
  auto first = Open("big");
  ASSERT_TRUE(Append(first, 0, "x").ok());
  faulty_->refuse_deletes = 1;
  ASSERT_FALSE(manager_->DeleteSession("t", "big", false, "d-1").ok());
  auto next = Open("big");
  AppendInput in;
  in.kind = AppendInput::Kind::kTokens;
  in.tokens.assign(262144, 7);
  in.expected_input_offset = 1;
  absl::Notification ended;
  absl::StatusOr<AppendAck> out;
  AppendWhileIngesting(next, in, &ended, &out);
  manager_->Drain();
  ended.WaitForNotification();
  EXPECT_EQ(GetReason(out.status()), Reason::kOverloaded) << out.status();
}

// Calls that must load their session (Score and Generate of sessions not
// resident) wait for a slow store on the loaders, not on the threads that
// run resident sessions' operations: with more of them held at the store
// than those threads, a resident session's Append still completes. (They
// used to fill every one of them, waiting on the load.)
TEST_F(SessionManagerTest, LoadsHeldAtTheStoreDoNotStallResidentSessions) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  SessionManagerOptions o;
  o.threads = 2;
  Start(o);
  constexpr int kCold = 4;
  for (int i = 0; i < kCold; ++i) Create("cold-" + std::to_string(i));
  Start(o);  // a fresh manager: none of them resident
  Create("hot");
  auto w = Open("hot");
  absl::Notification release;
  faulty_->hold_loads = &release;
  absl::Mutex mu;
  int answered = 0;
  for (int i = 0; i < kCold; ++i) {
    ScoreInput in;
    in.tokens = {1};
    manager_->Score("t", "cold-" + std::to_string(i), in,
                    [&](absl::StatusOr<ScoreOutcome>) {
                      absl::MutexLock lock(&mu);
                      ++answered;
                    });
    GenerateInput g;
    g.max_tokens = 1;
    manager_->Generate(
        "t", "cold-" + std::to_string(i), g, [](const GeneratedPiece&) {},
        [&](absl::StatusOr<GenerateOutcome>) {
          absl::MutexLock lock(&mu);
          ++answered;
        });
  }
  ASSERT_TRUE(
      faulty_->load_started.WaitForNotificationWithTimeout(absl::Seconds(30)));
  AppendInput in;
  in.request_id = "hot-1";
  in.kind = AppendInput::Kind::kText;
  in.text = "x";
  in.checkpoint = true;
  absl::Notification acked;
  absl::Status st;
  manager_->Append(w, in, [&](absl::StatusOr<AppendAck> a) {
    st = a.status();
    acked.Notify();
  });
  EXPECT_TRUE(acked.WaitForNotificationWithTimeout(absl::Seconds(30)));
  release.Notify();
  acked.WaitForNotification();
  EXPECT_TRUE(st.ok()) << st;
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(mu.AwaitWithTimeout(
      absl::Condition(
          +[](int* n) { return *n == 2 * kCold; }, &answered),
      absl::Seconds(60)));
  faulty_->hold_loads = nullptr;
}

}  // namespace
}  // namespace statestream::worker
