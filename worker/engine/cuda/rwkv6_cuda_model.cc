// SPDX-License-Identifier: Apache-2.0
// LoadRwkv6Cuda: reads the configuration and the weights exactly as
// rwkv6.cc's LoadRwkv6 does (same checks, same WeightLoader calls in the
// same order, so the same fingerprint) and uploads them to an x060 runner.
#include "worker/engine/cuda/rwkv6_cuda_model.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/cuda/cuda_model.h"
#include "worker/engine/cuda/cuda_model_internal.h"
#include "worker/engine/cuda/rwkv6_cuda.h"
#include "worker/engine/rwkv_common.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {
namespace {

using cuda::Mat6;
using cuda::Vec6;
using cuda_internal::CudaError;
using cuda_internal::View;

constexpr int kMixes = 5;  // w, k, v, r, g
constexpr int kVecs = static_cast<int>(Vec6::kCount);
constexpr int kMats = static_cast<int>(Mat6::kCount);

// time_maa_w2 [5, Dm, C] as the five transposed [C][Dm] factors stacked,
// read with the same call as rwkv6.cc (the digest depends on it).
absl::Status LoadMaaW2(WeightLoader& ld, const std::string& name, int C, int dm,
                       Matrix* out) {
  SS_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ld.Shape(name));
  if (shape != std::vector<int64_t>{kMixes, dm, C}) {
    return rwkv::BadModel(absl::StrCat("tensor ", name, " must be [", kMixes,
                                       ",", dm, ",", C, "]"));
  }
  std::vector<float> all;
  SS_RETURN_IF_ERROR(ld.Vector(name, int64_t{kMixes} * dm * C, &all));
  out->rows = kMixes * C;
  out->cols = dm;
  out->f32_storage.resize(all.size());
  for (int f = 0; f < kMixes; ++f) {
    for (int i = 0; i < dm; ++i) {
      for (int o = 0; o < C; ++o) {
        out->f32_storage[(static_cast<size_t>(f) * C + o) * dm + i] =
            all[(static_cast<size_t>(f) * dm + i) * C + o];
      }
    }
  }
  out->f32 = out->f32_storage.data();
  return absl::OkStatus();
}

}  // namespace

namespace cuda_internal {

absl::Status ReadRwkv6Config(const WeightFile& file, WeightLoader& ld,
                             ModelConfig* c) {
  c->arch = Arch::kRwkv6;
  SS_RETURN_IF_ERROR(rwkv::ReadCommonConfig(file, ld, c));
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(ld, "blocks.0.att.time_faaaa", &c->n_head, &c->head_size));
  if (static_cast<int64_t>(c->n_head) * c->head_size != c->n_embd) {
    return rwkv::BadModel(absl::StrCat("att.time_faaaa is [", c->n_head, ",",
                                       c->head_size, "] but n_embd is ",
                                       c->n_embd));
  }
  int unused, mix5;
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(ld, "blocks.0.att.time_maa_w1", &unused, &mix5));
  if (mix5 % kMixes != 0) {
    return rwkv::BadModel("att.time_maa_w1's second dimension is not 5 * D");
  }
  c->d_mix = mix5 / kMixes;
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(ld, "blocks.0.att.time_decay_w1", &unused, &c->d_decay));
  // The CPU loader's bounds on heads and LoRA ranks (rwkv6.cc).
  return rwkv::CheckHeads(*c, {c->d_mix, c->d_decay});
}

