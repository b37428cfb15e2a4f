// SPDX-License-Identifier: Apache-2.0
// Helpers the contract suite's files share (state_store_contract*.cc).
#ifndef STATESTREAM_STATE_STORE_TESTING_STATE_STORE_CONTRACT_UTIL_H_
#define STATESTREAM_STATE_STORE_TESTING_STATE_STORE_CONTRACT_UTIL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/state_store.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {

inline const SessionKey kKey{"acme", "s1"};

template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}
inline absl::Status StatusOf(const absl::Status& s) { return s; }

#define ASSERT_OK(expr)                                  \
  do {                                                   \
    const absl::Status ss_ok_ = StatusOf(expr);          \
    ASSERT_TRUE(ss_ok_.ok()) << #expr << ": " << ss_ok_; \
  } while (0)

#define EXPECT_ERROR(expr, code_, reason_)                       \
  do {                                                           \
    const absl::Status ss_st_ = StatusOf(expr);                  \
    EXPECT_EQ(ss_st_.code(), absl::StatusCode::code_) << ss_st_; \
    EXPECT_EQ(GetReason(ss_st_), Reason::reason_) << ss_st_;     \
  } while (0)

inline CreateSessionRequest Create(const SessionKey& key, uint64_t seed = 1) {
  CreateSessionRequest r;
  r.key = key;
  r.model_id = "tiny";
  r.labels = {{"team", "red"}};
  r.initial_state = TestSnapshot(seed);
  return r;
}

inline CommitRequest Commit(const SessionKey& key, uint64_t expected,
                            uint64_t fence, uint64_t seed) {
  CommitRequest r;
  r.key = key;
  r.expected_version = expected;
  r.fence = fence;
  r.state = TestSnapshot(seed);
  return r;
}

inline void ExpectSameSnapshot(const StateSnapshot& a, const StateSnapshot& b) {
  EXPECT_EQ(a.model_fingerprint, b.model_fingerprint);
  EXPECT_EQ(a.position, b.position);
  EXPECT_EQ(a.input_offset, b.input_offset);
  EXPECT_EQ(a.tokenizer_tail, b.tokenizer_tail);
  EXPECT_EQ(a.sampler_state, b.sampler_state);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.last_hidden, b.last_hidden);
}

}  // namespace statestream::testing

#endif  // STATESTREAM_STATE_STORE_TESTING_STATE_STORE_CONTRACT_UTIL_H_
