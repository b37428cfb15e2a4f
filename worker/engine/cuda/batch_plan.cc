// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/cuda/batch_plan.h"

#include <algorithm>

namespace statestream::engine::cuda {

std::vector<int32_t> Chunk::Pack() const {
  std::vector<int32_t> out;
  out.reserve(3 * tokens.size() + 3 * seg_slot.size() + logits.size());
  for (const auto* v :
       {&tokens, &slot, &flags, &seg_slot, &seg_begin, &seg_end}) {
    out.insert(out.end(), v->begin(), v->end());
  }
  for (const LogitRow& l : logits) out.push_back(l.row);
  return out;
}

std::vector<Chunk> PlanChunks(const std::vector<PlanInput>& seqs,
                              int max_rows) {
  std::vector<Chunk> chunks;
  if (max_rows < 1) max_rows = 1;
  Chunk cur;
  auto flush = [&] {
    if (cur.rows() > 0) chunks.push_back(std::move(cur));
    cur = Chunk();
  };
  for (size_t q = 0; q < seqs.size(); ++q) {
    const PlanInput& s = seqs[q];
    int64_t i = 0;
    while (i < s.n_tokens) {
      if (cur.rows() == max_rows) flush();
      const int begin = cur.rows();
      const int take =
          static_cast<int>(std::min<int64_t>(s.n_tokens - i, max_rows - begin));
      for (int r = 0; r < take; ++r) {
        cur.tokens.push_back(s.tokens[i + r]);
        cur.slot.push_back(static_cast<int32_t>(q));
        int32_t f = 0;
        if (r == 0) f |= kRowFirst;
        if (r == take - 1) f |= kRowLast;
        cur.flags.push_back(f);
      }
      cur.seg_slot.push_back(static_cast<int32_t>(q));
      cur.seg_begin.push_back(begin);
      cur.seg_end.push_back(begin + take);
      for (int64_t j = 0; j < s.n_positions; ++j) {
        const int64_t p = s.positions[j];
        if (p >= i && p < i + take) {
          cur.logits.push_back({static_cast<int32_t>(begin + (p - i)),
                                static_cast<int32_t>(q),
                                static_cast<int32_t>(j)});
        }
      }
      i += take;
    }
  }
  flush();
  return chunks;
}

}  // namespace statestream::engine::cuda
