// SPDX-License-Identifier: Apache-2.0
// The session manager across reloads and workers, on the memory store and a
// real (random-weight, byte-level) model: eviction and reload, the UTF-8
// carry across a reload, imports with bad side data, states without their
// hidden vector, creates and imports retried on another worker, and a way
// past a head no load can read. The rest: session_manager_test.cc.
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/session_manager.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

TEST_F(SessionManagerTest, EvictsIdleSessionsAndReloadsThemUnchanged) {
  SessionManagerOptions o;
  const auto& info = model_->info();
  o.residency_bytes = (info.state_floats + info.config.n_embd) * 4;  // one
  Start(o);
  for (const char* id : {"a", "b", "c"}) {
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, std::string("input of ") + id).ok());
    ASSERT_TRUE(Close(w).ok());
  }
  const std::string a_before = Blob("a");
  // Touch "a" again: it was evicted (and its input committed on close).
  auto w = Open("a");
  auto ack = Append(w, 10, "more", true, true);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->input_offset, 14u);
  ASSERT_TRUE(Close(w).ok());
  EXPECT_GT(manager_->stats().evictions, 0);
  EXPECT_GT(manager_->stats().loads, 3);
  // The reloaded state continues exactly like one that never left memory.
  Create("ref");
  auto r = Open("ref");
  ASSERT_TRUE(Append(r, 0, "input of amore", true, true).ok());
  EXPECT_EQ(Blob("ref"), Blob("a"));
  EXPECT_NE(a_before, Blob("a"));
}

// A writer that attaches to a session while its eviction commits it (the
// session still mapped) keeps the session: the eviction sees the writer
// after its commit and leaves it resident. It used to drop it all the same
// and end the new call "the session was evicted; retry".
TEST_F(SessionManagerTest, AWriterAttachedDuringAnEvictionKeepsTheSession) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  SessionManagerOptions o;
  o.residency_bytes = 1;  // the next session's load evicts the idle one
  Start(o);
  Create("a");
  Create("b");
  auto abandoned = Open("a");
  ASSERT_TRUE(Append(abandoned, 0, "x").ok());  // applied, not committed
  manager_->AbandonWriter(abandoned);           // its client went away
  absl::Notification release;
  faulty_->hold_commits = &release;
  std::thread load_b([&] { Open("b"); });  // evicts "a": commits it first
  ASSERT_TRUE(faulty_->commit_started.WaitForNotificationWithTimeout(
      absl::Seconds(30)));
  auto w = Open("a");  // still mapped: attaches
  release.Notify();
  load_b.join();
  faulty_->hold_commits = nullptr;
  auto ack = Append(w, 1, "y", true, true);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->input_offset, 2u);
  EXPECT_TRUE(manager_->IsResident("t", "a"));
  ASSERT_TRUE(Close(w).ok());
}

// A delete the store refuses changes nothing: the session stays resident
// with what it applied, and its next writer goes on from there. It used to
// be dropped first (its uncommitted input lost, its queued operations told
// SESSION_NOT_FOUND, its lease kept until the TTL).
TEST_F(SessionManagerTest, ADeleteTheStoreRefusesChangesNothing) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  Create("a");
  auto w = Open("a");
  ASSERT_TRUE(Append(w, 0, "x").ok());  // applied, not committed
  faulty_->refuse_deletes = 1;
  const absl::Status refused = manager_->DeleteSession("t", "a", false, "d-1");
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_TRUE(manager_->IsResident("t", "a"));
  auto view = manager_->GetSession("t", "a");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->input_offset, 1u);
  auto next = Open("a");
  auto ack = Append(next, 1, "y", true, true);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->committed_input_offset, 2u);
  ASSERT_TRUE(Close(next).ok());
  // The retry deletes it.
  ASSERT_TRUE(manager_->DeleteSession("t", "a", false, "d-1").ok());
  EXPECT_FALSE(manager_->IsResident("t", "a"));
  EXPECT_EQ(GetReason(manager_->GetSession("t", "a").status()),
            Reason::kSessionNotFound);
}

