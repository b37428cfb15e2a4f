// SPDX-License-Identifier: Apache-2.0
#include "state_store/testing/state_store_contract.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "state_store/testing/state_store_contract_util.h"

namespace statestream::testing {

void ExpectBoundedFilteredListing(StateStore* store) {
  for (int i = 0; i < 35; ++i) {
    CreateSessionRequest r;
    r.key = {"acme", absl::StrCat("s", 100 + i)};
    r.model_id = "tiny";
    r.initial_state = TestSnapshot(1);
    if (i % 10 == 9 || (i % 10 == 0 && i > 0)) r.labels = {{"want", "yes"}};
    ASSERT_TRUE(store->CreateSession(r).ok()) << i;
  }
  ListSessionsRequest req;
  req.tenant = "acme";
  req.page_size = 100;
  req.label_filter = {{"want", "yes"}};
  int calls = 0;
  std::vector<std::string> found;
  do {
    auto page = store->ListSessions(req);
    ASSERT_TRUE(page.ok()) << page.status();
    ASSERT_LE(page->sessions.size(), 2u);
    for (const SessionHead& h : page->sessions) {
      found.push_back(h.key.session_id);
    }
    req.page_token = page->next_page_token;
    ASSERT_LT(++calls, 10);
  } while (!req.page_token.empty());
  EXPECT_EQ(found, (std::vector<std::string>{"s109", "s110", "s119", "s120",
                                             "s129", "s130"}));
  EXPECT_EQ(calls, 4);
}

StateSnapshot TestSnapshot(uint64_t seed, size_t floats,
                           const std::string& fingerprint) {
  StateSnapshot s;
  s.model_fingerprint = fingerprint;
  s.architecture = "x070";
  s.n_layer = 2;
  s.n_embd = 8;
  s.n_head = 1;
  s.head_size = 8;
  s.position = seed * 10;
  s.input_offset = seed * 10 + 3;
  s.tokenizer_tail = std::string("\xe2\x82", 2);
  s.sampler_state = absl::StrCat("rng", seed);
  s.state.resize(floats);
  for (size_t i = 0; i < floats; ++i) {
    s.state[i] = static_cast<float>((i * 2654435761u + seed) % 1000) * 0.5f;
  }
  s.last_hidden.assign(8, static_cast<float>(seed));
  return s;
}

void StateStoreContractTest::SetUp() {
  env_ = GetParam()();
  ASSERT_NE(env_, nullptr);
  store_ = NewStore();
  ASSERT_NE(store_, nullptr);
}

std::unique_ptr<StateStore> StateStoreContractTest::NewStore(
    int keep_versions) {
  auto s = env_->NewStore(keep_versions);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

namespace {

using ::testing::ElementsAre;

TEST_P(StateStoreContractTest, CreateThenGetHeadAndLoad) {
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  EXPECT_EQ(created->version.version, 1u);
  EXPECT_GE(created->version.durability, Durability::kMemory);
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->key.tenant, "acme");
  EXPECT_EQ(head->key.session_id, "s1");
  EXPECT_EQ(head->model_id, "tiny");
  EXPECT_EQ(head->model_fingerprint, "x070-test-fp");
  EXPECT_EQ(head->head.version, 1u);
  EXPECT_EQ(head->head.position, 10u);
  EXPECT_EQ(head->head.input_offset, 13u);
  EXPECT_EQ(head->head.tail_bytes, 2u);
  EXPECT_GE(head->head.chunk_count, 1u);
  EXPECT_EQ(head->head.state_bytes, EncodeState(TestSnapshot(1)).size());
  EXPECT_EQ(head->head.state_crc32c,
            EncodedStateCrc(EncodeState(TestSnapshot(1))));
  EXPECT_EQ(head->oldest_version, 1u);
  EXPECT_EQ(head->labels.at("team"), "red");
  EXPECT_GE(head->fence, 1u);
  EXPECT_EQ(head->owner, "");
  EXPECT_EQ(head->ttl, kDefaultSessionTtl);  // the API's 7 days

  for (uint64_t v : {0, 1}) {
    auto loaded = store_->LoadVersion(kKey, v);
    ASSERT_OK(loaded);
    EXPECT_EQ(loaded->version.version, 1u);
    ExpectSameSnapshot(loaded->state, TestSnapshot(1));
  }
}

// The head keeps the request that created the session through later
// commits and updates, so a retry of that request on any worker finds it.
TEST_P(StateStoreContractTest, TheHeadRecordsTheCreatingRequest) {
  CreateSessionRequest r = Create(kKey);
  r.request_id = "create-1";
  r.request_digest = 0xfedcba9876543210u;  // all 64 bits survive
  auto created = store_->CreateSession(r);
  ASSERT_OK(created);
  auto lease = store_->AcquireLease(kKey, "w1", absl::Seconds(10), false);
  ASSERT_OK(lease);
  ASSERT_OK(store_->Commit(Commit(kKey, 1, lease->fence, 2)));
  SessionUpdate u;
  u.labels = std::map<std::string, std::string>{{"team", "blue"}};
  ASSERT_OK(store_->UpdateSession(kKey, u));
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->head.version, 2u);
  EXPECT_EQ(head->create_request_id, "create-1");
  EXPECT_EQ(head->create_digest, 0xfedcba9876543210u);
  // A session created without one records none.
  const SessionKey other{"acme", "s2"};
  ASSERT_OK(store_->CreateSession(Create(other)));
  auto plain = store_->GetHead(other);
  ASSERT_OK(plain);
  EXPECT_EQ(plain->create_request_id, "");
  EXPECT_EQ(plain->create_digest, 0u);
}

TEST_P(StateStoreContractTest, CreateTwiceIsSessionExists) {
  ASSERT_OK(store_->CreateSession(Create(kKey)));
  EXPECT_ERROR(store_->CreateSession(Create(kKey)), kAlreadyExists,
               kSessionExists);
}

TEST_P(StateStoreContractTest, MissingAndMalformedKeys) {
  EXPECT_ERROR(store_->GetHead(kKey), kNotFound, kSessionNotFound);
  EXPECT_ERROR(store_->LoadVersion(kKey, 0), kNotFound, kSessionNotFound);
  EXPECT_ERROR(store_->Commit(Commit(kKey, 1, 1, 2)), kNotFound,
               kSessionNotFound);
  EXPECT_ERROR(store_->DeleteSession(kKey), kNotFound, kSessionNotFound);
  EXPECT_ERROR(store_->AcquireLease(kKey, "w1", absl::Seconds(10), false),
               kNotFound, kSessionNotFound);
  for (const SessionKey& bad :
       {SessionKey{"", "s"}, SessionKey{"Acme", "s"}, SessionKey{"a", ""},
        SessionKey{"a", "{x}"}, SessionKey{"a", ".x"},
        SessionKey{"a", std::string(129, 'x')}, SessionKey{"a/b", "s"}}) {
    SCOPED_TRACE(bad.tenant + " " + bad.session_id);
    EXPECT_ERROR(store_->GetHead(bad), kInvalidArgument, kInvalidArgument);
  }
}

// A finite TTL past the stores' bound (3650 days) is INVALID_ARGUMENT
// before anything is written, for a session, an update and a lease; the
// Redis scripts failed past 2^53 ms after writing part of the call.
TEST_P(StateStoreContractTest, ATtlPastTheBoundIsRefusedBeforeAnyWrite) {
  const absl::Duration huge = absl::Hours(24 * 3651);
  CreateSessionRequest r = Create(kKey);
  r.ttl = huge;
  EXPECT_ERROR(store_->CreateSession(r), kInvalidArgument, kInvalidArgument);
  EXPECT_ERROR(store_->GetHead(kKey), kNotFound, kSessionNotFound);
  r.ttl = absl::InfiniteDuration();
  ASSERT_OK(store_->CreateSession(r));
  SessionUpdate u;
  u.ttl = huge;
  EXPECT_ERROR(store_->UpdateSession(kKey, u), kInvalidArgument,
               kInvalidArgument);
  EXPECT_ERROR(store_->AcquireLease(kKey, "w1", huge, false), kInvalidArgument,
               kInvalidArgument);
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->ttl, absl::InfiniteDuration());
  EXPECT_EQ(head->owner, "");
  u.ttl = absl::Hours(24 * 3650);
  ASSERT_OK(store_->UpdateSession(kKey, u));
}

