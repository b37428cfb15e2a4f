// SPDX-License-Identifier: Apache-2.0
// A StateStore that forwards every call to another (not owned): several
// stores sharing one memory store, or a base for tests that inject faults
// into some calls.
#ifndef STATESTREAM_STATE_STORE_TESTING_FORWARDING_STORE_H_
#define STATESTREAM_STATE_STORE_TESTING_FORWARDING_STORE_H_

#include <string>
#include <vector>

#include "state_store/state_store.h"

namespace statestream::testing {

class ForwardingStore : public StateStore {
 public:
  explicit ForwardingStore(StateStore* s) : s_(s) {}
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
  Durability MaxDurability() const override { return s_->MaxDurability(); }
  absl::StatusOr<VersionInfo> AwaitDurability(const SessionKey& k, uint64_t v,
                                              Durability d) override {
    return s_->AwaitDurability(k, v, d);
  }
  absl::StatusOr<CommitResult> Rollback(const SessionKey& k, uint64_t e,
                                        uint64_t f, uint64_t v, Durability d,
                                        const std::string& rid) override {
    return s_->Rollback(k, e, f, v, d, rid);
  }
  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const SessionKey& k) override {
    return s_->ListVersions(k);
  }
  absl::StatusOr<int64_t> CountSessionsBound(const std::string& t) override {
    return s_->CountSessionsBound(t);
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
  absl::StatusOr<bool> RegisterWorker(const WorkerInfo& w,
                                      absl::Duration t) override {
    return s_->RegisterWorker(w, t);
  }
  absl::Status UnregisterWorker(const std::string& id) override {
    return s_->UnregisterWorker(id);
  }
  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override {
    return s_->ListWorkers();
  }
  absl::Status Ping() override { return s_->Ping(); }
  bool CountsTenantSlots() const override { return s_->CountsTenantSlots(); }
  absl::StatusOr<bool> AcquireTenantSlot(const std::string& t,
                                         const std::string& slot, int max,
                                         absl::Duration ttl) override {
    return s_->AcquireTenantSlot(t, slot, max, ttl);
  }
  absl::Status RenewTenantSlots(const std::string& t,
                                const std::vector<std::string>& slots,
                                absl::Duration ttl) override {
    return s_->RenewTenantSlots(t, slots, ttl);
  }
  absl::Status ReleaseTenantSlot(const std::string& t,
                                 const std::string& slot) override {
    return s_->ReleaseTenantSlot(t, slot);
  }
  absl::StatusOr<int64_t> CountTenantSlots(const std::string& t) override {
    return s_->CountTenantSlots(t);
  }
  void Interrupt() override { s_->Interrupt(); }

 protected:
  StateStore* s_;
};

}  // namespace statestream::testing

#endif  // STATESTREAM_STATE_STORE_TESTING_FORWARDING_STORE_H_
