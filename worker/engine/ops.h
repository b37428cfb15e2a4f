// SPDX-License-Identifier: Apache-2.0
// Small per-row operations shared by the architectures, plus the threaded
// matrix product. Scalar code with a fixed evaluation order (the engine is
// compiled with -ffp-contract=off), so results are the same everywhere.
// Internal to the engine.
#ifndef STATESTREAM_WORKER_ENGINE_OPS_H_
#define STATESTREAM_WORKER_ENGINE_OPS_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "worker/engine/exp.h"
#include "worker/engine/kernels.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {

// out = (x - mean) / sqrt(var + eps) * w + b over n elements (population
// variance; sums in double over 8 interleaved lanes and a fixed tree, so
// they vectorise in a fixed order). `out` may alias `x`.
void LayerNorm(const float* x, int n, const float* w, const float* b, float eps,
               float* out);

// LayerNorm applied to each of `groups` consecutive slices of x (length
// groups * n), with per-channel affine w/b of length groups * n.
void GroupNorm(const float* x, int groups, int n, const float* w,
               const float* b, float eps, float* out);

// x = max(x, 0)^2 in place, without a branch per element (the signs of
// FFN activations are random: a branch mispredicts half the time).
void ReluSquare(float* x, int64_t n);

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

// Quantizes each of `rows` rows of x (length n, stride ldx) for
// Kernels::gemm_i8, row-major (for a product on tiles, where
// Kernels::gemm_i8_tiles, use QuantizeRowRange below): scale[t] = max_i
// |x[t][i]| / 127, q = round(x / scale) in [-127, 127], stored as q + 128 in xq
// (stride ldq >= n). A row of zeros, or one whose max |x| is below
// 127 / FLT_MAX (~3.7e-37, where 127 / max overflows), gets scale 0 and
// q = 0; a row with a NaN or infinity gets scale NaN, so its outputs are NaN
// as in fp32.
void QuantizeRows(const float* x, int ldx, int rows, int n, uint8_t* xq,
                  int ldq, float* scale);
// The same for rows [row_begin, row_end) of a product (x, xq and scale
// point at its row 0), so blocks of rows may be quantized by different
// threads; with `tiles`, into AMX tile order (I8TileIndex, for a product
// where Kernels::gemm_i8_tiles).
void QuantizeRowRange(const float* x, int ldx, int row_begin, int row_end,
                      int n, uint8_t* xq, int ldq, float* scale, bool tiles);

// y[t][o] = sum_i m[o][i] * x[t][i] for t < rows, all outputs, split over the
// pool by output tiles (never by reduction, so the result does not depend on
// the thread count). int8 matrices quantize each row of x first
// (QuantizeRows), which depends only on that row.
class WeightStream;
void MatMul(const Kernels& k, ThreadPool& pool, const Matrix& m, const float* x,
            int ldx, int rows, float* y, int ldy,
            WeightStream* stream = nullptr);

// Activations split for Kernels::gemm_bf16 (SplitBf16Terms, padding rows
// cleared) into every copy, for callers of the kernel itself; MatMuls keeps
// its own.
struct Bf16Terms {
  // `terms` a row: 2 (hi, lo) or 1 (hi; Bf16Activations::kRound).
  Bf16Terms(const float* x, int ldx, int rows, int in, int terms = 2);
  // The bf16 copy `k`'s gemm_bf16 reads for these rows (xb or xp).
  const uint16_t* bf16(const Kernels& k) const;
  std::vector<float> xs;     // Bf16Copy::kFp32
  std::vector<uint16_t> xb;  // kTiles
  std::vector<uint16_t> xp;  // kPairedTiles
  int terms;

 private:
  int rows_, in_;
};

// One product of MatMuls: y[t*ldy + o] = sum_i m[o][i] * x[t*ldx + i].
struct MatMulJob {
  const Matrix* m;
  const float* x;
  int ldx;
  float* y;
  int ldy;
};

// Independent products over the same number of rows, in one hand-off to the
// pool (a decode step's projections are each a few microseconds of work,
// as much as a hand-off and its tail). Each y is exactly what MatMul gives;
// no job's y may overlap another job's x or y.
// With a `stream`, the weights of the products after these are read ahead
// while they run (WeightStream).
void MatMuls(const Kernels& k, ThreadPool& pool,
             absl::Span<const MatMulJob> jobs, int rows,
             WeightStream* stream = nullptr);

// The order in which one model's products read their weights in a step,
// learned as they run (first use), and read-ahead along it: before each
// hand-off of products, the hand-offs that come next — wrapping to the
// step's first, since the next step starts there — go to the pool's
// ThreadPool::ReadAheadWhenIdle: whole hand-offs until kMinAheadBytes are
// named, at most kMaxAheadBytes. A decode step streams every weight once,
// and between products a core often waits on the other or on a short
// serial stage while the memory bus idles (docs/engine-kernels.md
// "Read-ahead"). A hint only: results never change. Thread-safe; the order
// is the same for every step of a model (concurrent steps replace each
// other's lists, which costs nothing but the hint).
class WeightStream {
 public:
  // Naming everything up to kMaxAheadBytes instead of the next hand-offs
  // measured 2-3 % slower: what an idle core fetches lands in its own
  // 2 MiB L2 and is evicted before use.
  static constexpr size_t kMinAheadBytes = size_t{1} << 20;
  static constexpr size_t kMaxAheadBytes = size_t{8} << 20;
  // Learns the jobs' matrices not seen yet (in call order, one hand-off)
  // and posts the hand-offs that follow them.
  void Before(absl::Span<const MatMulJob> jobs, ThreadPool& pool);

 private:
  struct Entry {
    const Matrix* m;
    int handoff;  // which learning Before call first ran it
  };
  absl::Mutex mu_;
  std::vector<Entry> order_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<const Matrix*, int> position_ ABSL_GUARDED_BY(mu_);
  int handoffs_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_OPS_H_
