// SPDX-License-Identifier: Apache-2.0
// The session manager's generations: seeded and reproducible, side
// branches, committing generations with periodic checkpoints that resume
// exactly, replays by request id, and their ends (delete, shutdown, lost
// commits). Fixture: session_manager_test_fixture.h.
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

// A committing generation of 4 tokens on session `id` that holds the
// session from its first piece until Release() (or its destruction).
class HeldGeneration {
 public:
  HeldGeneration(SessionManager* manager, const std::string& id) {
    GenerateInput in;
    in.request_id = "held";
    in.commit = true;
    in.max_tokens = 4;
    in.sampling.seed = 1;
    in.has_seed = true;
    manager->Generate(
        "t", id, in,
        [this](const GeneratedPiece&) {
          if (first_.HasBeenNotified()) return;
          first_.Notify();
          release_.WaitForNotification();  // holds the session
        },
        [this](absl::StatusOr<GenerateOutcome> o) {
          outcome_ = std::move(o);
          generated_.Notify();
        });
  }
  ~HeldGeneration() { Release(); }
  // Whether it holds the session (false: it ended first, or 60 s passed).
  bool Holding() {
    return first_.WaitForNotificationWithTimeout(absl::Seconds(60)) &&
           !generated_.HasBeenNotified();
  }
  // Lets it go on; returns its outcome once it ended.
  const absl::StatusOr<GenerateOutcome>& Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
    generated_.WaitForNotification();
    return outcome_;
  }

 private:
  absl::Notification first_, release_, generated_;
  absl::StatusOr<GenerateOutcome> outcome_;
};

// The final commit of a committing generation is written, but its reply is
// lost and the store cannot be read right after. The session does not go
// back to the state before the generation (behind the head the store
// wrote, where every later commit failed VERSION_MISMATCH): it reads the
// store again and continues from the generation's version.
TEST_F(SessionManagerTest,
       AGenerationCommitWithAnUnknownOutcomeRereadsTheStore) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  CreatePrompted("g");
  faulty_->lose_next_commit = true;
  GenerateInput in;
  in.request_id = "lost";
  in.max_tokens = 5;
  in.commit = true;
  in.sampling.seed = 1;
  in.has_seed = true;
  const absl::Status generated = GenerateStatus("g", in);
  EXPECT_EQ(generated.code(), absl::StatusCode::kUnavailable) << generated;
  auto head = store_->GetHead({"t", "g"});
  ASSERT_TRUE(head.ok());
  ASSERT_EQ(head->head.input_offset, 11u);  // the prompt and 5 tokens
  auto view = manager_->GetSession("t", "g");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->input_offset, 11u);
  EXPECT_EQ(view->version, head->head.version);
  auto w = Open("g");
  auto next = Append(w, 11, "more", true, true);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->version, head->head.version + 1);
}