// A character split across appends whose first bytes the World tokenizer
// already emitted as a token (no token starts E1 88, one starts 88), so the
// tail holds only "\x88": evicted and reloaded in between, the session
// still accepts the character's last byte, and the result equals the
// unsplit text.
TEST_F(SessionManagerTest, ACharacterSplitAcrossAReloadIsAccepted) {
  SessionManagerOptions o;
  o.residency_bytes = 1;  // the next session's load evicts the idle one
  ASSERT_NO_FATAL_FAILURE(StartWorld(o));
  Create("split");
  auto w = Open("split");
  auto first = Append(w, 0, "a\xE1\x88", false, true);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(Close(w).ok());
  Create("other");
  auto x = Open("other");
  ASSERT_TRUE(Append(x, 0, "x", true, true).ok());
  ASSERT_TRUE(Close(x).ok());
  EXPECT_GT(manager_->stats().evictions, 0);
  w = Open("split");
  auto rest = Append(w, 3, "\x80", true, true);
  ASSERT_TRUE(rest.ok()) << rest.status();
  ASSERT_TRUE(Close(w).ok());
  Create("whole");
  auto v = Open("whole");
  ASSERT_TRUE(Append(v, 0, "a\xE1\x88\x80", true, true).ok());
  ASSERT_TRUE(Close(v).ok());
  EXPECT_EQ(Blob("split"), Blob("whole"));
  // A byte that cannot continue the character is still refused.
  Create("bad");
  auto b = Open("bad");
  ASSERT_TRUE(Append(b, 0, "a\xE1\x88", false, true).ok());
  ASSERT_TRUE(Close(b).ok());
  ASSERT_TRUE(Append(x = Open("other"), 1, "y", true, true).ok());
  ASSERT_TRUE(Close(x).ok());
  b = Open("bad");
  EXPECT_EQ(GetReason(Append(b, 3, "z", true).status()), Reason::kInvalidUtf8);
}

// The same split state exported and imported (a new session): its tail
// starts inside the character, and the copy continues like the original.
TEST_F(SessionManagerTest, AStateWhoseTailStartsInsideACharacterRoundTrips) {
  ASSERT_NO_FATAL_FAILURE(StartWorld(SessionManagerOptions{}));
  Create("split");
  auto w = Open("split");
  ASSERT_TRUE(Append(w, 0, "a\xE1\x88", false, true).ok());
  ASSERT_TRUE(Close(w).ok());
  auto snap = DecodeState(Blob("split"));
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_EQ(snap->tokenizer_tail, "\x88");
  CreateParams p;
  p.session_id = "copy";
  auto copy = manager_->Import("t", Blob("split"), false, p, std::nullopt);
  ASSERT_TRUE(copy.ok()) << copy.status();
  auto c = Open("copy");
  ASSERT_TRUE(Append(c, 3, "\x80", true, true).ok());
  ASSERT_TRUE(Close(c).ok());
  Create("whole");
  auto v = Open("whole");
  ASSERT_TRUE(Append(v, 0, "a\xE1\x88\x80", true, true).ok());
  ASSERT_TRUE(Close(v).ok());
  EXPECT_EQ(DecodeState(Blob("copy"))->state,
            DecodeState(Blob("whole"))->state);
  // The copy still refuses a byte that cannot continue the character.
  auto bad = manager_->Import("t", Blob("split"), true, p, std::nullopt);
  ASSERT_TRUE(bad.ok()) << bad.status();
  c = Open("copy");
  EXPECT_EQ(GetReason(Append(c, 3, "z", true).status()), Reason::kInvalidUtf8);
}

