// SPDX-License-Identifier: Apache-2.0
// The session manager on the memory store and a real (random-weight,
// byte-level) model: exactly-once appends, chunking independence, commits
// and durability, LRU eviction with reload, fencing, superseded writers and
// deletes. Busy sessions and drains: session_manager_busy_test.cc;
// generation: session_manager_generate_test.cc.
#include "worker/session_manager.h"

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/session_manager_test_fixture.h"

namespace statestream::worker {
namespace {

TEST_F(SessionManagerTest, AppendsAreExactlyOnceAndCommitOnRequest) {
  Create("s");
  auto w = Open("s");
  auto a = Append(w, 0, "abc");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->input_offset, 3u);
  EXPECT_EQ(a->position, 3u);
  EXPECT_EQ(a->version, 1u);  // not committed yet
  auto dup = Append(w, 1, "bc");
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate);
  EXPECT_EQ(dup->input_offset, 3u);
  auto gap = Append(w, 5, "x");
  EXPECT_EQ(GetReason(gap.status()), Reason::kPositionMismatch);
  EXPECT_EQ(GetErrorMetadata(gap.status(), "actual_input_offset"), "3");
  auto c = Append(w, 3, "d", true, true);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->version, 2u);
  EXPECT_EQ(c->committed_input_offset, 4u);
  auto head = store_->GetHead({"t", "s"});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->head.version, 2u);
  EXPECT_EQ(head->head.input_offset, 4u);
  EXPECT_EQ(head->head.position, 4u);
  // Half-close commits what is uncommitted.
  ASSERT_TRUE(Append(w, 4, "ef").ok());
  ASSERT_TRUE(Close(w).ok());
  EXPECT_EQ(store_->GetHead({"t", "s"})->head.input_offset, 6u);
}

// A Rollback or Import that the store wrote below the durability asked
// for fails (UNAVAILABLE: the in-memory store reaches MEMORY only) but
// exists. The resident session follows the store's head, so appends and
// commits go on from the new state instead of failing forever.
TEST_F(SessionManagerTest, AFailedWriteTheStoreKeptMovesTheSession) {
  Create("s");
  auto w = Open("s");
  ASSERT_TRUE(Append(w, 0, "hello", true, true).ok());  // v2, offset 5
  auto rolled = manager_->Rollback("t", "s", 1, std::nullopt,
                                   Durability::kReplicated, "rollback-kept");
  EXPECT_EQ(rolled.status().code(), absl::StatusCode::kUnavailable)
      << rolled.status();
  ASSERT_EQ(store_->GetHead({"t", "s"})->head.version, 3u);
  // Its retry finds it done (no second rollback version) and still below
  // the durability asked: the same error, never an OK that claims it.
  auto retried = manager_->Rollback("t", "s", 1, std::nullopt,
                                    Durability::kReplicated, "rollback-kept");
  EXPECT_EQ(retried.status().code(), absl::StatusCode::kUnavailable)
      << retried.status();
  EXPECT_EQ(DurabilityReachedOf(retried.status()), Durability::kMemory);
  ASSERT_EQ(store_->GetHead({"t", "s"})->head.version, 3u);
  auto view = manager_->GetSession("t", "s");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->version, 3u);
  EXPECT_EQ(view->input_offset, 0u);
  auto next = Append(w, 0, "hi", true, true);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->version, 4u);
  EXPECT_EQ(next->committed_input_offset, 2u);
  // The same for an import as a new version.
  const std::string blob = Blob("s");  // v4: "hi"
  CreateParams p;
  p.session_id = "s";
  p.durability = Durability::kReplicated;
  auto imported = manager_->Import("t", blob, true, p, std::nullopt);
  EXPECT_EQ(imported.status().code(), absl::StatusCode::kUnavailable)
      << imported.status();
  ASSERT_EQ(store_->GetHead({"t", "s"})->head.version, 5u);
  auto after = Append(w, 2, "!", true, true);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->version, 6u);
  EXPECT_EQ(after->committed_input_offset, 3u);
}

// In front of a store that reaches MEMORY only: raising a version's
// durability in place succeeds (a replica caught up after the write).
class CatchingUpStore final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<int> raised{0};
  absl::StatusOr<VersionInfo> AwaitDurability(const SessionKey& k,
                                              uint64_t version,
                                              Durability wanted) override {
    auto v = ForwardingStore::AwaitDurability(k, version, Durability::kMemory);
    if (!v.ok()) return v;
    ++raised;
    v->durability = wanted;
    return v;
  }
};

