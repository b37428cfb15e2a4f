// SPDX-License-Identifier: Apache-2.0
// The AVX-512 bf16 product for one row (decode), compiled apart with
// -mtune=skylake-avx512 (model.cmake). GCC's generic tuning schedules the
// one-row block's loads, widening and FMAs in batches; the AVX-512 tuning
// interleaves them, and 0.1B bf16 decode runs 2-4 % faster. The tuning
// changes no arithmetic: this is kernels_impl::GemmBf16Terms, bit for bit. The
// same tuning for the whole AVX-512 file made batched products slower, so only
// this entry point has it (docs/engine-kernels.md "One-row bf16").
#include "worker/engine/kernels_avx512_v.h"
#include "worker/engine/kernels_impl.h"

namespace statestream::engine {

void GemmBf16OneRowAvx512(const uint16_t* w, int in, const float* xs,
                          const uint16_t* xb, int terms, int rows, float* y,
                          int ldy, int o_begin, int o_end) {
  kernels_impl::GemmBf16Terms<V>(w, in, xs, xb, terms, rows, y, ldy, o_begin,
                                 o_end);
}

}  // namespace statestream::engine
