// SPDX-License-Identifier: Apache-2.0
// The AVX-512 bf16 product for one row (decode), compiled apart with
// -mtune=skylake-avx512 (model.cmake). GCC's generic tuning schedules
// OneRowBlock's four widening loads ahead of their products and prefetches;
// the AVX-512 tuning interleaves them, and one-row bf16 products stream
// 30-34 GB/s on two threads instead of 27-29. The tuning changes no
// arithmetic: this is kernels_impl::Gemm, bit for bit. The same tuning for
// the whole AVX-512 file made 32-row and prefill products 2-6 % slower, so
// only this entry point has it.
#include "worker/engine/kernels_avx512_v.h"
#include "worker/engine/kernels_impl.h"

namespace statestream::engine {

void GemmBf16OneRowAvx512(const uint16_t* w, int in, const float* x, int ldx,
                          int rows, float* y, int ldy, int o_begin, int o_end) {
  kernels_impl::Gemm<V, uint16_t>(w, in, x, ldx, rows, y, ldy, o_begin, o_end);
}

}  // namespace statestream::engine
