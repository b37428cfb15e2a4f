// SPDX-License-Identifier: Apache-2.0
// RWKV-4 forward pass over chunks of rows (rwkv_common.h). The WKV
// recurrence keeps a numerator aa, a denominator bb and their shared
// exponent pp per channel (true values aa*e^pp, bb*e^pp), exactly as the
// official code, so states match the reference's.
#include "worker/engine/rwkv4.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/rwkv_common.h"

namespace statestream::engine {
namespace {

using rwkv::Chunk;
using rwkv::kFirstLayerBuffer;
using rwkv::MixStyle;

constexpr float kMinusInf = -1e30f;  // pp of the initial state
constexpr int kChannelsPerTask = 32;

struct Layer {
  std::vector<float> ln1_w, ln1_b, mix_k, mix_v, mix_r;
  std::vector<float> decay;  // w = -exp(time_decay)
  std::vector<float> first;  // u = time_first
  Matrix key, value, receptance, output;
  rwkv::ChannelMixWeights ffn;
};

// State per layer: att_x_prev[C], aa[C], bb[C], pp[C], ffn_x_prev[C].
class Rwkv4 final : public rwkv::ChunkedModel {
 public:
  using ChunkedModel::ChunkedModel;
  absl::Status Init(WeightLoader& ld);
  void InitState(float* state) const override;

 private:
  void Block(int l, const Chunk& c) override;
  // Returns the time mix's output rows (att_out).
  const float* TimeMix(int l, const Chunk& c);
  float* Layer0(float* state, int l) const { return state + l * 5 * C(); }

