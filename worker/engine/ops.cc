// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace statestream::engine {

namespace {

// Sums in double over 8 interleaved lanes (element i into lane i % 8), then
// one fixed tree: a fixed order, like the kernels' dot products, whose lanes
// vectorise where one running sum is a chain of dependent additions.
constexpr int kNormLanes = 8;
inline double LaneTree(const double* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

}  // namespace

__attribute__((target_clones("avx512f", "avx2", "default"))) void LayerNorm(
    const float* x, int n, const float* w, const float* b, float eps,
    float* out) {
  const int full = n - n % kNormLanes;
  double lanes[kNormLanes] = {};
  for (int i = 0; i < full; i += kNormLanes) {
    for (int j = 0; j < kNormLanes; ++j) lanes[j] += x[i + j];
  }
  for (int i = full; i < n; ++i) lanes[i - full] += x[i];
  const double mean = LaneTree(lanes) / n;
  double sq[kNormLanes] = {};
  for (int i = 0; i < full; i += kNormLanes) {
    for (int j = 0; j < kNormLanes; ++j) {
      const double d = x[i + j] - mean;
      sq[j] += d * d;
    }
  }
  for (int i = full; i < n; ++i) {
    const double d = x[i] - mean;
    sq[i - full] += d * d;
  }
  const double inv = 1.0 / std::sqrt(LaneTree(sq) / n + eps);
  for (int i = 0; i < n; ++i) {
    out[i] = static_cast<float>((x[i] - mean) * inv) * w[i] + b[i];
  }
}

void GroupNorm(const float* x, int groups, int n, const float* w,
               const float* b, float eps, float* out) {
  for (int g = 0; g < groups; ++g) {
    LayerNorm(x + g * n, n, w + g * n, b + g * n, eps, out + g * n);
  }
}

void ReluSquare(float* x, int64_t n) {
  // max(x, 0) by clearing every bit of a negative number (sign bit set, up
  // to -Inf = 0xff800000; a NaN with its sign bit set, such as x86's
  // default NaN 0xffc00000, stays NaN as in the reference): integer
  // operations the compiler vectorises, where a float compare and select
  // stays a scalar branch.
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], sizeof(b));
    b &= (b - 0x80000000u) <= 0x7f800000u ? 0u : ~0u;
    float r;
    std::memcpy(&r, &b, sizeof(r));
    x[i] = r * r;
  }
}

namespace {

// Rounds to nearest even by adding and subtracting 1.5 * 2^23 (exact for
// |v| < 2^22; the engine is compiled with -ffp-contract=off and without
// -ffast-math, so the compiler keeps both operations).
constexpr float kRound = 12582912.0f;

// max |x| as bits, fills *scale and returns false (q filled with the zero
// point) for rows of zeros, NaN or infinity. For non-negative floats integer
// order is float order, and NaN/infinity sort above every finite value.
// A row's bytes go in chunks of 64, `cs` bytes apart (64: one contiguous
// row; 1024: AMX tile order, I8TileIndex).
inline int64_t At(int i, int cs) { return int64_t{i / 64} * cs + i % 64; }

bool RowScale(uint32_t amax_bits, int n, uint8_t* q, int cs, float* scale,
              float* inv) {
  float amax;
  std::memcpy(&amax, &amax_bits, sizeof(amax));
  // A max below 127 / FLT_MAX (~3.7e-37) would make 127 / max infinite,
  // and its zeros NaN: the row counts as zeros (it loses < 3.7e-37 a
  // weight), the same bytes on every path.
  const bool tiny = amax_bits != 0 && !std::isfinite(127.0f / amax);
  if (amax_bits == 0 || tiny || amax_bits >= 0x7f800000u) {
    *scale = amax_bits < 0x7f800000u ? 0.0f
                                     : std::numeric_limits<float>::quiet_NaN();
    for (int i = 0; i < n; i += 64) {
      std::fill_n(q + At(i, cs), n - i < 64 ? n - i : 64, uint8_t{128});
    }
    return false;
  }
  *scale = amax / 127.0f;
  *inv = 127.0f / amax;
  return true;
}

// Compiled for the widest vectors the CPU has: integer max and per-element
// IEEE operations, so every clone gives the same bytes.
__attribute__((target_clones("avx2", "default"))) void QuantizeRowPortable(
    const float* x, int n, uint8_t* q, int cs, float* scale) {
  uint32_t amax_bits = 0;  // an integer max vectorises; a float one does not
  for (int i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], sizeof(b));
    b &= 0x7fffffffu;
    amax_bits = b > amax_bits ? b : amax_bits;
  }
  float inv;
  if (!RowScale(amax_bits, n, q, cs, scale, &inv)) return;
  // |x| <= amax, so |x * inv| < 127.5 and the rounded value is already in
  // [-127, 127]; the clamps only guard it.
  for (int c = 0; c < n; c += 64) {
    uint8_t* qc = q + At(c, cs);
    const int e = n - c < 64 ? n - c : 64;
    for (int i = 0; i < e; ++i) {
      float v = (x[c + i] * inv + kRound) - kRound;
      v = std::min(std::max(v, -127.0f), 127.0f);
      qc[i] = static_cast<uint8_t>(static_cast<int32_t>(v) + 128);
    }
  }
}

