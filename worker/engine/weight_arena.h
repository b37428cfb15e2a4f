// SPDX-License-Identifier: Apache-2.0
// Memory for a model's weight matrices, on transparent huge pages where the
// kernel grants them (huge_pages.h says why). File mappings cannot have huge
// pages, so the loader copies every matrix here (and drops the file's pages
// as it goes) instead of viewing the file. Internal to the engine.
#ifndef STATESTREAM_WORKER_ENGINE_WEIGHT_ARENA_H_
#define STATESTREAM_WORKER_ENGINE_WEIGHT_ARENA_H_

#include <cstddef>
#include <vector>

namespace statestream::engine {

class WeightArena {
 public:
  WeightArena() = default;
  ~WeightArena();
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;

  // `bytes` of uninitialised memory, 64-byte aligned, valid for the arena's
  // lifetime. Blocks are packed one after another into 2 MiB-aligned chunks
  // advised MADV_HUGEPAGE, so consecutive matrices share huge pages; pages
  // never written cost no memory. Never null: aborts like operator new when
  // the system has no address space left.
  void* Allocate(size_t bytes);

  // Bytes handed out so far.
  size_t allocated() const { return allocated_; }

 private:
  struct Chunk {
    char* base;
    size_t size;
    size_t used;
  };
  std::vector<Chunk> chunks_;
  size_t allocated_ = 0;
};

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_WEIGHT_ARENA_H_
