// SPDX-License-Identifier: Apache-2.0
// RWKV-5.2 forward pass over chunks of rows (rwkv_common.h): a fixed
// per-channel decay, the bonus u = time_faaaa used as stored, a SiLU gate
// and GroupNorm with eps 64e-5 (the official value, not rwkv.cpp's 1e-5).
#include "worker/engine/rwkv5.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/rwkv_common.h"

namespace statestream::engine {
namespace {

using rwkv::Chunk;
using rwkv::kFirstLayerBuffer;
using rwkv::MixStyle;

struct Layer {
  std::vector<float> ln1_w, ln1_b, mix_k, mix_v, mix_r, mix_g;
  std::vector<float> decay;  // w = exp(-exp(time_decay)), [H*N]
  std::vector<float> bonus;  // u = time_faaaa, [H*N]
  std::vector<float> ln_x_w, ln_x_b;
  Matrix receptance, key, value, gate, output;
  rwkv::ChannelMixWeights ffn;
};

// State per layer: att_x_prev[C], wkv[H][N(key)][N(value)], ffn_x_prev[C].
class Rwkv5 final : public rwkv::ChunkedModel {
 public:
  using ChunkedModel::ChunkedModel;
  absl::Status Init(WeightLoader& ld);

 private:
  void Block(int l, const Chunk& c) override;
  // Returns the time mix's output rows (att_out).
  const float* TimeMix(int l, const Chunk& c);

  std::vector<Layer> layers_;
  const rwkv::MatrixStateLayout layout_{info().config};
};

const float* Rwkv5::TimeMix(int l, const Chunk& c) {
  const Layer& L = layers_[l];
  const ModelConfig& cfg = info().config;
  const int C = cfg.n_embd, H = cfg.n_head, N = cfg.head_size, rows = c.rows;
  float* xx = c.ws.Get(1, C);
  float* xk = c.ws.Get(kFirstLayerBuffer, C);
  float* xv = c.ws.Get(kFirstLayerBuffer + 1, C);
  float* xr = c.ws.Get(kFirstLayerBuffer + 2, C);
  float* xg = c.ws.Get(kFirstLayerBuffer + 3, C);
  float* r = c.ws.Get(kFirstLayerBuffer + 4, C);
  float* k = c.ws.Get(kFirstLayerBuffer + 5, C);
  float* v = c.ws.Get(kFirstLayerBuffer + 6, C);
  float* g = c.ws.Get(kFirstLayerBuffer + 7, C);
  float* y = c.ws.Get(kFirstLayerBuffer + 8, C);
  float* out = c.ws.Get(kFirstLayerBuffer + 9, C);
  auto att_shift = [this, l](float* s) { return layout_.AttShift(s, l); };
  LayerNormAndMix(c, nullptr, L.ln1_w, L.ln1_b, xx, MixStyle::kCurrent,
                  {{L.mix_k.data(), xk},
                   {L.mix_v.data(), xv},
                   {L.mix_r.data(), xr},
                   {L.mix_g.data(), xg}},
                  att_shift);
  Trace(l, "ln1_out", xx, C);
  Muls({{&L.receptance, xr, C, r, C},
        {&L.key, xk, C, k, C},
        {&L.value, xv, C, v, C},
        {&L.gate, xg, C, g, C}},
       rows);
  ForRows(rows,
          [&](int t) { rwkv::SiluRow(g + static_cast<int64_t>(t) * C, C); });
  Trace(l, "r", r, C);
  Trace(l, "k", k, C);
  Trace(l, "v", v, C);
  Trace(l, "g", g, C);
  Trace(l, "w_decay", L.decay.data(), C);
  // The recurrence: rows in order per (segment, head).
  ForHeadSteps(c, layout_, l,
               [&](float* S, int h, int64_t o, const float* next) {
                 rwkv::WkvStep5(S, N, r + o, k + o, v + o, &L.decay[h * N],
                                &L.bonus[h * N], y + o, next);
               });
  Trace(l, "wkv_out", y, C);
  ForRows(rows, [&](int t) {
    float* yt = y + static_cast<int64_t>(t) * C;
    GroupNorm(yt, H, N, L.ln_x_w.data(), L.ln_x_b.data(), rwkv::kGroupNormEps,
              yt);
    if (t == 0) Trace(l, "ln_x_out", y, C);
    rwkv::MulRow(g + static_cast<int64_t>(t) * C, C, yt);
  });
  Mul(L.output, y, rows, out);
  Trace(l, "att_out", out, C);
  rwkv::SaveLongShifts(c, xx, C, att_shift);
  return out;
}

void Rwkv5::Block(int l, const Chunk& c) {
  // The residual (x += att_out) is the channel mix's first step.
  const float* att_out = TimeMix(l, c);
  ChannelMix(
      l, c, layers_[l].ffn, MixStyle::kCurrent,
      [this, l](float* s) { return layout_.FfnShift(s, l); }, att_out);
}

absl::Status Rwkv5::Init(WeightLoader& ld) {
  const ModelConfig& cfg = info().config;
  const int C = cfg.n_embd;
  SS_RETURN_IF_ERROR(LoadEmbeddingAndHead(ld));
  layers_.resize(cfg.n_layer);
  for (int l = 0; l < cfg.n_layer; ++l) {
    Layer& L = layers_[l];
    const std::string b = absl::StrCat("blocks.", l, ".");
    const std::string a = b + "att.";
    SS_RETURN_IF_ERROR(ld.Vector(b + "ln1.weight", C, &L.ln1_w));
    SS_RETURN_IF_ERROR(ld.Vector(b + "ln1.bias", C, &L.ln1_b));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_mix_k", C, &L.mix_k));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_mix_v", C, &L.mix_v));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_mix_r", C, &L.mix_r));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_mix_g", C, &L.mix_g));
    SS_RETURN_IF_ERROR(rwkv::CheckHeadShape(ld, a + "time_decay", cfg));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_decay", C, &L.decay));
    for (float& w : L.decay) w = std::exp(-std::exp(w));
    SS_RETURN_IF_ERROR(rwkv::CheckHeadShape(ld, a + "time_faaaa", cfg));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_faaaa", C, &L.bonus));
    SS_RETURN_IF_ERROR(ld.Mat(a + "receptance.weight", C, C, &L.receptance));
    SS_RETURN_IF_ERROR(ld.Mat(a + "key.weight", C, C, &L.key));
    SS_RETURN_IF_ERROR(ld.Mat(a + "value.weight", C, C, &L.value));
    SS_RETURN_IF_ERROR(ld.Mat(a + "gate.weight", C, C, &L.gate));
    SS_RETURN_IF_ERROR(ld.Mat(a + "output.weight", C, C, &L.output));
    SS_RETURN_IF_ERROR(ld.Vector(a + "ln_x.weight", C, &L.ln_x_w));
    SS_RETURN_IF_ERROR(ld.Vector(a + "ln_x.bias", C, &L.ln_x_b));
    SS_RETURN_IF_ERROR(rwkv::LoadChannelMix(ld, l, "time_mix_k", "time_mix_r",
                                            C, cfg.dim_ffn, &L.ffn));
  }
  return absl::OkStatus();
}

}  // namespace

