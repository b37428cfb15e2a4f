// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/cuda/cuda_kernels.cuh"
#include "worker/engine/cuda/device_util.cuh"

namespace statestream::engine::cuda {
namespace {

constexpr float kExpMinusHalf = 0.60653065971263342f;  // e^-0.5

template <typename In>
__global__ void LayerNormKernel(const In* in, const int32_t* map, int c,
                                const float* w, const float* b, float eps,
                                ActOut out) {
  __shared__ float sh[32];
  const int t = blockIdx.x;
  const int64_t src = static_cast<int64_t>(map != nullptr ? map[t] : t) * c;
  const int64_t dst = static_cast<int64_t>(t) * c;
  float s = 0;
  for (int i = threadIdx.x; i < c; i += blockDim.x) s += Load(in, src + i);
  const float mean = BlockSum(s, sh) / c;
  float q = 0;
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    const float d = Load(in, src + i) - mean;
    q += d * d;
  }
  const float inv = 1.0f / sqrtf(BlockSum(q, sh) / c + eps);
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    Put(out, dst + i, (Load(in, src + i) - mean) * inv * w[i] + b[i]);
  }
}

__global__ void ShiftMixKernel(const float* xa, int c, RowTables tab,
                               float* const* states, int64_t shift_offset,
                               ShiftMix mix) {
  const int t = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= c) return;
  const int64_t o = static_cast<int64_t>(t) * c + i;
  const float cur = xa[o];
  const float prev = (tab.flags[t] & 1) != 0
                         ? states[tab.slot[t]][shift_offset + i]
                         : xa[o - c];
  const float d = prev - cur;
  for (int k = 0; k < mix.n; ++k) Put(mix.out[k], o, cur + d * mix.param[k][i]);
}

__global__ void ActivationKernel(float* x, int64_t n, Act act) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  x[i] = act == Act::kTanh ? tanhf(x[i]) : Sigmoid(x[i]);
}

// grid (H, rows), block N.
__global__ void PrepKernel(int c, int n, PrepArgs p) {
  __shared__ float sh[32];
  const int h = blockIdx.x, t = blockIdx.y;
  const int ch = h * n + threadIdx.x;
  const int64_t o = static_cast<int64_t>(t) * c + ch;
  p.w[o] = expf(-kExpMinusHalf * Sigmoid(p.w0[ch] + p.w[o]));
  const float a = Sigmoid(p.a0[ch] + p.a[o]);
  float v = p.v[o];
  if (p.first_layer) {
    p.v_first[o] = v;
  } else {
    const float gate = Sigmoid(p.v0[ch] + p.vl[o]);
    v = v + (p.v_first[o] - v) * gate;
    p.v[o] = v;
  }
  const float k = p.k[o];
  float kk = k * p.k_k[ch];
  const float norm = sqrtf(BlockSum(kk * kk, sh));
  kk *= 1.0f / fmaxf(norm, 1e-12f);
  p.k[o] = k * (1.0f + (a - 1.0f) * p.k_a[ch]);
  p.nkk[o] = -kk;
  p.kka[o] = kk * a;
}

// One block per (head, segment), N threads; thread i owns state row i (value
// channel i) in registers. Inputs for kSteps tokens at a time are staged in
// shared memory, so the inner loop has no barriers.
template <int N>
__global__ void __launch_bounds__(N)
    Wkv7Kernel(int c, RowTables tab, float* const* states, int64_t wkv_offset,
               const float* r, const float* w, const float* k, const float* v,
               const float* nkk, const float* kka, float* y) {
  constexpr int kSteps = 2048 / N;
  __shared__ float sh[kSteps][5][N];
  const int h = blockIdx.x, seg = blockIdx.y, i = threadIdx.x;
  const int begin = tab.seg_begin[seg], end = tab.seg_end[seg];
  float* row = states[tab.seg_slot[seg]] + wkv_offset +
               (static_cast<int64_t>(h) * N + i) * N;
  float s[N];
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    const float4 q = *reinterpret_cast<const float4*>(row + j);
    s[j] = q.x;
    s[j + 1] = q.y;
    s[j + 2] = q.z;
    s[j + 3] = q.w;
  }
  for (int t0 = begin; t0 < end; t0 += kSteps) {
    const int steps = min(kSteps, end - t0);
    for (int q = 0; q < steps; ++q) {
      const int64_t o = static_cast<int64_t>(t0 + q) * c + h * N + i;
      sh[q][0][i] = r[o];
      sh[q][1][i] = w[o];
      sh[q][2][i] = k[o];
      sh[q][3][i] = nkk[o];
      sh[q][4][i] = kka[o];
    }
    __syncthreads();
    for (int q = 0; q < steps; ++q) {
      const int64_t o = static_cast<int64_t>(t0 + q) * c + h * N + i;
      const float vi = v[o];
      // Four partial sums: shorter dependency chains.
      float sa4[4] = {0, 0, 0, 0};
#pragma unroll
      for (int j = 0; j < N; ++j)
        sa4[j & 3] = fmaf(s[j], sh[q][3][j], sa4[j & 3]);
      const float sa = (sa4[0] + sa4[1]) + (sa4[2] + sa4[3]);
      float out4[4] = {0, 0, 0, 0};
#pragma unroll
      for (int j = 0; j < N; ++j) {
        float x = s[j] * sh[q][1][j];
        x = fmaf(sa, sh[q][4][j], x);
        x = fmaf(vi, sh[q][2][j], x);
        s[j] = x;
        out4[j & 3] = fmaf(x, sh[q][0][j], out4[j & 3]);
      }
      y[o] = (out4[0] + out4[1]) + (out4[2] + out4[3]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    *reinterpret_cast<float4*>(row + j) =
        make_float4(s[j], s[j + 1], s[j + 2], s[j + 3]);
  }
}

// grid (H, rows), block N.
__global__ void PostKernel(int c, int n, RowTables tab, float* const* states,
                           PostArgs p, ActOut out) {
  __shared__ float sh[32];
  const int h = blockIdx.x, t = blockIdx.y;
  const int ch = h * n + threadIdx.x;
  const int64_t o = static_cast<int64_t>(t) * c + ch;
  float yn = GroupNormLane(p.y[o], n, p.eps, p.lnx_w, p.lnx_b, ch, sh);
  const float dot = BlockSum(p.r[o] * p.k[o] * p.r_k[ch], sh);
  yn += dot * p.v[o];
  Put(out, o, yn * p.g[o]);
  if ((tab.flags[t] & 2) != 0) {
    states[tab.slot[t]][p.shift_offset + ch] = p.xa[o];
  }
}

__global__ void ReluSqKernel(const float* x, int f, int c, RowTables tab,
                             float* const* states, const float* xa,
                             int64_t shift_offset, ActOut out) {
  const int t = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < f) {
    const int64_t o = static_cast<int64_t>(t) * f + i;
    // relu keeps a NaN a NaN, as the reference and the CPU (fmaxf would
    // make it 0).
    const float r = x[o] > 0.0f || x[o] != x[o] ? x[o] : 0.0f;
    Put(out, o, r * r);
  }
  if (i < c && (tab.flags[t] & 2) != 0) {
    states[tab.slot[t]][shift_offset + i] = xa[static_cast<int64_t>(t) * c + i];
  }
}

