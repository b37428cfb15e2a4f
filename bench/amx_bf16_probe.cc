// SPDX-License-Identifier: Apache-2.0
// A design probe for bf16 products on AMX (docs/engine-kernels.md,
// "AMX-BF16"): checks that TDPBF16PS computes exactly the model below, which
// any build can reproduce with fused multiply-adds, and measures a plain
// 2 x 2-tile kernel on the 0.1B shape's products with the activations split
// into 2 or 3 bf16 terms, beside the engine's own bf16 kernel. Not part of
// the engine. Run: build/bench/amx_bf16_probe
//
// The model, per output element, for one instruction over 32 inputs (16
// pairs): two chains from +0, even inputs and odd inputs, each a fused
// multiply-add per pair in input order, then C + (even + odd); inputs and
// results with denormals flushed to zero (MXCSR DAZ and FTZ reproduce it).
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "worker/engine/kernels.h"
#include "worker/engine/ops.h"

namespace {

using statestream::engine::GetKernels;
using statestream::engine::PackPanelRow;
using statestream::engine::PanelPackedElems;

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool RequestAmx() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool bf16 = (d >> 22) & 1, tile = (d >> 24) & 1;
  return bf16 && tile &&
         syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

void ConfigureTiles() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
}

float FromBf16(uint16_t b) {
  const uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t ToBf16(float f) {  // round to nearest even (finite inputs)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

float Fma(float a, float b, float c) {
  return _mm_cvtss_f32(
      _mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}
float Add(float a, float b) {
  return _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(a), _mm_set_ss(b)));
}

// `tiles` instructions in a row into one C tile, against the model and two
// models it is not. Exponents of A, B and C drawn from [lo, hi].
void CheckSemantics(int lo, int hi, int tiles) {
  std::mt19937 rng(static_cast<unsigned>(lo * 31 + hi));
  std::uniform_real_distribution<float> mant(-1, 1);
  std::uniform_int_distribution<int> expo(lo, hi);
  auto draw = [&] { return std::ldexp(mant(rng), expo(rng)); };
  std::vector<uint16_t> a(tiles * 512), b(tiles * 512);
  alignas(64) float c0[16][16], c[16][16];
  long total = 0, miss[3] = {};
  for (int trial = 0; trial < 100; ++trial) {
    for (auto& v : a) v = ToBf16(draw());
    for (auto& v : b) v = ToBf16(draw());
    for (auto& row : c0) {
      for (float& v : row) {
        v = draw();
        if (std::fpclassify(v) == FP_SUBNORMAL) v = 0;  // as AMX leaves C
      }
    }
    _tile_loadd(0, c0, 64);
    for (int t = 0; t < tiles; ++t) {
      _tile_loadd(1, &a[t * 512], 64);
      _tile_loadd(2, &b[t * 512], 64);
      _tile_dpbf16ps(0, 1, 2);
    }
    _tile_stored(0, c, 64);
    const unsigned mxcsr = _mm_getcsr();
    _mm_setcsr(mxcsr | 0x8040);  // FTZ | DAZ
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 16; ++n) {
        float model = c0[m][n], serial = model, left = model;
        for (int t = 0; t < tiles; ++t) {
          const uint16_t* at = &a[t * 512 + m * 32];
          const uint16_t* bt = &b[t * 512];
          float even = 0, odd = 0;
          for (int k = 0; k < 16; ++k) {
            const float a0 = FromBf16(at[2 * k]), a1 = FromBf16(at[2 * k + 1]);
            const float b0 = FromBf16(bt[k * 32 + 2 * n]);
            const float b1 = FromBf16(bt[k * 32 + 2 * n + 1]);
            even = Fma(a0, b0, even);
            odd = Fma(a1, b1, odd);
            serial = Fma(a1, b1, Fma(a0, b0, serial));
          }
          model = Add(model, Add(even, odd));
          left = Add(Add(left, even), odd);
        }
        ++total;
        miss[0] += std::memcmp(&c[m][n], &model, 4) != 0;
        miss[1] += std::memcmp(&c[m][n], &serial, 4) != 0;
        miss[2] += std::memcmp(&c[m][n], &left, 4) != 0;
      }
    }
    _mm_setcsr(mxcsr);
  }
  std::printf(
      "semantics exponents [%d, %d], %d instruction(s): %ld outputs; "
      "mismatches: C + (even + odd) %ld, one interleaved chain %ld, "
      "(C + even) + odd %ld\n",
      lo, hi, tiles, total, miss[0], miss[1], miss[2]);
}

