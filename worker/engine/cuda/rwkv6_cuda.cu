// SPDX-License-Identifier: Apache-2.0
// Rwkv6Runner: weights, scratch, cuBLAS and the per-chunk launch sequence of
// x060 (docs/cuda.md). The plumbing (lanes, products, graphs, the chunk loop)
// follows rwkv7_cuda.cu line for line; only the layer differs.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "worker/engine/cuda/batch_plan.h"
#include "worker/engine/cuda/cuda_kernels.cuh"
#include "worker/engine/cuda/host_util.cuh"
#include "worker/engine/cuda/rwkv6_cuda.h"
#include "worker/engine/cuda/rwkv6_kernels.cuh"

namespace statestream::engine::cuda {
namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr float kGroupNormEps = 64e-5f;
constexpr size_t kCublasWorkspace = 32u << 20;
constexpr int kVecs = static_cast<int>(Vec6::kCount);
constexpr int kMats = static_cast<int>(Mat6::kCount);

struct DevMat {
  int rows = 0, cols = 0;  // [out][in]
  float* f32 = nullptr;
  __nv_bfloat16* bf16 = nullptr;
  int64_t bytes() const {
    return static_cast<int64_t>(rows) * cols * (f32 != nullptr ? 4 : 2);
  }
};

// A product's input: fp32, or bf16 (plus the remainder in split mode).
struct In {
  const float* f32 = nullptr;
  const __nv_bfloat16* hi = nullptr;
  const __nv_bfloat16* lo = nullptr;
};

struct Layer {
  float* vec[kVecs] = {};
  DevMat mat[kMats];
  const float* v(Vec6 w) const { return vec[static_cast<int>(w)]; }
  const DevMat& m(Mat6 w) const { return mat[static_cast<int>(w)]; }
};

bool IsLarge(int m) { return m >= static_cast<int>(Mat6::kRecept); }

// Slots of activations that feed the large products.
enum Slot { kSlotR, kSlotK, kSlotV, kSlotG, kSlotF, kSlotCount };

class Rwkv6RunnerImpl final : public Rwkv6Runner {
 public:
  Rwkv6RunnerImpl(const Rwkv6Dims& d, const RunnerOptions& o) : d_(d), o_(o) {}
  ~Rwkv6RunnerImpl() override;

  bool Init(std::string* error);
  bool SetLayerVector(int layer, Vec6 which, const float* v,
                      std::string* error) override;
  bool SetLayerMatrix(int layer, Mat6 which, const HostMatrix& m,
                      std::string* error) override;
  bool SetGlobalVector(GlobalVec which, const float* v,
                       std::string* error) override;
  bool SetEmbedding(const HostMatrix& m, std::string* error) override;
  bool SetHead(const HostMatrix& m, std::string* error) override;
  bool Randomize(uint64_t seed, std::string* error) override;
  int64_t WeightBytesPerPass() const override;
  int64_t StateFloats() const override { return d_.StateFloats(); }
  float* AllocStates(int64_t count, std::string* error) override;
  void FreeStates(float* states) override { cudaFree(states); }
  float* AllocFloats(int64_t floats, std::string* error) override;
  bool Upload(float* dst, const float* src, int64_t floats,
              std::string* error) override;
  bool Download(float* dst, const float* src, int64_t floats,
                std::string* error) override;
  bool Forward(const SeqWork* seqs, int n, bool logits_on_host,
               std::string* error) override;
  bool Logits(const float* hidden, int rows, float* logits,
              std::string* error) override;
  const Rwkv6Dims& dims() const override { return d_; }

