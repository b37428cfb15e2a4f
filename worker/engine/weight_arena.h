// SPDX-License-Identifier: Apache-2.0
// Memory for a model's weight matrices, on transparent huge pages where the
// kernel grants them. Internal to the engine.
//
// Why: decode streams every weight once per token, and with 4 KiB pages the
// page walks stall the prefetches that keep the stream going. On the
// reference VM one core streams one-row bf16 products at ~9 GB/s from 4 KiB
// pages and ~13 GB/s from 2 MiB pages (docs/engine-kernels.md "Huge pages").
// File mappings cannot have huge pages, so the loader copies every matrix
// here (and drops the file's pages as it goes) instead of viewing the file.
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