// Input that ended on a whole character (no tail: the byte tokenizer, or
// the World tokenizer after a flush) is just as strict after a reload: a
// continuation byte that starts the next append is INVALID_UTF8 (snapshots
// record that the carry is known, not only its bytes).
TEST_F(SessionManagerTest, AReloadedSessionStillRefusesAStrayContinuationByte) {
  for (bool world : {false, true}) {
    SCOPED_TRACE(world ? "world" : "bytes");
    SessionManagerOptions o;
    o.residency_bytes = 1;  // the next session's load evicts the idle one
    if (world) {
      ASSERT_NO_FATAL_FAILURE(StartWorld(o));
    } else {
      Start(o);
    }
    const std::string id = world ? "world" : "bytes";
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, "ab\n", world, true).ok());
    ASSERT_TRUE(Close(w).ok());
    Create(id + "-other");
    auto x = Open(id + "-other");
    ASSERT_TRUE(Append(x, 0, "x", true, true).ok());
    ASSERT_TRUE(Close(x).ok());
    const int64_t evictions = manager_->stats().evictions;
    EXPECT_GT(evictions, 0);
    w = Open(id);
    auto stray = Append(w, 3, "\x80xyz", true, true);
    EXPECT_EQ(GetReason(stray.status()), Reason::kInvalidUtf8)
        << stray.status();
    EXPECT_EQ(manager_->GetSession("t", id)->input_offset, 3u);
    // A whole character is still welcome.
    ASSERT_TRUE(Append(w, 3, "\xC3\xA9", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
  }
}