 private:
  template <typename T>
  bool Alloc(T** p, int64_t count, std::string* error) {
    SS_CUDA(cudaMalloc(reinterpret_cast<void**>(p), sizeof(T) * count));
    ptrs_.push_back(*p);
    return true;
  }
  bool AllocMat(DevMat* m, int rows, int cols, bool bf16, std::string* error);
  bool CopyMat(DevMat* m, const HostMatrix& h, std::string* error);
  cublasComputeType_t F32Compute() const;
  // On lane `lane` (0 = the main stream, 1..kSideLanes its side streams).
  bool Gemm(int lane, const DevMat& w, const In& x, int rows, float* y,
            float beta, std::string* error);
  // The five time_maa_w2 products at once: mf[f] = m[:, f] . w2[f]^T.
  bool MixLoraGemm(const DevMat& w2, int rows, std::string* error);
  bool Fork(std::string* error);
  bool Join(std::string* error);
  bool TimeMix(int l, int rows, int segs, const RowTables& tab,
               std::string* error);
  bool ChannelMix(int l, int rows, const RowTables& tab, std::string* error);
  bool RunChunk(int rows, int segs, int logit_rows, std::string* error);
  bool RunChunkGraph(int rows, int segs, int logit_rows, std::string* error);
  ActOut Out(Slot s) const;
  In Input(Slot s) const;
  bool bf16() const { return o_.mode != MatMode::kF32; }
  int64_t Stride() const {
    return 2 * int64_t{d_.n_embd} +
           static_cast<int64_t>(d_.n_head) * d_.head_size * d_.head_size;
  }

  Rwkv6Dims d_;
  RunnerOptions o_;
  static constexpr int kSideLanes = 3;
  static constexpr int kLanes = kSideLanes + 1;
  cudaStream_t stream_ = nullptr;  // == lanes_[0]
  cudaStream_t lanes_[kLanes] = {};
  cublasHandle_t blas_[kLanes] = {};  // one per lane: workspaces differ
  void* workspace_[kLanes] = {};
  cudaEvent_t fork_ = nullptr;
  cudaEvent_t join_[kLanes] = {};
  std::vector<void*> ptrs_;  // every cudaMalloc of weights and scratch

  std::vector<Layer> layers_;
  float* gvec_[kGlobalVecCount] = {};
  DevMat emb_, head_;

  // Scratch, [max_rows][width]; mf_ is [5][max_rows][C].
  float *x_, *xa_, *d_buf_, *xxx_, *xw_, *xr_, *xk_, *xv_, *xg_, *r_, *k_, *v_,
      *g_, *wl_, *y_, *ffr_, *kv_, *ffk_, *mix_, *mf_, *lora_, *logits_;
  float* ffn_ = nullptr;  // fp32 mode only
  __nv_bfloat16* hi_[kSlotCount] = {};
  __nv_bfloat16* lo_[kSlotCount] = {};
  int32_t* meta_ = nullptr;       // device, 7 * max_rows
  int32_t* meta_host_ = nullptr;  // pinned
  StateTable states_;
  ChunkGraphs graphs_;
};

Rwkv6RunnerImpl::~Rwkv6RunnerImpl() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (void* p : ptrs_) cudaFree(p);
  cudaFreeHost(meta_host_);
  for (int i = 0; i < kLanes; ++i) {
    cudaFree(workspace_[i]);
    if (blas_[i] != nullptr) cublasDestroy(blas_[i]);
    if (lanes_[i] != nullptr) cudaStreamDestroy(lanes_[i]);
    if (join_[i] != nullptr) cudaEventDestroy(join_[i]);
  }
  if (fork_ != nullptr) cudaEventDestroy(fork_);
}

bool Rwkv6RunnerImpl::AllocMat(DevMat* m, int rows, int cols, bool bf16,
                               std::string* error) {
  m->rows = rows;
  m->cols = cols;
  const int64_t n = static_cast<int64_t>(rows) * cols;
  return bf16 ? Alloc(&m->bf16, n, error) : Alloc(&m->f32, n, error);
}