// A retry of a finished committing generation only replays it, and a
// committing request that fails its checks at once changes nothing: neither
// takes the writer slot, so the session's live Append call goes on.
TEST_F(SessionManagerTest, AReplayOrARefusedGenerateLeavesTheWriterAlone) {
  CreatePrompted("r");
  GenerateOutcome first;
  const std::vector<int32_t> tokens = Generate("r", true, "gen-1", &first);
  ASSERT_EQ(tokens.size(), 12u);
  auto superseded = std::make_shared<absl::Notification>();
  auto live = Open("r", superseded);
  const uint64_t at = first.input_offset;
  ASSERT_TRUE(Append(live, at, "a").ok());
  GenerateOutcome again;
  EXPECT_EQ(Generate("r", true, "gen-1", &again), tokens);
  EXPECT_TRUE(again.replayed);
  // Refused at once: a stale offset, too many tokens, a prompt token
  // outside the vocabulary, a prompt that is not UTF-8 (each with its own
  // reason: never SESSION_BUSY for the live writer). The request's fields
  // are checked before its offset (the proto's order of checks): each
  // malformed one comes with a stale offset too, and was POSITION_MISMATCH
  // (retried after a read) instead of a refusal not to retry.
  const Reason want[] = {Reason::kPositionMismatch, Reason::kMessageTooLarge,
                         Reason::kInvalidToken, Reason::kInvalidUtf8};
  for (int variant = 0; variant < 4; ++variant) {
    GenerateInput in;
    in.request_id = absl::StrCat("refused-", variant);
    in.commit = true;
    in.expected_input_offset = 1;
    if (variant == 1) in.max_tokens = 1 << 30;
    if (variant == 2) {
      in.prompt_kind = GenerateInput::Prompt::kTokens;
      in.prompt_tokens = {1, 100000};
    }
    if (variant == 3) {
      in.prompt_kind = GenerateInput::Prompt::kText;
      in.prompt_text = "ok\xFF";
    }
    const absl::Status st = GenerateStatus("r", in);
    EXPECT_EQ(GetReason(st), want[variant]) << variant << ": " << st;
    // The field's own check, not the scheduler's room.
    if (variant == 1) EXPECT_EQ(GetErrorMetadata(st, "field"), "max_tokens");
  }
  EXPECT_FALSE(superseded->HasBeenNotified());
  auto next = Append(live, at + 1, "b", true, true);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->input_offset, at + 2);
  // Detached before `superseded` goes (a drain would notify it).
  ASSERT_TRUE(Close(live).ok());
}

// A committing Generate that the session's state refuses (pending text
// ending inside a character; nothing consumed yet and no prompt) or that
// the scheduler has no room for is answered without the writer slot too:
// the live Append goes on.
TEST_F(SessionManagerTest,
       AGenerateTheSessionOrSchedulerRefusesLeavesTheWriter) {
  SchedulerOptions small;
  small.max_queued_tokens = 100;
  manager_.reset();
  scheduler_ = std::make_unique<Scheduler>(model_.get(), small);
  Start(SessionManagerOptions{});
  struct Case {
    const char* name;
    std::string text;  // appended first, unflushed
    int max_tokens;
    Reason reason;
  };
  const Case cases[] = {
      {"open-char", "a\xE2\x82", 4, Reason::kInvalidUtf8},
      {"fresh", "", 4, Reason::kInvalidArgument},
      {"no-room", "abc", 200, Reason::kMessageTooLarge},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Create(c.name);
    auto superseded = std::make_shared<absl::Notification>();
    auto live = Open(c.name, superseded);
    if (!c.text.empty()) {
      ASSERT_TRUE(Append(live, 0, c.text).ok());
    }
    GenerateInput in;
    in.request_id = absl::StrCat("gen-", c.name);
    in.commit = true;
    in.max_tokens = c.max_tokens;
    const absl::Status refused = GenerateStatus(c.name, in);
    EXPECT_EQ(GetReason(refused), c.reason) << refused;
    EXPECT_FALSE(superseded->HasBeenNotified());
    // The writer goes on where it was (the open character completed).
    auto next = Append(live, c.text.size(),
                       c.reason == Reason::kInvalidUtf8 ? "\xAC" : "x");
    ASSERT_TRUE(next.ok()) << next.status();
    ASSERT_TRUE(Close(live).ok());
  }
}

// A delete does not wait for a committing generation to run to its end (it
// would hold a service thread all along): the generation's call ends at
// once, uncommitted, and the session is gone.
TEST_F(SessionManagerTest, ADeleteEndsARunningGeneration) {
  SessionManagerOptions o;
  o.max_generate_tokens = 1 << 20;
  Start(o);
  CreatePrompted("g");
  GenerateInput in;
  in.request_id = "long";
  in.commit = true;
  in.max_tokens = 1 << 20;  // minutes of work
  in.sampling.seed = 1;
  in.has_seed = true;
  auto first = std::make_shared<absl::Notification>();
  auto ended = std::make_shared<absl::Notification>();
  auto outcome = std::make_shared<absl::StatusOr<GenerateOutcome>>();
  manager_->Generate(
      "t", "g", in,
      [first](const GeneratedPiece&) {
        if (!first->HasBeenNotified()) first->Notify();
      },
      [ended, outcome](absl::StatusOr<GenerateOutcome> o) {
        *outcome = std::move(o);
        ended->Notify();
      });
  first->WaitForNotification();
  ASSERT_TRUE(manager_->DeleteSession("t", "g", false, "delete-g").ok());
  ASSERT_TRUE(ended->WaitForNotificationWithTimeout(absl::Seconds(60)));
  // ABORTED/SESSION_BUSY (docs/errors.md): the delete may still fail.
  EXPECT_EQ(outcome->status().code(), absl::StatusCode::kAborted)
      << outcome->status();
  EXPECT_EQ(GetReason(outcome->status()), Reason::kSessionBusy);
  EXPECT_EQ(GetReason(manager_->GetSession("t", "g").status()),
            Reason::kSessionNotFound);
}