// An import whose side data (generation records, UTF-8 carry, sampler) is
// malformed passes the blob's checksum but no load could decode it: it is
// STATE_CORRUPT before anything is committed, as a new session or as a new
// version, and the session stays usable.
TEST_F(SessionManagerTest, AnImportWithCorruptSideDataCommitsNothing) {
  auto snap = SnapshotWithInput("src");
  ASSERT_TRUE(snap.ok()) << snap.status();
  const auto versions_before = manager_->ListVersions("t", "src");
  ASSERT_TRUE(versions_before.ok()) << versions_before.status();
  for (const std::string& bad :
       {std::string("SSGEN1\n\x05\x00\x00\x00xy"),  // truncated sampler
        std::string("SSGEN1\n\x00\x00\x00\x00\x01\x00\x00\x00"),
        std::string("SSMP-not-a-sampler")}) {
    SCOPED_TRACE(bad);
    snap->sampler_state = bad;
    const std::string blob = EncodeState(*snap);
    CreateParams fresh;
    fresh.request_id = "import-new";
    fresh.session_id = "new";
    EXPECT_EQ(
        GetReason(
            manager_->Import("t", blob, false, fresh, std::nullopt).status()),
        Reason::kStateCorrupt);
    EXPECT_EQ(GetReason(manager_->GetSession("t", "new").status()),
              Reason::kSessionNotFound);
    CreateParams onto;
    onto.request_id = "import-onto";
    onto.session_id = "src";
    EXPECT_EQ(
        GetReason(
            manager_->Import("t", blob, true, onto, std::nullopt).status()),
        Reason::kStateCorrupt);
  }
  const auto versions_after = manager_->ListVersions("t", "src");
  ASSERT_TRUE(versions_after.ok()) << versions_after.status();
  EXPECT_EQ(versions_after->size(), versions_before->size());
  // Still loadable and writable.
  auto w = Open("src");
  ASSERT_TRUE(Append(w, 10, " more", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
}

// A snapshot saved without last_hidden (position > 0) has no logits for its
// last token: Generate without a prompt and Score of what follows it are
// FAILED_PRECONDITION (they used to predict from a zero vector), also after
// a commit and a reload; once a token is consumed both work.
// Pending text that ends inside a UTF-8 character cannot be flushed:
// Score refuses it as Generate does (it used to score on without it).
TEST_F(SessionManagerTest, ScoreAndGenerateRefuseAnOpenCharacter) {
  Create("open");
  auto w = Open("open");
  auto open = Append(w, 0, "ab\xe2\x82", false, /*checkpoint=*/true);
  ASSERT_TRUE(open.ok()) << open.status();
  // Every refusal names the open character's first byte, offset 2 (Score,
  // Generate and a token request used to name the session's end, 4).
  auto expect_open_at_2 = [](const absl::Status& st) {
    EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
    EXPECT_EQ(GetErrorMetadata(st, "input_offset"), "2") << st;
  };
  ScoreInput score;
  score.tokens = {'x'};
  absl::Status status = ScoreStatus("open", score);
  expect_open_at_2(status);
  GenerateInput generate;
  generate.request_id = "g";
  generate.max_tokens = 1;
  expect_open_at_2(GenerateStatus("open", generate));
  expect_open_at_2(Append(w, 4, "", /*flush=*/true).status());
  {
    AppendInput tokens;
    tokens.kind = AppendInput::Kind::kTokens;
    tokens.tokens = {'x', 'y', 'z'};
    tokens.expected_input_offset = 4;
    expect_open_at_2(Append(w, tokens).status());
  }
  // The character completed: both go on.
  ASSERT_TRUE(Append(w, 4, "\xac", true, false).ok());
  ASSERT_TRUE(Close(w).ok());
  status = ScoreStatus("open", score);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_TRUE(GenerateStatus("open", generate).ok());
  // The version committed with the character open is still refused.
  score.version = open->version;
  status = ScoreStatus("open", score);
  expect_open_at_2(status);
}

TEST_F(SessionManagerTest, AStateWithoutItsHiddenVectorAsksForInput) {
  auto snap = SnapshotWithInput("src");
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_FALSE(snap->last_hidden.empty());
  snap->last_hidden.clear();
  CreateParams p;
  p.request_id = "import-bare";
  p.session_id = "bare";
  ASSERT_TRUE(
      manager_->Import("t", EncodeState(*snap), false, p, std::nullopt).ok());
  auto score = [&](const std::string& id) {
    ScoreInput in;
    in.tokens = {'x'};
    return ScoreStatus(id, in);
  };
  auto generate = [&](const std::string& id) {
    GenerateInput in;
    in.request_id = "g";
    in.max_tokens = 2;
    return GenerateStatus(id, in);
  };
  EXPECT_EQ(score("bare").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(generate("bare").code(), absl::StatusCode::kFailedPrecondition);
  // Committed again (an empty checkpoint) and reloaded: still no hidden.
  auto b = Open("bare");
  ASSERT_TRUE(Append(b, snap->input_offset, "", false, true).ok());
  ASSERT_TRUE(Close(b).ok());
  auto again = DecodeState(Blob("bare"));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->last_hidden.empty());
  EXPECT_EQ(score("bare").code(), absl::StatusCode::kFailedPrecondition);
  // A token consumed: logits exist again.
  b = Open("bare");
  ASSERT_TRUE(Append(b, snap->input_offset, "!", true, true).ok());
  ASSERT_TRUE(Close(b).ok());
  EXPECT_TRUE(score("bare").ok()) << score("bare");
  EXPECT_TRUE(generate("bare").ok()) << generate("bare");
  EXPECT_EQ(DecodeState(Blob("bare"))->last_hidden.size(),
            static_cast<size_t>(model_->info().config.n_embd));
}

// A create with a server-generated id, retried on another worker (its own
// request-id memo) after the first worker died: the id derives from the
// request id, so the retry finds the session the first attempt created and
// returns it instead of creating a second one; other content under the
// request id is DUPLICATE_REQUEST.
TEST_F(SessionManagerTest, AGeneratedIdCreateRetriedOnAnotherWorkerIsOnce) {
  CreateParams p;
  p.request_id = "create-generated";
  p.labels = {{"k", "v"}};
  auto first = manager_->CreateSession("t", p);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->session_id.size(), 26u);
  auto other = OtherWorker();
  ASSERT_NE(other, nullptr);
  auto retried = other->CreateSession("t", p);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->session_id, first->session_id);
  ListSessionsRequest list;
  list.tenant = "t";
  list.page_size = 100;
  auto page = store_->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->sessions.size(), 1u);
  CreateParams changed = p;
  changed.labels = {{"k", "other"}};
  EXPECT_EQ(GetReason(other->CreateSession("t", changed).status()),
            Reason::kDuplicateRequest);
  // Another request id: another session.
  CreateParams next = p;
  next.request_id = "create-generated-2";
  auto second = other->CreateSession("t", next);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE(second->session_id, first->session_id);
}