bool Rwkv6RunnerImpl::Init(std::string* error) {
  SS_CUDA(cudaSetDevice(o_.device));
  for (int i = 0; i < kLanes; ++i) {
    SS_CUDA(cudaStreamCreateWithFlags(&lanes_[i], cudaStreamNonBlocking));
    SS_CUDA(cudaEventCreateWithFlags(&join_[i], cudaEventDisableTiming));
    SS_CUBLAS(cublasCreate(&blas_[i]));
    SS_CUBLAS(cublasSetStream(blas_[i], lanes_[i]));
    SS_CUDA(cudaMalloc(&workspace_[i], kCublasWorkspace));
    SS_CUBLAS(cublasSetWorkspace(blas_[i], workspace_[i], kCublasWorkspace));
    // TF32 only where a compute type asks for it (never for fp32 mode).
    SS_CUBLAS(cublasSetMathMode(blas_[i], CUBLAS_DEFAULT_MATH));
  }
  SS_CUDA(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
  stream_ = lanes_[0];

  const int C = d_.n_embd, F = d_.dim_ffn, V = d_.vocab_size;
  const int dm = d_.d_mix, dd = d_.d_decay;
  // [out][in] of each Mat6, in enum order.
  const int shapes[kMats][2] = {{kMixes6 * dm, C},
                                {kMixes6 * C, dm},
                                {dd, C},
                                {C, dd},
                                {C, C},
                                {C, C},
                                {C, C},
                                {C, C},
                                {C, C},
                                {F, C},
                                {C, C},
                                {C, F}};
  layers_.resize(d_.n_layer);
  for (Layer& L : layers_) {
    for (float*& v : L.vec) {
      if (!Alloc(&v, C, error)) return false;
    }
    for (int m = 0; m < kMats; ++m) {
      if (!AllocMat(&L.mat[m], shapes[m][0], shapes[m][1], IsLarge(m) && bf16(),
                    error)) {
        return false;
      }
    }
  }
  for (auto& g : gvec_) {
    if (!Alloc(&g, C, error)) return false;
  }
  if (!AllocMat(&head_, V, C, bf16(), error)) return false;

  const int64_t T = o_.max_rows;
  for (float** p : {&x_, &xa_, &d_buf_, &xxx_, &xw_, &xr_, &xk_, &xv_, &xg_,
                    &r_, &k_, &v_, &g_, &wl_, &y_, &ffr_, &kv_}) {
    if (!Alloc(p, T * C, error)) return false;
  }
  if (!Alloc(&mf_, kMixes6 * T * C, error) ||
      !Alloc(&mix_, T * kMixes6 * dm, error) || !Alloc(&lora_, T * dd, error) ||
      !Alloc(&ffk_, T * F, error) || (!bf16() && !Alloc(&ffn_, T * F, error)) ||
      !Alloc(&logits_, T * V, error) || !Alloc(&meta_, 7 * T, error)) {
    return false;
  }
  if (bf16()) {
    for (int s = 0; s < kSlotCount; ++s) {
      const int64_t width = s == kSlotF ? F : C;
      if (!Alloc(&hi_[s], T * width, error)) return false;
      if (o_.mode == MatMode::kBF16Split && !Alloc(&lo_[s], T * width, error)) {
        return false;
      }
    }
  }
  SS_CUDA(cudaMallocHost(&meta_host_, sizeof(int32_t) * 7 * T));
  return true;
}

bool Rwkv6RunnerImpl::SetLayerVector(int layer, Vec6 which, const float* v,
                                     std::string* error) {
  SS_CUDA(cudaMemcpy(layers_[layer].vec[static_cast<int>(which)], v,
                     sizeof(float) * d_.n_embd, cudaMemcpyHostToDevice));
  return true;
}

bool Rwkv6RunnerImpl::CopyMat(DevMat* m, const HostMatrix& h,
                              std::string* error) {
  if (h.rows != m->rows || h.cols != m->cols) {
    *error = "matrix shape mismatch";
    return false;
  }
  const int64_t n = static_cast<int64_t>(h.rows) * h.cols;
  if (m->f32 != nullptr && h.f32 != nullptr) {
    SS_CUDA(cudaMemcpy(m->f32, h.f32, 4 * n, cudaMemcpyHostToDevice));
  } else if (m->bf16 != nullptr && h.bf16 != nullptr) {
    SS_CUDA(cudaMemcpy(m->bf16, h.bf16, 2 * n, cudaMemcpyHostToDevice));
  } else if (m->f32 != nullptr) {  // bf16 -> fp32, exact
    std::vector<float> tmp(n);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(h.bf16[i]) << 16;
      std::memcpy(&tmp[i], &u, 4);
    }
    SS_CUDA(cudaMemcpy(m->f32, tmp.data(), 4 * n, cudaMemcpyHostToDevice));
  } else {  // fp32 -> bf16 on the device
    float* tmp = nullptr;
    SS_CUDA(cudaMalloc(&tmp, 4 * n));
    const cudaError_t e = cudaMemcpy(tmp, h.f32, 4 * n, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) LaunchToBF16(tmp, m->bf16, n, stream_);
    cudaStreamSynchronize(stream_);
    cudaFree(tmp);
    SS_CUDA(e);
  }
  return true;
}

