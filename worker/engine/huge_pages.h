// SPDX-License-Identifier: Apache-2.0
// Memory on transparent huge pages, for the buffers a decode step streams in
// full: weights (WeightArena) and session states (HugePageAllocator).
//
// With 4 KiB pages the page walks stall the prefetches that keep a stream
// going; on the reference VM one core streams one-row bf16 products at
// ~9 GB/s from 4 KiB pages and ~13 from 2 MiB pages, and a 32-session decode
// step reads and writes every state (docs/engine-kernels.md "Huge pages").
// Huge pages are a hint (MADV_HUGEPAGE): where THP is off this is plain
// memory.
#ifndef STATESTREAM_WORKER_ENGINE_HUGE_PAGES_H_
#define STATESTREAM_WORKER_ENGINE_HUGE_PAGES_H_

#include <cstddef>
#include <new>
#include <vector>

namespace statestream::engine {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// n rounded up to a multiple of `to`.
inline constexpr size_t RoundUp(size_t n, size_t to) {
  return (n + to - 1) / to * to;
}

// `bytes` (rounded up to whole 4 KiB pages) of zeroed memory starting at a
// kHugePageBytes boundary, advised MADV_HUGEPAGE: every whole 2 MiB of it
// can be a huge page, and the rest costs no more than 4 KiB pages would.
// Throws std::bad_alloc when the address space is exhausted.
void* MapHuge(size_t bytes);
// Releases what MapHuge(bytes) returned.
void UnmapHuge(void* p, size_t bytes);

// A std allocator: blocks of at least kHugePageBytes come from MapHuge,
// smaller ones from operator new. For per-session buffers of megabytes
// (the recurrent state) that a batched step streams.
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}  // NOLINT: std interface

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes >= kHugePageBytes) return static_cast<T*>(MapHuge(bytes));
    return static_cast<T*>(::operator new(bytes));
  }
  void deallocate(T* p, size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes >= kHugePageBytes) {
      UnmapHuge(p, bytes);
    } else {
      ::operator delete(p);
    }
  }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const {
    return true;
  }
};

// A vector whose buffer is on huge pages once it reaches 2 MiB.
template <typename T>
using HugePageVector = std::vector<T, HugePageAllocator<T>>;

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_HUGE_PAGES_H_
