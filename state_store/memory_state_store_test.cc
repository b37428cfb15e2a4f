// SPDX-License-Identifier: Apache-2.0
#include "state_store/memory_state_store.h"

#include "common/clock.h"
#include "common/status.h"
#include "state_store/testing/forwarding_store.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {
namespace {

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
    return std::unique_ptr<StateStore>(new ForwardingStore(store_.get()));
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
