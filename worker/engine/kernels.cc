// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/kernels.h"

#include <cstring>

namespace statestream::engine {

extern const Kernels kKernelsAvx512;
extern const Kernels kKernelsAvx2;
extern const Kernels kKernelsScalar;

namespace {

bool HasAvx512() {
  return __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}
bool HasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace

const Kernels* GetKernelsByName(const char* name) {
  if (std::strcmp(name, "avx512") == 0) {
    return HasAvx512() ? &kKernelsAvx512 : nullptr;
  }
  if (std::strcmp(name, "avx2") == 0) {
    return HasAvx2() ? &kKernelsAvx2 : nullptr;
  }
  if (std::strcmp(name, "scalar") == 0) return &kKernelsScalar;
  return nullptr;
}

const Kernels& GetKernels() {
  static const Kernels* best = [] {
    if (HasAvx512()) return &kKernelsAvx512;
    if (HasAvx2()) return &kKernelsAvx2;
    return &kKernelsScalar;
  }();
  return *best;
}

}  // namespace statestream::engine