// A create with a client-chosen id, retried on another worker (or the same
// one after a restart: its request-id memo is gone): the head records the
// creating request, so the retry gets the session back instead of
// SESSION_EXISTS; other content under the request id is DUPLICATE_REQUEST,
// another request id SESSION_EXISTS, and past the window the id is simply
// taken.
TEST_F(SessionManagerTest, AChosenIdCreateRetriedOnAnotherWorkerIsOnce) {
  CreateParams p;
  p.session_id = "chosen";
  p.request_id = "create-chosen";
  p.labels = {{"k", "v"}};
  auto first = manager_->CreateSession("t", p);
  ASSERT_TRUE(first.ok()) << first.status();
  auto w = Open("chosen");
  ASSERT_TRUE(Append(w, 0, "later input", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  auto other = OtherWorker();
  ASSERT_NE(other, nullptr);
  auto retried = other->CreateSession("t", p);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->session_id, "chosen");
  EXPECT_EQ(retried->version, 2u);  // the session as it is now
  EXPECT_EQ(retried->input_offset, 11u);
  CreateParams changed = p;
  changed.labels = {{"k", "other"}};
  EXPECT_EQ(GetReason(other->CreateSession("t", changed).status()),
            Reason::kDuplicateRequest);
  CreateParams another = p;
  another.request_id = "create-chosen-2";
  EXPECT_EQ(GetReason(other->CreateSession("t", another).status()),
            Reason::kSessionExists);
  SessionManagerOptions past_window;
  past_window.request_id_window = absl::ZeroDuration();
  auto third = OtherWorker(past_window);
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(GetReason(third->CreateSession("t", p).status()),
            Reason::kSessionExists);
}

// The same for an ImportState that creates a session with a generated id:
// the retry on another worker gets the first attempt's session, a
// different state under the request id is DUPLICATE_REQUEST.
TEST_F(SessionManagerTest, AGeneratedIdImportRetriedOnAnotherWorkerIsOnce) {
  Create("src");
  auto w = Open("src");
  ASSERT_TRUE(Append(w, 0, "abc", true, true).ok());
  const std::string abc = Blob("src");
  ASSERT_TRUE(Append(w, 3, "d", true, true).ok());
  const std::string abcd = Blob("src");
  ASSERT_TRUE(Close(w).ok());
  CreateParams p;
  p.request_id = "import-generated";
  auto first = manager_->Import("t", abc, false, p, std::nullopt);
  ASSERT_TRUE(first.ok()) << first.status();
  auto other = OtherWorker();
  ASSERT_NE(other, nullptr);
  auto retried = other->Import("t", abc, false, p, std::nullopt);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->session_id, first->session_id);
  EXPECT_EQ(retried->input_offset, 3u);
  ListSessionsRequest list;
  list.tenant = "t";
  list.page_size = 100;
  auto page = store_->ListSessions(list);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->sessions.size(), 2u);  // src and the import
  EXPECT_EQ(
      GetReason(other->Import("t", abcd, false, p, std::nullopt).status()),
      Reason::kDuplicateRequest);
  other->Drain();
}