bool Rwkv6RunnerImpl::SetLayerMatrix(int layer, Mat6 which, const HostMatrix& m,
                                     std::string* error) {
  return CopyMat(&layers_[layer].mat[static_cast<int>(which)], m, error);
}

bool Rwkv6RunnerImpl::SetGlobalVector(GlobalVec which, const float* v,
                                      std::string* error) {
  SS_CUDA(cudaMemcpy(gvec_[which], v, sizeof(float) * d_.n_embd,
                     cudaMemcpyHostToDevice));
  return true;
}

bool Rwkv6RunnerImpl::SetEmbedding(const HostMatrix& m, std::string* error) {
  // The embedding is read one row per token: kept as given.
  if (emb_.rows != 0) {
    *error = "embedding already set";
    return false;
  }
  return AllocMat(&emb_, m.rows, m.cols, m.bf16 != nullptr, error) &&
         CopyMat(&emb_, m, error);
}

bool Rwkv6RunnerImpl::SetHead(const HostMatrix& m, std::string* error) {
  return CopyMat(&head_, m, error);
}

bool Rwkv6RunnerImpl::Randomize(uint64_t seed, std::string* error) {
  const float mc = 1.0f / sqrtf(d_.n_embd), mf = 1.0f / sqrtf(d_.dim_ffn);
  uint64_t s = seed * 1000003;
  auto fill = [&](float* f32, __nv_bfloat16* bf16, int64_t n, float lo,
                  float hi) {
    LaunchFillUniform(f32, bf16, n, lo, hi, ++s, stream_);
  };
  // The scales of random_model.cc's x060.
  const float vlo[kVecs] = {0.8f, -0.1f, 0.8f, -0.1f, 0,    0,     0, 0,
                            0,    0,     -4,   -0.5f, 0.8f, -0.1f, 0, 0};
  const float vhi[kVecs] = {1.2f, 0.1f, 1.2f,  0.1f, 1,    1,    1, 1,
                            1,    1,    -0.4f, 0.5f, 1.2f, 0.1f, 1, 1};
  const float mhi[kMats] = {mc, 0.3f, mc, 0.3f, mc, mc, mc, mc, mc, mc, mc, mf};
  for (Layer& L : layers_) {
    for (int v = 0; v < kVecs; ++v)
      fill(L.vec[v], nullptr, d_.n_embd, vlo[v], vhi[v]);
    for (int m = 0; m < kMats; ++m) {
      const DevMat& dm = L.mat[m];
      fill(dm.f32, dm.bf16, static_cast<int64_t>(dm.rows) * dm.cols, -mhi[m],
           mhi[m]);
    }
  }
  fill(gvec_[kLn0W], nullptr, d_.n_embd, 0.8f, 1.2f);
  fill(gvec_[kLn0B], nullptr, d_.n_embd, -0.1f, 0.1f);
  fill(gvec_[kLnOutW], nullptr, d_.n_embd, 0.8f, 1.2f);
  fill(gvec_[kLnOutB], nullptr, d_.n_embd, -0.1f, 0.1f);
  if (emb_.rows == 0 &&
      !AllocMat(&emb_, d_.vocab_size, d_.n_embd, bf16(), error)) {
    return false;
  }
  fill(emb_.f32, emb_.bf16, static_cast<int64_t>(emb_.rows) * emb_.cols, -1, 1);
  fill(head_.f32, head_.bf16, static_cast<int64_t>(head_.rows) * head_.cols,
       -mc, mc);
  SS_CUDA(cudaGetLastError());
  SS_CUDA(cudaStreamSynchronize(stream_));
  return true;
}

