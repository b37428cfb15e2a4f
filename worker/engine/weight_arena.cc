// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/weight_arena.h"

#include "worker/engine/huge_pages.h"

namespace statestream::engine {
namespace {

constexpr size_t kChunk = size_t{64} << 20;  // 32 huge pages
constexpr size_t kAlign = 64;

}  // namespace

WeightArena::~WeightArena() {
  for (const Chunk& c : chunks_) UnmapHuge(c.base, c.size);
}

void* WeightArena::Allocate(size_t bytes) {
  bytes = RoundUp(bytes == 0 ? 1 : bytes, kAlign);
  if (chunks_.empty() || chunks_.back().size - chunks_.back().used < bytes) {
    const size_t size =
        RoundUp(bytes > kChunk ? bytes : kChunk, kHugePageBytes);
    chunks_.push_back({static_cast<char*>(MapHuge(size)), size, 0});
  }
  Chunk& c = chunks_.back();
  void* p = c.base + c.used;
  c.used += bytes;
  allocated_ += bytes;
  return p;
}

}  // namespace statestream::engine