// A retry of a Rollback or a new-version Import that the store kept below
// the durability asked raises the version the first attempt wrote, and
// only then answers OK; it writes no second version.
TEST_F(SessionManagerTest, ARetryRaisesAWriteKeptBelowItsDurability) {
  auto inner = *NewMemoryStateStore(MemoryStateStoreOptions{});
  CatchingUpStore store(inner.get());
  SessionManagerOptions o;
  o.owner = "raising-worker";
  o.request_memo = std::make_shared<RequestMemo>(absl::Hours(1), 1000, nullptr);
  auto m = SessionManager::Create(o, model_.get(), tokenizer_.get(),
                                  scheduler_.get(), &store);
  ASSERT_TRUE(m.ok()) << m.status();
  SessionManager& manager = **m;
  CreateParams p;
  p.session_id = "s";
  ASSERT_TRUE(manager.CreateSession("t", p).ok());
  auto exported = manager.Export("t", "s", 0);
  ASSERT_TRUE(exported.ok()) << exported.status();
  const std::string blob = exported->blob;
  p.durability = Durability::kReplicated;
  p.request_id = "import-kept";
  auto imported = manager.Import("t", blob, true, p, std::nullopt);
  EXPECT_EQ(DurabilityReachedOf(imported.status()), Durability::kMemory);
  auto rolled = manager.Rollback("t", "s", 1, std::nullopt,
                                 Durability::kReplicated, "rollback-kept");
  EXPECT_EQ(DurabilityReachedOf(rolled.status()), Durability::kMemory);
  ASSERT_EQ(inner->GetHead({"t", "s"})->head.version, 3u);
  auto retried = manager.Rollback("t", "s", 1, std::nullopt,
                                  Durability::kReplicated, "rollback-kept");
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->version, 3u);
  EXPECT_EQ(retried->durability, Durability::kReplicated);
  // The import's version (2) is no longer the head: raised in the store.
  auto again = manager.Import("t", blob, true, p, std::nullopt);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->version, 3u);
  EXPECT_EQ(store.raised, 2);
  EXPECT_EQ(inner->GetHead({"t", "s"})->head.version, 3u);
  // The same for an import that creates a session (its version 1).
  CreateParams fresh;
  fresh.session_id = "fresh";
  fresh.durability = Durability::kReplicated;
  fresh.request_id = "import-fresh";
  EXPECT_EQ(DurabilityReachedOf(
                manager.Import("t", blob, false, fresh, std::nullopt).status()),
            Durability::kMemory);
  auto created = manager.Import("t", blob, false, fresh, std::nullopt);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->durability, Durability::kReplicated);
  EXPECT_EQ(store.raised, 3);
  // A retry takes no lease: a worker that took the session over meanwhile
  // keeps it, even when the retry reaches a manager (of the same process:
  // one memo) that does not hold the session.
  ASSERT_TRUE(
      inner->AcquireLease({"t", "s"}, "other", absl::Seconds(60), true).ok());
  SessionManagerOptions o2 = o;
  o2.owner = "second-manager";
  auto second = SessionManager::Create(o2, model_.get(), tokenizer_.get(),
                                       scheduler_.get(), &store);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE((*second)
                  ->Rollback("t", "s", 1, std::nullopt, Durability::kReplicated,
                             "rollback-kept")
                  .ok());
  EXPECT_EQ(inner->GetOwner({"t", "s"})->owner, "other");
  (*second)->Drain();
  manager.Drain();
}

// A commit of ours whose answer never came (Redis restarted mid-commit,
// past the retry deadline) leaves a newer head under our own fence. The
// next commit finds it, goes on from it and succeeds, instead of failing
// VERSION_MISMATCH for the life of the session.
TEST_F(SessionManagerTest, ACommitWhoseReplyWasLostIsAdopted) {
  Create("s");
  auto w = Open("s");
  ASSERT_TRUE(Append(w, 0, "abc").ok());  // applied, not committed: v1
  // What the lost commit left: a v2 under the session's fence.
  auto head = store_->GetHead({"t", "s"});
  ASSERT_TRUE(head.ok()) << head.status();
  auto v1 = store_->LoadVersion({"t", "s"}, 0);
  ASSERT_TRUE(v1.ok()) << v1.status();
  CommitRequest lost;
  lost.key = {"t", "s"};
  lost.expected_version = 1;
  lost.fence = head->fence;
  lost.state = v1->state;
  lost.durability = Durability::kMemory;
  ASSERT_TRUE(store_->Commit(lost).ok());
  auto c = Append(w, 3, "d", true, true);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->version, 3u);
  EXPECT_EQ(c->committed_input_offset, 4u);
  EXPECT_EQ(store_->GetHead({"t", "s"})->head.input_offset, 4u);
}

