// SPDX-License-Identifier: Apache-2.0
// Host-side planning for the CUDA backend: packs a batch of sequences into
// chunks of at most `max_rows` rows (each sequence's tokens contiguous and in
// order, as the CPU engine does) and describes each chunk with the flat
// integer tables the kernels read. Plain C++ (no CUDA, no Abseil), so it is
// unit-tested on every machine.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_BATCH_PLAN_H_
#define STATESTREAM_WORKER_ENGINE_CUDA_BATCH_PLAN_H_

#include <cstdint>
#include <vector>

namespace statestream::engine::cuda {

// Row flags.
inline constexpr int32_t kRowFirst = 1;  // first row of its segment: the
                                         // token shift reads the state
inline constexpr int32_t kRowLast = 2;   // last row: writes the shift state

struct PlanInput {
  const int32_t* tokens = nullptr;
  int64_t n_tokens = 0;
  const int32_t* positions = nullptr;  // logit positions (indices into tokens)
  int64_t n_positions = 0;
};

// A logit request inside a chunk: row `row` of the chunk gives the logits of
// entry `index` of sequence `seq`'s positions.
struct LogitRow {
  int32_t row;
  int32_t seq;
  int32_t index;
};

struct Chunk {
  // Per row: token id, state slot (= the sequence's index in the batch) and
  // kRowFirst/kRowLast flags.
  std::vector<int32_t> tokens, slot, flags;
  // Per segment (the rows of one sequence in this chunk): slot, [begin, end).
  std::vector<int32_t> seg_slot, seg_begin, seg_end;
  std::vector<LogitRow> logits;

  int rows() const { return static_cast<int>(tokens.size()); }
  int segments() const { return static_cast<int>(seg_slot.size()); }
  // The tables in one buffer, in this order: tokens, slot, flags, seg_slot,
  // seg_begin, seg_end, logit rows. Offsets follow from rows(), segments()
  // and logits.size().
  std::vector<int32_t> Pack() const;
};

// Splits the batch into chunks. Sequences without tokens get no rows. A logit
// position p of a sequence appears in the chunk holding its token p, in the
// order of the positions. `max_rows` must be at least 1.
std::vector<Chunk> PlanChunks(const std::vector<PlanInput>& seqs, int max_rows);

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_BATCH_PLAN_H_