  std::vector<Layer> layers_;
};

void Rwkv4::InitState(float* state) const {
  const int C = this->C();
  std::fill(state, state + info().state_floats, 0.0f);
  for (int l = 0; l < info().config.n_layer; ++l) {
    std::fill_n(Layer0(state, l) + 3 * C, C, kMinusInf);
  }
}

// One step of the recurrence for n channels (independent: lanes along the
// channels, each element's operations the same in every clone).
SS_ROW_CLONES void Wkv4Step(const float* __restrict k,
                            const float* __restrict v,
                            const float* __restrict first,
                            const float* __restrict decay, int n,
                            float* __restrict aa, float* __restrict bb,
                            float* __restrict pp, float* __restrict y) {
  for (int i = 0; i < n; ++i) {
    const float kt = k[i], vt = v[i];
    float ww = first[i] + kt;
    float q = std::max(pp[i], ww);
    float e1 = Exp(pp[i] - q);
    float e2 = Exp(ww - q);
    y[i] = (e1 * aa[i] + e2 * vt) / (e1 * bb[i] + e2);
    ww = decay[i] + pp[i];
    q = std::max(ww, kt);
    e1 = Exp(ww - q);
    e2 = Exp(kt - q);
    aa[i] = e1 * aa[i] + e2 * vt;
    bb[i] = e1 * bb[i] + e2;
    pp[i] = q;
  }
}

// x = sigmoid(x).
SS_ROW_CLONES void SigmoidRow(float* x, int n) {
  for (int i = 0; i < n; ++i) x[i] = Sigmoid(x[i]);
}

const float* Rwkv4::TimeMix(int l, const Chunk& c) {
  const Layer& L = layers_[l];
  const int C = this->C(), rows = c.rows;
  float* xx = c.ws.Get(1, C);
  float* xk = c.ws.Get(kFirstLayerBuffer, C);
  float* xv = c.ws.Get(kFirstLayerBuffer + 1, C);
  float* xr = c.ws.Get(kFirstLayerBuffer + 2, C);
  float* r = c.ws.Get(kFirstLayerBuffer + 3, C);
  float* k = c.ws.Get(kFirstLayerBuffer + 4, C);
  float* v = c.ws.Get(kFirstLayerBuffer + 5, C);
  float* y = c.ws.Get(kFirstLayerBuffer + 6, C);
  float* out = c.ws.Get(kFirstLayerBuffer + 7, C);
  auto att_shift = [this, l](float* s) { return Layer0(s, l); };
  LayerNormAndMix(
      c, nullptr, L.ln1_w, L.ln1_b, xx, MixStyle::kCurrent,
      {{L.mix_k.data(), xk}, {L.mix_v.data(), xv}, {L.mix_r.data(), xr}},
      att_shift);
  Trace(l, "ln1_out", xx, C);
  Muls({{&L.receptance, xr, C, r, C},
        {&L.key, xk, C, k, C},
        {&L.value, xv, C, v, C}},
       rows);
  ForRows(rows, [&](int t) { SigmoidRow(r + static_cast<int64_t>(t) * C, C); });
  Trace(l, "r", r, C);
  Trace(l, "k", k, C);
  Trace(l, "v", v, C);
  // The recurrence: rows in order per (segment, block of channels);
  // channels are independent.
  const int blocks = (C + kChannelsPerTask - 1) / kChannelsPerTask;
  ForSegmentHeads(c, blocks, [&](const rwkv::Segment& g, int block, bool) {
    const int b = block * kChannelsPerTask;
    const int n = std::min(C, b + kChannelsPerTask) - b;
    float* s = Layer0(c.batch[g.seq].state, l);
    for (int t = g.begin; t < g.end; ++t) {
      const int64_t o = static_cast<int64_t>(t) * C + b;
      Wkv4Step(k + o, v + o, &L.first[b], &L.decay[b], n, s + C + b,
               s + 2 * C + b, s + 3 * C + b, y + o);
    }
  });
  Trace(l, "wkv", y, C);
  ForRows(rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    rwkv::MulRow(r + o, C, y + o);
  });
  Mul(L.output, y, rows, out);
  Trace(l, "att_out", out, C);
  rwkv::SaveLongShifts(c, xx, C, att_shift);
  return out;
}

void Rwkv4::Block(int l, const Chunk& c) {
  // The residual (x += att_out) is the channel mix's first step.
  const float* att_out = TimeMix(l, c);
  ChannelMix(
      l, c, layers_[l].ffn, MixStyle::kCurrent,
      [this, l](float* s) { return Layer0(s, l) + 4 * C(); }, att_out);
}

absl::Status Rwkv4::Init(WeightLoader& ld) {
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
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_decay", C, &L.decay));
    for (float& w : L.decay) w = -std::exp(w);
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_first", C, &L.first));
    SS_RETURN_IF_ERROR(ld.Mat(a + "key.weight", C, C, &L.key));
    SS_RETURN_IF_ERROR(ld.Mat(a + "value.weight", C, C, &L.value));
    SS_RETURN_IF_ERROR(ld.Mat(a + "receptance.weight", C, C, &L.receptance));
    SS_RETURN_IF_ERROR(ld.Mat(a + "output.weight", C, C, &L.output));
    SS_RETURN_IF_ERROR(rwkv::LoadChannelMix(ld, l, "time_mix_k", "time_mix_r",
                                            C, cfg.dim_ffn, &L.ffn));
  }
  return absl::OkStatus();
}

}  // namespace

bool LooksLikeRwkv4(const WeightFile& file) {
  return file.Find("blocks.0.att.time_first") != nullptr;
}

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv4(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options) {
  SS_ASSIGN_OR_RETURN(rwkv::EngineSetup setup,
                      rwkv::ResolveEngineOptions(options));
  WeightLoader loader(file, options.precision);
  loader.set_bf16_activations(options.bf16_activations);
  ModelInfo info;
  info.config.arch = Arch::kRwkv4;
  SS_RETURN_IF_ERROR(rwkv::ReadCommonConfig(*file, loader, &info.config));
  info.state_floats =
      static_cast<int64_t>(info.config.n_layer) * 5 * info.config.n_embd;
  info.kernels = setup.kernels->name;
  auto model = std::make_unique<Rwkv4>(info, file, *setup.kernels, options,
                                       setup.threads);
  SS_RETURN_IF_ERROR(model->Init(loader));
  ModelInfo& final_info = model->mutable_info();
  final_info.params = loader.params();
  loader.Describe(&final_info);
  final_info.fingerprint = rwkv::Fingerprint(info.config, loader);
  return model;
}

}  // namespace statestream::engine
