// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>

namespace statestream::engine {
namespace {

constexpr size_t kPage = 4096;

}  // namespace

void* MapHuge(size_t bytes) {
  const size_t size = RoundUp(bytes == 0 ? 1 : bytes, kPage);
  // Map a huge page more than needed, then trim both ends so the block
  // starts on a huge-page boundary.
  void* p = mmap(nullptr, size + kHugePageBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t raw = reinterpret_cast<uintptr_t>(p);
  const uintptr_t start = RoundUp(raw, kHugePageBytes);
  if (start > raw) munmap(p, start - raw);
  const uintptr_t end = raw + size + kHugePageBytes;
  if (end > start + size) {
    munmap(reinterpret_cast<void*>(start + size), end - (start + size));
  }
  madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(start);
}

void UnmapHuge(void* p, size_t bytes) {
  munmap(p, RoundUp(bytes == 0 ? 1 : bytes, kPage));
}

}  // namespace statestream::engine
