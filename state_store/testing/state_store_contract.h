// SPDX-License-Identifier: Apache-2.0
// The contract test suite every StateStore implementation must pass
// (state_store.h). An implementation's test instantiates it with a factory
// of StoreEnv:
//
//   INSTANTIATE_TEST_SUITE_P(Memory, StateStoreContractTest,
//                            ::testing::Values(&NewMemoryEnv));
#ifndef STATESTREAM_STATE_STORE_TESTING_STATE_STORE_CONTRACT_H_
#define STATESTREAM_STATE_STORE_TESTING_STATE_STORE_CONTRACT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "state_store/state_store.h"

namespace statestream::testing {

// One implementation under test. Each test makes one env.
class StoreEnv {
 public:
  virtual ~StoreEnv() = default;
  // An empty store keeping `keep_versions` versions. Stores made by one env
  // share their backing data (like two processes on one Redis).
  virtual absl::StatusOr<std::unique_ptr<StateStore>> NewStore(
      int keep_versions) = 0;
  // Moves the stores' time forward by `d` (a fake clock, or real sleeping
  // for servers with their own clock).
  virtual void Advance(absl::Duration d) = 0;
  // Whether CorruptStoredVersion can damage this store's bytes (the test
  // of damaged bytes is skipped only where it cannot; where it can, a
  // corruption that finds nothing to flip fails the test).
  virtual bool CanCorrupt() const { return false; }
  // Flips one byte of the stored bytes of `version`; false if that failed
  // (or this implementation offers no way to do so).
  virtual bool CorruptStoredVersion(const SessionKey& key, uint64_t version) {
    (void)key;
    (void)version;
    return false;
  }
};

using StoreEnvFactory = std::unique_ptr<StoreEnv> (*)();

class StateStoreContractTest
    : public ::testing::TestWithParam<StoreEnvFactory> {
 protected:
  void SetUp() override;
  std::unique_ptr<StateStore> NewStore(int keep_versions = 8);

  std::unique_ptr<StoreEnv> env_;
  std::unique_ptr<StateStore> store_;  // keep_versions 8
};

// A snapshot for tests: `floats` state floats derived from `seed`.
StateSnapshot TestSnapshot(uint64_t seed, size_t floats = 1000,
                           const std::string& fingerprint = "x070-test-fp");

// For a store whose ListSessions reads at most 10 heads a call: creates 35
// sessions of tenant "acme" (s100..s134), labelled want=yes on both sides of
// each 10-head boundary, and checks that a listing filtered on the label
// returns short pages with a token (4 calls: 10 + 10 + 10 + 5 heads) that
// hold each match once.
void ExpectBoundedFilteredListing(StateStore* store);

}  // namespace statestream::testing

#endif  // STATESTREAM_STATE_STORE_TESTING_STATE_STORE_CONTRACT_H_
