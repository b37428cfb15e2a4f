// SPDX-License-Identifier: Apache-2.0
#include "state_store/memory_state_store.h"

#include "common/clock.h"
#include "common/status.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

// Forwards every call to a shared store.
class Forward final : public StateStore {
 public:
  explicit Forward(StateStore* s) : s_(s) {}
  absl::StatusOr<CommitResult> CreateSession(
      const CreateSessionRequest& r) override {
    return s_->CreateSession(r);
  }
  absl::StatusOr<SessionHead> GetHead(const SessionKey& k) override {
    return s_->GetHead(k);
  }
  absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& k,
                                            uint64_t v) override {
    return s_->LoadVersion(k, v);
  }
  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override {
    return s_->Commit(r);
  }
  absl::StatusOr<CommitResult> Rollback(const SessionKey& k, uint64_t e,
                                        uint64_t f, uint64_t v,
                                        Durability d) override {
    return s_->Rollback(k, e, f, v, d);
  }
  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const SessionKey& k) override {
    return s_->ListVersions(k);
  }
  absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& r) override {
    return s_->ListSessions(r);
  }
  absl::StatusOr<SessionHead> UpdateSession(const SessionKey& k,
                                            const SessionUpdate& u) override {
    return s_->UpdateSession(k, u);
  }
  absl::Status DeleteSession(const SessionKey& k) override {
    return s_->DeleteSession(k);
  }
  absl::StatusOr<Lease> AcquireLease(const SessionKey& k, const std::string& o,
                                     absl::Duration t, bool take) override {
    return s_->AcquireLease(k, o, t, take);
  }
  absl::StatusOr<Lease> RenewLease(const SessionKey& k, const std::string& o,
                                   uint64_t f, absl::Duration t) override {
    return s_->RenewLease(k, o, f, t);
  }
  absl::Status ReleaseLease(const SessionKey& k, const std::string& o,
                            uint64_t f) override {
    return s_->ReleaseLease(k, o, f);
  }
  absl::StatusOr<Lease> GetOwner(const SessionKey& k) override {
    return s_->GetOwner(k);
  }
  absl::Status RegisterWorker(const WorkerInfo& w, absl::Duration t) override {
    return s_->RegisterWorker(w, t);
  }
  absl::Status UnregisterWorker(const std::string& id) override {
    return s_->UnregisterWorker(id);
  }
  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override {
    return s_->ListWorkers();
  }

 private:
  StateStore* s_;
};

class MemoryEnv : public StoreEnv {
 public:
  absl::StatusOr<std::unique_ptr<StateStore>> NewStore(
      int keep_versions) override {
    // Stores of one env share data: hand out views of one store.
    if (store_ == nullptr || keep_versions != keep_) {
      MemoryStateStoreOptions o;
      o.clock = &clock_;
      o.keep_versions = keep_versions;
      SS_ASSIGN_OR_RETURN(store_, NewMemoryStateStore(o));
      keep_ = keep_versions;
    }
    return std::unique_ptr<StateStore>(new Forward(store_.get()));
  }
  void Advance(absl::Duration d) override { clock_.Advance(d); }

 private:
  FakeClock clock_;
  std::unique_ptr<StateStore> store_;
  int keep_ = 0;
};

std::unique_ptr<StoreEnv> NewMemoryEnv() {
  return std::make_unique<MemoryEnv>();
}

INSTANTIATE_TEST_SUITE_P(Memory, StateStoreContractTest,
                         ::testing::Values(&NewMemoryEnv));

}  // namespace
}  // namespace statestream::testing