// A Rollback or Import behind a committing generation (which holds the
// session for its whole run) waits for its turn without holding the
// caller's thread: the service's few threads stay free for other sessions.
// Each runs once the generation committed, on top of it.
TEST_F(SessionManagerTest, RollbackAndImportWaitForTheirTurnHoldingNoThread) {
  Create("s");
  const std::string blob = Blob("s");  // nothing consumed: version 1
  Create("g");
  auto w = Open("g");
  ASSERT_TRUE(Append(w, 0, "prompt", true, true).ok());  // version 2
  ASSERT_TRUE(Close(w).ok());
  HeldGeneration held(manager_.get(), "g");
  ASSERT_TRUE(held.Holding());
  absl::Notification rolled, imported;
  absl::StatusOr<SessionView> rollback, import;
  manager_->RollbackAsync("t", "g", 2, std::nullopt, std::nullopt, "roll",
                          [&](absl::StatusOr<SessionView> v) {
                            rollback = std::move(v);
                            rolled.Notify();
                          });
  CreateParams p;
  p.request_id = "import";
  p.session_id = "g";
  manager_->ImportAsync("t", blob, true, p, std::nullopt,
                        [&](absl::StatusOr<SessionView> v) {
                          import = std::move(v);
                          imported.Notify();
                        });
  // Both returned with the generation still running: queued, not waiting.
  EXPECT_FALSE(rolled.HasBeenNotified());
  EXPECT_FALSE(imported.HasBeenNotified());
  const absl::StatusOr<GenerateOutcome>& outcome = held.Release();
  rolled.WaitForNotification();
  imported.WaitForNotification();
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->version, 3u);
  ASSERT_TRUE(rollback.ok()) << rollback.status();
  EXPECT_EQ(rollback->version, 4u);
  EXPECT_EQ(rollback->input_offset, 6u);
  ASSERT_TRUE(import.ok()) << import.status();
  EXPECT_EQ(import->version, 5u);
  EXPECT_EQ(import->input_offset, 0u);
}

// A DeleteSession retried while its original still waits (here behind a
// committing generation) succeeds as the original does: it waits for it
// and finds it done. It once found the session gone, NOT_FOUND, for a
// delete that succeeded. Another request id still gets NOT_FOUND.
TEST_F(SessionManagerTest, ADeleteRetriedWhileItsOriginalRunsSucceedsToo) {
  CreatePrompted("g");
  HeldGeneration held(manager_.get(), "g");
  ASSERT_TRUE(held.Holding());
  absl::Status first, retry;
  std::thread a(
      [&] { first = manager_->DeleteSession("t", "g", false, "delete-g"); });
  absl::SleepFor(absl::Milliseconds(100));  // queued behind the generation
  std::thread b(
      [&] { retry = manager_->DeleteSession("t", "g", false, "delete-g"); });
  absl::SleepFor(absl::Milliseconds(100));
  held.Release();
  a.join();
  b.join();
  EXPECT_TRUE(first.ok()) << first;
  EXPECT_TRUE(retry.ok()) << retry;
  EXPECT_EQ(GetReason(manager_->DeleteSession("t", "g", false, "other")),
            Reason::kSessionNotFound);
}

