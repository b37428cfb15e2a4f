// SPDX-License-Identifier: Apache-2.0
// The fixture of the session manager's tests (session_manager_test.cc,
// session_manager_generate_test.cc): a real (random-weight, byte-level)
// model on the memory store, optionally behind a store that loses replies.
#ifndef STATESTREAM_WORKER_SESSION_MANAGER_TEST_FIXTURE_H_
#define STATESTREAM_WORKER_SESSION_MANAGER_TEST_FIXTURE_H_

#include <atomic>
#include <memory>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/memory_state_store.h"
#include "state_store/sqlite_state_store.h"
#include "state_store/state_codec.h"
#include "state_store/testing/forwarding_store.h"
#include "worker/engine/random_model.h"
#include "worker/engine/tokenizer.h"
#include "worker/request_memo.h"
#include "worker/session_manager.h"

namespace statestream::worker {

inline std::unique_ptr<engine::Model> RandomModel(int vocab_size, int n_layer) {
  engine::RandomModelSpec spec;
  spec.n_layer = n_layer;
  spec.n_embd = 64;
  spec.head_size = 32;
  spec.vocab_size = vocab_size;
  spec.seed = 5;
  auto model = engine::LoadRandomModel("x070", spec);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

// In front of a store: loses the reply of the next commit that asks
// (written, answered UNAVAILABLE) and fails the GetHead after it, as a
// Redis restarting mid-commit can.
class LosingStore final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<bool> lose_next_commit{false};
  // The same for the next commit or rollback, head reads going on working
  // (the store wrote it; only the reply was lost, or it fell short of the
  // durability asked for).
  std::atomic<bool> lose_next_reply{false};
  // Commits refused (UNAVAILABLE, nothing written) before they pass again.
  std::atomic<int> refuse_commits{0};
  // Commits that asked for more than MEMORY.
  std::atomic<int> durable_commits{0};
  // The sessions whose commits were refused.
  absl::Mutex refused_mu;
  std::set<std::string> refused_sessions ABSL_GUARDED_BY(refused_mu);

  // Deletes refused (UNAVAILABLE, nothing deleted) before they pass again.
  std::atomic<int> refuse_deletes{0};
  absl::Status DeleteSession(const SessionKey& k) override {
    if (refuse_deletes.load() > 0) {
      --refuse_deletes;
      return Unavailable();
    }
    return ForwardingStore::DeleteSession(k);
  }
  // When set, every Commit waits for it (after notifying commit_started).
  std::atomic<absl::Notification*> hold_commits{nullptr};
  absl::Notification commit_started;

  // While set, commits, head reads and lease releases wait 50 ms and fail
  // UNAVAILABLE (a hung store past the client's timeout), counted here.
  std::atomic<bool> hung{false};
  std::atomic<int> hung_calls{0};
  absl::Status ReleaseLease(const SessionKey& k, const std::string& owner,
                            uint64_t fence) override {
    if (hung.load()) return Hang();
    return ForwardingStore::ReleaseLease(k, owner, fence);
  }

  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override {
    if (hung.load()) return Hang();
    if (absl::Notification* hold = hold_commits.load(); hold != nullptr) {
      if (!commit_notified_.exchange(true)) commit_started.Notify();
      hold->WaitForNotification();
    }
    if (r.durability > Durability::kMemory) ++durable_commits;
    if (refuse_commits.load() > 0) {
      --refuse_commits;
      absl::MutexLock lock(&refused_mu);
      refused_sessions.insert(r.key.session_id);
      return Unavailable();
    }
    auto res = ForwardingStore::Commit(r);
    if (res.ok() && lose_next_commit.exchange(false)) {
      fail_get_heads_ = 1;
      return Unavailable();
    }
    if (res.ok() && lose_next_reply.exchange(false)) return Unavailable();
    return res;
  }
  absl::StatusOr<CommitResult> Rollback(const SessionKey& k, uint64_t e,
                                        uint64_t f, uint64_t v, Durability d,
                                        const std::string& rid) override {
    auto res = ForwardingStore::Rollback(k, e, f, v, d, rid);
    if (res.ok() && lose_next_reply.exchange(false)) return Unavailable();
    return res;
  }
  // When set, every LoadVersion waits for it (after notifying
  // load_started): before reading the version, or after when
  // hold_after_read (a load that read the session and is yet to map it).
  absl::Notification* hold_loads = nullptr;
  bool hold_after_read = false;
  absl::Notification load_started;
  // A version whose state no load can read (as one whose chunk was lost).
  std::atomic<uint64_t> corrupt_version{0};
  absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& k,
                                            uint64_t version) override {
    if (hold_loads != nullptr && hold_after_read) {
      auto read = ForwardingStore::LoadVersion(k, version);
      if (!load_started.HasBeenNotified()) load_started.Notify();
      hold_loads->WaitForNotification();
      return read;
    }
    if (hold_loads != nullptr) {
      if (!load_started.HasBeenNotified()) load_started.Notify();
      hold_loads->WaitForNotification();
    }
    if (corrupt_version.load() != 0) {
      uint64_t v = version;
      if (v == 0) {
        auto head = ForwardingStore::GetHead(k);
        if (head.ok()) v = head->head.version;
      }
      if (v == corrupt_version.load()) {
        return DataLossError(Reason::kStateCorrupt,
                             "a chunk of the state is missing");
      }
    }
    return ForwardingStore::LoadVersion(k, version);
  }
  absl::StatusOr<SessionHead> GetHead(const SessionKey& k) override {
    if (hung.load()) return Hang();
    if (fail_get_heads_ > 0) {
      --fail_get_heads_;
      return Unavailable();
    }
    return ForwardingStore::GetHead(k);
  }