// An update's TTL of 0 is the store's default, as at creation (the API's
// UpdateSession with "ttl" in the mask and no ttl); it once fell back to
// the API's 7 days whatever the store's default.
TEST_P(StateStoreContractTest, AnUpdateTtlOfZeroIsTheStoreDefault) {
  CreateSessionRequest r = Create(kKey);
  r.ttl = absl::Hours(1);
  ASSERT_OK(store_->CreateSession(r));
  SessionUpdate u;
  u.ttl = absl::ZeroDuration();
  auto updated = store_->UpdateSession(kKey, u);
  ASSERT_OK(updated);
  EXPECT_EQ(updated->ttl, kDefaultSessionTtl);  // the stores' default here
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->ttl, kDefaultSessionTtl);
}

TEST_P(StateStoreContractTest, LargeStateRoundTrips) {
  CreateSessionRequest r = Create(kKey);
  r.initial_state = TestSnapshot(7, 900'000);  // 3.6 MB: several chunks
  ASSERT_OK(store_->CreateSession(r));
  auto loaded = store_->LoadVersion(kKey, 0);
  ASSERT_OK(loaded);
  ExpectSameSnapshot(loaded->state, r.initial_state);
}

// Side data at the codec's bound for one field loads back (its header
// past what a load once accepted); one byte past it is refused at the
// write, nothing created or committed, instead of a state that is written
// and then never loads.
TEST_P(StateStoreContractTest, ASnapshotIsWrittenOnlyIfItLoadsBack) {
  CreateSessionRequest r = Create(kKey);
  r.initial_state.sampler_state.assign(kMaxStateFieldBytes, 's');
  r.initial_state.tokenizer_tail.assign(kMaxStateFieldBytes / 2, 't');
  auto created = store_->CreateSession(r);
  ASSERT_OK(created);
  auto loaded = store_->LoadVersion(kKey, 0);
  ASSERT_OK(loaded);
  EXPECT_EQ(loaded->state.sampler_state.size(), kMaxStateFieldBytes);
  const SessionKey other{"acme", "too-big"};
  CreateSessionRequest big = Create(other);
  big.initial_state.sampler_state.assign(kMaxStateFieldBytes + 1, 's');
  EXPECT_EQ(GetReason(store_->CreateSession(big).status()),
            Reason::kMessageTooLarge);
  EXPECT_EQ(GetReason(store_->GetHead(other).status()),
            Reason::kSessionNotFound);
  CommitRequest c;
  c.key = kKey;
  c.expected_version = 1;
  c.fence = created->session.fence;
  c.state = TestSnapshot(2);
  c.state.tokenizer_tail.assign(kMaxStateFieldBytes + 1, 't');
  EXPECT_EQ(GetReason(store_->Commit(c).status()), Reason::kMessageTooLarge);
  // A last_hidden that is not n_embd long would fail every load.
  c.state = TestSnapshot(2);
  c.state.last_hidden.assign(c.state.n_embd + 1, 0.5f);
  EXPECT_EQ(store_->Commit(c).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->head.version, 1u);
}

TEST_P(StateStoreContractTest, CommitIsCompareAndSet) {
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  const uint64_t fence = created->session.fence;
  auto c2 = store_->Commit(Commit(kKey, 1, fence, 2));
  ASSERT_OK(c2);
  EXPECT_EQ(c2->version.version, 2u);
  EXPECT_EQ(c2->version.position, 20u);
  EXPECT_EQ(c2->session.head.version, 2u);
  auto stale = store_->Commit(Commit(kKey, 1, fence, 3));
  EXPECT_ERROR(stale, kFailedPrecondition, kVersionMismatch);
  EXPECT_EQ(GetErrorMetadata(stale.status(), "head_version"), "2");
  EXPECT_ERROR(store_->Commit(Commit(kKey, 5, fence, 3)), kFailedPrecondition,
               kVersionMismatch);
  auto loaded = store_->LoadVersion(kKey, 0);
  ASSERT_OK(loaded);
  ExpectSameSnapshot(loaded->state, TestSnapshot(2));
  auto v1 = store_->LoadVersion(kKey, 1);
  ASSERT_OK(v1);
  ExpectSameSnapshot(v1->state, TestSnapshot(1));
}

TEST_P(StateStoreContractTest, CommitOfAnotherModelIsModelMismatch) {
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  CommitRequest r = Commit(kKey, 1, created->session.fence, 2);
  r.state.model_fingerprint = "x070-other";
  EXPECT_ERROR(store_->Commit(r), kFailedPrecondition, kModelMismatch);
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->head.version, 1u);
}