// Generate and Score run on working copies of the session's state, held
// against max_copy_bytes: with one copy held (a committing generation
// running) and no room for another, a Score is RESOURCE_EXHAUSTED/
// OVERLOADED with retry_after_ms, and runs once the copy is gone.
TEST_F(SessionManagerTest, WorkingCopiesAreBoundedByMaxCopyBytes) {
  SessionManagerOptions o;
  o.max_copy_bytes = 1;  // one copy always fits alone; a second does not
  Start(o);
  CreatePrompted("g");
  auto score = [&] {
    ScoreInput in;
    in.tokens = {1, 2};
    absl::Notification scored;
    absl::Status st;
    manager_->Score("t", "g", in, [&](absl::StatusOr<ScoreOutcome> out) {
      st = out.status();
      scored.Notify();
    });
    scored.WaitForNotification();
    return st;
  };
  {
    HeldGeneration held(manager_.get(), "g");
    ASSERT_TRUE(held.Holding());
    const absl::Status refused = score();
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
    EXPECT_EQ(GetReason(refused), Reason::kOverloaded);
    EXPECT_TRUE(GetErrorMetadata(refused, "retry_after_ms").has_value());
    ASSERT_TRUE(held.Release().ok());
  }
  // (The generation's last references to its copy may go a moment after
  // its outcome.)
  absl::Status st = score();
  for (int i = 0; i < 200 && GetReason(st) == Reason::kOverloaded; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    st = score();
  }
  EXPECT_TRUE(st.ok()) << st;
}

// A periodic checkpoint's copy of the state is held against
// max_copy_bytes too (a committing generation could hold two, one in
// flight and one waiting, beside its working copy, unbounded): with no
// room beside the working copy, checkpoints are skipped and the final
// commit alone writes the generation, which resumes and replays as ever.
TEST_F(SessionManagerTest, CheckpointCopiesAreHeldAgainstMaxCopyBytes) {
  for (const int64_t max_copy_bytes : {int64_t{1}, int64_t{1} << 30}) {
    SessionManagerOptions o;
    o.max_copy_bytes = max_copy_bytes;
    o.generate_checkpoint_tokens = 4;
    o.generate_checkpoint_interval = absl::ZeroDuration();
    Start(o);
    const std::string id = absl::StrCat("g", max_copy_bytes);
    CreatePrompted(id);
    const uint64_t before = store_->GetHead({"t", id})->head.version;
    GenerateOutcome out;
    EXPECT_EQ(Generate(id, true, "gen", &out).size(), 12u);
    EXPECT_TRUE(out.committed);
    const uint64_t commits = out.version - before;
    if (max_copy_bytes == 1) {
      EXPECT_EQ(commits, 1u) << "checkpoints past the budget were written";
    } else {
      EXPECT_GT(commits, 1u) << "checkpoints within the budget were skipped";
    }
  }
}

// max_duration is generation time: a call queued behind a committing
// generation longer than its max_duration still generates, instead of
// sampling one token and stopping (CANCELLED) the moment its turn comes.
TEST_F(SessionManagerTest, MaxDurationCountsFromTheGenerationsTurn) {
  CreatePrompted("g");
  HeldGeneration held(manager_.get(), "g");
  ASSERT_TRUE(held.Holding());
  GenerateInput in;
  in.request_id = "timed";
  in.max_tokens = 8;
  in.max_duration = absl::Seconds(1);
  in.sampling.seed = 2;
  in.has_seed = true;
  absl::Notification done;
  absl::StatusOr<GenerateOutcome> outcome;
  manager_->Generate(
      "t", "g", in, [](const GeneratedPiece&) {},
      [&](absl::StatusOr<GenerateOutcome> o) {
        outcome = std::move(o);
        done.Notify();
      });
  absl::SleepFor(absl::Milliseconds(1500));  // queued past max_duration
  ASSERT_TRUE(held.Release().ok());
  done.WaitForNotification();
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish, GenerateOutcome::Finish::kMaxTokens);
  EXPECT_EQ(outcome->output_tokens, 8u);
}