__device__ __forceinline__ uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void FillUniformKernel(float* f32, __nv_bfloat16* bf16, int64_t n,
                                  float lo, float hi, uint64_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    const uint64_t z = Mix64(seed * 0x9e3779b97f4a7c15ull + i);
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
    const float v = lo + (hi - lo) * u;
    if (f32 != nullptr) f32[i] = v;
    if (bf16 != nullptr) bf16[i] = __float2bfloat16_rn(v);
  }
}

__global__ void ToBF16Kernel(const float* in, __nv_bfloat16* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(in[i]);
}

}  // namespace

void LaunchLayerNorm(const float* in_f32, const __nv_bfloat16* in_bf16,
                     const int32_t* map, int rows, int c, const float* w,
                     const float* b, float eps, ActOut out,
                     cudaStream_t stream) {
  if (rows == 0) return;
  if (in_f32 != nullptr) {
    LayerNormKernel<<<rows, 256, 0, stream>>>(in_f32, map, c, w, b, eps, out);
  } else {
    LayerNormKernel<<<rows, 256, 0, stream>>>(in_bf16, map, c, w, b, eps, out);
  }
}

void LaunchShiftMix(const float* xa, int rows, int c, RowTables tab,
                    float* const* states, int64_t shift_offset,
                    const ShiftMix& mix, cudaStream_t stream) {
  ShiftMixKernel<<<dim3(Blocks(c, 256), rows), 256, 0, stream>>>(
      xa, c, tab, states, shift_offset, mix);
}

void LaunchActivation(float* x, int64_t n, Act act, cudaStream_t stream) {
  if (n == 0) return;
  ActivationKernel<<<Blocks(n, 256), 256, 0, stream>>>(x, n, act);
}

void LaunchPrep(int rows, int c, int h, int n, const PrepArgs& args,
                cudaStream_t stream) {
  PrepKernel<<<dim3(h, rows), n, 0, stream>>>(c, n, args);
}

void LaunchWkv7(int segments, int c, int h, int n, RowTables tab,
                float* const* states, int64_t wkv_offset, const float* r,
                const float* w, const float* k, const float* v,
                const float* nkk, const float* kka, float* y,
                cudaStream_t stream) {
  const dim3 grid(h, segments);
  switch (n) {
    case 32:
      Wkv7Kernel<32><<<grid, 32, 0, stream>>>(c, tab, states, wkv_offset, r, w,
                                              k, v, nkk, kka, y);
      break;
    case 64:
      Wkv7Kernel<64><<<grid, 64, 0, stream>>>(c, tab, states, wkv_offset, r, w,
                                              k, v, nkk, kka, y);
      break;
    case 128:
      Wkv7Kernel<128><<<grid, 128, 0, stream>>>(c, tab, states, wkv_offset, r,
                                                w, k, v, nkk, kka, y);
      break;
  }
}

void LaunchPost(int rows, int c, int h, int n, RowTables tab,
                float* const* states, const PostArgs& args, ActOut out,
                cudaStream_t stream) {
  PostKernel<<<dim3(h, rows), n, 0, stream>>>(c, n, tab, states, args, out);
}

void LaunchReluSq(const float* x, int rows, int f, int c, RowTables tab,
                  float* const* states, const float* xa, int64_t shift_offset,
                  ActOut out, cudaStream_t stream) {
  const int width = f > c ? f : c;
  ReluSqKernel<<<dim3(Blocks(width, 256), rows), 256, 0, stream>>>(
      x, f, c, tab, states, xa, shift_offset, out);
}

void LaunchFillUniform(float* f32, __nv_bfloat16* bf16, int64_t n, float lo,
                       float hi, uint64_t seed, cudaStream_t stream) {
  if (n == 0) return;
  const int blocks =
      static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
  FillUniformKernel<<<blocks, 256, 0, stream>>>(f32, bf16, n, lo, hi, seed);
}

void LaunchToBF16(const float* in, __nv_bfloat16* out, int64_t n,
                  cudaStream_t stream) {
  if (n == 0) return;
  ToBF16Kernel<<<Blocks(n, 256), 256, 0, stream>>>(in, out, n);
}

}  // namespace statestream::engine::cuda