TEST_P(StateStoreContractTest, TakeoverFencesOutTheOldOwner) {
  ASSERT_OK(store_->CreateSession(Create(kKey)));
  auto a = store_->AcquireLease(kKey, "worker-a", absl::Seconds(60), false);
  ASSERT_OK(a);
  auto owner = store_->GetOwner(kKey);
  ASSERT_OK(owner);
  EXPECT_EQ(owner->owner, "worker-a");
  EXPECT_EQ(owner->fence, a->fence);
  ASSERT_OK(store_->Commit(Commit(kKey, 1, a->fence, 2)));

  EXPECT_ERROR(store_->AcquireLease(kKey, "worker-b", absl::Seconds(60), false),
               kAborted, kSessionBusy);
  auto b = store_->AcquireLease(kKey, "worker-b", absl::Seconds(60), true);
  ASSERT_OK(b);
  EXPECT_GT(b->fence, a->fence);
  // The paused old owner wakes up and tries to commit, renew or release.
  // (Its states differ from the new owner's, so one that got in shows.)
  auto fenced = store_->Commit(Commit(kKey, 2, a->fence, 30));
  EXPECT_ERROR(fenced, kAborted, kFenced);
  // FENCED too when its expected version is stale as well: the version
  // alone would not tell it to let the session go.
  EXPECT_ERROR(store_->Commit(Commit(kKey, 1, a->fence, 31)), kAborted,
               kFenced);
  // Neither wrote anything: the head is still the old owner's last commit.
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->head.version, 2u);
  EXPECT_EQ(head->head.fence, a->fence);
  auto kept = store_->LoadVersion(kKey, 0);
  ASSERT_OK(kept);
  ExpectSameSnapshot(kept->state, TestSnapshot(2));
  auto versions = store_->ListVersions(kKey);
  ASSERT_OK(versions);
  EXPECT_EQ(versions->size(), 2u);
  EXPECT_ERROR(
      store_->RenewLease(kKey, "worker-a", a->fence, absl::Seconds(60)),
      kAborted, kFenced);
  ASSERT_OK(store_->ReleaseLease(kKey, "worker-a", a->fence));
  owner = store_->GetOwner(kKey);
  ASSERT_OK(owner);
  EXPECT_EQ(owner->owner, "worker-b");

  auto c = store_->Commit(Commit(kKey, 2, b->fence, 3));
  ASSERT_OK(c);
  EXPECT_EQ(c->version.fence, b->fence);
  ASSERT_OK(store_->RenewLease(kKey, "worker-b", b->fence, absl::Seconds(60)));
  // Release on drain: the lease goes, the fence stays current.
  ASSERT_OK(store_->ReleaseLease(kKey, "worker-b", b->fence));
  owner = store_->GetOwner(kKey);
  ASSERT_OK(owner);
  EXPECT_EQ(owner->owner, "");
  EXPECT_EQ(owner->fence, b->fence);
  ASSERT_OK(store_->Commit(Commit(kKey, 3, b->fence, 4)));
  auto d = store_->AcquireLease(kKey, "worker-d", absl::Seconds(60), false);
  ASSERT_OK(d);
  EXPECT_ERROR(store_->Commit(Commit(kKey, 4, b->fence, 5)), kAborted, kFenced);
}