// A Rollback or Import queued behind a busy session whose client went away
// before its turn is not run: it ends CANCELLED and the session is as the
// generation left it. A retry with the same request id then runs.
TEST_F(SessionManagerTest, AQueuedRollbackOrImportWhoseClientWentAwayIsNotRun) {
  Create("s");
  const std::string blob = Blob("s");
  Create("g");
  auto w = Open("g");
  ASSERT_TRUE(Append(w, 0, "prompt", true, true).ok());  // version 2
  ASSERT_TRUE(Close(w).ok());
  HeldGeneration held(manager_.get(), "g");
  ASSERT_TRUE(held.Holding());
  std::atomic<bool> gone{false};
  auto cancelled = [&gone] { return gone.load(); };
  absl::Notification rolled, imported;
  absl::StatusOr<SessionView> rollback, import;
  manager_->RollbackAsync(
      "t", "g", 2, std::nullopt, std::nullopt, "roll",
      [&](absl::StatusOr<SessionView> v) {
        rollback = std::move(v);
        rolled.Notify();
      },
      cancelled);
  CreateParams p;
  p.request_id = "import";
  p.session_id = "g";
  manager_->ImportAsync(
      "t", blob, true, p, std::nullopt,
      [&](absl::StatusOr<SessionView> v) {
        import = std::move(v);
        imported.Notify();
      },
      cancelled);
  gone = true;  // both clients leave while the generation runs
  const absl::StatusOr<GenerateOutcome>& outcome = held.Release();
  // Both answered before any ASSERT can leave this frame.
  rolled.WaitForNotification();
  imported.WaitForNotification();
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(rollback.status().code(), absl::StatusCode::kCancelled)
      << rollback.status();
  EXPECT_EQ(import.status().code(), absl::StatusCode::kCancelled)
      << import.status();
  auto view = manager_->GetSession("t", "g");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->version, outcome->version);
  EXPECT_GT(view->input_offset, 6u);  // the generated text is kept
  // Nothing was remembered for the request id: a retry rolls back.
  auto again =
      manager_->Rollback("t", "g", 2, std::nullopt, std::nullopt, "roll");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->version, outcome->version + 1);
  EXPECT_EQ(again->input_offset, 6u);
}