#if defined(__x86_64__)
// GCC 12 flags its own _mm512_undefined_*() inside the intrinsic headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) inline __m512i Quantize16(__m512 v,
                                                             __m512 inv) {
  const __m512 round = _mm512_set1_ps(kRound);
  v = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, inv), round), round);
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)),
                    _mm512_set1_ps(127.0f));
  return _mm512_add_epi32(_mm512_cvttps_epi32(v), _mm512_set1_epi32(128));
}

// The same operations in the same order, 16 lanes at a time (GCC's
// vectorisation of the portable loop spends ~1 cycle a value on blends).
__attribute__((target("avx512f,avx512bw"))) void QuantizeRowAvx512(
    const float* x, int n, uint8_t* q, int cs, float* scale) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  __m512i m = _mm512_setzero_si512();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    m = _mm512_max_epu32(m,
                         _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask));
  }
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1u);
  if (i < n) {
    m = _mm512_max_epu32(
        m, _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, x + i), abs_mask));
  }
  float inv;
  if (!RowScale(_mm512_reduce_max_epu32(m), n, q, cs, scale, &inv)) return;
  const __m512 vinv = _mm512_set1_ps(inv);
  for (i = 0; i + 16 <= n; i += 16) {  // 16 never straddle a 64-byte chunk
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(q + At(i, cs)),
        _mm512_cvtepi32_epi8(Quantize16(_mm512_loadu_ps(x + i), vinv)));
  }
  if (i < n) {
    _mm512_mask_cvtepi32_storeu_epi8(
        q + At(i, cs), tail,
        Quantize16(_mm512_maskz_loadu_ps(tail, x + i), vinv));
  }
}

#pragma GCC diagnostic pop

bool HasAvx512Bw() {
  static const bool has =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
}
#endif

}  // namespace

void QuantizeRowRange(const float* x, int ldx, int row_begin, int row_end,
                      int n, uint8_t* xq, int ldq, float* scale, bool tiles) {
  const int cs = tiles ? 1024 : 64;
  for (int t = row_begin; t < row_end; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * ldx;
    uint8_t* q =
        xq + (tiles ? I8TileIndex(t, 0, ldq) : static_cast<int64_t>(t) * ldq);
#if defined(__x86_64__)
    if (HasAvx512Bw()) {
      QuantizeRowAvx512(xr, n, q, cs, scale + t);
      continue;
    }
#endif
    QuantizeRowPortable(xr, n, q, cs, scale + t);
  }
}

void QuantizeRows(const float* x, int ldx, int rows, int n, uint8_t* xq,
                  int ldq, float* scale) {
  QuantizeRowRange(x, ldx, 0, rows, n, xq, ldq, scale, false);
}