TEST_P(StateStoreContractTest, ExpiredLeaseCanBeAcquiredOrRenewed) {
  ASSERT_OK(store_->CreateSession(Create(kKey)));
  auto a =
      store_->AcquireLease(kKey, "worker-a", absl::Milliseconds(300), false);
  ASSERT_OK(a);
  env_->Advance(absl::Milliseconds(1500));
  auto owner = store_->GetOwner(kKey);
  ASSERT_OK(owner);
  EXPECT_EQ(owner->owner, "");
  // Nobody took over: the old holder may renew with its fence.
  auto renewed =
      store_->RenewLease(kKey, "worker-a", a->fence, absl::Seconds(60));
  ASSERT_OK(renewed);
  EXPECT_EQ(renewed->fence, a->fence);
  owner = store_->GetOwner(kKey);
  ASSERT_OK(owner);
  EXPECT_EQ(owner->owner, "worker-a");
}

// RenewLeases answers each lease as RenewLease would, in order, across more
// leases than one pipelined batch: renewed, fenced (another owner took
// over), deleted, malformed.
TEST_P(StateStoreContractTest, RenewLeasesAnswersEachLease) {
  std::vector<StateStore::LeaseToRenew> leases;
  for (int i = 0; i < 300; ++i) {
    const SessionKey key{"acme", absl::StrCat("r", i)};
    ASSERT_OK(store_->CreateSession(Create(key)));
    auto a = store_->AcquireLease(key, "worker-a", absl::Seconds(1), false);
    ASSERT_OK(a);
    leases.push_back({key, a->fence});
  }
  ASSERT_OK(store_->AcquireLease(leases[7].key, "worker-b", absl::Seconds(60),
                                 /*takeover=*/true));
  ASSERT_OK(store_->DeleteSession(leases[299].key));
  leases.insert(leases.begin() + 5, {{"acme", "bad/id"}, 1});
  std::vector<absl::StatusOr<Lease>> r =
      store_->RenewLeases("worker-a", leases, absl::Seconds(60));
  ASSERT_EQ(r.size(), leases.size());
  // Session i is at i, or at i + 1 from 5 on (after the malformed key).
  for (int i = 0; i < 299; ++i) {
    if (i == 7) continue;
    const int at = i < 5 ? i : i + 1;
    ASSERT_OK(r[at]);
    EXPECT_EQ(r[at]->owner, "worker-a");
    EXPECT_EQ(r[at]->fence, leases[at].fence);
  }
  EXPECT_ERROR(r[5], kInvalidArgument, kInvalidArgument);
  EXPECT_ERROR(r[8], kAborted, kFenced);
  EXPECT_ERROR(r[300], kNotFound, kSessionNotFound);
  // Renewed for 60 s: still held past the 1 s the leases were taken for.
  env_->Advance(absl::Milliseconds(1500));
  auto owner = store_->GetOwner(leases[150].key);
  ASSERT_OK(owner);
  EXPECT_EQ(owner->owner, "worker-a");
  owner = store_->GetOwner(leases[8].key);
  ASSERT_OK(owner);
  EXPECT_EQ(owner->owner, "worker-b");
  EXPECT_TRUE(store_->RenewLeases("worker-a", {}, absl::Seconds(1)).empty());
}

