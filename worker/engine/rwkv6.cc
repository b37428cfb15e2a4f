// SPDX-License-Identifier: Apache-2.0
// RWKV-6 forward pass over chunks of rows (rwkv_common.h): data-dependent
// token-shift mixes (a 5-way LoRA), a data-dependent decay (LoRA), the
// x052-style recurrence with S[key][value], SiLU gate, GroupNorm 64e-5.
#include "worker/engine/rwkv6.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/rwkv_common.h"

namespace statestream::engine {
namespace {

using rwkv::Chunk;
using rwkv::kFirstLayerBuffer;
using rwkv::MixStyle;

constexpr int kMixes = 5;  // w, k, v, r, g: the order of time_maa_w1/w2

struct Layer {
  std::vector<float> ln1_w, ln1_b, maa_x;
  std::vector<float> maa[kMixes];  // time_maa_{w,k,v,r,g}
  Matrix maa_w1;                   // transposed [5*Dm][C]
  Matrix maa_w2[kMixes];           // each transposed [C][Dm]
  std::vector<float> decay;        // time_decay [C]
  Matrix decay_w1, decay_w2;       // transposed
  std::vector<float> bonus;        // u = time_faaaa [H*N]
  std::vector<float> ln_x_w, ln_x_b;
  Matrix receptance, key, value, gate, output;
  rwkv::ChannelMixWeights ffn;
};

// State per layer: att_x_prev[C], wkv[H][N(key)][N(value)], ffn_x_prev[C].
class Rwkv6 final : public rwkv::ChunkedModel {
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

// d = prev - cur; xxx = cur + d * maa_x.
SS_ROW_CLONES void ShiftDiffRow(const float* cur, const float* prev,
                                const float* maa_x, int n, float* d,
                                float* xxx) {
  for (int i = 0; i < n; ++i) {
    d[i] = prev[i] - cur[i];
    xxx[i] = cur[i] + d[i] * maa_x[i];
  }
}

// out = xx + d * (maa + mf).
SS_ROW_CLONES void MixRow(const float* xx, const float* d, const float* maa,
                          const float* mf, int n, float* out) {
  for (int i = 0; i < n; ++i) out[i] = xx[i] + d[i] * (maa[i] + mf[i]);
}

// w = exp(-exp(time_decay + w)), in two passes (GCC does not vectorise
// the nested form).
SS_ROW_CLONES void DecayRow(const float* __restrict decay, int n,
                            float* __restrict w) {
  for (int i = 0; i < n; ++i) w[i] = Exp(decay[i] + w[i]);
  for (int i = 0; i < n; ++i) w[i] = Exp(-w[i]);
}

const float* Rwkv6::TimeMix(int l, const Chunk& c) {
  const Layer& L = layers_[l];
  const ModelConfig& cfg = info().config;
  const int C = cfg.n_embd, H = cfg.n_head, N = cfg.head_size, rows = c.rows;
  const int dm = cfg.d_mix, dd = cfg.d_decay;
  int buf = kFirstLayerBuffer;
  float* xx = c.ws.Get(1, C);
  float* d = c.ws.Get(buf++, C);  // previous row minus current
  float* xxx = c.ws.Get(buf++, C);
  float* m = c.ws.Get(buf++, kMixes * dm);
  float* lora = c.ws.Get(buf++, dd);
  float* mf[kMixes];  // m_f @ maa_w2[f]
  for (float*& p : mf) p = c.ws.Get(buf++, C);
  float* xs[kMixes];  // mixed inputs w, k, v, r, g
  for (float*& p : xs) p = c.ws.Get(buf++, C);
  float* r = c.ws.Get(buf++, C);
  float* k = c.ws.Get(buf++, C);
  float* v = c.ws.Get(buf++, C);
  float* g = c.ws.Get(buf++, C);
  float* w = c.ws.Get(buf++, C);
  float* y = c.ws.Get(buf++, C);
  float* out = c.ws.Get(buf++, C);
  // Stages are per row over the pool (ForRows); a stage's independent
  // products go to the pool together (Muls).
  ForRows(rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    LayerNorm(c.x + o, C, L.ln1_w.data(), L.ln1_b.data(), rwkv::kLayerNormEps,
              xx + o);
  });
  auto att_shift = [this, l](float* s) { return layout_.AttShift(s, l); };
  ForRows(rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    ShiftDiffRow(xx + o, rwkv::Prev(c, xx, C, t, att_shift), L.maa_x.data(), C,
                 d + o, xxx + o);
    rwkv::SaveOneRowShift(c, xx, C, t, att_shift);
  });
  Trace(l, "ln1_out", xx, C);
  // m = tanh(xxx @ maa_w1), then x_f = xx + d * (maa_f + m_f @ maa_w2[f]).
  Mul(L.maa_w1, xxx, rows, m);
  ForRows(rows, [&](int t) {
    rwkv::TanhRow(m + static_cast<int64_t>(t) * kMixes * dm, kMixes * dm);
  });
  {
    MatMulJob second[kMixes];
    for (int f = 0; f < kMixes; ++f) {
      second[f] = {&L.maa_w2[f], m + f * dm, kMixes * dm, mf[f], C};
    }
    MatMuls(k_, pool_, second, rows, &stream_);
  }
  ForRows(rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    for (int f = 0; f < kMixes; ++f) {
      MixRow(xx + o, d + o, L.maa[f].data(), mf[f] + o, C, xs[f] + o);
    }
  });
  // r, k, v, g and w = exp(-exp(time_decay + tanh(x_w @ decay_w1) @
  // decay_w2)).
  Muls({{&L.receptance, xs[3], C, r, C},
        {&L.key, xs[1], C, k, C},
        {&L.value, xs[2], C, v, C},
        {&L.gate, xs[4], C, g, C},
        {&L.decay_w1, xs[0], C, lora, dd}},
       rows);
  ForRows(rows, [&](int t) {
    rwkv::SiluRow(g + static_cast<int64_t>(t) * C, C);
    rwkv::TanhRow(lora + static_cast<int64_t>(t) * dd, dd);
  });
  Mul(L.decay_w2, lora, rows, w);
  ForRows(rows, [&](int t) {
    DecayRow(L.decay.data(), C, w + static_cast<int64_t>(t) * C);
  });
  Trace(l, "r", r, C);
  Trace(l, "k", k, C);
  Trace(l, "v", v, C);
  Trace(l, "g", g, C);
  Trace(l, "w_decay", w, C);
  ForHeadSteps(c, layout_, l,
               [&](float* S, int h, int64_t o, const float* next) {
                 rwkv::WkvStep5(S, N, r + o, k + o, v + o, w + o,
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

void Rwkv6::Block(int l, const Chunk& c) {
  // The residual (x += att_out) is the channel mix's first step.
  const float* att_out = TimeMix(l, c);
  ChannelMix(
      l, c, layers_[l].ffn, MixStyle::kPrevious,
      [this, l](float* s) { return layout_.FfnShift(s, l); }, att_out);
}

absl::Status Rwkv6::Init(WeightLoader& ld) {
  const ModelConfig& cfg = info().config;
  const int C = cfg.n_embd, dm = cfg.d_mix;
  SS_RETURN_IF_ERROR(LoadEmbeddingAndHead(ld));
  layers_.resize(cfg.n_layer);
  for (int l = 0; l < cfg.n_layer; ++l) {
    Layer& L = layers_[l];
    const std::string b = absl::StrCat("blocks.", l, ".");
    const std::string a = b + "att.";
    SS_RETURN_IF_ERROR(ld.Vector(b + "ln1.weight", C, &L.ln1_w));
    SS_RETURN_IF_ERROR(ld.Vector(b + "ln1.bias", C, &L.ln1_b));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_maa_x", C, &L.maa_x));
    const char* names[kMixes] = {"w", "k", "v", "r", "g"};
    for (int f = 0; f < kMixes; ++f) {
      SS_RETURN_IF_ERROR(
          ld.Vector(absl::StrCat(a, "time_maa_", names[f]), C, &L.maa[f]));
    }
    SS_RETURN_IF_ERROR(ld.MatT(a + "time_maa_w1", C, kMixes * dm, &L.maa_w1));
    // time_maa_w2 is [5, Dm, C]: five x @ [Dm, C] factors, each stored
    // transposed as [C][Dm] for the [out][in] kernels.
    const std::string w2 = a + "time_maa_w2";
    SS_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ld.Shape(w2));
    if (shape != std::vector<int64_t>{kMixes, dm, C}) {
      return rwkv::BadModel(absl::StrCat("tensor ", w2, " must be [", kMixes,
                                         ",", dm, ",", C, "]"));
    }
    std::vector<float> all;
    SS_RETURN_IF_ERROR(ld.Vector(w2, int64_t{kMixes} * dm * C, &all));
    for (int f = 0; f < kMixes; ++f) {
      std::vector<float> mt(static_cast<size_t>(C) * dm);
      for (int i = 0; i < dm; ++i) {
        for (int o = 0; o < C; ++o) {
          mt[static_cast<size_t>(o) * dm + i] =
              all[(static_cast<size_t>(f) * dm + i) * C + o];
        }
      }
      ld.Adopt(mt, C, dm, &L.maa_w2[f]);
    }
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_decay", C, &L.decay));
    SS_RETURN_IF_ERROR(
        ld.MatT(a + "time_decay_w1", C, cfg.d_decay, &L.decay_w1));
    SS_RETURN_IF_ERROR(
        ld.MatT(a + "time_decay_w2", cfg.d_decay, C, &L.decay_w2));
    SS_RETURN_IF_ERROR(rwkv::CheckHeadShape(ld, a + "time_faaaa", cfg));
    SS_RETURN_IF_ERROR(ld.Vector(a + "time_faaaa", C, &L.bonus));
    SS_RETURN_IF_ERROR(ld.Mat(a + "receptance.weight", C, C, &L.receptance));
    SS_RETURN_IF_ERROR(ld.Mat(a + "key.weight", C, C, &L.key));
    SS_RETURN_IF_ERROR(ld.Mat(a + "value.weight", C, C, &L.value));
    SS_RETURN_IF_ERROR(ld.Mat(a + "gate.weight", C, C, &L.gate));
    SS_RETURN_IF_ERROR(ld.Mat(a + "output.weight", C, C, &L.output));
    SS_RETURN_IF_ERROR(ld.Vector(a + "ln_x.weight", C, &L.ln_x_w));
    SS_RETURN_IF_ERROR(ld.Vector(a + "ln_x.bias", C, &L.ln_x_b));
    SS_RETURN_IF_ERROR(rwkv::LoadChannelMix(ld, l, "time_maa_k", "time_maa_r",
                                            C, cfg.dim_ffn, &L.ffn));
  }
  return absl::OkStatus();
}

}  // namespace

bool LooksLikeRwkv6(const WeightFile& file) {
  return file.Find("blocks.0.att.time_maa_x") != nullptr;
}

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv6(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options) {
  SS_ASSIGN_OR_RETURN(rwkv::EngineSetup setup,
                      rwkv::ResolveEngineOptions(options));
  WeightLoader loader(file, options.precision);
  loader.set_bf16_activations(options.bf16_activations);
  ModelInfo info;
  ModelConfig& c = info.config;
  c.arch = Arch::kRwkv6;
  SS_RETURN_IF_ERROR(rwkv::ReadCommonConfig(*file, loader, &c));
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(loader, "blocks.0.att.time_faaaa", &c.n_head, &c.head_size));
  if (static_cast<int64_t>(c.n_head) * c.head_size != c.n_embd) {
    return rwkv::BadModel(absl::StrCat("att.time_faaaa is [", c.n_head, ",",
                                       c.head_size, "] but n_embd is ",
                                       c.n_embd));
  }
  SS_RETURN_IF_ERROR(rwkv::CheckHeads(c));
  int unused, mix5;
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(loader, "blocks.0.att.time_maa_w1", &unused, &mix5));
  if (mix5 % kMixes != 0) {
    return rwkv::BadModel("att.time_maa_w1's second dimension is not 5 * D");
  }
  c.d_mix = mix5 / kMixes;
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(loader, "blocks.0.att.time_decay_w1", &unused, &c.d_decay));
  SS_RETURN_IF_ERROR(rwkv::CheckHeads(c, {c.d_mix, c.d_decay}));
  info.state_floats = static_cast<int64_t>(c.n_layer) *
                      (2 * c.n_embd + static_cast<int64_t>(c.n_head) *
                                          c.head_size * c.head_size);
  info.kernels = setup.kernels->name;
  auto model = std::make_unique<Rwkv6>(info, file, *setup.kernels, options,
                                       setup.threads);
  SS_RETURN_IF_ERROR(model->Init(loader));
  ModelInfo& final_info = model->mutable_info();
  final_info.params = loader.params();
  loader.Describe(&final_info);
  final_info.fingerprint = rwkv::Fingerprint(c, loader);
  return model;
}

}  // namespace statestream::engine