// Retries with the same request id do what the first call did, once: a
// delete that succeeded succeeds, a rollback is not repeated, a create
// that failed but exists returns it; other content under the id is
// DUPLICATE_REQUEST.
TEST_F(SessionManagerTest, RetriesWithTheSameRequestIdAreIdempotent) {
  Create("s");
  auto w = Open("s");
  ASSERT_TRUE(Append(w, 0, "hello", true, true).ok());  // v2
  auto rolled =
      manager_->Rollback("t", "s", 1, std::nullopt, std::nullopt, "rollback-1");
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->version, 3u);
  ASSERT_TRUE(Append(w, 0, "hi", true, true).ok());  // v4
  auto again =
      manager_->Rollback("t", "s", 1, std::nullopt, std::nullopt, "rollback-1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->version, 4u);  // not rolled back twice
  EXPECT_EQ(again->input_offset, 2u);
  EXPECT_EQ(GetReason(manager_
                          ->Rollback("t", "s", 2, std::nullopt, std::nullopt,
                                     "rollback-1")
                          .status()),
            Reason::kDuplicateRequest);
  ASSERT_TRUE(Close(w).ok());

  ASSERT_TRUE(manager_->DeleteSession("t", "s", false, "delete-1").ok());
  EXPECT_TRUE(manager_->DeleteSession("t", "s", false, "delete-1").ok());
  EXPECT_EQ(GetReason(manager_->DeleteSession("t", "s", false, "delete-2")),
            Reason::kSessionNotFound);
  Create("u");
  EXPECT_EQ(GetReason(manager_->DeleteSession("t", "u", false, "delete-1")),
            Reason::kDuplicateRequest);

  // Imports: a retried create returns the session it made (a generated id
  // included), a retried new version is not committed twice.
  const std::string blob = Blob("u");
  CreateParams imp;
  imp.request_id = "import-1";
  auto made = manager_->Import("t", blob, false, imp, std::nullopt);
  ASSERT_TRUE(made.ok()) << made.status();
  auto made_again = manager_->Import("t", blob, false, imp, std::nullopt);
  ASSERT_TRUE(made_again.ok()) << made_again.status();
  EXPECT_EQ(made_again->session_id, made->session_id);
  CreateParams onto;
  onto.request_id = "import-2";
  onto.session_id = "u";
  auto version = manager_->Import("t", blob, true, onto, std::nullopt);
  ASSERT_TRUE(version.ok()) << version.status();
  auto version_again = manager_->Import("t", blob, true, onto, std::nullopt);
  ASSERT_TRUE(version_again.ok()) << version_again.status();
  EXPECT_EQ(version_again->version, version->version);
  ASSERT_TRUE(manager_->DeleteSession("t", made->session_id, false).ok());

  // The in-memory store reaches MEMORY only: REPLICATED fails, and the
  // session exists nonetheless. Its retry finds that session, still below
  // REPLICATED: the same error (never an OK below the level asked), and no
  // second session.
  CreateParams p;
  p.request_id = "create-kept";
  p.durability = Durability::kReplicated;
  auto first = manager_->CreateSession("t", p);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable)
      << first.status();
  auto retry = manager_->CreateSession("t", p);
  EXPECT_EQ(retry.status().code(), absl::StatusCode::kUnavailable)
      << retry.status();
  EXPECT_EQ(GetErrorMetadata(retry.status(), "version"), "1");
  auto listed = manager_->ListSessions("t", 100, "", {}, "");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->first.size(), 2u);  // u and the kept one, once
}

TEST_F(SessionManagerTest, ChunkingDoesNotChangeTheState) {
  const std::string text = "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80!";
  Create("whole");
  auto w = Open("whole");
  ASSERT_TRUE(Append(w, 0, text, true, true).ok());
  Create("split");
  auto v = Open("split");
  for (size_t i = 0; i < text.size(); ++i) {
    ASSERT_TRUE(Append(v, i, text.substr(i, 1)).ok()) << i;
  }
  ASSERT_TRUE(Append(v, text.size(), "", true, true).ok());
  EXPECT_EQ(Blob("split"), Blob("whole"));
  // A flush inside a character is INVALID_UTF8 and applies nothing.
  auto bad = Append(v, text.size(), "\xE2\x82", true);
  EXPECT_EQ(GetReason(bad.status()), Reason::kInvalidUtf8);
  EXPECT_EQ(manager_->GetSession("t", "split")->input_offset, text.size());
}

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
    absl::Notification done;
    absl::Status out;
    manager_->Score("t", id, in, [&](absl::StatusOr<ScoreOutcome> o) {
      out = o.status();
      done.Notify();
    });
    done.WaitForNotification();
    return out;
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