// A rollback or a NEW_VERSION import retried on another worker (a gateway
// resends one whose worker died before answering; the memo is per process)
// is found in the store by its request id: it applies nothing again, so the
// input committed since stays. The same id for another rollback or another
// state is DUPLICATE_REQUEST.
TEST_F(SessionManagerTest, ARollbackOrImportRetriedOnAnotherWorkerIsOnce) {
  Create("s");
  auto w = Open("s");
  ASSERT_TRUE(Append(w, 0, "abc", true, true).ok());
  const std::string abc = Blob("s");
  ASSERT_TRUE(Append(w, 3, "d", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  auto head = store_->GetHead({"t", "s"});
  ASSERT_TRUE(head.ok()) << head.status();
  const uint64_t abc_version = head->head.version - 1;
  auto rolled = manager_->Rollback("t", "s", abc_version, std::nullopt,
                                   std::nullopt, "rollback-1");
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->input_offset, 3u);
  CreateParams p;
  p.request_id = "import-1";
  p.session_id = "s";
  auto imported = manager_->Import("t", abc, true, p, std::nullopt);
  ASSERT_TRUE(imported.ok()) << imported.status();
  // Input committed after both.
  w = Open("s");
  ASSERT_TRUE(Append(w, 3, "xyz", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  manager_->Drain();
  head = store_->GetHead({"t", "s"});
  ASSERT_TRUE(head.ok()) << head.status();
  const uint64_t last = head->head.version;
  auto other = OtherWorker();
  ASSERT_NE(other, nullptr);
  auto again = other->Rollback("t", "s", abc_version, std::nullopt,
                               std::nullopt, "rollback-1");
  ASSERT_TRUE(again.ok()) << again.status();
  auto again_import = other->Import("t", abc, true, p, std::nullopt);
  ASSERT_TRUE(again_import.ok()) << again_import.status();
  head = store_->GetHead({"t", "s"});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.version, last);
  EXPECT_EQ(head->head.input_offset, 6u);
  EXPECT_EQ(GetReason(other
                          ->Rollback("t", "s", abc_version + 1, std::nullopt,
                                     std::nullopt, "rollback-1")
                          .status()),
            Reason::kDuplicateRequest);
  w = nullptr;
  other->Drain();
}

// A NEW_VERSION import (or a rollback) replaces the input history under a
// live Append writer: the stream goes on from the new head, and a request
// of it below the new offset is POSITION_MISMATCH. An import that moved
// the offset past the writer's had its next requests acknowledged as
// duplicates, never applied. A writer opened after takes resends below the
// offset as duplicates again.
TEST_F(SessionManagerTest, AnImportUnderALiveWriterIsNoDuplicateOfItsInput) {
  const std::string far = FarBlob();  // input offset 29
  Create("s");
  auto w = Open("s");
  ASSERT_TRUE(Append(w, 0, "ab", true, true).ok());
  CreateParams p;
  p.request_id = "import-far";
  p.session_id = "s";
  auto imported = manager_->Import("t", far, true, p, std::nullopt);
  ASSERT_TRUE(imported.ok()) << imported.status();
  ASSERT_EQ(imported->input_offset, 29u);
  auto next = Append(w, 2, "cd", true, true);
  EXPECT_EQ(GetReason(next.status()), Reason::kPositionMismatch)
      << (next.ok() ? "acknowledged" : next.status().ToString());
  auto on = Append(w, 29, "x", true, true);  // from the new head
  ASSERT_TRUE(on.ok()) << on.status();
  ASSERT_TRUE(Close(w).ok());
  w = Open("s");
  auto resent = Append(w, 29, "x", true, true);
  ASSERT_TRUE(resent.ok()) << resent.status();
  EXPECT_TRUE(resent->duplicate);
  ASSERT_TRUE(Close(w).ok());
}

// The same when the store wrote the import or the rollback but its reply
// was lost (or the version fell short of the durability asked for): the
// session follows the store's new head, and the live writer's requests
// below its offset are POSITION_MISMATCH. They were acknowledged as
// duplicates and dropped.
TEST_F(SessionManagerTest, AReplacementWhoseReplyWasLostIsNoDuplicateEither) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  const std::string far = FarBlob();  // input offset 29
  Create("s");
  auto w = Open("s");
  ASSERT_TRUE(Append(w, 0, "ab", true, true).ok());  // version 2
  CreateParams p;
  p.request_id = "import-far";
  p.session_id = "s";
  faulty_->lose_next_reply = true;
  auto imported = manager_->Import("t", far, true, p, std::nullopt);
  ASSERT_FALSE(imported.ok());
  ASSERT_EQ(store_->GetHead({"t", "s"})->head.input_offset, 29u);  // written
  auto next = Append(w, 2, "cd", true, true);
  EXPECT_EQ(GetReason(next.status()), Reason::kPositionMismatch)
      << (next.ok() ? "acknowledged" : next.status().ToString());
  auto on = Append(w, 29, "x", true, true);  // from the new head: version 4
  ASSERT_TRUE(on.ok()) << on.status();
  ASSERT_EQ(on->input_offset, 30u);

  ASSERT_TRUE(Close(w).ok());
  // A rollback to version 2 (offset 2), its reply lost: as after one that
  // answered, a writer's old requests are no duplicates of the history it
  // replaced, and it goes on from the new head. (A writer opened after the
  // import: the one before had seen a replacement already.)
  w = Open("s");
  ASSERT_TRUE(Append(w, 30, "zz", true, true).ok());
  faulty_->lose_next_reply = true;
  auto rolled = manager_->Rollback("t", "s", 2, std::nullopt,
                                   Durability::kMemory, "rb-1");
  ASSERT_FALSE(rolled.ok());
  ASSERT_EQ(store_->GetHead({"t", "s"})->head.input_offset, 2u);
  auto resent = Append(w, 0, "ab", true, true);  // below the new head
  EXPECT_EQ(GetReason(resent.status()), Reason::kPositionMismatch)
      << (resent.ok() ? "acknowledged" : resent.status().ToString());
  auto after = Append(w, 2, "y", true, true);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_FALSE(after->duplicate);
  EXPECT_EQ(after->input_offset, 3u);
  ASSERT_TRUE(Close(w).ok());
}

// A head no load can read (STATE_CORRUPT) does not lock the session: a
// rollback to an older version and an import as the next version need
// nothing of it, as docs/errors.md's way out says; the session then goes
// on from the version written.
TEST_F(SessionManagerTest, ARollbackOrAnImportGetsPastAnUnreadableHead) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  Create("c");
  auto w = Open("c");
  auto first = Append(w, 0, "first", true, true);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Append(w, 5, " second", true, true);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(Close(w).ok());
  const std::string blob = Blob("c");
  Start(SessionManagerOptions{});  // nothing resident
  faulty_->corrupt_version = second->version;
  auto refused = manager_->OpenWriter("t", "c", [](const absl::Status&) {});
  EXPECT_EQ(GetReason(refused.status()), Reason::kStateCorrupt);
  // A stale expectation is still refused.
  EXPECT_EQ(GetReason(manager_
                          ->Rollback("t", "c", first->version, first->version,
                                     std::nullopt, "")
                          .status()),
            Reason::kVersionMismatch);
  auto rolled = manager_->Rollback("t", "c", first->version, second->version,
                                   std::nullopt, "roll-past");
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->version, second->version + 1);
  EXPECT_EQ(rolled->input_offset, 5u);
  // Its retry answers the same, rolling back nothing more.
  auto again = manager_->Rollback("t", "c", first->version, second->version,
                                  std::nullopt, "roll-past");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->version, rolled->version);
  auto w2 = Open("c");
  ASSERT_TRUE(Append(w2, 5, "!", true, true).ok());
  ASSERT_TRUE(Close(w2).ok());
  // The head unreadable again: an import as its next version.
  Start(SessionManagerOptions{});
  auto head = store_->GetHead({"t", "c"});
  ASSERT_TRUE(head.ok()) << head.status();
  faulty_->corrupt_version = head->head.version;
  CreateParams p;
  p.session_id = "c";
  p.request_id = "import-past";
  auto imported = manager_->Import("t", blob, true, p, std::nullopt);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->version, head->head.version + 1);
  EXPECT_EQ(imported->input_offset, 12u);
  auto view = manager_->GetSession("t", "c");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->input_offset, 12u);
  faulty_->corrupt_version = 0;
}