// A replayed committing generation is answered committed only once
// nothing of the session is left uncommitted: its answer's version holds
// everything up to its position. (A final commit that adopted an older
// head and then failed keeps the output as uncommitted input; a replay
// answered committed=true on the older head, which does not hold it.)
TEST_F(SessionManagerTest, AReplayCommitsWhatTheSessionHoldsUncommitted) {
  CreatePrompted("r");
  GenerateOutcome first;
  const std::vector<int32_t> tokens = Generate("r", true, "gen-1", &first);
  // Input after it, not committed yet (the writer stays open).
  auto live = Open("r");
  ASSERT_TRUE(Append(live, first.input_offset, "a", true).ok());
  ASSERT_EQ(store_->GetHead({"t", "r"})->head.version, first.version);
  GenerateOutcome again;
  EXPECT_EQ(Generate("r", true, "gen-1", &again), tokens);
  EXPECT_TRUE(again.replayed);
  EXPECT_TRUE(again.committed);
  auto head = store_->GetHead({"t", "r"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.version, again.version);
  EXPECT_EQ(head->head.input_offset, again.input_offset);
  EXPECT_EQ(again.input_offset, first.input_offset + 1);
  // That version is the Append's input, committed as a policy commit is:
  // not labelled with the generation's request id.
  auto versions = manager_->ListVersions("t", "r");
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_EQ(versions->front().version, again.version);
  EXPECT_EQ(versions->front().cause, VersionCause::kAppend);
  EXPECT_EQ(versions->front().request_id, "");
  ASSERT_TRUE(Close(live).ok());
}

// A periodic checkpoint of a committing generation is written but its
// reply is lost (and the store unreadable right after): the generation goes
// on, its final commit adopts that version, and the session ends exactly
// where an undisturbed run ends.
TEST_F(SessionManagerTest, ALostPeriodicCheckpointIsAdoptedByTheFinalCommit) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  SessionManagerOptions o;
  o.generate_checkpoint_tokens = 4;
  o.generate_checkpoint_interval = absl::ZeroDuration();
  Start(o);
  for (const char* id : {"lost", "ref"}) {
    CreatePrompted(id);
  }
  const std::vector<int32_t> ref = Generate("ref", true, "g");
  faulty_->lose_next_commit = true;
  GenerateOutcome lost;
  EXPECT_EQ(Generate("lost", true, "g", &lost), ref);
  EXPECT_FALSE(faulty_->lose_next_commit);  // a checkpoint's reply was lost
  auto a = DecodeState(Blob("lost"));
  auto b = DecodeState(Blob("ref"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->position, b->position);
  EXPECT_EQ(a->input_offset, b->input_offset);
  EXPECT_EQ(a->state, b->state);
  EXPECT_EQ(store_->GetHead({"t", "lost"})->head.version, lost.version);
}

// A manager going away (Drain, then its pool stops) waits for side-branch
// generations, which hold no session while they run: told to stop, they
// answer, with the output they had, before the manager is gone (their
// answer used to be posted to a stopped pool, or to a destroyed one).
TEST_F(SessionManagerTest, ShutdownWaitsForSideBranchGenerations) {
  CreatePrompted("side");
  GenerateInput in;
  in.request_id = "side";
  in.max_tokens = 8000;
  std::atomic<int> pieces{0};
  absl::Notification done;
  absl::StatusOr<GenerateOutcome> out;
  manager_->Generate(
      "t", "side", in, [&](const GeneratedPiece&) { ++pieces; },
      [&](absl::StatusOr<GenerateOutcome> o) {
        out = std::move(o);
        done.Notify();
      });
  while (pieces == 0) absl::SleepFor(absl::Milliseconds(1));
  manager_.reset();
  ASSERT_TRUE(done.HasBeenNotified());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(out->output_tokens, 8000u);
}

// A drain stops a committing generation still feeding its prompt (up to
// 262,144 tokens: minutes of prefill on a real model) after the prompt's
// current chunk: it ends UNAVAILABLE/OVERLOADED, to be retried on another
// worker, with nothing committed, where the drain used to wait for the
// whole prompt and commit one token.
TEST_F(SessionManagerTest, ADrainStopsAGenerationStillFeedingItsPrompt) {
  CreatePrompted("p");
  const uint64_t version = store_->GetHead({"t", "p"})->head.version;
  GenerateInput in;
  in.request_id = "big";
  in.commit = true;
  in.max_tokens = 4;
  in.prompt_kind = GenerateInput::Prompt::kTokens;
  in.prompt_tokens.assign(262144, 97);
  std::atomic<int> pieces{0};
  absl::Notification done;
  absl::StatusOr<GenerateOutcome> out;
  manager_->Generate(
      "t", "p", in, [&](const GeneratedPiece&) { ++pieces; },
      [&](absl::StatusOr<GenerateOutcome> o) {
        out = std::move(o);
        done.Notify();
      });
  // Admitted to the scheduler: the drain finds it feeding its prompt.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (scheduler_->stats().active_tasks == 0 && !done.HasBeenNotified() &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_FALSE(done.HasBeenNotified()) << out.status();
  manager_->Drain();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable)
      << out.status();
  EXPECT_EQ(GetReason(out.status()), Reason::kOverloaded);
  EXPECT_EQ(pieces, 0);
  auto head = store_->GetHead({"t", "p"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.version, version);
  EXPECT_EQ(head->head.input_offset, 6u);
}

// Every version says what made it and which request: the create, an
// Append checkpoint, a committing Generate, a rollback, and a fork's first.
TEST_F(SessionManagerTest, VersionsSayWhatMadeThem) {
  Create("v");  // request id "create-v"
  auto w = Open("v");
  ASSERT_TRUE(
      Append(w, 0, "prompt", true, true, std::nullopt, "append-1").ok());
  ASSERT_TRUE(Close(w).ok());
  Generate("v", /*commit=*/true, "generate-1");
  ASSERT_TRUE(
      manager_->Rollback("t", "v", 2, std::nullopt, std::nullopt, "rollback-1")
          .ok());
  CreateParams fork;
  fork.request_id = "fork-1";
  fork.session_id = "v-fork";
  fork.fork_from.emplace("v", 3);
  ASSERT_TRUE(manager_->CreateSession("t", fork).ok());
  using Made = std::vector<std::pair<VersionCause, std::string>>;
  auto made = [&](const std::string& id) {
    Made out;
    auto versions = manager_->ListVersions("t", id);
    EXPECT_TRUE(versions.ok()) << versions.status();
    for (const VersionInfo& v : versions.value_or(std::vector<VersionInfo>{})) {
      out.emplace_back(v.cause, v.request_id);
    }
    return out;
  };
  // Newest first.
  EXPECT_EQ(made("v"), (Made{{VersionCause::kRollback, "rollback-1"},
                             {VersionCause::kGenerate, "generate-1"},
                             {VersionCause::kAppend, "append-1"},
                             {VersionCause::kCreate, "create-v"}}));
  EXPECT_EQ(made("v-fork"), (Made{{VersionCause::kFork, "fork-1"}}));
}

// A checkpoint the policy takes is no request's: the Append that crossed
// --checkpoint-tokens did not ask for it.
TEST_F(SessionManagerTest, APolicyCheckpointRecordsNoRequest) {
  SessionManagerOptions o;
  o.checkpoint_tokens = 1;
  Start(o);
  Create("p");
  auto w = Open("p");
  ASSERT_TRUE(
      Append(w, 0, "abc", true, false, std::nullopt, "append-policy").ok());
  auto versions = manager_->ListVersions("t", "p");
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[0].cause, VersionCause::kAppend);
  EXPECT_EQ((*versions)[0].request_id, "");
  ASSERT_TRUE(Close(w).ok());
}