TEST_P(StateStoreContractTest, OldVersionsAreDroppedBeyondKeep) {
  store_ = NewStore(3);
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  const uint64_t fence = created->session.fence;
  for (uint64_t v = 1; v < 6; ++v) {
    ASSERT_OK(store_->Commit(Commit(kKey, v, fence, v + 1)));
  }
  auto versions = store_->ListVersions(kKey);
  ASSERT_OK(versions);
  std::vector<uint64_t> numbers;
  for (const VersionInfo& v : *versions) numbers.push_back(v.version);
  EXPECT_THAT(numbers, ElementsAre(4, 5, 6));
  EXPECT_EQ(versions->back().position, 60u);
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->oldest_version, 4u);
  auto gone = store_->LoadVersion(kKey, 2);
  EXPECT_ERROR(gone, kNotFound, kVersionMismatch);
  EXPECT_EQ(GetErrorMetadata(gone.status(), "oldest_version"), "4");
  EXPECT_ERROR(store_->LoadVersion(kKey, 7), kNotFound, kVersionMismatch);
  // Versions no session reaches are missing too, never read as the head.
  for (uint64_t huge : {uint64_t{1} << 63, ~uint64_t{0}}) {
    EXPECT_ERROR(store_->LoadVersion(kKey, huge), kNotFound, kVersionMismatch);
    EXPECT_ERROR(
        store_->Rollback(kKey, 6, fence, huge, Durability::kMemory, ""),
        kNotFound, kVersionMismatch);
  }
  auto v4 = store_->LoadVersion(kKey, 4);
  ASSERT_OK(v4);
  ExpectSameSnapshot(v4->state, TestSnapshot(4));
}