// A writer opened without loading (an Append's first request on gRPC's
// thread) is nullptr for a session not resident, with nothing read from
// the store and nothing loaded; a resident session's opens as usual.
TEST_F(SessionManagerTest, AWriterOpenedWithoutLoadingNeedsTheSessionResident) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  Start(SessionManagerOptions{});
  Create("cold");
  Start(SessionManagerOptions{});  // a fresh manager: "cold" not resident
  faulty_->hung = true;            // any store read would fail
  auto none = manager_->OpenWriter(
      "t", "cold", [](const absl::Status&) {}, /*may_load=*/false);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);
  EXPECT_EQ(faulty_->hung_calls.load(), 0);
  EXPECT_FALSE(manager_->IsResident("t", "cold"));
  faulty_->hung = false;
  auto w = Open("cold");  // loads it
  ASSERT_NE(w, nullptr);
  ASSERT_TRUE(Append(w, 0, "x").ok());
  faulty_->hung = true;
  auto next = manager_->OpenWriter(
      "t", "cold", [](const absl::Status&) {}, /*may_load=*/false);
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_NE(*next, nullptr);
  EXPECT_EQ(faulty_->hung_calls.load(), 0);
  faulty_->hung = false;
  EXPECT_TRUE(Close(*next).ok());
}