TEST_F(SessionManagerTest,
       SeededGenerationIsReproducibleAndSideBranchesAreFree) {
  CreatePrompted("g");
  const std::string before = Blob("g");
  auto side1 = Generate("g", false, "r1");
  auto side2 = Generate("g", false, "r2");
  EXPECT_EQ(side1.size(), 12u);
  EXPECT_EQ(side1, side2);
  EXPECT_EQ(Blob("g"), before);
  auto committed = Generate("g", true, "r3");
  EXPECT_EQ(committed, side1);
  auto s = manager_->GetSession("t", "g");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->input_offset, 18u);
  EXPECT_EQ(s->committed_input_offset, 18u);
  EXPECT_EQ(s->position, 18u);
}

// A long committing generation commits every generate_checkpoint_tokens
// while it runs; the session as a checkpoint left it (what a worker killed
// mid-generation leaves behind) continues the same request exactly.
TEST_F(SessionManagerTest, GenerationsCheckpointAndResumeExactly) {
  SessionManagerOptions o;
  o.generate_checkpoint_tokens = 4;
  o.generate_checkpoint_interval = absl::ZeroDuration();
  Start(o);
  CreatePrompted("c");
  GenerateOutcome full;
  const std::vector<int32_t> tokens = Generate("c", true, "long", &full);
  ASSERT_EQ(tokens.size(), 12u);
  EXPECT_EQ(full.version, store_->GetHead({"t", "c"})->head.version);
  // Versions: create, the append, checkpoints while generating (the first
  // at 4 tokens; a later one may be skipped if a commit is still running),
  // the final commit.
  auto versions = store_->ListVersions({"t", "c"});
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_GE(versions->size(), 4u);
  const VersionInfo& first = (*versions)[2];
  EXPECT_EQ(first.position, 6u + 4u);
  EXPECT_EQ(first.input_offset, 6u + 4u);
  EXPECT_LT(first.version, full.version);

  // Back to the first checkpoint, as a reloading worker would find it; the
  // retry replays the 4 checkpointed tokens and continues.
  ASSERT_TRUE(
      manager_->Rollback("t", "c", first.version, std::nullopt, std::nullopt)
          .ok());
  GenerateOutcome resumed;
  EXPECT_EQ(Generate("c", true, "long", &resumed), tokens);
  EXPECT_FALSE(resumed.replayed);
  EXPECT_EQ(resumed.output_tokens, 12u);
  EXPECT_EQ(resumed.input_offset, full.input_offset);
  auto a = store_->LoadVersion({"t", "c"}, full.version);
  auto b = store_->LoadVersion({"t", "c"}, resumed.version);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->state.position, b->state.position);
  EXPECT_EQ(a->state.state, b->state.state);
  EXPECT_EQ(a->state.last_hidden, b->state.last_hidden);
  // Finished now: a further retry replays all of it.
  GenerateOutcome replayed;
  EXPECT_EQ(Generate("c", true, "long", &replayed), tokens);
  EXPECT_TRUE(replayed.replayed);
  EXPECT_EQ(replayed.version, resumed.version);
}

