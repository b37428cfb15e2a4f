// SPDX-License-Identifier: Apache-2.0
// ModelSet over two real (random-weight, byte-level) models of different
// architectures sharing one memory store: which manager each call goes to,
// and MODEL_MISMATCH wherever a state of one model meets the other.
#include "worker/model_set.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/memory_state_store.h"
#include "state_store/testing/forwarding_store.h"
#include "worker/engine/random_model.h"

namespace statestream::worker {
namespace {

std::unique_ptr<engine::Model> RandomByteModel(const std::string& arch,
                                               uint64_t seed) {
  engine::RandomModelSpec spec;
  spec.n_layer = 1;
  spec.n_embd = 64;
  spec.head_size = 32;
  spec.vocab_size = 256;
  spec.seed = seed;
  auto model = engine::LoadRandomModel(arch, spec);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

// One model with its scheduler and manager over the shared store.
struct Served {
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<SessionManager> manager;
};

class ModelSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = *engine::MakeByteTokenizer();
    store_ = *NewMemoryStateStore(MemoryStateStoreOptions{});
    a_ = Serve("a-x070", RandomByteModel("x070", 1));
    b_ = Serve("b-x060", RandomByteModel("x060", 2));
    auto set =
        ModelSet::Create({a_.manager.get(), b_.manager.get()}, store_.get());
    ASSERT_TRUE(set.ok()) << set.status();
    set_ = *std::move(set);
  }

  Served Serve(const std::string& id, std::unique_ptr<engine::Model> model) {
    Served s;
    s.model = std::move(model);
    s.scheduler =
        std::make_unique<Scheduler>(s.model.get(), SchedulerOptions{});
    SessionManagerOptions options;
    options.model_id = id;
    options.owner = "test-worker";
    s.manager =
        *SessionManager::Create(options, s.model.get(), tokenizer_.get(),
                                s.scheduler.get(), store_.get());
    return s;
  }

  static void Create(SessionManager& m, const std::string& id) {
    CreateParams p;
    p.request_id = "create-" + id;
    p.session_id = id;
    auto v = m.CreateSession("t", p);
    ASSERT_TRUE(v.ok()) << v.status();
  }