// A checkpoint at a durability above the one its input was committed at
// (a checkpoint at the default level, then one asking FSYNC, also as a
// resend) commits again at that level; the memory store cannot fsync, so
// the answer is STORE_UNAVAILABLE, never an OK ack below the level asked.
TEST_F(SessionManagerTest, ACheckpointReachesItsDurabilityOrFails) {
  Create("d");
  auto w = Open("d");
  auto a = Append(w, 0, "abc", true, true);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->durability, Durability::kMemory);
  for (const auto& [offset, text] :
       {std::pair<uint64_t, std::string>{3, ""}, {0, "abc"}}) {
    auto f = Append(w, offset, text, false, true, Durability::kFsync);
    EXPECT_EQ(f.status().code(), absl::StatusCode::kUnavailable)
        << offset << " " << f.status();
    EXPECT_EQ(GetReason(f.status()), Reason::kStoreUnavailable);
  }
  // The head was raised in place (or not at all): no copies of it written.
  EXPECT_EQ(store_->GetHead({"t", "d"})->head.version, a->version);
  // At the level it was committed at, a checkpoint is a plain ack.
  auto m = Append(w, 3, "", false, true, Durability::kMemory);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(Close(w).ok());
}

// Labels set by UpdateSession stay in GetSession after input that is not
// committed yet (the view was rebuilt from the head read before them).
TEST_F(SessionManagerTest, UpdatedLabelsSurviveUncommittedInput) {
  Create("l");
  auto w = Open("l");
  ASSERT_TRUE(Append(w, 0, "a", true, true).ok());
  SessionUpdate u;
  u.labels = std::map<std::string, std::string>{{"k", "v"}};
  auto updated = manager_->UpdateSession("t", "l", u);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->labels.at("k"), "v");
  ASSERT_TRUE(Append(w, 1, "b", true).ok());
  auto got = manager_->GetSession("t", "l");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->labels, (std::map<std::string, std::string>{{"k", "v"}}));
  ASSERT_TRUE(Append(w, 2, "c", true, true).ok());
  ASSERT_TRUE(Close(w).ok());
  got = manager_->GetSession("t", "l");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->labels, (std::map<std::string, std::string>{{"k", "v"}}));
}

