// SPDX-License-Identifier: Apache-2.0
// Runner: weights, scratch, cuBLAS and the per-chunk launch sequence (see
// docs/cuda.md). One stream; a chunk's kernels are captured once per shape
// into a CUDA graph and replayed.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "worker/engine/cuda/batch_plan.h"
#include "worker/engine/cuda/cuda_kernels.cuh"
#include "worker/engine/cuda/host_util.cuh"
#include "worker/engine/cuda/rwkv7_cuda.h"

namespace statestream::engine::cuda {
namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr float kGroupNormEps = 64e-5f;
constexpr size_t kCublasWorkspace = 32u << 20;

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
  float* vec[kLayerVecCount] = {};
  DevMat mat[kLayerMatCount];
};

bool IsLora(int m) { return m <= kG2; }

// Slots of activations that feed the large products.
enum Slot { kSlotR, kSlotK, kSlotV, kSlotF, kSlotCount };

class RunnerImpl final : public Runner {
 public:
  RunnerImpl(const Dims& d, const RunnerOptions& o) : d_(d), o_(o) {}
  ~RunnerImpl() override;

  bool Init(std::string* error);
  bool SetLayerVector(int layer, LayerVec which, const float* v,
                      std::string* error) override;
  bool SetLayerMatrix(int layer, LayerMat which, const HostMatrix& m,
                      std::string* error) override;
  bool SetGlobalVector(GlobalVec which, const float* v,
                       std::string* error) override;
  bool SetEmbedding(const HostMatrix& m, std::string* error) override;
  bool SetHead(const HostMatrix& m, std::string* error) override;
  bool Randomize(uint64_t seed, std::string* error) override;
  int64_t WeightBytesPerPass() const override;
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
  int64_t StateFloats() const override { return d_.StateFloats(); }
  const Dims& dims() const override { return d_; }

 private:
  template <typename T>
  bool Alloc(T** p, int64_t count, std::string* error) {
    SS_CUDA(cudaMalloc(reinterpret_cast<void**>(p), sizeof(T) * count));
    ptrs_.push_back(*p);
    return true;
  }
  bool AllocMat(DevMat* m, int rows, int cols, bool bf16, std::string* error);
  bool CopyMat(DevMat* m, const HostMatrix& h, std::string* error);
  // On lane `lane` (0 = the main stream, 1..kSideLanes its side streams).
  bool Gemm(int lane, const DevMat& w, const In& x, int rows, float* y,
            float beta, std::string* error);
  // Side streams branch off the main stream and join it again (captured as
  // parallel branches of the graph).
  bool Fork(std::string* error);
  bool Join(std::string* error);
  bool RunChunk(int rows, int segs, int logit_rows, std::string* error);
  bool RunChunkGraph(int rows, int segs, int logit_rows, std::string* error);
  ActOut Out(Slot s) const;
  In Input(Slot s) const;
  bool bf16() const { return o_.mode != MatMode::kF32; }

  Dims d_;
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

  // Scratch, [max_rows][width].
  float *x_, *xa_, *xr_, *xw_, *xk_, *xv_, *xaa_, *xg_, *r_, *k_, *v_, *w_, *a_,
      *g_, *vl_, *vfirst_, *y_, *nkk_, *kka_, *ffk_, *logits_;
  float* lora_[kLanes] = {};  // LoRA intermediates, one per lane
  float* ffn_ = nullptr;      // fp32 mode only
  __nv_bfloat16* hi_[kSlotCount] = {};
  __nv_bfloat16* lo_[kSlotCount] = {};
  int32_t* meta_ = nullptr;       // device, 7 * max_rows
  int32_t* meta_host_ = nullptr;  // pinned
  StateTable states_;
  ChunkGraphs graphs_;
};

