// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/ops.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

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

// Compiled for the widest vectors the CPU has: integer max and per-element
// IEEE operations, so every clone gives the same bytes.
__attribute__((target_clones("avx512f", "avx2", "default"))) void QuantizeRows(
    const float* x, int ldx, int rows, int n, uint8_t* xq, int ldq,
    float* scale) {
  for (int t = 0; t < rows; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * ldx;
    uint8_t* q = xq + static_cast<int64_t>(t) * ldq;
    // max |x| over the bit patterns: for non-negative floats integer order
    // is float order, and NaN/infinity sort above every finite value. An
    // integer max also vectorises, which a float max does not without
    // -ffast-math.
    uint32_t amax_bits = 0;
    for (int i = 0; i < n; ++i) {
      uint32_t b;
      std::memcpy(&b, &xr[i], sizeof(b));
      b &= 0x7fffffffu;
      amax_bits = b > amax_bits ? b : amax_bits;
    }
    if (amax_bits == 0 || amax_bits >= 0x7f800000u) {
      scale[t] =
          amax_bits == 0 ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      std::fill(q, q + n, uint8_t{128});
      continue;
    }
    float amax;
    std::memcpy(&amax, &amax_bits, sizeof(amax));
    scale[t] = amax / 127.0f;
    const float inv = 127.0f / amax;
    // Round to nearest even by adding and subtracting 1.5 * 2^23 (exact for
    // |v| < 2^22; the engine is compiled with -ffp-contract=off and without
    // -ffast-math, so the compiler keeps both operations).
    constexpr float kRound = 12582912.0f;
    for (int i = 0; i < n; ++i) {
      float v = (xr[i] * inv + kRound) - kRound;
      v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
      q[i] = static_cast<uint8_t>(static_cast<int32_t>(v) + 128);
    }
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
    if (rows >= 8) {  // rows are independent: quantize them over the pool
      uint8_t* xq = s.xq.data();
      float* xs = s.scale.data();
      pool.ParallelFor(rows, [&](int t) {
        QuantizeRows(x + static_cast<int64_t>(t) * ldx, ldx, 1, m.cols,
                     xq + static_cast<int64_t>(t) * ldq, ldq, xs + t);
      });
    } else {
      QuantizeRows(x, ldx, rows, m.cols, s.xq.data(), ldq, s.scale.data());
    }
    // AMX calls (16+ rows) pay a tile configuration each: fewer, larger
    // output ranges (still 8+ per thread for balance).
    const int tile = rows >= 16 && m.rows >= 4096 ? 256
                     : m.rows >= 256              ? 64
                                                  : 16;
    const int tiles = (m.rows + tile - 1) / tile;
    const uint8_t* xq = s.xq.data();
    const float* xs = s.scale.data();
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
