// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/ops.h"

#include <algorithm>

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

void MatMul(const Kernels& k, ThreadPool& pool, const Matrix& m, const float* x,
            int ldx, int rows, float* y, int ldy) {
  if (rows <= 0) return;
  // Tiles of 64 outputs, fewer for small products so both cores get work.
  const int tile = m.rows >= 256 ? 64 : 16;
  const int tiles = (m.rows + tile - 1) / tile;
  pool.ParallelFor(tiles, [&](int i) {
    const int b = i * tile;
    const int e = std::min(m.rows, b + tile);
    if (m.f32 != nullptr) {
      k.gemm_f32(m.f32, m.cols, x, ldx, rows, y, ldy, b, e);
    } else if (m.i8 != nullptr) {
      k.gemm_i8(m.i8, m.scale.data(), m.cols, x, ldx, rows, y, ldy, b, e);
    } else {
      k.gemm_bf16(m.bf16, m.cols, x, ldx, rows, y, ldy, b, e);
    }
  });
}

}  // namespace statestream::engine