int64_t Rwkv6RunnerImpl::WeightBytesPerPass() const {
  int64_t b = head_.bytes();
  for (const Layer& L : layers_) {
    for (const DevMat& m : L.mat) b += m.bytes();
    b += static_cast<int64_t>(kVecs) * 4 * d_.n_embd;
  }
  return b;
}

float* Rwkv6RunnerImpl::AllocStates(int64_t count, std::string* error) {
  return AllocFloats(count * d_.StateFloats(), error);
}

float* Rwkv6RunnerImpl::AllocFloats(int64_t floats, std::string* error) {
  float* p = nullptr;
  const size_t bytes = sizeof(float) * floats;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaSuccess) e = cudaMemset(p, 0, bytes);
  // The memset runs on the legacy default stream, which the runner's
  // non-blocking stream (where the uploads go) does not wait for.
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    *error = std::string("state memory: ") + cudaGetErrorString(e);
    cudaFree(p);
    return nullptr;
  }
  return p;
}

bool Rwkv6RunnerImpl::Upload(float* dst, const float* src, int64_t floats,
                             std::string* error) {
  // On the runner's stream: a cudaMemcpy goes on the legacy default
  // stream, which the runner's non-blocking stream does not wait for, and
  // from pageable memory it may return before the data lands (a kernel
  // could read the slot's previous session). Pageable memory is staged
  // before this returns, so `src` may be reused at once.
  SS_CUDA(
      cudaMemcpyAsync(dst, src, 4 * floats, cudaMemcpyHostToDevice, stream_));
  return true;
}

bool Rwkv6RunnerImpl::Download(float* dst, const float* src, int64_t floats,
                               std::string* error) {
  SS_CUDA(
      cudaMemcpyAsync(dst, src, 4 * floats, cudaMemcpyDeviceToHost, stream_));
  SS_CUDA(cudaStreamSynchronize(stream_));
  return true;
}

ActOut Rwkv6RunnerImpl::Out(Slot s) const {
  ActOut o;
  if (!bf16()) {
    float* f32[kSlotCount] = {xr_, xk_, xv_, xg_, ffn_};
    o.f32 = f32[s];
  } else {
    o.hi = hi_[s];
    o.lo = lo_[s];
  }
  return o;
}

In Rwkv6RunnerImpl::Input(Slot s) const {
  const ActOut o = Out(s);
  return In{o.f32, o.hi, o.lo};
}

bool Rwkv6RunnerImpl::Fork(std::string* error) {
  SS_CUDA(cudaEventRecord(fork_, stream_));
  for (int i = 1; i < kLanes; ++i) {
    SS_CUDA(cudaStreamWaitEvent(lanes_[i], fork_, 0));
  }
  return true;
}

bool Rwkv6RunnerImpl::Join(std::string* error) {
  for (int i = 1; i < kLanes; ++i) {
    SS_CUDA(cudaEventRecord(join_[i], lanes_[i]));
    SS_CUDA(cudaStreamWaitEvent(stream_, join_[i], 0));
  }
  return true;
}

cublasComputeType_t Rwkv6RunnerImpl::F32Compute() const {
  // fp32 matrices: exact fp32 products, except the LoRA factors in bf16
  // mode, which may use TF32 tensor cores (more precise than the bf16
  // activations of that mode).
  return o_.mode == MatMode::kBF16 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                   : CUBLAS_COMPUTE_32F;
}

bool Rwkv6RunnerImpl::Gemm(int lane, const DevMat& w, const In& x, int rows,
                           float* y, float beta, std::string* error) {
  const float one = 1.0f;
  cublasHandle_t blas = blas_[lane];
  // Row-major y[rows][out] = x[rows][in] . w[out][in]^T is, column-major,
  // y^T = w^T(as stored) x^T: op(A) = T on w, op(B) = N on x.
  if (w.f32 != nullptr) {
    SS_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, rows, w.cols,
                           &one, w.f32, CUDA_R_32F, w.cols, x.f32, CUDA_R_32F,
                           w.cols, &beta, y, CUDA_R_32F, w.rows, F32Compute(),
                           CUBLAS_GEMM_DEFAULT));
    return true;
  }
  SS_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, rows, w.cols,
                         &one, w.bf16, CUDA_R_16BF, w.cols, x.hi, CUDA_R_16BF,
                         w.cols, &beta, y, CUDA_R_32F, w.rows,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (x.lo != nullptr) {
    SS_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, rows, w.cols,
                           &one, w.bf16, CUDA_R_16BF, w.cols, x.lo, CUDA_R_16BF,
                           w.cols, &one, y, CUDA_R_32F, w.rows,
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  return true;
}