bool LooksLikeRwkv5(const WeightFile& file) {
  const TensorView* decay = file.Find("blocks.0.att.time_decay");
  return file.Find("blocks.0.att.time_faaaa") != nullptr && decay != nullptr &&
         decay->shape.size() == 2 && decay->shape[1] > 1;
}

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv5(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options) {
  SS_ASSIGN_OR_RETURN(rwkv::EngineSetup setup,
                      rwkv::ResolveEngineOptions(options));
  WeightLoader loader(file, options.precision);
  loader.set_bf16_activations(options.bf16_activations);
  ModelInfo info;
  ModelConfig& c = info.config;
  c.arch = Arch::kRwkv5;
  SS_RETURN_IF_ERROR(rwkv::ReadCommonConfig(*file, loader, &c));
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(loader, "blocks.0.att.time_faaaa", &c.n_head, &c.head_size));
  if (static_cast<int64_t>(c.n_head) * c.head_size != c.n_embd) {
    return rwkv::BadModel(absl::StrCat("att.time_faaaa is [", c.n_head, ",",
                                       c.head_size, "] but n_embd is ",
                                       c.n_embd));
  }
  SS_RETURN_IF_ERROR(rwkv::CheckHeads(c));
  info.state_floats = static_cast<int64_t>(c.n_layer) *
                      (2 * c.n_embd + static_cast<int64_t>(c.n_head) *
                                          c.head_size * c.head_size);
  info.kernels = setup.kernels->name;
  auto model = std::make_unique<Rwkv5>(info, file, *setup.kernels, options,
                                       setup.threads);
  SS_RETURN_IF_ERROR(model->Init(loader));
  ModelInfo& final_info = model->mutable_info();
  final_info.params = loader.params();
  loader.Describe(&final_info);
  final_info.fingerprint = rwkv::Fingerprint(c, loader);
  return model;
}

}  // namespace statestream::engine
