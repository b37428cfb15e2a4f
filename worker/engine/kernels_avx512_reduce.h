// SPDX-License-Identifier: Apache-2.0
// The 16-vector reduction shared by the AVX-512 kernel files. Include it only
// from files compiled with -mavx512f: it is TU-local (anonymous namespace),
// so no out-of-line copy can leak into code built for another instruction
// set. Internal to the engine.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_AVX512_REDUCE_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_AVX512_REDUCE_H_

#include <immintrin.h>

namespace statestream::engine {
namespace {

// The ReduceAdd() tree for 16 vectors at once: each level adds the same
// lane pairs (j, j + 8), (j, j + 4), (j, j + 2), (j, j + 1) of every
// vector, two vectors per instruction, so out[j] == a[j].ReduceAdd()
// bit for bit.
inline void Reduce16Ps(const __m512* a, float* out) {
  __m512 b[8], c[4], d[2];
  for (int k = 0; k < 8; ++k) {  // [a8 of 2k | a8 of 2k+1]
    const __m512 p = a[2 * k], q = a[2 * k + 1];
    b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int m = 0; m < 4; ++m) {  // quarter q: a4 of 4m+q
    const __m512 p = b[2 * m], q = b[2 * m + 1];
    c[m] = _mm512_add_ps(_mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int n = 0; n < 2; ++n) {  // quarter q: [a2 of 8n+q, a2 of 8n+4+q]
    const __m512 p = c[2 * n], q = c[2 * n + 1];
    d[n] = _mm512_add_ps(_mm512_shuffle_ps(p, q, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(p, q, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Lane 4q + r holds the sum of a[4r + q].
  const __m512 e =
      _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i idx =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(idx, e));
}

}  // namespace
}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_AVX512_REDUCE_H_
