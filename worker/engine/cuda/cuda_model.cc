// SPDX-License-Identifier: Apache-2.0
// engine::Model over a cuda::StepRunner (x070: rwkv7_cuda.h, x060:
// rwkv6_cuda.h). Loading mirrors rwkv7.cc / rwkv6.cc exactly (same tensors,
// same order, same WeightLoader), so a checkpoint has the same fingerprint on
// both backends. Forward copies each session's host state to
// the device, runs the batch and copies it back.
#include "worker/engine/cuda/cuda_model.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "worker/engine/cuda/cuda_model_internal.h"
#include "worker/engine/cuda/rwkv7_cuda.h"
#include "worker/engine/rwkv7.h"
#include "worker/engine/rwkv_common.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {
namespace cuda_internal {

absl::Status CudaError(absl::string_view what, const std::string& detail) {
  // Device memory running out (cudaErrorMemoryAllocation's text, as the
  // runners report it) is RESOURCE_EXHAUSTED, as the header says: at load,
  // `--device auto` then runs the model on the CPU; in a batch, retried.
  if (absl::StrContains(detail, "out of memory")) {
    return MakeError(absl::StatusCode::kResourceExhausted, Reason::kOverloaded,
                     absl::StrCat("CUDA backend: ", what, ": ", detail));
  }
  return MakeError(absl::StatusCode::kInternal, Reason::kInternal,
                   absl::StrCat("CUDA backend: ", what, ": ", detail));
}

cuda::HostMatrix View(const Matrix& m) {
  return cuda::HostMatrix{m.rows, m.cols, m.f32, m.bf16};
}

bool UploadGlobals(const Matrix& emb, const Matrix& head,
                   const std::vector<float>* gvec, cuda::StepRunner& r,
                   std::string* err) {
  bool ok = r.SetEmbedding(View(emb), err) && r.SetHead(View(head), err);
  for (int g = 0; ok && g < cuda::kGlobalVecCount; ++g) {
    ok =
        r.SetGlobalVector(static_cast<cuda::GlobalVec>(g), gvec[g].data(), err);
  }
  return ok;
}

// FAILED_PRECONDITION: the file is good (the CPU engine runs it), this
// backend cannot; --device auto keeps such a model on the CPU.
absl::Status CheckHeadSize(int head_size) {
  if (cuda::HeadSizeSupported(head_size)) return absl::OkStatus();
  return FailedPreconditionError(
      Reason::kInvalidArgument,
      absl::StrCat("head size ", head_size,
                   " is not supported by the CUDA backend (32, 64 or 128)"));
}

cuda::RunnerOptions MakeRunnerOptions(const CudaModelOptions& options,
                                      bool all_bf16) {
  cuda::RunnerOptions ro;
  ro.mode = !all_bf16                   ? cuda::MatMode::kF32
            : options.split_activations ? cuda::MatMode::kBF16Split
                                        : cuda::MatMode::kBF16;
  ro.max_rows = std::max(1, options.max_rows);
  ro.device = options.device;
  ro.graphs = options.graphs;
  return ro;
}

std::string BackendName(const cuda::RunnerOptions& ro) {
  return absl::StrCat("cuda-", cuda::MatModeName(ro.mode), " (",
                      cuda::DeviceName(ro.device), ")");
}

void DescribeBackend(const cuda::RunnerOptions& ro, ModelInfo* info) {
  info->kernels = BackendName(ro);
  info->weights_dtype = ro.mode == cuda::MatMode::kF32 ? "fp32" : "bf16";
  info->bf16_activations = ro.mode == cuda::MatMode::kBF16        ? "round"
                           : ro.mode == cuda::MatMode::kBF16Split ? "split"
                                                                  : "";
}

}  // namespace cuda_internal
namespace {

using cuda_internal::CudaError;
using cuda_internal::View;

struct HostLayer {
  std::vector<float> vec[cuda::kLayerVecCount];
  Matrix mat[cuda::kLayerMatCount];
};

struct HostWeights {
  Matrix emb, head;
  std::vector<float> gvec[cuda::kGlobalVecCount];
  std::vector<HostLayer> layers;
};

// Loads in rwkv7.cc's order: the digest depends on it.
absl::Status LoadHost(const ModelConfig& c, WeightLoader& ld, HostWeights* w) {
  using namespace cuda;  // NOLINT: the tensor enums
  const int C = c.n_embd, V = c.vocab_size, F = c.dim_ffn;
  SS_RETURN_IF_ERROR(ld.Mat("emb.weight", V, C, &w->emb));
  SS_RETURN_IF_ERROR(ld.Vector("blocks.0.ln0.weight", C, &w->gvec[kLn0W]));
  SS_RETURN_IF_ERROR(ld.Vector("blocks.0.ln0.bias", C, &w->gvec[kLn0B]));
  w->layers.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    HostLayer& L = w->layers[l];
    const std::string b = absl::StrCat("blocks.", l, ".");
    const std::string a = b + "att.";
    auto vec = [&](const std::string& name, LayerVec v) {
      return ld.Vector(name, C, &L.vec[v]);
    };
    auto lora = [&](const std::string& name, int rows, int cols, LayerMat m) {
      return ld.MatT(a + name, rows, cols, &L.mat[m]);
    };
    SS_RETURN_IF_ERROR(vec(b + "ln1.weight", kLn1W));
    SS_RETURN_IF_ERROR(vec(b + "ln1.bias", kLn1B));
    SS_RETURN_IF_ERROR(vec(b + "ln2.weight", kLn2W));
    SS_RETURN_IF_ERROR(vec(b + "ln2.bias", kLn2B));
    SS_RETURN_IF_ERROR(vec(a + "x_r", kXr));
    SS_RETURN_IF_ERROR(vec(a + "x_w", kXw));
    SS_RETURN_IF_ERROR(vec(a + "x_k", kXk));
    SS_RETURN_IF_ERROR(vec(a + "x_v", kXv));
    SS_RETURN_IF_ERROR(vec(a + "x_a", kXa));
    SS_RETURN_IF_ERROR(vec(a + "x_g", kXg));
    SS_RETURN_IF_ERROR(vec(a + "w0", kW0));
    SS_RETURN_IF_ERROR(lora("w1", C, c.d_decay, kW1));
    SS_RETURN_IF_ERROR(lora("w2", c.d_decay, C, kW2));
    SS_RETURN_IF_ERROR(vec(a + "a0", kA0));
    SS_RETURN_IF_ERROR(lora("a1", C, c.d_aaa, kA1));
    SS_RETURN_IF_ERROR(lora("a2", c.d_aaa, C, kA2));
    if (l > 0) {  // layer 0's v0/v1/v2, when present, are unused
      SS_RETURN_IF_ERROR(vec(a + "v0", kV0));
      SS_RETURN_IF_ERROR(lora("v1", C, c.d_mv, kV1));
      SS_RETURN_IF_ERROR(lora("v2", c.d_mv, C, kV2));
    }
    SS_RETURN_IF_ERROR(lora("g1", C, c.d_gate, kG1));
    SS_RETURN_IF_ERROR(lora("g2", c.d_gate, C, kG2));
    SS_RETURN_IF_ERROR(vec(a + "k_k", kKk));
    SS_RETURN_IF_ERROR(vec(a + "k_a", kKa));
    SS_RETURN_IF_ERROR(rwkv::CheckHeadShape(ld, a + "r_k", c));
    SS_RETURN_IF_ERROR(vec(a + "r_k", kRk));
    SS_RETURN_IF_ERROR(ld.Mat(a + "receptance.weight", C, C, &L.mat[kRecept]));
    SS_RETURN_IF_ERROR(ld.Mat(a + "key.weight", C, C, &L.mat[kKey]));
    SS_RETURN_IF_ERROR(ld.Mat(a + "value.weight", C, C, &L.mat[kValue]));
    SS_RETURN_IF_ERROR(ld.Mat(a + "output.weight", C, C, &L.mat[kOutput]));
    SS_RETURN_IF_ERROR(vec(a + "ln_x.weight", kLnxW));
    SS_RETURN_IF_ERROR(vec(a + "ln_x.bias", kLnxB));
    SS_RETURN_IF_ERROR(vec(b + "ffn.x_k", kFfnXk));
    SS_RETURN_IF_ERROR(ld.Mat(b + "ffn.key.weight", F, C, &L.mat[kFfnKey]));
    SS_RETURN_IF_ERROR(ld.Mat(b + "ffn.value.weight", C, F, &L.mat[kFfnValue]));
  }
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.weight", C, &w->gvec[kLnOutW]));
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.bias", C, &w->gvec[kLnOutB]));
  SS_RETURN_IF_ERROR(ld.Mat("head.weight", V, C, &w->head));
  return absl::OkStatus();
}