absl::Status LoadRwkv6Host(const ModelConfig& c, WeightLoader& ld,
                           Rwkv6Host* w) {
  using cuda::kLn0B, cuda::kLn0W, cuda::kLnOutB, cuda::kLnOutW;
  const int C = c.n_embd, V = c.vocab_size, dm = c.d_mix;
  SS_RETURN_IF_ERROR(ld.Mat("emb.weight", V, C, &w->emb));
  SS_RETURN_IF_ERROR(ld.Vector("blocks.0.ln0.weight", C, &w->gvec[kLn0W]));
  SS_RETURN_IF_ERROR(ld.Vector("blocks.0.ln0.bias", C, &w->gvec[kLn0B]));
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.weight", C, &w->gvec[kLnOutW]));
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.bias", C, &w->gvec[kLnOutB]));
  SS_RETURN_IF_ERROR(ld.Mat("head.weight", V, C, &w->head));
  w->layers.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    Rwkv6Host::Layer& L = w->layers[l];
    const std::string b = absl::StrCat("blocks.", l, ".");
    const std::string a = b + "att.";
    auto vec = [&](const std::string& name, Vec6 v) {
      return ld.Vector(name, C, &L.v(v));
    };
    SS_RETURN_IF_ERROR(vec(b + "ln1.weight", Vec6::kLn1W));
    SS_RETURN_IF_ERROR(vec(b + "ln1.bias", Vec6::kLn1B));
    SS_RETURN_IF_ERROR(vec(a + "time_maa_x", Vec6::kMaaX));
    const char* names[kMixes] = {"w", "k", "v", "r", "g"};
    for (int f = 0; f < kMixes; ++f) {
      SS_RETURN_IF_ERROR(
          vec(absl::StrCat(a, "time_maa_", names[f]),
              static_cast<Vec6>(static_cast<int>(Vec6::kMaaW) + f)));
    }
    SS_RETURN_IF_ERROR(
        ld.MatT(a + "time_maa_w1", C, kMixes * dm, &L.m(Mat6::kMaaW1)));
    SS_RETURN_IF_ERROR(
        LoadMaaW2(ld, a + "time_maa_w2", C, dm, &L.m(Mat6::kMaaW2)));
    SS_RETURN_IF_ERROR(vec(a + "time_decay", Vec6::kDecay));
    SS_RETURN_IF_ERROR(
        ld.MatT(a + "time_decay_w1", C, c.d_decay, &L.m(Mat6::kDecayW1)));
    SS_RETURN_IF_ERROR(
        ld.MatT(a + "time_decay_w2", c.d_decay, C, &L.m(Mat6::kDecayW2)));
    SS_RETURN_IF_ERROR(rwkv::CheckHeadShape(ld, a + "time_faaaa", c));
    SS_RETURN_IF_ERROR(vec(a + "time_faaaa", Vec6::kBonus));
    const std::pair<const char*, Mat6> att[] = {{"receptance", Mat6::kRecept},
                                                {"key", Mat6::kKey},
                                                {"value", Mat6::kValue},
                                                {"gate", Mat6::kGate},
                                                {"output", Mat6::kOutput}};
    for (const auto& [name, m] : att) {
      SS_RETURN_IF_ERROR(ld.Mat(a + name + ".weight", C, C, &L.m(m)));
    }
    SS_RETURN_IF_ERROR(vec(a + "ln_x.weight", Vec6::kLnxW));
    SS_RETURN_IF_ERROR(vec(a + "ln_x.bias", Vec6::kLnxB));
    rwkv::ChannelMixWeights ffn;
    SS_RETURN_IF_ERROR(rwkv::LoadChannelMix(ld, l, "time_maa_k", "time_maa_r",
                                            C, c.dim_ffn, &ffn));
    L.v(Vec6::kLn2W) = std::move(ffn.ln_w);
    L.v(Vec6::kLn2B) = std::move(ffn.ln_b);
    L.v(Vec6::kFfnMaaK) = std::move(ffn.mix_k);
    L.v(Vec6::kFfnMaaR) = std::move(ffn.mix_r);
    L.m(Mat6::kFfnKey) = std::move(ffn.key);
    L.m(Mat6::kFfnRecept) = std::move(ffn.receptance);
    L.m(Mat6::kFfnValue) = std::move(ffn.value);
  }
  return absl::OkStatus();
}

}  // namespace cuda_internal

namespace {

absl::Status Upload(const cuda_internal::Rwkv6Host& w, cuda::Rwkv6Runner& r) {
  std::string err;
  bool ok = cuda_internal::UploadGlobals(w.emb, w.head, w.gvec, r, &err);
  for (size_t l = 0; ok && l < w.layers.size(); ++l) {
    const cuda_internal::Rwkv6Host::Layer& L = w.layers[l];
    for (int v = 0; ok && v < kVecs; ++v) {
      ok = r.SetLayerVector(l, static_cast<Vec6>(v), L.vec[v].data(), &err);
    }
    for (int m = 0; ok && m < kMats; ++m) {
      ok = r.SetLayerMatrix(l, static_cast<Mat6>(m), View(L.mat[m]), &err);
    }
  }
  return ok ? absl::OkStatus() : CudaError("uploading weights", err);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv6Cuda(
    std::shared_ptr<const WeightFile> file, const CudaModelOptions& options) {
  WeightLoader loader(file, options.precision, MatrixLayout::kRowMajor);
  ModelInfo info;
  ModelConfig& config = info.config;
  SS_RETURN_IF_ERROR(cuda_internal::ReadRwkv6Config(*file, loader, &config));
  SS_RETURN_IF_ERROR(cuda_internal::CheckHeadSize(config.head_size));
  SS_RETURN_IF_ERROR(CudaDeviceStatus());
  cuda_internal::Rwkv6Host host;
  SS_RETURN_IF_ERROR(cuda_internal::LoadRwkv6Host(config, loader, &host));

  bool all_bf16 = host.head.bf16 != nullptr;
  for (const cuda_internal::Rwkv6Host::Layer& L : host.layers) {
    for (int m = static_cast<int>(Mat6::kRecept); m < kMats; ++m) {
      all_bf16 = all_bf16 && L.mat[m].bf16 != nullptr;
    }
  }
  cuda::Rwkv6Dims d;
  d.n_layer = config.n_layer;
  d.n_embd = config.n_embd;
  d.n_head = config.n_head;
  d.head_size = config.head_size;
  d.dim_ffn = config.dim_ffn;
  d.vocab_size = config.vocab_size;
  d.d_mix = config.d_mix;
  d.d_decay = config.d_decay;
  const cuda::RunnerOptions ro =
      cuda_internal::MakeRunnerOptions(options, all_bf16);
  std::string err;
  std::unique_ptr<cuda::Rwkv6Runner> runner =
      cuda::Rwkv6Runner::Create(d, ro, &err);
  if (runner == nullptr) return CudaError("initialising", err);
  SS_RETURN_IF_ERROR(Upload(host, *runner));

  info.state_floats = d.StateFloats();
  info.params = loader.params();
  info.fingerprint = rwkv::Fingerprint(config, loader);
  cuda_internal::DescribeBackend(ro, &info);
  return cuda_internal::MakeCudaModel(std::move(info), std::move(runner));
}

}  // namespace statestream::engine
