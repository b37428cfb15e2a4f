// SPDX-License-Identifier: Apache-2.0
#include "common/malloc_tuning.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace statestream {
namespace {

// The tuning used to be compiled out: __GLIBC__ was tested before any C
// library header defined it, so every process silently ran with glibc's
// defaults (each multi-MB hiredis copy page-faulting a fresh mmap).
TEST(MallocTuningTest, AppliesOnGlibc) {
  const bool applied = TuneMallocForLargeBuffers();
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  EXPECT_TRUE(applied);
#else
  (void)applied;  // ASan's allocator and non-glibc ones ignore mallopt
#endif
}

}  // namespace
}  // namespace statestream