namespace {

// Output rows per pool task for one product (alternating runs; tok/s):
// - int8 from 16 rows (AMX, or VNNI's group pairs): about 256, in a
//   multiple of the thread count (below). Each AMX call loads a tile
//   configuration and streams its weight tiles best in long runs (0.1B,
//   32 sessions: 1,656-1,692 with 64 below 4,096 outputs, 1,739-1,795
//   with 256; a 512-token prefill +7-9 %).
// - Weight streams — one row, or int8 below 16 rows (VNNI) — of 512+
//   outputs: two ranges a thread (PlanOutputs below cuts the last eighth
//   of large ones finer). Each range starts its prefetch streams
//   cold, and the products stream at DRAM speed only between starts
//   (session 10, against 64, or 256 for one-row bf16 from 2,048 outputs:
//   one session 0.4B bf16 34.4-34.5 → 35.4-37.6, int8 +3 %, 0.1B int8
//   +9-13 %, fp32 equal; 8 int8 sessions 0.1B +3-4 %, 0.4B +9-13 %). One
//   range a thread was as fast idle but lost a third of int8's one-session
//   speed with two busy processes on the two cores (a claimed range cannot
//   move to the free core).
// - fp32/bf16 from 384 outputs: whole groups of 3 panels (kernels_impl.h),
//   from 16 rows about 64 ranges a product from 96 to 768 outputs (the
//   65536-output head at 32 rows: 245 GFLOP/s in ranges of 96, 265 in
//   ranges of 768; the 768- and 3072-output products need the smaller
//   ranges to split evenly); below 16 rows 96 (8 sessions: 475 against 451
//   with the larger ranges; two ranges a thread measured the same).
// - Smaller products: 16, so both cores get work; one row 64, a block of
//   four streams instead of one (the LoRA factors: one session 0.1B bf16
//   +4-5 %, 0.4B +1-4 %, int8 +2-3 %).
int OutputTile(const Matrix& m, int rows, int threads) {
  if (m.i8 != nullptr && rows >= 16) {
    // As many ranges as a multiple of the threads, so no core waits for
    // another's last one: 768 outputs in 3 ranges of 256 left one of two
    // cores idle for a third of the product (0.1B int8, 32 sessions, steps
    // alternated in one process: +2 % and +4 % with 4 ranges of 192).
    // Whole 32-output units: AMX's 2 x 2 tiles and VNNI's group pairs.
    const int n = (m.rows + 256 * threads - 1) / (256 * threads) * threads;
    return std::max(32, (m.rows + n - 1) / n + 31) / 32 * 32;
  }
  // Weight streams: one row, or int8 below 16 rows (the VNNI kernel).
  const bool streams = rows == 1 || (m.i8 != nullptr && rows < 16);
  if (streams && m.rows >= 512) {
    return (m.rows + 2 * threads * 64 - 1) / (2 * threads * 64) * 64;
  }
  if (m.i8 == nullptr && rows > 1 && m.rows >= 384) {
    return rows >= 16 ? std::clamp(m.rows / 64 / 48 * 48, 96, 768) : 96;
  }
  if (rows == 1) return 64;
  return m.rows >= 256 ? 64 : 16;
}

// How one product's outputs split into pool tasks: `first` ranges of
// `tile` outputs, then ranges of `tail` outputs up to the last output.
struct OutputRanges {
  int tile, first, tail;

  int Count(int outputs) const {
    const int rest = std::max(0, outputs - first * tile);
    return first + (rest + tail - 1) / tail;
  }
  // Outputs [*b, *e) of range r < Count(outputs).
  void Bounds(int r, int outputs, int* b, int* e) const {
    *b = r < first ? r * tile : first * tile + (r - first) * tail;
    *e = std::min(outputs, *b + (r < first ? tile : tail));
  }
};

// A weight stream of two ranges a thread ends with one core waiting for the
// other's last range (one session 0.4B bf16: ~13 % of the calling thread's
// time at the ends of products). Where the ranges are long (256+ outputs),
// they cover seven eighths of the outputs and the last eighth follows in
// 2 * threads short ranges, which the core that finishes first takes.
// Steps alternated in one process (docs/engine-kernels.md): one session
// 0.4B bf16 +0.2-2.2 %, 0.1B bf16 and int8 +1.5-2.2 %, 8 sessions 0.4B
// int8 +0.6-1.1 %.
OutputRanges PlanOutputs(const Matrix& m, int rows, int threads) {
  const int tile = OutputTile(m, rows, threads);
  const OutputRanges plain{tile, (m.rows + tile - 1) / tile, tile};
  const bool streams = rows == 1 || (m.i8 != nullptr && rows < 16);
  if (!streams) return plain;
  const int ranges = 2 * threads;
  const int big = m.rows * 7 / 8 / ranges / 64 * 64;
  if (big < 256) return plain;
  const int rest = m.rows - ranges * big;
  const int tail = std::max(64, (rest + ranges * 64 - 1) / (ranges * 64) * 64);
  return {big, ranges, tail};
}

}  // namespace