bool Rwkv6RunnerImpl::MixLoraGemm(const DevMat& w2, int rows,
                                  std::string* error) {
  // Batch f: A = w2 rows [f*C, (f+1)*C) ([C][dm]), B = columns
  // [f*dm, (f+1)*dm) of mix_ (row stride 5*dm), C = plane f of mf_.
  const float one = 1.0f, zero = 0.0f;
  const int C = d_.n_embd, dm = d_.d_mix;
  SS_CUBLAS(cublasGemmStridedBatchedEx(
      blas_[0], CUBLAS_OP_T, CUBLAS_OP_N, C, rows, dm, &one, w2.f32, CUDA_R_32F,
      dm, static_cast<long long>(C) * dm, mix_, CUDA_R_32F, kMixes6 * dm, dm,
      &zero, mf_, CUDA_R_32F, C, static_cast<long long>(rows) * C, kMixes6,
      F32Compute(), CUBLAS_GEMM_DEFAULT));
  return true;
}

bool Rwkv6RunnerImpl::TimeMix(int l, int T, int S, const RowTables& tab,
                              std::string* error) {
  const int C = d_.n_embd, H = d_.n_head, N = d_.head_size;
  const Layer& L = layers_[l];
  const int64_t att = l * Stride(), wkv = att + C;
  cudaStream_t st = stream_;
  LaunchLayerNorm(x_, nullptr, nullptr, T, C, L.v(Vec6::kLn1W),
                  L.v(Vec6::kLn1B), kLayerNormEps, ActOut{xa_}, st);
  LaunchShift6(xa_, T, C, tab, states_.device(), att, L.v(Vec6::kMaaX), d_buf_,
               xxx_, st);
  // m = tanh(xxx . maa_w1), then x_f = xa + d * (maa_f + m_f . maa_w2[f]).
  if (!Gemm(0, L.m(Mat6::kMaaW1), In{xxx_}, T, mix_, 0, error)) return false;
  LaunchActivation(mix_, static_cast<int64_t>(T) * kMixes6 * d_.d_mix,
                   Act::kTanh, st);
  if (!MixLoraGemm(L.m(Mat6::kMaaW2), T, error)) return false;
  Mix6 mix;
  const ActOut outs[kMixes6] = {ActOut{xw_}, Out(kSlotK), Out(kSlotV),
                                Out(kSlotR), Out(kSlotG)};
  for (int f = 0; f < kMixes6; ++f) {
    mix.maa[f] = L.vec[static_cast<int>(Vec6::kMaaW) + f];
    mix.out[f] = outs[f];
  }
  LaunchMix6(xa_, d_buf_, mf_, T, C, mix, st);
  // Independent products on four lanes: r, k | v | decay LoRA | gate.
  if (!Fork(error) ||
      !Gemm(0, L.m(Mat6::kRecept), Input(kSlotR), T, r_, 0, error) ||
      !Gemm(0, L.m(Mat6::kKey), Input(kSlotK), T, k_, 0, error) ||
      !Gemm(1, L.m(Mat6::kValue), Input(kSlotV), T, v_, 0, error) ||
      !Gemm(2, L.m(Mat6::kDecayW1), In{xw_}, T, lora_, 0, error)) {
    return false;
  }
  LaunchActivation(lora_, static_cast<int64_t>(T) * d_.d_decay, Act::kTanh,
                   lanes_[2]);
  if (!Gemm(2, L.m(Mat6::kDecayW2), In{lora_}, T, wl_, 0, error) ||
      !Gemm(3, L.m(Mat6::kGate), Input(kSlotG), T, g_, 0, error) ||
      !Join(error)) {
    return false;
  }
  const Wkv6Args wa{r_, k_, v_, wl_, L.v(Vec6::kDecay), L.v(Vec6::kBonus), y_};
  LaunchWkv6(S, C, H, N, tab, states_.device(), wkv, wa, st);
  const Post6Args post{
      y_, g_, L.v(Vec6::kLnxW), L.v(Vec6::kLnxB), xa_, kGroupNormEps, att};
  LaunchPost6(T, C, H, N, tab, states_.device(), post, Out(kSlotR), st);
  return Gemm(0, L.m(Mat6::kOutput), Input(kSlotR), T, x_, 1, error);
}