  // Appends `text` (flushed, committed) through a writer of `m`.
  static absl::Status Feed(SessionManager& m, const std::string& id,
                           const std::string& text) {
    auto w = m.OpenWriter("t", id, [](const absl::Status&) {});
    if (!w.ok()) return w.status();
    AppendInput in;
    in.kind = AppendInput::Kind::kText;
    in.text = text;
    in.flush = true;
    absl::Notification appended;
    absl::Status st;
    m.Append(*w, in, [&](absl::StatusOr<AppendAck> a) {
      st = a.status();
      appended.Notify();
    });
    appended.WaitForNotification();
    absl::Notification closed;
    m.CloseWriter(*w, std::nullopt, [&](absl::Status s) {
      if (st.ok()) st = s;
      closed.Notify();
    });
    closed.WaitForNotification();
    return st;
  }

  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<StateStore> store_;
  Served a_, b_;
  std::unique_ptr<ModelSet> set_;
};

TEST_F(ModelSetTest, CreateRejectsBadSets) {
  EXPECT_FALSE(ModelSet::Create({}, store_.get()).ok());
  EXPECT_FALSE(
      ModelSet::Create({a_.manager.get(), b_.manager.get()}, nullptr).ok());
  EXPECT_TRUE(ModelSet::Create({a_.manager.get()}, nullptr).ok());
  // Two ids for one model: sessions could not say which they belong to.
  Served again = Serve("a-again", RandomByteModel("x070", 1));
  auto same =
      ModelSet::Create({a_.manager.get(), again.manager.get()}, store_.get());
  EXPECT_EQ(same.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(same.status().message().find("same model"), std::string::npos);
  Served dup = Serve("a-x070", RandomByteModel("x060", 3));
  auto ids =
      ModelSet::Create({a_.manager.get(), dup.manager.get()}, store_.get());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelSetTest, ForModelByIdEmptyIsTheFirst) {
  EXPECT_EQ(*set_->ForModel(""), a_.manager.get());
  EXPECT_EQ(*set_->ForModel("a-x070"), a_.manager.get());
  EXPECT_EQ(*set_->ForModel("b-x060"), b_.manager.get());
  auto missing = set_->ForModel("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(missing.status()), Reason::kModelNotFound);
  EXPECT_EQ(set_->ForFingerprint(b_.manager->fingerprint()), b_.manager.get());
  EXPECT_EQ(set_->ForFingerprint("other"), nullptr);
  EXPECT_EQ(set_->fingerprints(),
            (std::vector<std::string>{a_.manager->fingerprint(),
                                      b_.manager->fingerprint()}));
}

TEST_F(ModelSetTest, ForSessionFindsTheSessionsModel) {
  Create(*a_.manager, "on-a");
  Create(*b_.manager, "on-b");
  // Not resident anywhere: the head's fingerprint decides.
  EXPECT_FALSE(b_.manager->IsResident("t", "on-b"));
  EXPECT_EQ(*set_->ForSession("t", "on-a"), a_.manager.get());
  EXPECT_EQ(*set_->ForSession("t", "on-b"), b_.manager.get());
  // Resident: the holder, without reading the store.
  ASSERT_TRUE(Feed(*b_.manager, "on-b", "hello").ok());
  EXPECT_TRUE(b_.manager->IsResident("t", "on-b"));
  EXPECT_FALSE(a_.manager->IsResident("t", "on-b"));
  EXPECT_EQ(*set_->ForSession("t", "on-b"), b_.manager.get());
  // Unknown session or tenant: the default manager answers NOT_FOUND.
  EXPECT_EQ(*set_->ForSession("t", "missing"), a_.manager.get());
  EXPECT_EQ(*set_->ForSession("u", "on-b"), a_.manager.get());
  auto got = (*set_->ForSession("t", "missing"))->GetSession("t", "missing");
  EXPECT_EQ(GetReason(got.status()), Reason::kSessionNotFound);
}

// Head reads that fail while the managers' own reads succeed (a store
// that flaps between the two).
class FlakyHeads : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  absl::StatusOr<SessionHead> GetHead(const SessionKey& k) override {
    if (down_) {
      return MakeError(absl::StatusCode::kUnavailable,
                       Reason::kStoreUnavailable, "injected: store down");
    }
    if (damaged_) {
      return DataLossError(Reason::kStateCorrupt, "injected: damaged head");
    }
    return ForwardingStore::GetHead(k);
  }
  std::atomic<bool> down_{false};
  std::atomic<bool> damaged_{false};
};

TEST_F(ModelSetTest, AFailedHeadReadIsTheCallsErrorNotAGuess) {
  Create(*b_.manager, "on-b");
  FlakyHeads heads(store_.get());
  auto set = ModelSet::Create({a_.manager.get(), b_.manager.get()}, &heads);
  ASSERT_TRUE(set.ok()) << set.status();
  heads.down_ = true;
  // A guess (the default model's manager) would answer this session of
  // the other model MODEL_MISMATCH from its own, successful read: a
  // permanent error for a passing outage.
  absl::StatusOr<SessionManager*> m = (*set)->ForSession("t", "on-b");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetReason(m.status()), Reason::kStoreUnavailable);
  absl::Notification done;
  absl::Status async;
  (*set)->ForSessionAsync("t", "on-b", [&](absl::StatusOr<SessionManager*> r) {
    async = r.status();
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_EQ(GetReason(async), Reason::kStoreUnavailable);
  // Once the store answers, the session's own model.
  heads.down_ = false;
  EXPECT_EQ(*(*set)->ForSession("t", "on-b"), b_.manager.get());
  // A damaged head is no passing outage: the default manager answers
  // (STATE_CORRUPT from its own read), and can still delete the session.
  heads.damaged_ = true;
  EXPECT_EQ(*(*set)->ForSession("t", "on-b"), a_.manager.get());
}

TEST_F(ModelSetTest, ForSessionAsyncReadsOffTheCallersThread) {
  Create(*b_.manager, "on-b");
  const std::thread::id caller = std::this_thread::get_id();
  absl::Notification done;
  SessionManager* got = nullptr;
  std::thread::id ran_on;
  set_->ForSessionAsync("t", "on-b", [&](absl::StatusOr<SessionManager*> m) {
    got = *m;
    ran_on = std::this_thread::get_id();
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_EQ(got, b_.manager.get());
  EXPECT_NE(ran_on, caller);
  // Resident: answered inline.
  ASSERT_TRUE(Feed(*b_.manager, "on-b", "x").ok());
  got = nullptr;
  set_->ForSessionAsync("t", "on-b",
                        [&](absl::StatusOr<SessionManager*> m) { got = *m; });
  EXPECT_EQ(got, b_.manager.get());
}

TEST_F(ModelSetTest, StatesOfOneModelAreMismatchedOnTheOther) {
  Create(*a_.manager, "on-a");
  Create(*b_.manager, "on-b");
  ASSERT_TRUE(Feed(*a_.manager, "on-a", "state of a").ok());
  auto exported = a_.manager->Export("t", "on-a", 0);
  ASSERT_TRUE(exported.ok()) << exported.status();
  // A's state imported by B: as a new session, or into B's session.
  CreateParams p;
  p.session_id = "copy";
  auto created = b_.manager->Import("t", exported->blob, false, p, {});
  EXPECT_EQ(GetReason(created.status()), Reason::kModelMismatch);
  p.session_id = "on-b";
  auto into_b = b_.manager->Import("t", exported->blob, true, p, {});
  EXPECT_EQ(GetReason(into_b.status()), Reason::kModelMismatch);
  // A's own manager refuses to put it into B's session (routing by the
  // state's model, as the import service does).
  auto a_into_b = a_.manager->Import("t", exported->blob, true, p, {});
  EXPECT_EQ(GetReason(a_into_b.status()), Reason::kModelMismatch);
  // A fork of A's session as model B.
  CreateParams fork;
  fork.session_id = "fork";
  fork.model_id = "b-x060";
  fork.fork_from.emplace("on-a", 0);
  EXPECT_EQ(GetReason(b_.manager->CreateSession("t", fork).status()),
            Reason::kModelMismatch);
  // A misrouted load is refused before any lease is taken.
  const absl::Status misrouted = Feed(*a_.manager, "on-b", "x");
  EXPECT_EQ(GetReason(misrouted), Reason::kModelMismatch);
  EXPECT_FALSE(a_.manager->IsResident("t", "on-b"));
  // Every one names the fingerprint it met as actual_fingerprint (the
  // state's, or the session's for a load) and the one it had to match as
  // expected_fingerprint (every model served, this one first, or the
  // session's for a state put into it).
  const std::string& fa = a_.manager->fingerprint();
  const std::string& fb = b_.manager->fingerprint();
  struct Want {
    const char* what;
    absl::Status status;
    std::string expected, actual;
  };
  for (const Want& w :
       {Want{"import as a new session", created.status(), fb, fa},
        Want{"import into B's session", into_b.status(), fb, fa},
        Want{"A's import into B's session", a_into_b.status(), fb, fa},
        Want{"fork", b_.manager->CreateSession("t", fork).status(), fb, fa},
        Want{"misrouted load", misrouted, fa + "," + fb, fb}}) {
    EXPECT_EQ(GetErrorMetadata(w.status, "expected_fingerprint"), w.expected)
        << w.what << ": " << w.status;
    EXPECT_EQ(GetErrorMetadata(w.status, "actual_fingerprint"), w.actual)
        << w.what << ": " << w.status;
  }
}

TEST_F(ModelSetTest, StatsSumAndDrainCoversEveryModel) {
  Create(*a_.manager, "on-a");
  Create(*b_.manager, "on-b");
  ASSERT_TRUE(Feed(*a_.manager, "on-a", "a").ok());
  ASSERT_TRUE(Feed(*b_.manager, "on-b", "b").ok());
  EXPECT_EQ(set_->stats().resident, 2);
  EXPECT_EQ(set_->stats().loads,
            a_.manager->stats().loads + b_.manager->stats().loads);
  set_->Drain();
  EXPECT_EQ(set_->stats().resident, 0);
  for (SessionManager* m : set_->managers()) {
    CreateParams p;
    p.session_id = "late";
    EXPECT_EQ(m->CreateSession("t", p).status().code(),
              absl::StatusCode::kUnavailable);
  }
  set_->Drain();  // idempotent
}

}  // namespace
}  // namespace statestream::worker
