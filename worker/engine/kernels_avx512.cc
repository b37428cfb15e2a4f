// SPDX-License-Identifier: Apache-2.0
// AVX-512 kernels; this file alone is compiled with -mavx512f (see
// model.cmake) and only runs where the CPU reports AVX-512F.
#include <immintrin.h>

#include "worker/engine/kernels.h"
#include "worker/engine/kernels_avx512_v.h"
#include "worker/engine/kernels_impl.h"

namespace statestream::engine {

// kernels_avx512_onerow.cc: the same Gemm for one row, scheduled for an
// AVX-512 core.
void GemmBf16OneRowAvx512(const uint16_t* w, int in, const float* xs,
                          const uint16_t* xb, int rows, float* y, int ldy,
                          int o_begin, int o_end);

namespace {

// One row goes to the AVX-512-tuned copy (the same operations, so the same
// bits); more rows to this file's, whose batched blocks the tuning slowed.
void GemmBf16(const uint16_t* w, int in, const float* xs, const uint16_t* xb,
              int rows, float* y, int ldy, int o_begin, int o_end) {
  if (rows == 1) {
    GemmBf16OneRowAvx512(w, in, xs, xb, rows, y, ldy, o_begin, o_end);
  } else {
    kernels_impl::GemmBf16Terms<V>(w, in, xs, xb, rows, y, ldy, o_begin, o_end);
  }
}

}  // namespace

extern const Kernels kKernelsAvx512 = {
    "avx512",
    &kernels_impl::Gemm<V>,
    &GemmBf16,
    &Bf16Fp32Copy,
    &kernels_impl::GemmI8Generic<V>,
    &NoI8Tiles,
    &kernels_impl::Wkv7Step<V>,
};

}  // namespace statestream::engine