bool Rwkv6RunnerImpl::ChannelMix(int l, int T, const RowTables& tab,
                                 std::string* error) {
  const int C = d_.n_embd, F = d_.dim_ffn;
  const Layer& L = layers_[l];
  const int64_t ffn = (l + 1) * Stride() - C;
  cudaStream_t st = stream_;
  LaunchLayerNorm(x_, nullptr, nullptr, T, C, L.v(Vec6::kLn2W),
                  L.v(Vec6::kLn2B), kLayerNormEps, ActOut{xa_}, st);
  ShiftMix mix;
  mix.n = 2;
  mix.param[0] = L.v(Vec6::kFfnMaaK);
  mix.out[0] = Out(kSlotK);
  mix.param[1] = L.v(Vec6::kFfnMaaR);
  mix.out[1] = Out(kSlotR);
  LaunchShiftMix(xa_, T, C, tab, states_.device(), ffn, mix, st);
  // sigmoid(W_r x_r) on a side lane while the key/value pair runs.
  if (!Fork(error) ||
      !Gemm(1, L.m(Mat6::kFfnRecept), Input(kSlotR), T, ffr_, 0, error) ||
      !Gemm(0, L.m(Mat6::kFfnKey), Input(kSlotK), T, ffk_, 0, error)) {
    return false;
  }
  LaunchReluSq(ffk_, T, F, C, tab, states_.device(), xa_, ffn, Out(kSlotF), st);
  if (!Gemm(0, L.m(Mat6::kFfnValue), Input(kSlotF), T, kv_, 0, error) ||
      !Join(error)) {
    return false;
  }
  LaunchGatedAdd(x_, ffr_, kv_, static_cast<int64_t>(T) * C, st);
  return true;
}

bool Rwkv6RunnerImpl::RunChunk(int T, int S, int nl, std::string* error) {
  const int C = d_.n_embd;
  RowTables tab{meta_,
                meta_ + T,
                meta_ + 2 * T,
                meta_ + 3 * T,
                meta_ + 3 * T + S,
                meta_ + 3 * T + 2 * S,
                meta_ + 3 * T + 3 * S};
  LaunchLayerNorm(emb_.f32, emb_.bf16, tab.tokens, T, C, gvec_[kLn0W],
                  gvec_[kLn0B], kLayerNormEps, ActOut{x_}, stream_);
  for (int l = 0; l < d_.n_layer; ++l) {
    if (!TimeMix(l, T, S, tab, error) || !ChannelMix(l, T, tab, error)) {
      return false;
    }
  }
  if (nl > 0) {
    LaunchLayerNorm(x_, nullptr, tab.logit_rows, nl, C, gvec_[kLnOutW],
                    gvec_[kLnOutB], kLayerNormEps, Out(kSlotR), stream_);
    if (!Gemm(0, head_, Input(kSlotR), nl, logits_, 0, error)) return false;
  }
  SS_CUDA(cudaGetLastError());
  return true;
}

bool Rwkv6RunnerImpl::RunChunkGraph(int T, int S, int nl, std::string* error) {
  return graphs_.Launch(
      stream_, {T, S, nl},
      [&](std::string* e) { return RunChunk(T, S, nl, e); }, error);
}