absl::Status Upload(const HostWeights& w, cuda::Runner& r) {
  std::string err;
  bool ok = cuda_internal::UploadGlobals(w.emb, w.head, w.gvec, r, &err);
  for (size_t l = 0; ok && l < w.layers.size(); ++l) {
    const HostLayer& L = w.layers[l];
    for (int v = 0; ok && v < cuda::kLayerVecCount; ++v) {
      if (L.vec[v].empty()) continue;
      ok = r.SetLayerVector(l, static_cast<cuda::LayerVec>(v), L.vec[v].data(),
                            &err);
    }
    for (int m = 0; ok && m < cuda::kLayerMatCount; ++m) {
      if (L.mat[m].rows == 0) continue;
      ok = r.SetLayerMatrix(l, static_cast<cuda::LayerMat>(m), View(L.mat[m]),
                            &err);
    }
  }
  return ok ? absl::OkStatus() : CudaError("uploading weights", err);
}

class CudaModel final : public Model {
 public:
  CudaModel(ModelInfo info, std::unique_ptr<cuda::StepRunner> runner)
      : Model(std::move(info)), runner_(std::move(runner)) {}
  ~CudaModel() override {
    if (pool_ != nullptr) runner_->FreeStates(pool_);
  }
  using Model::mutable_info;