// With the World tokenizer (which holds text back: runs of spaces, "==",
// a character split across appends), text appended a byte at a time,
// committed now and then and evicted and reloaded in between, ends in the
// state the whole text appended at once gives: the held-back tail and the
// open character travel through every commit and load.
TEST_F(SessionManagerTest, AWorldTailSurvivesCommitsAndEvictionsExactly) {
  SessionManagerOptions o;
  o.residency_bytes = 1;  // one session resident: a load evicts the other
  StartWorld(o);
  const std::string text =
      "Hello   world==  \xE2\x82\xAC x==y\n\n  caf\xC3\xA9 done";
  Create("whole");
  {
    auto w = Open("whole");
    ASSERT_TRUE(Append(w, 0, text, true, true).ok());
    ASSERT_TRUE(Close(w).ok());
  }
  Create("split");
  Create("other");
  for (size_t i = 0; i < text.size(); ++i) {
    auto v = Open("split");
    ASSERT_NE(v, nullptr) << i;
    ASSERT_TRUE(Append(v, i, text.substr(i, 1), false, i % 5 == 0).ok()) << i;
    ASSERT_TRUE(Close(v).ok()) << i;
    if (i % 7 == 3) {
      auto other = Open("other");  // evicts "split"
      ASSERT_NE(other, nullptr);
      ASSERT_TRUE(Close(other).ok());
      ASSERT_FALSE(manager_->IsResident("t", "split")) << i;
    }
  }
  auto v = Open("split");
  ASSERT_TRUE(Append(v, text.size(), "", true, true).ok());
  ASSERT_TRUE(Close(v).ok());
  EXPECT_EQ(Blob("split"), Blob("whole"));
}

// Rolled back to an earlier version and then forward again, a session's
// offset is back where it was, but its input below that offset may be
// another history's: a writer opened afterwards, here or on a worker that
// loads the session (a failover), resending input below it is told
// POSITION_MISMATCH. Acknowledged as a duplicate, the input was dropped
// with a "committed" ack, and so was everything after it up to the offset.
TEST_F(SessionManagerTest, NoRequestBelowARestartedHistoryIsADuplicate) {
  Create("h");
  auto w = Open("h");
  ASSERT_TRUE(Append(w, 0, "0123456789", true, true).ok());  // v2 at 10
  ASSERT_TRUE(Close(w).ok());
  ASSERT_TRUE(manager_->Rollback("t", "h", 1, std::nullopt, std::nullopt,
                                 "back")
                  .ok());  // v3 at 0
  ASSERT_TRUE(
      manager_->Rollback("t", "h", 2, std::nullopt, std::nullopt,
                         "forward")
          .ok());  // v4 at 10
  auto check = [&](const char* where) {
    auto v = Open("h");
    auto resent = Append(v, 2, "cd", true, true);
    EXPECT_EQ(GetReason(resent.status()), Reason::kPositionMismatch)
        << where << ": "
        << (resent.ok() ? "acknowledged as a duplicate"
                        : resent.status().ToString());
    EXPECT_TRUE(Close(v).ok());
  };
  check("this worker");
  Start(SessionManagerOptions{});  // another worker loads the session
  check("after a failover");
  // Input after the restart is this history's: its resend is a duplicate,
  // and the base travels with the versions committed after it.
  {
    auto v = Open("h");
    ASSERT_TRUE(Append(v, 10, "xy", true, true).ok());  // v5 at 12
    ASSERT_TRUE(Close(v).ok());
  }
  Start(SessionManagerOptions{});
  check("after a later commit and a failover");
  auto v = Open("h");
  auto again = Append(v, 10, "xy", true, true);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->input_offset, 12u);
  ASSERT_TRUE(Close(v).ok());
}

}  // namespace
}  // namespace statestream::worker
