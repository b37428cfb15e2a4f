// SPDX-License-Identifier: Apache-2.0
// The architecture-independent functions of runner.h.
#include <cuda_runtime.h>

#include "worker/engine/cuda/runner.h"

namespace statestream::engine::cuda {

bool HeadSizeSupported(int head_size) {
  return head_size == 32 || head_size == 64 || head_size == 128;
}

const char* MatModeName(MatMode mode) {
  switch (mode) {
    case MatMode::kF32:
      return "f32";
    case MatMode::kBF16:
      return "bf16";
    case MatMode::kBF16Split:
      return "bf16-split";
  }
  return "?";
}

int DeviceCount(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why != nullptr) *why = cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error
    return 0;
  }
  if (n == 0 && why != nullptr) *why = "the CUDA runtime reports 0 devices";
  return n;
}

std::string DeviceName(int device) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return "unknown";
  return p.name;
}

}  // namespace statestream::engine::cuda
