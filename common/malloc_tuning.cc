// SPDX-License-Identifier: Apache-2.0
#include "common/malloc_tuning.h"

// Any C library header defines __GLIBC__; test for it only after one.
#include <cstdlib>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace statestream {

bool TuneMallocForLargeBuffers() {
#if defined(__GLIBC__)
  // mallopt returns 1 on success. Older glibc versions refuse thresholds
  // above 32 MiB on 64-bit (HEAP_MAX_SIZE / 2); then settle for that.
  const bool mmap_ok = mallopt(M_MMAP_THRESHOLD, 128 << 20) == 1 ||
                       mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
  const bool trim_ok = mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1;
  return mmap_ok && trim_ok;
#else
  return false;
#endif
}

}  // namespace statestream