void WeightStream::Before(absl::Span<const MatMulJob> jobs, ThreadPool& pool) {
  if (jobs.empty()) return;
  ThreadPool::Region regions[ThreadPool::kMaxReadAhead];
  int n = 0;
  {
    absl::MutexLock lock(&mu_);
    int first = std::numeric_limits<int>::max(), last = -1;
    bool learned = false;
    for (const MatMulJob& job : jobs) {
      auto [it, added] =
          position_.try_emplace(job.m, static_cast<int>(order_.size()));
      if (added) order_.push_back({job.m, handoffs_});
      learned |= added;
      first = std::min(first, it->second);
      last = std::max(last, it->second);
    }
    if (learned) ++handoffs_;  // bounded by the number of matrices
    const int size = static_cast<int>(order_.size());
    size_t total = 0;
    for (int i = (last + 1) % size; i != first && n < ThreadPool::kMaxReadAhead;
         i = (i + 1) % size) {
      // Stop between hand-offs once enough is named.
      const int prev = (i + size - 1) % size;
      if (total >= kMinAheadBytes &&
          order_[i].handoff != order_[prev].handoff) {
        break;
      }
      const Matrix& m = *order_[i].m;
      const size_t bytes = std::min(m.bytes(), kMaxAheadBytes - total);
      if (bytes == 0) continue;
      regions[n++] = {m.data(), bytes};
      total += bytes;
      if (total == kMaxAheadBytes) break;
    }
  }
  pool.ReadAheadWhenIdle({regions, static_cast<size_t>(n)});
}

Bf16Terms::Bf16Terms(const float* x, int ldx, int rows, int in, int terms)
    : xs(Bf16TermsSize(rows, in, terms), 0.0f),
      xb(Bf16TermsSize(rows, in, terms), 0),
      xp(Bf16TermsSize(rows, in, terms), 0),
      terms(terms),
      rows_(rows),
      in_(in) {
  SplitBf16Terms(x, ldx, 0, rows, in, terms, Bf16Copy::kFp32, xs.data(),
                 nullptr);
  SplitBf16Terms(x, ldx, 0, rows, in, terms, Bf16Copy::kTiles, nullptr,
                 xb.data());
  SplitBf16Terms(x, ldx, 0, rows, in, terms, Bf16Copy::kPairedTiles, nullptr,
                 xp.data());
}

const uint16_t* Bf16Terms::bf16(const Kernels& k) const {
  return k.gemm_bf16_copy(rows_, in_) == Bf16Copy::kPairedTiles ? xp.data()
                                                                : xb.data();
}

