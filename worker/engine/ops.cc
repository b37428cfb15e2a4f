// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/ops.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace statestream::engine {

void LayerNorm(const float* x, int n, const float* w, const float* b, float eps,
               float* out) {
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / n;
  double sq = 0;
  for (int i = 0; i < n; ++i) {
    const double d = x[i] - mean;
    sq += d * d;
  }
  const double inv = 1.0 / std::sqrt(sq / n + eps);
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
  // max(x, 0) by clearing every bit of a negative number (sign bit set):
  // integer operations the compiler vectorises, where a float compare and
  // select stays a scalar branch.
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], sizeof(b));
    b &= ~static_cast<uint32_t>(static_cast<int32_t>(b) >> 31);
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
bool RowScale(uint32_t amax_bits, int n, uint8_t* q, float* scale, float* inv) {
  if (amax_bits == 0 || amax_bits >= 0x7f800000u) {
    *scale = amax_bits == 0 ? 0.0f : std::numeric_limits<float>::quiet_NaN();
    std::fill(q, q + n, uint8_t{128});
    return false;
  }
  float amax;
  std::memcpy(&amax, &amax_bits, sizeof(amax));
  *scale = amax / 127.0f;
  *inv = 127.0f / amax;
  return true;
}

// Compiled for the widest vectors the CPU has: integer max and per-element
// IEEE operations, so every clone gives the same bytes.
__attribute__((target_clones("avx2", "default"))) void QuantizeRowPortable(
    const float* x, int n, uint8_t* q, float* scale) {
  uint32_t amax_bits = 0;  // an integer max vectorises; a float one does not
  for (int i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], sizeof(b));
    b &= 0x7fffffffu;
    amax_bits = b > amax_bits ? b : amax_bits;
  }
  float inv;
  if (!RowScale(amax_bits, n, q, scale, &inv)) return;
  // |x| <= amax, so |x * inv| < 127.5 and the rounded value is already in
  // [-127, 127]; the clamps only guard it.
  for (int i = 0; i < n; ++i) {
    float v = (x[i] * inv + kRound) - kRound;
    v = std::min(std::max(v, -127.0f), 127.0f);
    q[i] = static_cast<uint8_t>(static_cast<int32_t>(v) + 128);
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
    const float* x, int n, uint8_t* q, float* scale) {
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
  if (!RowScale(_mm512_reduce_max_epu32(m), n, q, scale, &inv)) return;
  const __m512 vinv = _mm512_set1_ps(inv);
  for (i = 0; i + 16 <= n; i += 16) {
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(q + i),
        _mm512_cvtepi32_epi8(Quantize16(_mm512_loadu_ps(x + i), vinv)));
  }
  if (i < n) {
    _mm512_mask_cvtepi32_storeu_epi8(
        q + i, tail, Quantize16(_mm512_maskz_loadu_ps(tail, x + i), vinv));
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

void QuantizeRows(const float* x, int ldx, int rows, int n, uint8_t* xq,
                  int ldq, float* scale) {
  for (int t = 0; t < rows; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * ldx;
    uint8_t* q = xq + static_cast<int64_t>(t) * ldq;
#if defined(__x86_64__)
    if (HasAvx512Bw()) {
      QuantizeRowAvx512(xr, n, q, scale + t);
      continue;
    }
#endif
    QuantizeRowPortable(xr, n, q, scale + t);
  }
}

void MatMul(const Kernels& k, ThreadPool& pool, const Matrix& m, const float* x,
            int ldx, int rows, float* y, int ldy) {
  if (rows <= 0) return;
  if (m.i8 != nullptr) {
    // Quantized once per call on the caller, shared by every tile. Rows are
    // padded to 64 bytes and their number to a multiple of 16 (the kernels
    // read whole tiles; what padding holds is never used).
    struct Scratch {
      std::vector<uint8_t> xq;
      std::vector<float> scale;
    };
    static thread_local Scratch s;
    const int ldq = (m.cols + 63) & ~63;
    s.xq.resize(static_cast<size_t>((rows + 15) & ~15) * ldq);
    s.scale.resize(rows);
    // Rows are independent. A hand-off costs a few microseconds, as much
    // as quantizing ~30k values, so only large inputs go over the pool, in
    // one contiguous block of rows per thread.
    constexpr int64_t kMinPerTask = 32 * 1024;
    const int64_t values = static_cast<int64_t>(rows) * m.cols;
    const int blocks = static_cast<int>(
        std::min<int64_t>(std::min(pool.size(), rows),
                          std::max<int64_t>(1, values / kMinPerTask)));
    uint8_t* xq = s.xq.data();
    float* xs = s.scale.data();
    pool.ParallelFor(blocks, [&](int i) {
      const int b = static_cast<int>(static_cast<int64_t>(rows) * i / blocks);
      const int e =
          static_cast<int>(static_cast<int64_t>(rows) * (i + 1) / blocks);
      QuantizeRows(x + static_cast<int64_t>(b) * ldx, ldx, e - b, m.cols,
                   xq + static_cast<int64_t>(b) * ldq, ldq, xs + b);
    });
    // AMX calls (16+ rows) pay a tile configuration each: fewer, larger
    // output ranges (still 8+ per thread for balance).
    const int tile = rows >= 16 && m.rows >= 4096 ? 256
                     : m.rows >= 256              ? 64
                                                  : 16;
    const int tiles = (m.rows + tile - 1) / tile;
    pool.ParallelFor(tiles, [&](int i) {
      const int b = i * tile;
      const int e = std::min(m.rows, b + tile);
      k.gemm_i8(m.i8, m.scale.data(), m.wsum.data(), m.cols, xq, xs, ldq, rows,
                y, ldy, b, e);
    });
    return;
  }
  // Tiles of 64 outputs, fewer for small products so both cores get work.
  const int tile = m.rows >= 256 ? 64 : 16;
  const int tiles = (m.rows + tile - 1) / tile;
  pool.ParallelFor(tiles, [&](int i) {
    const int b = i * tile;
    const int e = std::min(m.rows, b + tile);
    if (m.f32 != nullptr) {
      k.gemm_f32(m.f32, m.cols, x, ldx, rows, y, ldy, b, e);
    } else {
      k.gemm_bf16(m.bf16, m.cols, x, ldx, rows, y, ldy, b, e);
    }
  });
}

}  // namespace statestream::engine