// AwaitDurability raises an existing version's durability without writing
// another version: MEMORY always holds; a higher level is either reached
// (and then recorded, as ListVersions shows) or the typed durability error
// naming the version and the level it has. Missing sessions and versions
// not kept are the usual errors.
TEST_P(StateStoreContractTest, AwaitDurabilityRaisesAVersionInPlace) {
  store_ = NewStore(2);
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  const uint64_t fence = created->session.fence;
  ASSERT_OK(store_->Commit(Commit(kKey, 1, fence, 2)));
  auto memory = store_->AwaitDurability(kKey, 2, Durability::kMemory);
  ASSERT_OK(memory);
  EXPECT_EQ(memory->version, 2u);
  for (Durability d : {Durability::kFsync, Durability::kReplicated}) {
    auto raised = store_->AwaitDurability(kKey, 2, d);
    auto versions = store_->ListVersions(kKey);
    ASSERT_OK(versions);
    ASSERT_EQ(versions->size(), 2u);  // no version was written
    EXPECT_EQ(versions->back().version, 2u);
    if (raised.ok()) {
      EXPECT_GE(raised->durability, d);
      EXPECT_GE(versions->back().durability, d);
    } else {
      EXPECT_ERROR(raised, kUnavailable, kStoreUnavailable);
      EXPECT_EQ(GetErrorMetadata(raised.status(), "version"), "2");
      EXPECT_EQ(GetErrorMetadata(raised.status(), "durability_reached"),
                DurabilityName(versions->back().durability));
    }
  }
  ASSERT_OK(store_->Commit(Commit(kKey, 2, fence, 3)));
  ASSERT_OK(store_->Commit(Commit(kKey, 3, fence, 4)));
  EXPECT_ERROR(store_->AwaitDurability(kKey, 1, Durability::kFsync), kNotFound,
               kVersionMismatch);
  // 0 and versions past int64's range are no version (not the head).
  for (uint64_t nobody : {uint64_t{0}, ~uint64_t{0}, uint64_t{1} << 63}) {
    SCOPED_TRACE(nobody);
    EXPECT_ERROR(store_->AwaitDurability(kKey, nobody, Durability::kMemory),
                 kNotFound, kVersionMismatch);
  }
  EXPECT_ERROR(
      store_->AwaitDurability({"acme", "nobody"}, 1, Durability::kMemory),
      kNotFound, kSessionNotFound);
}

TEST_P(StateStoreContractTest, RollbackCommitsACopyAsANewVersion) {
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  const uint64_t fence = created->session.fence;
  ASSERT_OK(store_->Commit(Commit(kKey, 1, fence, 2)));
  ASSERT_OK(store_->Commit(Commit(kKey, 2, fence, 3)));
  EXPECT_ERROR(store_->Rollback(kKey, 2, fence, 1, Durability::kMemory, ""),
               kFailedPrecondition, kVersionMismatch);
  EXPECT_ERROR(store_->Rollback(kKey, 3, fence + 1, 1, Durability::kMemory, ""),
               kAborted, kFenced);
  auto rolled =
      store_->Rollback(kKey, 3, fence, 1, Durability::kMemory, "rb-1");
  ASSERT_OK(rolled);
  EXPECT_EQ(rolled->version.version, 4u);
  EXPECT_EQ(rolled->version.rolled_back_from, 1u);
  EXPECT_EQ(rolled->version.position, 10u);
  EXPECT_EQ(rolled->version.input_offset, 13u);
  auto loaded = store_->LoadVersion(kKey, 0);
  ASSERT_OK(loaded);
  ExpectSameSnapshot(loaded->state, TestSnapshot(1));
}