  absl::Status Forward(absl::Span<const SequenceWork> batch) override {
    SS_RETURN_IF_ERROR(ValidateBatch(batch));
    absl::MutexLock lock(&mu_);
    const int64_t sf = info().state_floats;
    std::vector<const SequenceWork*> work;
    for (const SequenceWork& w : batch) {
      // The runners hold one logits row per token of a chunk, and a
      // position's row goes to the chunk of its token: positions must be
      // increasing (the CPU engine also serves repeated ones; here many
      // repeats of one position would overflow one chunk's rows).
      if (w.logit_positions.size() > w.tokens.size() ||
          std::adjacent_find(w.logit_positions.begin(), w.logit_positions.end(),
                             std::greater_equal<int32_t>()) !=
              w.logit_positions.end()) {
        return InvalidArgumentError(
            Reason::kInvalidArgument,
            "the CUDA backend takes increasing logit positions, at most one "
            "row per token of a sequence");
      }
      if (!w.tokens.empty()) work.push_back(&w);
    }
    if (work.empty()) return absl::OkStatus();
    std::string err;
    if (static_cast<int64_t>(work.size()) > pool_size_) {
      if (pool_ != nullptr) runner_->FreeStates(pool_);
      pool_size_ = 0;
      pool_ = runner_->AllocStates(work.size(), &err);
      if (pool_ == nullptr) {
        return MakeError(absl::StatusCode::kResourceExhausted,
                         Reason::kOverloaded,
                         absl::StrCat("CUDA backend: ", err));
      }
      pool_size_ = work.size();
    }
    std::vector<cuda::SeqWork> seqs(work.size());
    for (size_t i = 0; i < work.size(); ++i) {
      const SequenceWork& w = *work[i];
      float* dev = pool_ + i * sf;
      if (!runner_->Upload(dev, w.state, sf, &err)) {
        return CudaError("state upload", err);
      }
      seqs[i] = {w.tokens.data(),
                 static_cast<int64_t>(w.tokens.size()),
                 dev,
                 w.logit_positions.data(),
                 static_cast<int64_t>(w.logit_positions.size()),
                 w.logits,
                 w.last_hidden};
    }
    if (!runner_->Forward(seqs.data(), static_cast<int>(seqs.size()),
                          /*logits_on_host=*/true, &err)) {
      return CudaError("forward", err);
    }
    for (size_t i = 0; i < work.size(); ++i) {
      if (!runner_->Download(work[i]->state, pool_ + i * sf, sf, &err)) {
        return CudaError("state download", err);
      }
    }
    return absl::OkStatus();
  }