void MatMuls(const Kernels& k, ThreadPool& pool,
             absl::Span<const MatMulJob> jobs, int rows, WeightStream* stream) {
  if (rows <= 0 || jobs.empty()) return;
  if (stream != nullptr) stream->Before(jobs, pool);
  // int8 inputs are quantized once per product, and bf16 inputs split into
  // their two bf16 terms (kernels.h), shared by all its tiles. int8 rows
  // are padded to 64 bytes and their number to a multiple of 16 (the
  // kernels read whole tiles; what padding holds is never used).
  struct Quantized {
    int64_t offset;  // into xq; rows of ldq bytes
    int ldq;
  };
  struct Scratch {
    std::vector<uint8_t> xq;
    std::vector<float> scale;  // [job][row]
    std::vector<Quantized> q;
    std::vector<float> xs;             // bf16 terms as fp32
    std::vector<uint16_t> xb;          // the same as bf16
    std::vector<int64_t> terms;        // [job]: offset into xs and xb, or -1
    std::vector<int> first_tile;       // [job]: its first range's task
    std::vector<OutputRanges> ranges;  // [job]
  };
  // The caller's scratch, by reference: pool threads use it too (a
  // thread_local named inside the lambdas would be each thread's own).
  static thread_local Scratch scratch;
  Scratch& s = scratch;
  const int n = static_cast<int>(jobs.size());
  s.q.assign(n, Quantized{0, 0});
  s.terms.assign(n, -1);
  int64_t xq_bytes = 0, terms_size = 0, values = 0;
  for (int j = 0; j < n; ++j) {
    const Matrix& m = *jobs[j].m;
    if (m.i8 != nullptr) {
      s.q[j] = {xq_bytes, (m.cols + 63) & ~63};
      xq_bytes += static_cast<int64_t>((rows + 15) & ~15) * s.q[j].ldq;
      values += static_cast<int64_t>(rows) * m.cols;
    } else if (m.bf16 != nullptr) {
      s.terms[j] = terms_size;
      terms_size += Bf16TermsSize(rows, m.cols, m.bf16_terms);
      values += static_cast<int64_t>(rows) * m.cols;
    }
  }
  if (xq_bytes > 0) {
    // Grown, never shrunk, like the bf16 terms below: a step's products ask
    // for 24 KiB to 170 KiB in turn (32 rows), and a resize that grows
    // zeroes what it adds (~0.6 % of a 32-session int8 step).
    if (s.xq.size() < static_cast<size_t>(xq_bytes)) s.xq.resize(xq_bytes);
    const size_t scales = static_cast<size_t>(n) * rows;
    if (s.scale.size() < scales) s.scale.resize(scales);
  }
  if (terms_size > 0) {
    // Grown, never shrunk: a resize that grows zeroes what it adds.
    if (s.xs.size() < static_cast<size_t>(terms_size)) {
      s.xs.resize(terms_size);
      s.xb.resize(terms_size);
    }
    // The term rows past terms * rows (whole AMX tiles) hold whatever they
    // held: AMX reads them only into rows of sums it never stores.
  }
  // Preparing the inputs and the products share one hand-off: the first
  // tasks prepare each product's rows in blocks (rows are independent; a
  // block per thread), and a product task that starts before they are all
  // done waits for them (ThreadPool::ParallelForThen). Prepared on the
  // caller before the hand-off, 32 rows of 768 values kept the other core
  // idle while they were quantized (~1.3 % of a 32-session int8 step), and
  // a hand-off of their own costs as much. Steps alternating the two ways
  // in one process: 32 sessions int8 +1-3 %, bf16 +1-2 %, one session
  // equal.
  constexpr int64_t kMinPerBlock = 8 * 1024;
  const int blocks = values == 0
                         ? 0
                         : static_cast<int>(std::min<int64_t>(
                               std::min(pool.size(), rows),
                               std::max<int64_t>(1, values / kMinPerBlock)));
  auto prepare_block = [&](int task) {
    const int j = task / blocks, i = task % blocks;
    const MatMulJob& job = jobs[j];
    const Matrix& m = *job.m;
    const int b = static_cast<int>(static_cast<int64_t>(rows) * i / blocks);
    const int e =
        static_cast<int>(static_cast<int64_t>(rows) * (i + 1) / blocks);
    if (m.i8 != nullptr) {
      // In the layout the product reads (Kernels::gemm_i8_tiles).
      QuantizeRowRange(job.x, job.ldx, b, e, m.cols,
                       s.xq.data() + s.q[j].offset, s.q[j].ldq,
                       s.scale.data() + static_cast<size_t>(j) * rows,
                       k.gemm_i8_tiles(rows));
    } else if (m.bf16 != nullptr) {
      // Only the copy the product reads (Kernels::gemm_bf16_copy).
      SplitBf16Terms(job.x, job.ldx, b, e, m.cols, m.bf16_terms,
                     k.gemm_bf16_copy(rows, m.cols), s.xs.data() + s.terms[j],
                     s.xb.data() + s.terms[j]);
    }
  };
  // Small inputs (one session: 768 values a product; one block each) in
  // one task: a claim per product cost one-session int8 decode ~0.6 %.
  const bool one_task = values < kMinPerBlock;
  const int prepare_tasks = values == 0 ? 0 : one_task ? 1 : n * blocks;
  auto prepare = [&](int task) {
    if (!one_task) {
      prepare_block(task);
      return;
    }
    for (int j = 0; j < n; ++j) prepare_block(j);  // blocks == 1
  };
  s.first_tile.resize(n + 1);
  s.ranges.resize(n);
  s.first_tile[0] = 0;
  for (int j = 0; j < n; ++j) {
    const Matrix& m = *jobs[j].m;
    s.ranges[j] = PlanOutputs(m, rows, pool.size());
    s.first_tile[j + 1] = s.first_tile[j] + s.ranges[j].Count(m.rows);
  }
  auto product = [&](int task) {
    int j = 0;
    while (task >= s.first_tile[j + 1]) ++j;
    const MatMulJob& job = jobs[j];
    const Matrix& m = *job.m;
    int b, e;
    s.ranges[j].Bounds(task - s.first_tile[j], m.rows, &b, &e);
    if (m.i8 != nullptr) {
      k.gemm_i8(m.i8, m.scale.data(), m.wsum.data(), m.cols,
                s.xq.data() + s.q[j].offset,
                s.scale.data() + static_cast<size_t>(j) * rows, s.q[j].ldq,
                rows, job.y, job.ldy, b, e);
    } else if (m.f32 != nullptr) {
      k.gemm_f32(m.f32, m.cols, job.x, job.ldx, rows, job.y, job.ldy, b, e);
    } else {
      k.gemm_bf16(m.bf16, m.cols, s.xs.data() + s.terms[j],
                  s.xb.data() + s.terms[j], m.bf16_terms, rows, job.y, job.ldy,
                  b, e);
    }
  };
  pool.ParallelForThen(prepare_tasks, prepare, s.first_tile[n], product);
}

void MatMul(const Kernels& k, ThreadPool& pool, const Matrix& m, const float* x,
            int ldx, int rows, float* y, int ldy, WeightStream* stream) {
  const MatMulJob job{&m, x, ldx, y, ldy};
  MatMuls(k, pool, {&job, 1}, rows, stream);
}

}  // namespace statestream::engine
