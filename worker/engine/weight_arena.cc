// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/weight_arena.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace statestream::engine {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kChunk = size_t{64} << 20;  // 32 huge pages
constexpr size_t kAlign = 64;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// `size` bytes (a multiple of kHugePage) at a kHugePage-aligned address.
char* MapAligned(size_t size) {
  void* p = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t raw = reinterpret_cast<uintptr_t>(p);
  const uintptr_t start = RoundUp(raw, kHugePage);
  if (start > raw) munmap(p, start - raw);
  const uintptr_t end = raw + size + kHugePage;
  if (end > start + size) {
    munmap(reinterpret_cast<void*>(start + size), end - (start + size));
  }
  // Only a hint: without THP (or with it off) the arena is plain memory.
  madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
  return reinterpret_cast<char*>(start);
}

}  // namespace

WeightArena::~WeightArena() {
  for (const Chunk& c : chunks_) munmap(c.base, c.size);
}

void* WeightArena::Allocate(size_t bytes) {
  bytes = RoundUp(bytes == 0 ? 1 : bytes, kAlign);
  if (chunks_.empty() || chunks_.back().size - chunks_.back().used < bytes) {
    const size_t size = RoundUp(bytes > kChunk ? bytes : kChunk, kHugePage);
    chunks_.push_back({MapAligned(size), size, 0});
  }
  Chunk& c = chunks_.back();
  void* p = c.base + c.used;
  c.used += bytes;
  allocated_ += bytes;
  return p;
}

}  // namespace statestream::engine
