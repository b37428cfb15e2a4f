// SPDX-License-Identifier: Apache-2.0
// The session manager on the memory store and a real (random-weight,
// byte-level) model: exactly-once appends, chunking independence, commits
// and durability, fencing, superseded writers and deletes. Reloads and
// retries on another worker: session_manager_reload_test.cc; busy sessions
// and drains: session_manager_busy_test.cc; generation:
// session_manager_generate_test.cc.
#include "worker/session_manager.h"

#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/generation_record.h"
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
// An imported state the model could not have produced is refused, typed,
// as a new session and as a new version: counters about to wrap, pending
// text that is not UTF-8 or longer than the input, non-finite values, a
// header describing another shape. Nothing is written.
TEST_F(SessionManagerTest, AnImportNoWorkerCouldHaveWrittenIsRefused) {
  auto good = SnapshotWithInput("origin");
  ASSERT_TRUE(good.ok()) << good.status();
  struct Case {
    const char* what;
    std::function<void(StateSnapshot*)> spoil;
    Reason reason;
  };
  const Case cases[] = {
      {"input_offset near 2^64",
       [](StateSnapshot* s) { s->input_offset = ~uint64_t{0} - 10; },
       Reason::kStateCorrupt},
      {"position 2^64-1", [](StateSnapshot* s) { s->position = ~uint64_t{0}; },
       Reason::kStateCorrupt},
      {"pending text longer than the input",
       [](StateSnapshot* s) { s->tokenizer_tail = std::string(100, 'a'); },
       Reason::kStateCorrupt},
      {"pending text not UTF-8",
       [](StateSnapshot* s) { s->tokenizer_tail = "\xff\xfe"; },
       Reason::kStateCorrupt},
      {"pending text starting with 4 continuation bytes",
       [](StateSnapshot* s) { s->tokenizer_tail = "\x80\x80\x80\x80"; },
       Reason::kStateCorrupt},
      {"pending text not UTF-8 after the rest of a character",
       [](StateSnapshot* s) { s->tokenizer_tail = "\xa6\xff"; },
       Reason::kStateCorrupt},
      {"NaN state", [](StateSnapshot* s) { s->state[3] = std::nanf(""); },
       Reason::kStateCorrupt},
      // Finite, but no model produces it: the next step overflows (it was
      // served as NaN logits, sampled as token 0).
      {"a state at the float limit",
       [](StateSnapshot* s) {
         std::fill(s->state.begin(), s->state.end(), 3e38f);
       },
       Reason::kStateCorrupt},
      // Longer than any tokenizer leaves (NeoX's next scan of 16 MiB took
      // about a gigabyte).
      {"pending text of 200 KiB",
       [](StateSnapshot* s) {
         s->tokenizer_tail = std::string(200 << 10, 'a');
         s->input_offset += 200 << 10;
       },
       Reason::kStateCorrupt},
      {"infinite last_hidden",
       [](StateSnapshot* s) {
         s->last_hidden.back() = std::numeric_limits<float>::infinity();
       },
       Reason::kStateCorrupt},
      // The recorded open UTF-8 character must end the input, as the
      // pending text does: it was taken as is (an Append's error then
      // named offset 2^64-1, or checked text the tokenizer never got).
      {"an open character longer than the input",
       [](StateSnapshot* s) {
         s->input_offset = 1;
         s->tokenizer_tail.clear();
         s->sampler_state =
             EncodeSamplerSideData("", {}, Utf8Carry{"\xE2\x82", 1, true});
       },
       Reason::kStateCorrupt},
      {"an open character the pending text does not end with",
       [](StateSnapshot* s) {
         s->tokenizer_tail = "ab\xE2\x82";
         s->sampler_state = EncodeSamplerSideData(
             "", {}, Utf8Carry{"\xF0", s->input_offset, true});
       },
       Reason::kStateCorrupt},
      // A generation record no worker writes (its replay would reach a
      // client that cannot parse it).
      {"a record whose stop string is not UTF-8",
       [](StateSnapshot* s) {
         GenerationRecord r;
         r.request_id = "gen";
         r.stop_string = "\xff";
         s->sampler_state = EncodeSamplerSideData("S", {r});
       },
       Reason::kStateCorrupt},
      {"another layer count", [](StateSnapshot* s) { s->n_layer += 1; },
       Reason::kModelMismatch},
      {"another architecture", [](StateSnapshot* s) { s->architecture = "v4"; },
       Reason::kModelMismatch},
  };
  for (const Case& c : cases) {
    StateSnapshot bad = *good;
    ASSERT_FALSE(bad.last_hidden.empty());
    c.spoil(&bad);
    const std::string blob = EncodeState(bad);
    CreateParams fresh;
    fresh.session_id = "copy";
    auto created = manager_->Import("t", blob, false, fresh, std::nullopt);
    EXPECT_EQ(GetReason(created.status()), c.reason)
        << c.what << ": " << created.status();
    CreateParams into;
    into.session_id = "origin";
    auto version = manager_->Import("t", blob, true, into, std::nullopt);
    EXPECT_EQ(GetReason(version.status()), c.reason)
        << c.what << ": " << version.status();
    // With the metadata docs/errors.md lists for the reason.
    for (const char* key :
         c.reason == Reason::kStateCorrupt
             ? std::vector<const char*>{"detail"}
             : std::vector<const char*>{"expected_fingerprint",
                                        "actual_fingerprint"}) {
      EXPECT_TRUE(GetErrorMetadata(created.status(), key).has_value())
          << c.what << ": " << key << ": " << created.status();
    }
  }
  EXPECT_EQ(store_->GetHead({"t", "copy"}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetHead({"t", "origin"})->head.version,
            good->position > 0 ? 2u : 1u);
  // The untouched state imports.
  CreateParams fresh;
  fresh.session_id = "copy";
  EXPECT_TRUE(
      manager_->Import("t", EncodeState(*good), false, fresh, std::nullopt)
          .ok());
}

// A World token may end inside a character (the vocabulary holds byte
// sequences), so the tail a worker exports may start with the rest of a
// character and end inside another: such states import.
TEST_F(SessionManagerTest, AnImportedTailMayStartAndEndInsideACharacter) {
  auto good = SnapshotWithInput("origin");
  ASSERT_TRUE(good.ok()) << good.status();
  int n = 0;
  for (const char* tail : {"\xa6", "\x9f\x91\xa6 x", "\x80\x80\x80",
                           "\xa6hi \xf0\x9f", "\x91\xa6\xe2\x82"}) {
    StateSnapshot snap = *good;
    snap.tokenizer_tail = tail;
    CreateParams p;
    p.session_id = absl::StrCat("copy", n++);
    auto imported =
        manager_->Import("t", EncodeState(snap), false, p, std::nullopt);
    EXPECT_TRUE(imported.ok())
        << absl::CEscape(tail) << ": " << imported.status();
  }
}

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

// A request whose commit the store refused, nothing written, is not
// applied (a request is applied atomically: payload, flush, checkpoint):
// the error, the session where it was before the request, and the same
// request resent is applied, not acknowledged as a duplicate of input the
// session never committed. The same for a commit the policy took with a
// request that asked for none. It used to stay applied: a resend, with
// any content, was a duplicate.
TEST_F(SessionManagerTest, ARequestWhoseCommitTheStoreRefusedIsNotApplied) {
  faulty_ = std::make_unique<LosingStore>(store_.get());
  for (const bool policy : {false, true}) {
    SCOPED_TRACE(policy ? "the policy's commit" : "a checkpoint request");
    SessionManagerOptions o;
    if (policy) o.checkpoint_tokens = 6;
    Start(o);
    const std::string id = policy ? "by-policy" : "asked";
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, "abc").ok());  // applied, uncommitted
    faulty_->refuse_commits = 1;
    auto refused = Append(w, 3, "def", false, !policy);
    EXPECT_EQ(GetReason(refused.status()), Reason::kStoreUnavailable)
        << refused.status();
    auto view = manager_->GetSession("t", id);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->input_offset, 3u);
    EXPECT_EQ(view->position, 3u);
    // Resent (on a new writer, as a client's reconnect): applied now.
    auto again = Open(id);
    auto resent = Append(again, 3, "def", false, !policy);
    ASSERT_TRUE(resent.ok()) << resent.status();
    EXPECT_FALSE(resent->duplicate);
    EXPECT_EQ(resent->committed_input_offset, 6u);
    // The state is the one "abcdef" makes, once.
    const std::string ref = id + "-ref";
    Create(ref);
    auto rw = Open(ref);
    ASSERT_TRUE(Append(rw, 0, "abcdef", false, true).ok());
    auto got = store_->LoadVersion({"t", id}, 0);
    auto want = store_->LoadVersion({"t", ref}, 0);
    ASSERT_TRUE(got.ok() && want.ok());
    EXPECT_EQ(got->state.position, 6u);
    EXPECT_EQ(got->state.state, want->state.state);
    ASSERT_TRUE(Close(again).ok());
    ASSERT_TRUE(Close(rw).ok());
  }
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
