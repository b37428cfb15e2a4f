// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/cuda/batch_plan.h"
#include "worker/engine/cuda/device_util.cuh"
#include "worker/engine/cuda/rwkv6_kernels.cuh"

namespace statestream::engine::cuda {
namespace {

__global__ void Shift6Kernel(const float* xa, int c, RowTables tab,
                             float* const* states, int64_t shift_offset,
                             const float* maa_x, float* d, float* xxx) {
  const int t = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= c) return;
  const int64_t o = static_cast<int64_t>(t) * c + i;
  const float cur = xa[o];
  const float prev = (tab.flags[t] & kRowFirst) != 0
                         ? states[tab.slot[t]][shift_offset + i]
                         : xa[o - c];
  const float di = prev - cur;
  d[o] = di;
  xxx[o] = cur + di * maa_x[i];
}

__global__ void Mix6Kernel(const float* xa, const float* d, const float* mf,
                           int64_t plane, int c, Mix6 mix) {
  const int t = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= c) return;
  const int64_t o = static_cast<int64_t>(t) * c + i;
  const float cur = xa[o], di = d[o];
#pragma unroll
  for (int f = 0; f < kMixes6; ++f) {
    Put(mix.out[f], o, cur + di * (mix.maa[f][i] + mf[f * plane + o]));
  }
}

// One block per (head, segment), N threads; thread j owns column j of the
// head's [key][value] matrix (value channel j) in registers. Loads and
// stores of a column are coalesced across the block (row i of the matrix is
// N consecutive floats). r, k and the decay of kSteps tokens at a time are
// staged in shared memory, so the token loop has no barriers. The bonus
// term sum_i r[i] u[i] k[i] v[j] is factored as v[j] times a per-token sum
// (staged as per-warp partial sums): u inside the loop would keep N more
// values live and spill at N = 128.
template <int N>
__global__ void __launch_bounds__(N)
    Wkv6Kernel(int c, RowTables tab, float* const* states, int64_t wkv_offset,
               Wkv6Args p) {
  constexpr int kSteps = 2048 / N;
  constexpr int kWarps = N / 32;
  __shared__ float sh[kSteps][3][N];
  __shared__ float bonus[kSteps][kWarps];
  const int h = blockIdx.x, seg = blockIdx.y, j = threadIdx.x;
  const int begin = tab.seg_begin[seg], end = tab.seg_end[seg];
  const int ch = h * N + j;
  float* mat =
      states[tab.seg_slot[seg]] + wkv_offset + static_cast<int64_t>(h) * N * N;
  float s[N];
#pragma unroll
  for (int i = 0; i < N; ++i) s[i] = mat[i * N + j];
  const float u = p.u[ch], decay = p.decay[ch];
  for (int t0 = begin; t0 < end; t0 += kSteps) {
    const int steps = min(kSteps, end - t0);
    for (int q = 0; q < steps; ++q) {
      const int64_t o = static_cast<int64_t>(t0 + q) * c + ch;
      const float r = p.r[o], k = p.k[o];
      sh[q][0][j] = r;
      sh[q][1][j] = k;
      sh[q][2][j] = expf(-expf(decay + p.w_lora[o]));
      const float part = WarpSum(r * u * k);
      if ((j & 31) == 0) bonus[q][j >> 5] = part;
    }
    __syncthreads();
    for (int q = 0; q < steps; ++q) {
      const int64_t o = static_cast<int64_t>(t0 + q) * c + ch;
      const float vj = p.v[o];
      float b = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) b += bonus[q][w];
      // y = r . s (the state before this token) + bonus; four partial
      // sums for shorter dependency chains.
      float y4[4] = {0, 0, 0, 0};
#pragma unroll
      for (int i = 0; i < N; ++i) {
        y4[i & 3] = fmaf(sh[q][0][i], s[i], y4[i & 3]);
        s[i] = fmaf(sh[q][2][i], s[i], sh[q][1][i] * vj);
      }
      p.y[o] = fmaf(vj, b, (y4[0] + y4[1]) + (y4[2] + y4[3]));
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < N; ++i) mat[i * N + j] = s[i];
}

// grid (H, rows), block N.
__global__ void Post6Kernel(int c, int n, RowTables tab, float* const* states,
                            Post6Args p, ActOut out) {
  __shared__ float sh[32];
  const int h = blockIdx.x, t = blockIdx.y;
  const int ch = h * n + threadIdx.x;
  const int64_t o = static_cast<int64_t>(t) * c + ch;
  const float yn = GroupNormLane(p.y[o], n, p.eps, p.lnx_w, p.lnx_b, ch, sh);
  const float g = p.g[o];
  Put(out, o, yn * (g * Sigmoid(g)));
  if ((tab.flags[t] & kRowLast) != 0) {
    states[tab.slot[t]][p.shift_offset + ch] = p.xa[o];
  }
}

__global__ void GatedAddKernel(float* x, const float* r, const float* kv,
                               int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += Sigmoid(r[i]) * kv[i];
}

}  // namespace

void LaunchShift6(const float* xa, int rows, int c, RowTables tab,
                  float* const* states, int64_t shift_offset,
                  const float* maa_x, float* d, float* xxx,
                  cudaStream_t stream) {
  Shift6Kernel<<<dim3(Blocks(c, 256), rows), 256, 0, stream>>>(
      xa, c, tab, states, shift_offset, maa_x, d, xxx);
}

void LaunchMix6(const float* xa, const float* d, const float* mf, int rows,
                int c, const Mix6& mix, cudaStream_t stream) {
  Mix6Kernel<<<dim3(Blocks(c, 256), rows), 256, 0, stream>>>(
      xa, d, mf, static_cast<int64_t>(rows) * c, c, mix);
}

void LaunchWkv6(int segments, int c, int h, int n, RowTables tab,
                float* const* states, int64_t wkv_offset, const Wkv6Args& args,
                cudaStream_t stream) {
  const dim3 grid(h, segments);
  switch (n) {
    case 32:
      Wkv6Kernel<32><<<grid, 32, 0, stream>>>(c, tab, states, wkv_offset, args);
      break;
    case 64:
      Wkv6Kernel<64><<<grid, 64, 0, stream>>>(c, tab, states, wkv_offset, args);
      break;
    case 128:
      Wkv6Kernel<128>
          <<<grid, 128, 0, stream>>>(c, tab, states, wkv_offset, args);
      break;
  }
}

void LaunchPost6(int rows, int c, int h, int n, RowTables tab,
                 float* const* states, const Post6Args& args, ActOut out,
                 cudaStream_t stream) {
  Post6Kernel<<<dim3(h, rows), n, 0, stream>>>(c, n, tab, states, args, out);
}

void LaunchGatedAdd(float* x, const float* r, const float* kv, int64_t n,
                    cudaStream_t stream) {
  if (n == 0) return;
  GatedAddKernel<<<Blocks(n, 256), 256, 0, stream>>>(x, r, kv, n);
}

}  // namespace statestream::engine::cuda