bool Rwkv6RunnerImpl::Forward(const SeqWork* seqs, int n, bool logits_on_host,
                              std::string* error) {
  if (!states_.Upload(seqs, n, stream_, graphs_, error)) return false;
  std::vector<PlanInput> plan(n);
  for (int i = 0; i < n; ++i) {
    plan[i] = {seqs[i].tokens, seqs[i].n_tokens, seqs[i].positions,
               seqs[i].n_positions};
  }
  const int64_t V = d_.vocab_size, C = d_.n_embd;
  const cudaMemcpyKind out_kind =
      logits_on_host ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
  std::vector<int64_t> done(n, 0);  // tokens of each sequence run so far
  for (const Chunk& chunk : PlanChunks(plan, o_.max_rows)) {
    const std::vector<int32_t> packed = chunk.Pack();
    std::memcpy(meta_host_, packed.data(), sizeof(int32_t) * packed.size());
    SS_CUDA(cudaMemcpyAsync(meta_, meta_host_, sizeof(int32_t) * packed.size(),
                            cudaMemcpyHostToDevice, stream_));
    const int nl = static_cast<int>(chunk.logits.size());
    const bool ok =
        o_.graphs ? RunChunkGraph(chunk.rows(), chunk.segments(), nl, error)
                  : RunChunk(chunk.rows(), chunk.segments(), nl, error);
    if (!ok) return false;
    // One copy per run of rows whose destinations are adjacent.
    for (int j = 0; j < nl;) {
      const LogitRow& lr = chunk.logits[j];
      float* dst = seqs[lr.seq].logits + lr.index * V;
      int run = 1;
      while (j + run < nl) {
        const LogitRow& nx = chunk.logits[j + run];
        if (seqs[nx.seq].logits + nx.index * V != dst + run * V) break;
        ++run;
      }
      SS_CUDA(cudaMemcpyAsync(dst, logits_ + j * V, sizeof(float) * V * run,
                              out_kind, stream_));
      j += run;
    }
    for (int g = 0; g < chunk.segments(); ++g) {
      const int q = chunk.seg_slot[g];
      done[q] += chunk.seg_end[g] - chunk.seg_begin[g];
      if (seqs[q].last_hidden != nullptr && done[q] == seqs[q].n_tokens) {
        SS_CUDA(cudaMemcpyAsync(seqs[q].last_hidden,
                                x_ + (chunk.seg_end[g] - 1) * C,
                                sizeof(float) * C, out_kind, stream_));
      }
    }
    // The pinned tables are reused by the next chunk.
    SS_CUDA(cudaStreamSynchronize(stream_));
  }
  SS_CUDA(cudaStreamSynchronize(stream_));
  return true;
}

bool Rwkv6RunnerImpl::Logits(const float* hidden, int rows, float* logits,
                             std::string* error) {
  const int64_t C = d_.n_embd, V = d_.vocab_size;
  for (int begin = 0; begin < rows; begin += o_.max_rows) {
    const int n = std::min(rows - begin, o_.max_rows);
    SS_CUDA(cudaMemcpyAsync(x_, hidden + begin * C, sizeof(float) * n * C,
                            cudaMemcpyHostToDevice, stream_));
    LaunchLayerNorm(x_, nullptr, nullptr, n, C, gvec_[kLnOutW], gvec_[kLnOutB],
                    kLayerNormEps, Out(kSlotR), stream_);
    if (!Gemm(0, head_, Input(kSlotR), n, logits_, 0, error)) return false;
    SS_CUDA(cudaMemcpyAsync(logits + begin * V, logits_, sizeof(float) * n * V,
                            cudaMemcpyDeviceToHost, stream_));
    SS_CUDA(cudaStreamSynchronize(stream_));
  }
  return true;
}

}  // namespace

std::unique_ptr<Rwkv6Runner> Rwkv6Runner::Create(const Rwkv6Dims& dims,
                                                 const RunnerOptions& options,
                                                 std::string* error) {
  if (!HeadSizeSupported(dims.head_size)) {
    *error = "head size " + std::to_string(dims.head_size) +
             " is not supported by the CUDA kernels (32, 64 or 128)";
    return nullptr;
  }
  if (dims.d_mix <= 0 || dims.d_decay <= 0) {
    *error = "x060 LoRA ranks must be positive";
    return nullptr;
  }
  auto r = std::make_unique<Rwkv6RunnerImpl>(dims, options);
  if (!r->Init(error)) return nullptr;
  return r;
}

}  // namespace statestream::engine::cuda