// Each version keeps what made it and the request that did, as the writer
// said: through GetHead, LoadVersion, ListVersions and the commit results.
TEST_P(StateStoreContractTest, VersionsRecordTheirCauseAndRequest) {
  CreateSessionRequest c = Create(kKey);
  c.cause = VersionCause::kImport;
  c.request_id = "import-1";
  auto created = store_->CreateSession(c);
  ASSERT_OK(created);
  EXPECT_EQ(created->version.cause, VersionCause::kImport);
  EXPECT_EQ(created->version.request_id, "import-1");
  const uint64_t fence = created->session.fence;
  CommitRequest append = Commit(kKey, 1, fence, 2);
  append.cause = VersionCause::kAppend;
  append.request_id = "append-7";
  ASSERT_OK(store_->Commit(append));
  CommitRequest generate = Commit(kKey, 2, fence, 3);
  generate.cause = VersionCause::kGenerate;
  ASSERT_OK(store_->Commit(generate));  // no request id: ""
  auto rolled =
      store_->Rollback(kKey, 3, fence, 2, Durability::kMemory, "rollback-1");
  ASSERT_OK(rolled);
  EXPECT_EQ(rolled->version.cause, VersionCause::kRollback);
  const std::vector<std::pair<VersionCause, std::string>> want = {
      {VersionCause::kImport, "import-1"},
      {VersionCause::kAppend, "append-7"},
      {VersionCause::kGenerate, ""},
      {VersionCause::kRollback, "rollback-1"}};
  auto versions = store_->ListVersions(kKey);
  ASSERT_OK(versions);
  ASSERT_EQ(versions->size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ((*versions)[i].cause, want[i].first) << i;
    EXPECT_EQ((*versions)[i].request_id, want[i].second) << i;
    auto loaded = store_->LoadVersion(kKey, i + 1);
    ASSERT_OK(loaded);
    EXPECT_EQ(loaded->version.cause, want[i].first) << i;
    EXPECT_EQ(loaded->version.request_id, want[i].second) << i;
  }
  auto head = store_->GetHead(kKey);
  ASSERT_OK(head);
  EXPECT_EQ(head->head.cause, VersionCause::kRollback);
  EXPECT_EQ(head->head.request_id, "rollback-1");
}

TEST_P(StateStoreContractTest, DeleteRemovesEverythingButTheFence) {
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  auto a = store_->AcquireLease(kKey, "worker-a", absl::Seconds(60), false);
  ASSERT_OK(a);
  ASSERT_OK(store_->DeleteSession(kKey));
  EXPECT_ERROR(store_->GetHead(kKey), kNotFound, kSessionNotFound);
  EXPECT_ERROR(store_->LoadVersion(kKey, 1), kNotFound, kSessionNotFound);
  ListSessionsRequest req;
  req.tenant = kKey.tenant;
  auto page = store_->ListSessions(req);
  ASSERT_OK(page);
  EXPECT_TRUE(page->sessions.empty());
  auto again = store_->CreateSession(Create(kKey, 9));
  ASSERT_OK(again);
  EXPECT_GT(again->session.fence, a->fence);
  EXPECT_EQ(again->session.owner, "");
  EXPECT_ERROR(store_->Commit(Commit(kKey, 1, a->fence, 3)), kAborted, kFenced);
  auto loaded = store_->LoadVersion(kKey, 0);
  ASSERT_OK(loaded);
  ExpectSameSnapshot(loaded->state, TestSnapshot(9));
}