RunnerImpl::~RunnerImpl() {
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

bool RunnerImpl::AllocMat(DevMat* m, int rows, int cols, bool bf16,
                          std::string* error) {
  m->rows = rows;
  m->cols = cols;
  const int64_t n = static_cast<int64_t>(rows) * cols;
  return bf16 ? Alloc(&m->bf16, n, error) : Alloc(&m->f32, n, error);
}

bool RunnerImpl::Init(std::string* error) {
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
  layers_.resize(d_.n_layer);
  for (int l = 0; l < d_.n_layer; ++l) {
    Layer& L = layers_[l];
    for (int v = 0; v < kLayerVecCount; ++v) {
      if (v == kV0 && l == 0) continue;
      if (!Alloc(&L.vec[v], C, error)) return false;
    }
    const int ranks[4] = {d_.d_decay, d_.d_aaa, d_.d_mv, d_.d_gate};
    for (int q = 0; q < 4; ++q) {
      if (q == 2 && l == 0) continue;  // layer 0 has no value residual
      if (!AllocMat(&L.mat[2 * q], ranks[q], C, false, error) ||
          !AllocMat(&L.mat[2 * q + 1], C, ranks[q], false, error)) {
        return false;
      }
    }
    for (int m : {kRecept, kKey, kValue, kOutput}) {
      if (!AllocMat(&L.mat[m], C, C, bf16(), error)) return false;
    }
    if (!AllocMat(&L.mat[kFfnKey], F, C, bf16(), error) ||
        !AllocMat(&L.mat[kFfnValue], C, F, bf16(), error)) {
      return false;
    }
  }
  for (auto& g : gvec_) {
    if (!Alloc(&g, C, error)) return false;
  }
  if (!AllocMat(&head_, V, C, bf16(), error)) return false;

  const int64_t T = o_.max_rows;
  const int dmax = std::max({d_.d_decay, d_.d_aaa, d_.d_mv, d_.d_gate});
  for (float** p : {&x_, &xa_, &xr_, &xw_, &xk_, &xv_, &xaa_, &xg_, &r_, &k_,
                    &v_, &w_, &a_, &g_, &vl_, &vfirst_, &y_, &nkk_, &kka_}) {
    if (!Alloc(p, T * C, error)) return false;
  }
  for (float*& p : lora_) {
    if (!Alloc(&p, T * dmax, error)) return false;
  }
  if (!Alloc(&ffk_, T * F, error) || (!bf16() && !Alloc(&ffn_, T * F, error)) ||
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

bool RunnerImpl::SetLayerVector(int layer, LayerVec which, const float* v,
                                std::string* error) {
  float* dst = layers_[layer].vec[which];
  if (dst == nullptr) return true;  // layer 0's unused v0
  SS_CUDA(
      cudaMemcpy(dst, v, sizeof(float) * d_.n_embd, cudaMemcpyHostToDevice));
  return true;
}

bool RunnerImpl::CopyMat(DevMat* m, const HostMatrix& h, std::string* error) {
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

bool RunnerImpl::SetLayerMatrix(int layer, LayerMat which, const HostMatrix& m,
                                std::string* error) {
  DevMat* dst = &layers_[layer].mat[which];
  if (dst->rows == 0) return true;  // layer 0's unused v1/v2
  return CopyMat(dst, m, error);
}

bool RunnerImpl::SetGlobalVector(GlobalVec which, const float* v,
                                 std::string* error) {
  SS_CUDA(cudaMemcpy(gvec_[which], v, sizeof(float) * d_.n_embd,
                     cudaMemcpyHostToDevice));
  return true;
}

bool RunnerImpl::SetEmbedding(const HostMatrix& m, std::string* error) {
  // The embedding is read one row per token: kept as given.
  if (emb_.rows != 0) {
    *error = "embedding already set";
    return false;
  }
  return AllocMat(&emb_, m.rows, m.cols, m.bf16 != nullptr, error) &&
         CopyMat(&emb_, m, error);
}

bool RunnerImpl::SetHead(const HostMatrix& m, std::string* error) {
  return CopyMat(&head_, m, error);
}

bool RunnerImpl::Randomize(uint64_t seed, std::string* error) {
  const float C = d_.n_embd, F = d_.dim_ffn;
  const float mc = 1.0f / sqrtf(C), mf = 1.0f / sqrtf(F);
  uint64_t s = seed * 1000003;
  auto vec = [&](float* p, float lo, float hi) {
    if (p != nullptr)
      LaunchFillUniform(p, nullptr, d_.n_embd, lo, hi, ++s, stream_);
  };
  auto mat = [&](const DevMat& m, float lo, float hi) {
    LaunchFillUniform(m.f32, m.bf16, static_cast<int64_t>(m.rows) * m.cols, lo,
                      hi, ++s, stream_);
  };
  const float vlo[kLayerVecCount] = {0.8f, -0.1f, 0.8f, -0.1f, 0,  0,  0,
                                     0,    0,     0,    -2,    -1, -1, 0.5f,
                                     0.5f, -0.5f, 0.8f, -0.1f, 0};
  const float vhi[kLayerVecCount] = {1.2f, 0.1f, 1.2f, 0.1f, 1, 1, 1,
                                     1,    1,    1,    1,    1, 1, 1.0f,
                                     1.5f, 0.5f, 1.2f, 0.1f, 1};
  for (Layer& L : layers_) {
    for (int v = 0; v < kLayerVecCount; ++v) vec(L.vec[v], vlo[v], vhi[v]);
    for (int m = 0; m < kLayerMatCount; ++m) {
      const DevMat& dm = L.mat[m];
      if (dm.rows == 0) continue;
      // LoRA first factors (transposed [rank][C]) at 1/sqrt(C), second at
      // 0.5; Linear weights at 1/sqrt(in).
      const float a =
          IsLora(m) ? (m % 2 == 0 ? mc : 0.5f) : (m == kFfnValue ? mf : mc);
      mat(dm, -a, a);
    }
  }
  vec(gvec_[kLn0W], 0.8f, 1.2f);
  vec(gvec_[kLn0B], -0.1f, 0.1f);
  vec(gvec_[kLnOutW], 0.8f, 1.2f);
  vec(gvec_[kLnOutB], -0.1f, 0.1f);
  if (emb_.rows == 0 &&
      !AllocMat(&emb_, d_.vocab_size, d_.n_embd, bf16(), error)) {
    return false;
  }
  mat(emb_, -1, 1);
  mat(head_, -mc, mc);
  SS_CUDA(cudaGetLastError());
  SS_CUDA(cudaStreamSynchronize(stream_));
  return true;
}

int64_t RunnerImpl::WeightBytesPerPass() const {
  int64_t b = head_.bytes();
  for (const Layer& L : layers_) {
    for (const DevMat& m : L.mat) b += m.bytes();
    b += static_cast<int64_t>(kLayerVecCount) * 4 * d_.n_embd;
  }
  return b;
}

float* RunnerImpl::AllocStates(int64_t count, std::string* error) {
  return AllocFloats(count * d_.StateFloats(), error);
}

float* RunnerImpl::AllocFloats(int64_t floats, std::string* error) {
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

bool RunnerImpl::Upload(float* dst, const float* src, int64_t floats,
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

bool RunnerImpl::Download(float* dst, const float* src, int64_t floats,
                          std::string* error) {
  SS_CUDA(
      cudaMemcpyAsync(dst, src, 4 * floats, cudaMemcpyDeviceToHost, stream_));
  SS_CUDA(cudaStreamSynchronize(stream_));
  return true;
}

ActOut RunnerImpl::Out(Slot s) const {
  ActOut o;
  if (!bf16()) {
    float* f32[kSlotCount] = {xr_, xk_, xv_, ffn_};
    o.f32 = f32[s];
  } else {
    o.hi = hi_[s];
    o.lo = lo_[s];
    if (s == kSlotV) o.f32 = xv_;  // also the value LoRA's input
  }
  return o;
}

In RunnerImpl::Input(Slot s) const {
  const ActOut o = Out(s);
  return In{o.f32, o.hi, o.lo};
}

bool RunnerImpl::Fork(std::string* error) {
  SS_CUDA(cudaEventRecord(fork_, stream_));
  for (int i = 1; i < kLanes; ++i) {
    SS_CUDA(cudaStreamWaitEvent(lanes_[i], fork_, 0));
  }
  return true;
}

bool RunnerImpl::Join(std::string* error) {
  for (int i = 1; i < kLanes; ++i) {
    SS_CUDA(cudaEventRecord(join_[i], lanes_[i]));
    SS_CUDA(cudaStreamWaitEvent(stream_, join_[i], 0));
  }
  return true;
}

bool RunnerImpl::Gemm(int lane, const DevMat& w, const In& x, int rows,
                      float* y, float beta, std::string* error) {
  const float one = 1.0f;
  cublasHandle_t blas = blas_[lane];
  // fp32 matrices: exact fp32 products, except the LoRA factors in bf16
  // mode, which may use TF32 tensor cores (more precise than the bf16
  // activations of that mode).
  const cublasComputeType_t f32_compute = o_.mode == MatMode::kBF16
                                              ? CUBLAS_COMPUTE_32F_FAST_TF32
                                              : CUBLAS_COMPUTE_32F;
  // Row-major y[rows][out] = x[rows][in] . w[out][in]^T is, column-major,
  // y^T = w^T(as stored) x^T: op(A) = T on w, op(B) = N on x.
  if (w.f32 != nullptr) {
    SS_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, rows, w.cols,
                           &one, w.f32, CUDA_R_32F, w.cols, x.f32, CUDA_R_32F,
                           w.cols, &beta, y, CUDA_R_32F, w.rows, f32_compute,
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

bool RunnerImpl::RunChunk(int T, int S, int nl, std::string* error) {
  const int C = d_.n_embd, H = d_.n_head, N = d_.head_size, F = d_.dim_ffn;
  const int64_t stride = 2 * C + static_cast<int64_t>(H) * N * N;
  RowTables tab{meta_,
                meta_ + T,
                meta_ + 2 * T,
                meta_ + 3 * T,
                meta_ + 3 * T + S,
                meta_ + 3 * T + 2 * S,
                meta_ + 3 * T + 3 * S};
  cudaStream_t st = stream_;
  LaunchLayerNorm(emb_.f32, emb_.bf16, tab.tokens, T, C, gvec_[kLn0W],
                  gvec_[kLn0B], kLayerNormEps, ActOut{x_}, st);
  for (int l = 0; l < d_.n_layer; ++l) {
    const Layer& L = layers_[l];
    const int64_t att = l * stride, wkv = att + C, ffn = (l + 1) * stride - C;
    LaunchLayerNorm(x_, nullptr, nullptr, T, C, L.vec[kLn1W], L.vec[kLn1B],
                    kLayerNormEps, ActOut{xa_}, st);
    ShiftMix mix;
    mix.n = 6;
    const LayerVec params[6] = {kXr, kXw, kXk, kXv, kXa, kXg};
    const ActOut outs[6] = {Out(kSlotR), ActOut{xw_},  Out(kSlotK),
                            Out(kSlotV), ActOut{xaa_}, ActOut{xg_}};
    for (int q = 0; q < 6; ++q) {
      mix.param[q] = L.vec[params[q]];
      mix.out[q] = outs[q];
    }
    LaunchShiftMix(xa_, T, C, tab, states_.device(), att, mix, st);
    // Independent products on four lanes: r, k | v, value LoRA | decay
    // LoRA | rate and gate LoRAs.
    if (!Fork(error)) return false;
    if (!Gemm(0, L.mat[kRecept], Input(kSlotR), T, r_, 0, error) ||
        !Gemm(0, L.mat[kKey], Input(kSlotK), T, k_, 0, error) ||
        !Gemm(1, L.mat[kValue], Input(kSlotV), T, v_, 0, error) ||
        (l > 0 && (!Gemm(1, L.mat[kV1], In{xv_}, T, lora_[1], 0, error) ||
                   !Gemm(1, L.mat[kV2], In{lora_[1]}, T, vl_, 0, error))) ||
        !Gemm(2, L.mat[kW1], In{xw_}, T, lora_[2], 0, error)) {
      return false;
    }
    LaunchActivation(lora_[2], static_cast<int64_t>(T) * d_.d_decay, Act::kTanh,
                     lanes_[2]);
    if (!Gemm(2, L.mat[kW2], In{lora_[2]}, T, w_, 0, error) ||
        !Gemm(3, L.mat[kA1], In{xaa_}, T, lora_[3], 0, error) ||
        !Gemm(3, L.mat[kA2], In{lora_[3]}, T, a_, 0, error) ||
        !Gemm(3, L.mat[kG1], In{xg_}, T, lora_[3], 0, error)) {
      return false;
    }
    LaunchActivation(lora_[3], static_cast<int64_t>(T) * d_.d_gate,
                     Act::kSigmoid, lanes_[3]);
    if (!Gemm(3, L.mat[kG2], In{lora_[3]}, T, g_, 0, error) || !Join(error)) {
      return false;
    }
    PrepArgs prep{L.vec[kW0], L.vec[kA0], L.vec[kV0], L.vec[kKk], L.vec[kKa],
                  w_,         a_,         k_,         v_,         vfirst_,
                  nkk_,       kka_,       vl_,        l == 0};
    LaunchPrep(T, C, H, N, prep, st);
    LaunchWkv7(S, C, H, N, tab, states_.device(), wkv, r_, w_, k_, v_, nkk_,
               kka_, y_, st);
    PostArgs post{y_,         r_,           k_,           v_,  g_,
                  L.vec[kRk], L.vec[kLnxW], L.vec[kLnxB], xa_, kGroupNormEps,
                  att};
    LaunchPost(T, C, H, N, tab, states_.device(), post, Out(kSlotR), st);
    if (!Gemm(0, L.mat[kOutput], Input(kSlotR), T, x_, 1, error)) return false;

    LaunchLayerNorm(x_, nullptr, nullptr, T, C, L.vec[kLn2W], L.vec[kLn2B],
                    kLayerNormEps, ActOut{xa_}, st);
    ShiftMix fmix;
    fmix.n = 1;
    fmix.param[0] = L.vec[kFfnXk];
    fmix.out[0] = Out(kSlotK);
    LaunchShiftMix(xa_, T, C, tab, states_.device(), ffn, fmix, st);
    if (!Gemm(0, L.mat[kFfnKey], Input(kSlotK), T, ffk_, 0, error)) {
      return false;
    }
    LaunchReluSq(ffk_, T, F, C, tab, states_.device(), xa_, ffn, Out(kSlotF),
                 st);
    if (!Gemm(0, L.mat[kFfnValue], Input(kSlotF), T, x_, 1, error)) {
      return false;
    }
  }
  if (nl > 0) {
    LaunchLayerNorm(x_, nullptr, tab.logit_rows, nl, C, gvec_[kLnOutW],
                    gvec_[kLnOutB], kLayerNormEps, Out(kSlotR), st);
    if (!Gemm(0, head_, Input(kSlotR), nl, logits_, 0, error)) return false;
  }
  SS_CUDA(cudaGetLastError());
  return true;
}

bool RunnerImpl::RunChunkGraph(int T, int S, int nl, std::string* error) {
  return graphs_.Launch(
      stream_, {T, S, nl},
      [&](std::string* e) { return RunChunk(T, S, nl, e); }, error);
}

bool RunnerImpl::Forward(const SeqWork* seqs, int n, bool logits_on_host,
                         std::string* error) {
  if (!states_.Upload(seqs, n, stream_, graphs_, error)) return false;
  std::vector<PlanInput> plan(n);
  for (int i = 0; i < n; ++i) {
    plan[i] = {seqs[i].tokens, seqs[i].n_tokens, seqs[i].positions,
               seqs[i].n_positions};
  }
  const int64_t V = d_.vocab_size, C = d_.n_embd;
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
      SS_CUDA(cudaMemcpyAsync(
          dst, logits_ + j * V, sizeof(float) * V * run,
          logits_on_host ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice,
          stream_));
      j += run;
    }
    for (int g = 0; g < chunk.segments(); ++g) {
      const int q = chunk.seg_slot[g];
      done[q] += chunk.seg_end[g] - chunk.seg_begin[g];
      if (seqs[q].last_hidden != nullptr && done[q] == seqs[q].n_tokens) {
        SS_CUDA(cudaMemcpyAsync(
            seqs[q].last_hidden, x_ + (chunk.seg_end[g] - 1) * C,
            sizeof(float) * C,
            logits_on_host ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice,
            stream_));
      }
    }
    // The pinned tables are reused by the next chunk.
    SS_CUDA(cudaStreamSynchronize(stream_));
  }
  SS_CUDA(cudaStreamSynchronize(stream_));
  return true;
}

bool RunnerImpl::Logits(const float* hidden, int rows, float* logits,
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

std::unique_ptr<Runner> Runner::Create(const Dims& dims,
                                       const RunnerOptions& options,
                                       std::string* error) {
  if (!HeadSizeSupported(dims.head_size)) {
    *error = "head size " + std::to_string(dims.head_size) +
             " is not supported by the CUDA kernels (32, 64 or 128)";
    return nullptr;
  }
  auto r = std::make_unique<RunnerImpl>(dims, options);
  if (!r->Init(error)) return nullptr;
  return r;
}

}  // namespace statestream::engine::cuda