// A state whose in-progress generation could not continue as a worker
// left it (no hidden vector to draw from, or text pending) is refused at
// import: its retry would have sampled from zeros. The checkpoint as
// written imports and continues exactly.
TEST_F(SessionManagerTest, AnImportedInProgressGenerationMustBeResumable) {
  SessionManagerOptions o;
  o.generate_checkpoint_tokens = 4;
  o.generate_checkpoint_interval = absl::ZeroDuration();
  Start(o);
  CreatePrompted("c");
  const std::vector<int32_t> tokens = Generate("c", true, "long");
  auto versions = store_->ListVersions({"t", "c"});
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_GE(versions->size(), 4u);
  auto checkpoint = store_->LoadVersion({"t", "c"}, (*versions)[2].version);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const StateSnapshot& good = checkpoint->state;
  ASSERT_FALSE(good.last_hidden.empty());
  StateSnapshot no_hidden = good;
  no_hidden.last_hidden.clear();
  StateSnapshot pending = good;
  pending.tokenizer_tail = "x";
  ++pending.input_offset;
  int n = 0;
  for (const StateSnapshot* bad : {&no_hidden, &pending}) {
    CreateParams p;
    p.session_id = absl::StrCat("bad", n++);
    auto imported =
        manager_->Import("t", EncodeState(*bad), false, p, std::nullopt);
    EXPECT_EQ(GetReason(imported.status()), Reason::kStateCorrupt)
        << p.session_id << ": " << imported.status();
  }
  CreateParams p;
  p.session_id = "copy";
  ASSERT_TRUE(
      manager_->Import("t", EncodeState(good), false, p, std::nullopt).ok());
  GenerateOutcome resumed;
  EXPECT_EQ(Generate("copy", true, "long", &resumed), tokens);
  EXPECT_FALSE(resumed.replayed);
}

// New input after a checkpoint makes the checkpointed generation
// impossible to continue: its retry is then an ordinary new generation.
TEST_F(SessionManagerTest, InputAfterACheckpointEndsItsResumability) {
  SessionManagerOptions o;
  o.generate_checkpoint_tokens = 4;
  o.generate_checkpoint_interval = absl::ZeroDuration();
  Start(o);
  CreatePrompted("d");
  Generate("d", true, "long");
  auto versions = store_->ListVersions({"t", "d"});
  ASSERT_TRUE(versions.ok() && versions->size() >= 4u);
  ASSERT_TRUE(manager_
                  ->Rollback("t", "d", (*versions)[2].version, std::nullopt,
                             std::nullopt)
                  .ok());
  auto again = Open("d");
  ASSERT_TRUE(Append(again, 10, "more", true, true).ok());
  ASSERT_TRUE(Close(again).ok());
  GenerateOutcome out;
  EXPECT_EQ(Generate("d", true, "long", &out).size(), 12u);
  EXPECT_EQ(out.input_offset, 14u + 12u);
}

}  // namespace
}  // namespace statestream::worker