TEST_P(StateStoreContractTest, SessionsExpireUnlessPinned) {
  CreateSessionRequest r = Create({"acme", "short"});
  r.ttl = absl::Milliseconds(400);
  ASSERT_OK(store_->CreateSession(r));
  r = Create({"acme", "pinned"});
  r.ttl = absl::Milliseconds(400);
  ASSERT_OK(store_->CreateSession(r));
  SessionUpdate pin;
  pin.ttl = absl::InfiniteDuration();
  pin.labels = std::map<std::string, std::string>{{"keep", "yes"}};
  auto pinned = store_->UpdateSession({"acme", "pinned"}, pin);
  ASSERT_OK(pinned);
  EXPECT_EQ(pinned->ttl, absl::InfiniteDuration());
  EXPECT_EQ(pinned->labels.at("keep"), "yes");
  r = Create({"acme", "long"});
  r.ttl = absl::Hours(1);
  ASSERT_OK(store_->CreateSession(r));

  env_->Advance(absl::Milliseconds(2000));
  EXPECT_ERROR(store_->GetHead({"acme", "short"}), kNotFound, kSessionNotFound);
  EXPECT_ERROR(store_->LoadVersion({"acme", "short"}, 1), kNotFound,
               kSessionNotFound);
  auto head = store_->GetHead({"acme", "pinned"});
  ASSERT_OK(head);
  auto loaded = store_->LoadVersion({"acme", "pinned"}, 0);
  ASSERT_OK(loaded);
  ExpectSameSnapshot(loaded->state, TestSnapshot(1));
  ASSERT_OK(store_->LoadVersion({"acme", "long"}, 0));
  ListSessionsRequest req;
  req.tenant = "acme";
  auto page = store_->ListSessions(req);
  ASSERT_OK(page);
  ASSERT_EQ(page->sessions.size(), 2u);
  EXPECT_EQ(page->sessions[0].key.session_id, "long");
  EXPECT_EQ(page->sessions[1].key.session_id, "pinned");
}

TEST_P(StateStoreContractTest, ConcurrentCommittersExactlyOneWins) {
  auto created = store_->CreateSession(Create(kKey));
  ASSERT_OK(created);
  const uint64_t fence = created->session.fence;
  auto other = NewStore();  // a second process on the same data
  ASSERT_NE(other, nullptr);
  for (uint64_t round = 1; round <= 3; ++round) {
    std::atomic<int> wins{0}, mismatches{0}, others{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        StateStore* s = t % 2 ? other.get() : store_.get();
        auto r = s->Commit(Commit(kKey, round, fence, round * 10 + t));
        if (r.ok()) {
          ++wins;
        } else if (GetReason(r.status()) == Reason::kVersionMismatch) {
          ++mismatches;
        } else {
          ++others;
          ADD_FAILURE() << r.status();
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(wins, 1);
    EXPECT_EQ(mismatches, 5);
    EXPECT_EQ(others, 0);
    auto head = store_->GetHead(kKey);
    ASSERT_OK(head);
    EXPECT_EQ(head->head.version, round + 1);
    auto loaded = other->LoadVersion(kKey, 0);
    ASSERT_OK(loaded);
    EXPECT_EQ(loaded->state.position, head->head.position);
  }
}

TEST_P(StateStoreContractTest, CorruptStoredBytesAreStateCorrupt) {
  ASSERT_OK(store_->CreateSession(Create(kKey)));
  if (!env_->CanCorrupt())
    GTEST_SKIP() << "no way to corrupt this store's bytes";
  ASSERT_TRUE(env_->CorruptStoredVersion(kKey, 1));
  EXPECT_ERROR(store_->LoadVersion(kKey, 1), kDataLoss, kStateCorrupt);
}

TEST_P(StateStoreContractTest, PingAnswersWithOrWithoutSessions) {
  ASSERT_OK(store_->Ping());
  ASSERT_OK(store_->CreateSession(Create(kKey)));
  ASSERT_OK(store_->Ping());
}

}  // namespace
}  // namespace statestream::testing