 private:
  static absl::Status Unavailable() {
    return MakeError(absl::StatusCode::kUnavailable, Reason::kStoreUnavailable,
                     "connection lost");
  }
  absl::Status Hang() {
    ++hung_calls;
    absl::SleepFor(absl::Milliseconds(50));
    return Unavailable();
  }
  std::atomic<int> fail_get_heads_{0};
  std::atomic<bool> commit_notified_{false};
};

class SessionManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(SessionManagerOptions{}); }

  // A one-layer random model over the World vocabulary and the World
  // tokenizer (which holds bytes back), then Start(options).
  void StartWorld(SessionManagerOptions options) {
    manager_.reset();
    scheduler_.reset();
    model_ = RandomModel(engine::kWorldVocabSize, 1);
    const char* shared = std::getenv("STATESTREAM_SHARED_DIR");
    auto t = engine::LoadWorldTokenizer(
        std::string(shared != nullptr ? shared : STATESTREAM_SHARED_DIR) +
        "/testdata/rwkv_vocab_v20230424.txt");
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = *std::move(t);
    scheduler_ = std::make_unique<Scheduler>(model_.get(), SchedulerOptions{});
    Start(options);
  }

  void Start(SessionManagerOptions options) {
    manager_.reset();
    if (model_ == nullptr) {
      model_ = RandomModel(256, 2);
      tokenizer_ = *engine::MakeByteTokenizer();
      store_ = *NewMemoryStateStore(MemoryStateStoreOptions{});
      scheduler_ =
          std::make_unique<Scheduler>(model_.get(), SchedulerOptions{});
    }
    options.owner = "test-worker";
    auto m = SessionManager::Create(options, model_.get(), tokenizer_.get(),
                                    scheduler_.get(),
                                    faulty_ ? faulty_.get() : store_.get());
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
  }

  // Another worker on the same model, scheduler and store, with its own
  // request-id memo: what a retry that failed over meets.
  std::unique_ptr<SessionManager> OtherWorker(
      SessionManagerOptions options = {}) {
    options.owner = "other-worker";
    auto m = SessionManager::Create(options, model_.get(), tokenizer_.get(),
                                    scheduler_.get(), store_.get());
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  }

  // As the worker of `other` (OtherWorker's): one writer appends `text` at
  // `offset` to session `id` and commits, taking the lease over. If the
  // first try is fenced (other's copy went stale), a second loads afresh.
  absl::Status AppendElsewhere(std::unique_ptr<SessionManager>& other,
                               const std::string& id, uint64_t offset,
                               const std::string& text) {
    std::swap(manager_, other);
    absl::Status last;
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto w = Open(id);
      auto a = Append(w, offset, text, true, true);
      last = a.status();
      if (a.ok()) {
        last = Close(w);
        break;
      }
      Close(w).IgnoreError();
    }
    std::swap(manager_, other);
    return last;
  }

  void Create(const std::string& id) {
    CreateParams p;
    p.request_id = "create-" + id;
    p.session_id = id;
    ASSERT_TRUE(manager_->CreateSession("t", p).ok());
  }

  // A manager whose checkpoint interval (1 h) is far past the TTL of the
  // session "short" it creates (2 s), and a writer of that session in `w`.
  void OpenShortLived(std::shared_ptr<SessionManager::Writer>* w) {
    SessionManagerOptions o;
    o.checkpoint_interval = absl::Hours(1);
    Start(o);
    CreateParams p;
    p.request_id = "create-short";
    p.session_id = "short";
    p.ttl = absl::Seconds(2);
    ASSERT_TRUE(manager_->CreateSession("t", p).ok());
    *w = Open("short");
  }

  // Create(id), then "prompt" appended, flushed and committed: a session
  // to generate from.
  void CreatePrompted(const std::string& id) {
    Create(id);
    auto w = Open(id);
    ASSERT_TRUE(Append(w, 0, "prompt", true, true).ok());
    ASSERT_TRUE(Close(w).ok());
  }

  // `superseded` (shared: a drain at teardown notifies writers still
  // attached) is notified when the writer call is to end.
  std::shared_ptr<SessionManager::Writer> Open(
      const std::string& id,
      std::shared_ptr<absl::Notification> superseded = nullptr) {
    auto w = manager_->OpenWriter("t", id, [superseded](const absl::Status&) {
      if (superseded != nullptr && !superseded->HasBeenNotified()) {
        superseded->Notify();
      }
    });
    EXPECT_TRUE(w.ok()) << w.status();
    return w.value_or(nullptr);
  }

  absl::StatusOr<AppendAck> Append(
      const std::shared_ptr<SessionManager::Writer>& w, uint64_t offset,
      const std::string& text, bool flush = false, bool checkpoint = false,
      std::optional<Durability> durability = std::nullopt,
      const std::string& request_id = "") {
    AppendInput in;
    in.request_id = request_id;
    in.durability = durability;
    in.expected_input_offset = offset;
    in.kind = AppendInput::Kind::kText;
    in.text = text;
    in.flush = flush;
    in.checkpoint = checkpoint;
    return Append(w, in);
  }
  absl::StatusOr<AppendAck> Append(
      const std::shared_ptr<SessionManager::Writer>& w, const AppendInput& in) {
    absl::Notification done;
    absl::StatusOr<AppendAck> out;
    manager_->Append(w, in, [&](absl::StatusOr<AppendAck> a) {
      out = std::move(a);
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  }

  absl::Status Close(const std::shared_ptr<SessionManager::Writer>& w) {
    absl::Notification done;
    absl::Status out;
    manager_->CloseWriter(w, std::nullopt, [&](absl::Status s) {
      out = s;
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  }

  // A fresh manager whose scheduler takes one token an iteration, so an
  // ingest keeps its session busy long enough to act meanwhile.
  void StartSlow(SessionManagerOptions options = {}) {
    manager_.reset();
    SchedulerOptions slow;
    slow.max_batch_tokens = 1;
    slow.prefill_chunk = 1;
    scheduler_ = std::make_unique<Scheduler>(model_.get(), slow);
    Start(options);
  }

  // Starts `in` on `w` and returns once its ingest runs; its outcome lands
  // in *out, then *ended is notified.
  void AppendWhileIngesting(const std::shared_ptr<SessionManager::Writer>& w,
                            const AppendInput& in, absl::Notification* ended,
                            absl::StatusOr<AppendAck>* out) {
    const int64_t before = scheduler_->stats().tokens;
    manager_->Append(w, in, [ended, out](absl::StatusOr<AppendAck> a) {
      *out = std::move(a);
      ended->Notify();
    });
    while (scheduler_->stats().tokens == before) {
      absl::SleepFor(absl::Milliseconds(1));
    }
  }

  // A new session `id` fed "some input" (flushed, committed), and its
  // exported state decoded.
  absl::StatusOr<StateSnapshot> SnapshotWithInput(const std::string& id) {
    Create(id);
    auto w = Open(id);
    EXPECT_TRUE(Append(w, 0, "some input", true, true).ok());
    EXPECT_TRUE(Close(w).ok());
    return DecodeState(Blob(id));
  }

  // Starts a manager over a SQLite store of the file at `path` (behind a
  // LosingStore, faulty_) into *sqlite; the caller resets it after
  // manager_ and faulty_.
  void StartOnSqlite(const std::string& path,
                     std::unique_ptr<StateStore>* sqlite) {
    SqliteStateStoreOptions so;
    so.path = path;
    auto made = NewSqliteStateStore(so);
    ASSERT_TRUE(made.ok()) << made.status();
    *sqlite = *std::move(made);
    faulty_ = std::make_unique<LosingStore>(sqlite->get());
    Start(SessionManagerOptions{});
  }

  // Session "far" with 29 bytes of input, committed: its exported state.
  std::string FarBlob() {
    Create("far");
    auto w = Open("far");
    EXPECT_TRUE(Append(w, 0, "a longer input than the other", true, true).ok());
    EXPECT_TRUE(Close(w).ok());
    return Blob("far");
  }

  std::string Blob(const std::string& id) {
    auto e = manager_->Export("t", id, 0);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? e->blob : "";
  }

  std::vector<int32_t> Generate(const std::string& id, bool commit,
                                const std::string& request_id,
                                GenerateOutcome* outcome = nullptr) {
    GenerateInput in;
    in.request_id = request_id;
    in.max_tokens = 12;
    in.commit = commit;
    in.sampling.seed = 9;
    in.has_seed = true;
    std::vector<int32_t> tokens;
    absl::Notification done;
    absl::StatusOr<GenerateOutcome> out;
    manager_->Generate(
        "t", id, in,
        [&](const GeneratedPiece& p) { tokens.push_back(p.token); },
        [&](absl::StatusOr<GenerateOutcome> o) {
          out = std::move(o);
          done.Notify();
        });
    done.WaitForNotification();
    EXPECT_TRUE(out.ok()) << out.status();
    if (out.ok()) {
      EXPECT_EQ(out->committed, commit);
      if (outcome != nullptr) *outcome = *out;
    }
    return tokens;
  }

  // Runs `in` on session `id` and returns how it ended.
  absl::Status GenerateStatus(const std::string& id, const GenerateInput& in) {
    absl::Notification done;
    absl::Status out;
    manager_->Generate(
        "t", id, in, [](const GeneratedPiece&) {},
        [&](absl::StatusOr<GenerateOutcome> o) {
          out = o.status();
          done.Notify();
        });
    done.WaitForNotification();
    return out;
  }

  // Scores `in` on session `id` and returns how it ended.
  absl::Status ScoreStatus(const std::string& id, const ScoreInput& in) {
    absl::Notification done;
    absl::Status out;
    manager_->Score("t", id, in, [&](absl::StatusOr<ScoreOutcome> o) {
      out = o.status();
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  }

  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<LosingStore> faulty_;  // in front of store_ when set
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SessionManager> manager_;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_SESSION_MANAGER_TEST_FIXTURE_H_