  absl::Status Logits(const float* hidden, int rows, float* logits) override {
    if (rows < 0 || (rows > 0 && (hidden == nullptr || logits == nullptr))) {
      return InvalidArgumentError(Reason::kInvalidArgument,
                                  "Logits: bad rows or null buffer");
    }
    absl::MutexLock lock(&mu_);
    std::string err;
    if (rows > 0 && !runner_->Logits(hidden, rows, logits, &err)) {
      return CudaError("logits", err);
    }
    return absl::OkStatus();
  }

 private:
  absl::Mutex mu_;
  std::unique_ptr<cuda::StepRunner> runner_ ABSL_GUARDED_BY(mu_);
  float* pool_ ABSL_GUARDED_BY(mu_) = nullptr;  // device states
  int64_t pool_size_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::unique_ptr<Model> cuda_internal::MakeCudaModel(
    ModelInfo info, std::unique_ptr<cuda::StepRunner> runner) {
  return std::make_unique<CudaModel>(std::move(info), std::move(runner));
}

absl::Status CudaDeviceStatus() {
  std::string why;
  if (cuda::DeviceCount(&why) > 0) return absl::OkStatus();
  return FailedPreconditionError(Reason::kInvalidArgument,
                                 absl::StrCat("no CUDA device: ", why));
}

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv7Cuda(
    std::shared_ptr<const WeightFile> file, const CudaModelOptions& options) {
  WeightLoader loader(file, options.precision, MatrixLayout::kRowMajor);
  SS_ASSIGN_OR_RETURN(ModelConfig config, ReadRwkv7Config(*file, loader));
  SS_RETURN_IF_ERROR(cuda_internal::CheckHeadSize(config.head_size));
  SS_RETURN_IF_ERROR(CudaDeviceStatus());
  HostWeights host;
  SS_RETURN_IF_ERROR(LoadHost(config, loader, &host));

  // bf16 products only when every large matrix is bf16; a mixed file
  // computes in fp32 (its bf16 matrices upcast exactly).
  bool all_bf16 = host.head.bf16 != nullptr;
  for (const HostLayer& L : host.layers) {
    for (int m = cuda::kRecept; m < cuda::kLayerMatCount; ++m) {
      all_bf16 = all_bf16 && L.mat[m].bf16 != nullptr;
    }
  }
  cuda::Dims d{config.n_layer,   config.n_embd,  config.n_head,
               config.head_size, config.dim_ffn, config.vocab_size,
               config.d_decay,   config.d_aaa,   config.d_mv,
               config.d_gate};
  const cuda::RunnerOptions ro =
      cuda_internal::MakeRunnerOptions(options, all_bf16);
  std::string err;
  std::unique_ptr<cuda::Runner> runner = cuda::Runner::Create(d, ro, &err);
  if (runner == nullptr) return CudaError("initialising", err);
  SS_RETURN_IF_ERROR(Upload(host, *runner));

  ModelInfo info;
  info.config = config;
  info.state_floats = d.StateFloats();
  info.params = loader.params();
  info.fingerprint = rwkv::Fingerprint(config, loader);  // as on the CPU
  cuda_internal::DescribeBackend(ro, &info);
  return cuda_internal::MakeCudaModel(std::move(info), std::move(runner));
}

}  // namespace statestream::engine
