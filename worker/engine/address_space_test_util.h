// SPDX-License-Identifier: Apache-2.0
// For death tests of running out of address space: caps this process's
// (the death test child's) address space a little past what it maps now.
#ifndef STATESTREAM_WORKER_ENGINE_ADDRESS_SPACE_TEST_UTIL_H_
#define STATESTREAM_WORKER_ENGINE_ADDRESS_SPACE_TEST_UTIL_H_

#include <sys/resource.h>

#include <cstdint>
#include <cstdio>

namespace statestream::engine::testing {

// Sets RLIMIT_AS to the current mapped size plus `room` bytes; false if
// either could not be done. (ASan reserves address space beyond any such
// limit: skip these tests under it.)
inline bool CapAddressSpace(int64_t room) {
  long pages = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  struct rlimit r;
  r.rlim_cur = r.rlim_max = static_cast<rlim_t>(pages) * 4096 + room;
  return pages != 0 && setrlimit(RLIMIT_AS, &r) == 0;
}

}  // namespace statestream::engine::testing

#endif  // STATESTREAM_WORKER_ENGINE_ADDRESS_SPACE_TEST_UTIL_H_