// An idle writer learns at once that the session left this worker: the
// lease renewal finds it taken over, and the writer's notification carries
// ABORTED/FENCED (a newer writer on this worker: SESSION_BUSY).
TEST_F(SessionManagerTest, AWriterIsToldWhyItsSessionLeft) {
  SessionManagerOptions o;
  o.lease_ttl = absl::Milliseconds(300);  // renewed every 100 ms
  Start(o);
  Create("f");
  absl::Notification told;
  absl::Status why;
  auto w = manager_->OpenWriter("t", "f", [&](const absl::Status& st) {
    why = st;
    told.Notify();
  });
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(Append(*w, 0, "x", false, true).ok());
  ASSERT_TRUE(
      store_->AcquireLease({"t", "f"}, "other", absl::Seconds(30), true).ok());
  ASSERT_TRUE(told.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(why.code(), absl::StatusCode::kAborted) << why;
  EXPECT_EQ(GetReason(why), Reason::kFenced) << why;

  Create("g");
  absl::Notification busy;
  absl::Status busy_why;
  auto first = manager_->OpenWriter("t", "g", [&](const absl::Status& st) {
    busy_why = st;
    busy.Notify();
  });
  ASSERT_TRUE(first.ok());
  auto second = Open("g");
  ASSERT_TRUE(busy.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(GetReason(busy_why), Reason::kSessionBusy) << busy_why;
}

// Input left uncommitted by a writer that stopped sending is committed
// once it waited checkpoint_interval, without another request.
TEST_F(SessionManagerTest, IdleInputIsCommittedAfterTheInterval) {
  SessionManagerOptions o;
  o.checkpoint_interval = absl::Milliseconds(200);
  Start(o);
  Create("idle");
  auto w = Open("idle");
  auto ack = Append(w, 0, "abc", true);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->committed_input_offset, 0u);
  uint64_t committed = 0;
  for (int i = 0; i < 300 && committed < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    auto h = store_->GetHead({"t", "idle"});
    ASSERT_TRUE(h.ok()) << h.status();
    committed = h->head.input_offset;
  }
  EXPECT_EQ(committed, 3u);
  ASSERT_TRUE(Close(w).ok());
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

// Sessions with many long labels page by size as well as by count: a
// page_size-1000 page stays far below gRPC's 4 MiB response limit (1,000
// such sessions would be ~20 MB), and every session is listed once.
TEST_F(SessionManagerTest, AListOfHeavilyLabelledSessionsPagesBySize) {
  constexpr int kSessions = 130;  // ~21 KB of labels each: ~2.7 MB in all
  for (int i = 0; i < kSessions; ++i) {
    CreateParams p;
    p.request_id = absl::StrCat("create-", i);
    p.session_id = absl::StrCat("s", 1000 + i);
    for (int l = 0; l < 64; ++l) {
      p.labels[absl::StrCat(std::string(60, 'k'), l)] = std::string(255, 'v');
    }
    ASSERT_TRUE(manager_->CreateSession("t", p).ok()) << i;
  }
  std::set<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    auto page = manager_->ListSessions("t", 1000, token, {}, "");
    ASSERT_TRUE(page.ok()) << page.status();
    ASSERT_FALSE(page->first.empty());
    EXPECT_LT(page->first.size(), static_cast<size_t>(kSessions));
    for (const SessionView& v : page->first) {
      EXPECT_TRUE(seen.insert(v.session_id).second) << v.session_id;
    }
    token = page->second;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen.size(), static_cast<size_t>(kSessions));
  EXPECT_GE(pages, 2);
}

// Input whose requests asked for FSYNC is committed at FSYNC by policy too
// (here the drain's commit; the idle and eviction commits alike): a writer
// drops what a commit covers, and a MEMORY commit of it would have been

// A budget below one session keeps the session in use (once it is idle,
// the next load evicts it) instead of evicting it as it loads.
TEST_F(SessionManagerTest, ABudgetBelowOneSessionStillServes) {
  SessionManagerOptions o;
  o.residency_bytes = 1;
  Start(o);
  for (const char* id : {"a", "b"}) {
    Create(id);
    auto w = Open(id);
    ASSERT_NE(w, nullptr);
    ASSERT_TRUE(Append(w, 0, "x", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
  }
  EXPECT_EQ(manager_->stats().resident, 1);
  EXPECT_EQ(manager_->stats().loads, 2);
  EXPECT_EQ(manager_->stats().evictions, 1);
}

TEST_F(SessionManagerTest, ALostLeaseFencesTheNextCommit) {
  Create("f");
  auto w = Open("f");
  ASSERT_TRUE(Append(w, 0, "x", false, true).ok());
  // Another worker takes the session over.
  ASSERT_TRUE(
      store_->AcquireLease({"t", "f"}, "other", absl::Seconds(30), true).ok());
  auto fenced = Append(w, 1, "y", false, true);
  EXPECT_EQ(fenced.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(GetReason(fenced.status()), Reason::kFenced);
  EXPECT_EQ(store_->GetHead({"t", "f"})->head.input_offset, 1u);
  // The cached state was dropped: a new writer reloads the committed head.
  auto again = Open("f");
  auto ack = Append(again, 1, "y", false, true);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->input_offset, 2u);
  // One takeover, counted once, though the old copy's writer met it again.
  EXPECT_EQ(GetReason(Append(w, 1, "y", false, true).status()),
            Reason::kFenced);
  EXPECT_EQ(manager_->stats().fenced, 1);
}

// GetSession does not answer from a copy another worker has superseded:
// input applied here but never committed is not reported (a client
// resuming from it would skip that input).
TEST_F(SessionManagerTest, GetSessionAfterATakeoverReadsTheStore) {
  Create("g");
  auto w = Open("g");
  ASSERT_TRUE(Append(w, 0, "abc", false, true).ok());  // committed: 3
  ASSERT_TRUE(Append(w, 3, "def").ok());               // applied only: 6
  auto mine = manager_->GetSession("t", "g");
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(mine->input_offset, 6u);
  // Another worker takes the session over.
  ASSERT_TRUE(
      store_->AcquireLease({"t", "g"}, "other", absl::Seconds(30), true).ok());
  auto now = manager_->GetSession("t", "g");
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->input_offset, 3u);
  EXPECT_EQ(now->committed_input_offset, 3u);
}

TEST_F(SessionManagerTest, ANewWriterSupersedesTheOld) {
  Create("w");
  auto superseded = std::make_shared<absl::Notification>();
  auto first = Open("w", superseded);
  ASSERT_TRUE(Append(first, 0, "a").ok());
  auto second = Open("w");
  auto busy = Append(first, 1, "b");
  EXPECT_EQ(GetReason(busy.status()), Reason::kSessionBusy);
  EXPECT_TRUE(Append(second, 1, "b").ok());
  ASSERT_TRUE(Close(second).ok());
  superseded->WaitForNotification();  // the old call is told, exactly once
}

}  // namespace
}  // namespace statestream::worker