// y[rows][out] = x w^T with x split into T bf16 terms (x ~ sum of terms):
// rows * T row-terms in tiles of 16, laid out [row-term][in]; C tiles in a
// 2 x 2 block (two row-term tiles, two panels), stored and summed per row.
template <int T>
void AmxProduct(const uint16_t* w, int in, const uint16_t* xs, int rows,
                float* y, int out, float* c) {
  ConfigureTiles();  // the engine's kernels release the tiles after use
  const int mtiles = rows * T / 16;
  const int64_t pstride = static_cast<int64_t>(in) * 16;
  for (int p = 0; p < out / 16; p += 2) {
    for (int mt = 0; mt < mtiles; mt += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int k = 0; k < in; k += 32) {
        _tile_loadd(4, xs + static_cast<int64_t>(mt) * 16 * in + k, in * 2);
        _tile_loadd(5, xs + static_cast<int64_t>(mt + 1) * 16 * in + k, in * 2);
        _tile_loadd(6, w + p * pstride + static_cast<int64_t>(k) * 16, 64);
        _tile_loadd(7, w + (p + 1) * pstride + static_cast<int64_t>(k) * 16,
                    64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      float* cm = c + static_cast<int64_t>(mt) * 16 * 32;
      _tile_stored(0, cm, 128);
      _tile_stored(1, cm + 16, 128);
      _tile_stored(2, cm + 16 * 32, 128);
      _tile_stored(3, cm + 16 * 32 + 16, 128);
    }
    for (int r = 0; r < rows; ++r) {
      for (int h = 0; h < 2; ++h) {
        __m512 s = _mm512_loadu_ps(c + r * T * 32 + h * 16);
        for (int t = 1; t < T; ++t) {
          s = _mm512_add_ps(s, _mm512_loadu_ps(c + (r * T + t) * 32 + h * 16));
        }
        _mm512_storeu_ps(y + static_cast<int64_t>(r) * out + p * 16 + h * 16,
                         s);
      }
    }
  }
}

template <int T>
void Split(const std::vector<float>& x, int rows, int in,
           std::vector<uint16_t>* xs) {
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < in; ++i) {
      float rest = x[r * in + i];
      for (int t = 0; t < T; ++t) {
        const uint16_t term = ToBf16(rest);
        (*xs)[static_cast<int64_t>(r * T + t) * in + i] = term;
        rest -= FromBf16(term);
      }
    }
  }
}

// GFLOP/s (2 per multiply-add of the product, not of the T terms) on one
// core, data in cache, best of three ~0.3 s runs.
template <typename F>
double Rate(int rows, int out, int in, F&& run) {
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    long calls = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double s = 0;
    do {
      run();
      ++calls;
      s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
              .count();
    } while (s < 0.3);
    best = std::max(best, 2.0 * rows * out * in * calls / s / 1e9);
  }
  return best;
}

void MeasureProducts(int rows, int out, int in) {
  std::vector<uint16_t> w(static_cast<size_t>(out) * in);
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<uint16_t>(0x3c00 + (i * 2654435761u) % 0x100);
  }
  // The engine's panels are the AMX B layout: a panel's 16 steps of 2
  // inputs x 16 outputs are one 1 KiB tile.
  std::vector<uint16_t> packed(PanelPackedElems(out, in, 2), 0);
  for (int o = 0; o < out; ++o) {
    PackPanelRow(&w[static_cast<size_t>(o) * in], o, in, packed.data());
  }
  std::vector<float> x(static_cast<size_t>(rows) * in);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = (static_cast<float>(i % 97) - 48) * 1.0001f;
  }
  std::vector<float> y(static_cast<size_t>(rows) * out);
  std::vector<float> c(static_cast<size_t>(rows) * 3 * 32);
  std::vector<uint16_t> xs(static_cast<size_t>(rows) * 3 * in);
  const statestream::engine::Bf16Terms terms(x.data(), in, rows, in);
  const statestream::engine::Kernels* avx512 =
      statestream::engine::GetKernelsByName("avx512");
  const double fma = Rate(rows, out, in, [&] {
    avx512->gemm_bf16(packed.data(), in, terms.xs.data(), terms.bf16(*avx512),
                      terms.terms, rows, y.data(), out, 0, out);
  });
  const double engine = Rate(rows, out, in, [&] {
    GetKernels().gemm_bf16(packed.data(), in, terms.xs.data(),
                           terms.bf16(GetKernels()), terms.terms, rows,
                           y.data(), out, 0, out);
  });
  Split<3>(x, rows, in, &xs);
  const double t3 = Rate(rows, out, in, [&] {
    AmxProduct<3>(packed.data(), in, xs.data(), rows, y.data(), out, c.data());
  });
  Split<2>(x, rows, in, &xs);
  const double t2 = Rate(rows, out, in, [&] {
    AmxProduct<2>(packed.data(), in, xs.data(), rows, y.data(), out, c.data());
  });
  std::printf(
      "products %d rows x %d outputs x %d inputs, one core, GFLOP/s: "
      "gemm_bf16 FMA build %.0f, this machine's gemm_bf16 (%s) %.0f; plain "
      "AMX loop, 3 terms %.0f, 2 terms %.0f\n",
      rows, out, in, fma, GetKernels().name, engine, t3, t2);
}

}  // namespace

int main() {
  if (!RequestAmx()) {
    std::printf("no AMX-BF16 here (or the kernel refused the tile state)\n");
    return 0;
  }
  ConfigureTiles();
  CheckSemantics(-8, 8, 1);
  CheckSemantics(-8, 8, 4);
  CheckSemantics(-40, 40, 4);
  CheckSemantics(-140, -110, 2);  // denormal inputs and results
  CheckSemantics(-128, 8, 4);
  MeasureProducts(32, 768, 768);
  MeasureProducts(32, 3072, 768);
  MeasureProducts(32, 768, 3072);
  _tile_release();
  return 0;
}
