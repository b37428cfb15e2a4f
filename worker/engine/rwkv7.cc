// SPDX-License-Identifier: Apache-2.0
// RWKV-7 forward pass: one layer (Block) over a chunk of rows packed by
// rwkv::ChunkedModel (each sequence's tokens contiguous and in order).
// Projections are matrix-matrix products over every row of the chunk
// (weights read once per chunk); the recurrence walks each sequence's rows
// in order. See docs/engine.md.
#include "worker/engine/rwkv7.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/kernels.h"
#include "worker/engine/ops.h"
#include "worker/engine/rwkv_common.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {
namespace {

using rwkv::Chunk;
using rwkv::kGroupNormEps;
using rwkv::kLayerNormEps;
constexpr float kExpMinusHalf = 0.60653065971263342f;  // e^-0.5

struct Layer {
  std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;
  std::vector<float> x_r, x_w, x_k, x_v, x_a, x_g;
  std::vector<float> w0, a0, v0, k_k, k_a, r_k, ln_x_w, ln_x_b;
  Matrix w1, w2, a1, a2, v1, v2, g1, g2;  // transposed LoRA factors
  Matrix receptance, key, value, output;
  std::vector<float> ffn_x_k;
  Matrix ffn_key, ffn_value;
};

// Workspace buffers ([rows][C] unless noted). Buffer 1 (ChunkedModel's,
// free until the logits) holds each block's LayerNorm output. v_first is
// written by layer 0 and read by the later layers of the same chunk; every
// other buffer is written before it is read within a layer.
enum Buffer : int {
  kXa = 1,
  kXr = rwkv::kFirstLayerBuffer,
  kXw,  // then the recurrence's -kk
  kXk,
  kXv,
  kXaa,  // then the recurrence's kk * a
  kXg,
  kR,
  kW,
  kK,
  kV,
  kA,
  kG,
  kKk,
  kVFirst,
  kY,
  kTmp,    // value residual's LoRA; bonus; attention and FFN outputs
  kLoraW,  // [rows][d_decay]
  kLoraA,  // [rows][d_aaa]
  kLoraG,  // [rows][d_gate]
  kLoraV,  // [rows][d_mv]
  kFfn,    // [rows][dim_ffn]
};

class Rwkv7 final : public rwkv::ChunkedModel {
 public:
  using ChunkedModel::ChunkedModel;
  absl::Status Init(WeightLoader& loader);

 private:
  void Block(int l, const Chunk& c) override;
  // Leaves the attention output in buffer kTmp.
  void TimeMix(int l, const Chunk& c);
  void ChannelMix(int l, const Chunk& c);

  std::vector<Layer> layers_;
  const rwkv::MatrixStateLayout layout_{info().config};
};

// Sums term(h, i) over i < n for every head h < heads and hands each sum
// to done(h, sum). Each head's additions run in i order from zero, as one
// loop per head would, so the bits are the same; four heads' chains run
// side by side, so an addition need not wait for its head's last one
// (a 64-long chain of dependent additions per head was ~1 % of a
// 32-session step, twice: the kk norms and the bonus).
template <typename T, typename Term, typename Done>
void SumPerHead(int heads, int n, const Term& term, const Done& done) {
  int h = 0;
  for (; h + 4 <= heads; h += 4) {
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int i = 0; i < n; ++i) {
      s0 += term(h, i);
      s1 += term(h + 1, i);
      s2 += term(h + 2, i);
      s3 += term(h + 3, i);
    }
    done(h, s0);
    done(h + 1, s1);
    done(h + 2, s2);
    done(h + 3, s3);
  }
  for (; h < heads; ++h) {
    T sum = 0;
    for (int i = 0; i < n; ++i) sum += term(h, i);
    done(h, sum);
  }
}

// Per-row element-wise stages (SS_ROW_CLONES, rwkv_common.h).
//
// w = exp(-e^-0.5 * sigmoid(w0 + w)); a = sigmoid(a0 + a).
SS_ROW_CLONES void DecayAndRateRow(const float* w0, const float* a0, int n,
                                   float* w, float* a) {
  // Two passes (GCC does not vectorise the nested form).
  for (int i = 0; i < n; ++i) w[i] = Sigmoid(w0[i] + w[i]);
  for (int i = 0; i < n; ++i) w[i] = Exp(-kExpMinusHalf * w[i]);
  for (int i = 0; i < n; ++i) a[i] = Sigmoid(a0[i] + a[i]);
}

// v += (v_first - v) * sigmoid(v0 + lora), lora = (xv @ v1) @ v2.
SS_ROW_CLONES void ValueResidualRow(const float* v0, const float* lora,
                                    const float* v_first, int n, float* v) {
  for (int i = 0; i < n; ++i) {
    const float gate = Sigmoid(v0[i] + lora[i]);
    v[i] = v[i] + (v_first[i] - v[i]) * gate;
  }
}

// k = k * (1 + (a - 1) * k_a), and the recurrence's -kk and kk * a.
SS_ROW_CLONES void KeyRow(const float* __restrict kk, const float* __restrict a,
                          const float* __restrict k_a, int n,
                          float* __restrict k, float* __restrict neg_kk,
                          float* __restrict kka) {
  for (int i = 0; i < n; ++i) {
    k[i] = k[i] * (1.0f + (a[i] - 1.0f) * k_a[i]);
    neg_kk[i] = -kk[i];
    kka[i] = kk[i] * a[i];
  }
}

void Rwkv7::TimeMix(int l, const Chunk& c) {
  const ModelConfig& cfg = info().config;
  const Layer& L = layers_[l];
  const int C = cfg.n_embd, H = cfg.n_head, N = cfg.head_size;
  const int rows = c.rows;
  auto buf = [&](Buffer b, int width = 0) {
    return c.ws.Get(b, width > 0 ? width : C);
  };
  float *xa = buf(kXa), *xr = buf(kXr), *xw = buf(kXw), *xk = buf(kXk),
        *xv = buf(kXv), *xaa = buf(kXaa), *xg = buf(kXg);
  float *r = buf(kR), *w = buf(kW), *k = buf(kK), *v = buf(kV), *a = buf(kA),
        *g = buf(kG), *kk_all = buf(kKk), *v_first = buf(kVFirst),
        *y_all = buf(kY), *tmp = buf(kTmp);
  const int dw = L.w1.rows, da = L.a1.rows, dg = L.g1.rows;
  const int dv = l > 0 ? L.v1.rows : 0;
  float *lora_w = buf(kLoraW, dw), *lora_a = buf(kLoraA, da),
        *lora_g = buf(kLoraG, dg), *lora_v = buf(kLoraV, std::max(dv, 1));
  // LayerNorm, then token shift (rwkv_common.h): one-row segments save
  // their new shift in the row's own task, longer ones after the layer
  // (SaveLongShifts).
  const auto att_shift = [this, l](float* state) {
    return layout_.AttShift(state, l);
  };
  LayerNormAndMix(c, nullptr, L.ln1_w, L.ln1_b, xa, rwkv::MixStyle::kPrevious,
                  {{L.x_r.data(), xr},
                   {L.x_w.data(), xw},
                   {L.x_k.data(), xk},
                   {L.x_v.data(), xv},
                   {L.x_a.data(), xaa},
                   {L.x_g.data(), xg}},
                  att_shift);
  Trace(l, "ln1_out", xa, C);
  // Projections, and the first factor of each LoRA:
  //   decay  w = exp(-e^-0.5 * sigmoid(w0 + tanh(xw @ w1) @ w2)),
  //   in-context learning rate  a = sigmoid(a0 + (xa @ a1) @ a2),
  //   gate  g = sigmoid(xg @ g1) @ g2,
  //   value residual (layers > 0)  v += (v_first - v) *
  //                                     sigmoid(v0 + (xv @ v1) @ v2).
  {
    const MatMulJob first[] = {
        {&L.receptance, xr, C, r, C}, {&L.key, xk, C, k, C},
        {&L.value, xv, C, v, C},      {&L.w1, xw, C, lora_w, dw},
        {&L.a1, xaa, C, lora_a, da},  {&L.g1, xg, C, lora_g, dg},
        {&L.v1, xv, C, lora_v, dv},
    };
    MatMuls(k_, pool_, absl::MakeConstSpan(first, l > 0 ? 7 : 6), rows,
            &stream_);
  }
  ForRows(rows, [&](int t) {
    for (int i = t * dw; i < (t + 1) * dw; ++i) lora_w[i] = Tanh(lora_w[i]);
    for (int i = t * dg; i < (t + 1) * dg; ++i) {
      lora_g[i] = Sigmoid(lora_g[i]);
    }
  });
  {
    const MatMulJob second[] = {
        {&L.w2, lora_w, dw, w, C},
        {&L.a2, lora_a, da, a, C},
        {&L.g2, lora_g, dg, g, C},
        {&L.v2, lora_v, dv, tmp, C},
    };
    MatMuls(k_, pool_, absl::MakeConstSpan(second, l > 0 ? 4 : 3), rows,
            &stream_);
  }
  // Then per row: the LoRA outputs; layer 0 records v_first, later layers
  // mix towards it; kk = normalize(k * k_k) per head; k = k * (1 + (a - 1)
  // * k_a); and the recurrence's -kk and kk*a, into xw and xaa (free since
  // the projections).
  float* neg_kk = xw;
  float* kka = xaa;
  ForRows(rows, [&](int t) {
    const int row = t * C;
    DecayAndRateRow(L.w0.data(), L.a0.data(), C, &w[row], &a[row]);
    if (l == 0) {
      std::copy_n(&v[row], C, &v_first[row]);
    } else {
      ValueResidualRow(L.v0.data(), &tmp[row], &v_first[row], C, &v[row]);
    }
    float* kk = &kk_all[row];
    for (int i = 0; i < C; ++i) kk[i] = k[row + i] * L.k_k[i];
    SumPerHead<double>(
        H, N,
        [&](int h, int i) {
          return static_cast<double>(kk[h * N + i]) * kk[h * N + i];
        },
        [&](int h, double norm) {
          const float inv =
              1.0f / std::max(static_cast<float>(std::sqrt(norm)), 1e-12f);
          for (int i = h * N; i < (h + 1) * N; ++i) kk[i] *= inv;
        });
    KeyRow(kk, &a[row], L.k_a.data(), C, &k[row], &neg_kk[row], &kka[row]);
  });
  Trace(l, "r", r, C);
  Trace(l, "w_decay", w, C);
  Trace(l, "k", k, C);
  Trace(l, "v", v, C);
  Trace(l, "a", a, C);
  Trace(l, "g", g, C);
  Trace(l, "kk", kk_all, C);
  // The recurrence: rows in order per (segment, head); a decode batch's
  // task walks all heads of its segment, each head's last step
  // prefetching the next head's state (32 sessions, one core: ~21 GB/s of
  // states read and written without, ~27 with). Not when the next head may
  // be another core's: prefetching it for writing cost a 512-token int8
  // prefill a quarter of its speed.
  ForHeadSteps(c, layout_, l, [&](float* S, int, int64_t o, const float* next) {
    k_.wkv7_step(S, N, r + o, w + o, k + o, v + o, neg_kk + o, kka + o,
                 y_all + o, next);
  });
  // Output: GroupNorm, bonus (r.k.r_k) v, gate, projection, residual.
  Trace(l, "wkv_out", y_all, C);
  ForRows(rows, [&](int t) {
    const int row = t * C;
    float* y = &y_all[row];
    float* bonus = &tmp[row];  // row t's own slice: rows run in parallel
    GroupNorm(y, H, N, L.ln_x_w.data(), L.ln_x_b.data(), kGroupNormEps, y);
    if (t == 0) Trace(l, "ln_x_out", y_all, C);
    SumPerHead<float>(
        H, N,
        [&](int h, int i) {
          const int e = h * N + i;
          return r[row + e] * k[row + e] * L.r_k[e];
        },
        [&](int h, float dot) {
          for (int e = h * N; e < (h + 1) * N; ++e) {
            bonus[e] = dot * v[row + e];
            y[e] += bonus[e];
          }
        });
    if (t == 0) Trace(l, "bonus", tmp, C);
    for (int i = 0; i < C; ++i) y[i] *= g[row + i];
  });
  MatMul(k_, pool_, L.output, y_all, C, rows, tmp, C, &stream_);
  Trace(l, "att_out", tmp, C);
  // The residual (x += att_out) is ChannelMix's first step.
  rwkv::SaveLongShifts(c, xa, C, att_shift);
}

void Rwkv7::ChannelMix(int l, const Chunk& c) {
  const Layer& L = layers_[l];
  const int C = this->C(), F = info().config.dim_ffn, rows = c.rows;
  float* xa = c.ws.Get(kXa, C);
  float* xk = c.ws.Get(kXk, C);
  float* tmp = c.ws.Get(kTmp, C);
  float* ffn = c.ws.Get(kFfn, F);
  const auto ffn_shift = [this, l](float* state) {
    return layout_.FfnShift(state, l);
  };
  // x += att_out, LayerNorm, token shift.
  LayerNormAndMix(c, tmp, L.ln2_w, L.ln2_b, xa, rwkv::MixStyle::kPrevious,
                  {{L.ffn_x_k.data(), xk}}, ffn_shift);
  Trace(l, "ln2_out", xa, C);
  MatMul(k_, pool_, L.ffn_key, xk, C, rows, ffn, F, &stream_);
  ForRows(rows,
          [&](int t) { ReluSquare(ffn + static_cast<int64_t>(t) * F, F); });
  MatMul(k_, pool_, L.ffn_value, ffn, F, rows, tmp, C, &stream_);
  Trace(l, "ffn_out", tmp, C);
  ForRows(rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    rwkv::AddRow(tmp + o, C, c.x + o);
  });
  Trace(l, "x_out", c.x, C);
  rwkv::SaveLongShifts(c, xa, C, ffn_shift);
}

void Rwkv7::Block(int l, const Chunk& c) {
  TimeMix(l, c);
  ChannelMix(l, c);
}

absl::Status Rwkv7::Init(WeightLoader& ld) {
  const ModelConfig& c = info().config;
  const int C = c.n_embd, F = c.dim_ffn;
  // This load order (the embedding, the blocks, the head) defines the
  // fingerprint's digest; cuda/cuda_model.cc repeats it.
  SS_RETURN_IF_ERROR(LoadEmbedding(ld));
  layers_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    Layer& L = layers_[l];
    const std::string b = absl::StrCat("blocks.", l, ".");
    const std::string a = b + "att.";
    auto vec = [&](const std::string& name, int64_t n, std::vector<float>* v) {
      return ld.Vector(name, n, v);
    };
    SS_RETURN_IF_ERROR(vec(b + "ln1.weight", C, &L.ln1_w));
    SS_RETURN_IF_ERROR(vec(b + "ln1.bias", C, &L.ln1_b));
    SS_RETURN_IF_ERROR(vec(b + "ln2.weight", C, &L.ln2_w));
    SS_RETURN_IF_ERROR(vec(b + "ln2.bias", C, &L.ln2_b));
    SS_RETURN_IF_ERROR(vec(a + "x_r", C, &L.x_r));
    SS_RETURN_IF_ERROR(vec(a + "x_w", C, &L.x_w));
    SS_RETURN_IF_ERROR(vec(a + "x_k", C, &L.x_k));
    SS_RETURN_IF_ERROR(vec(a + "x_v", C, &L.x_v));
    SS_RETURN_IF_ERROR(vec(a + "x_a", C, &L.x_a));
    SS_RETURN_IF_ERROR(vec(a + "x_g", C, &L.x_g));
    SS_RETURN_IF_ERROR(vec(a + "w0", C, &L.w0));
    SS_RETURN_IF_ERROR(ld.MatT(a + "w1", C, c.d_decay, &L.w1));
    SS_RETURN_IF_ERROR(ld.MatT(a + "w2", c.d_decay, C, &L.w2));
    SS_RETURN_IF_ERROR(vec(a + "a0", C, &L.a0));
    SS_RETURN_IF_ERROR(ld.MatT(a + "a1", C, c.d_aaa, &L.a1));
    SS_RETURN_IF_ERROR(ld.MatT(a + "a2", c.d_aaa, C, &L.a2));
    if (l > 0) {  // layer 0's v0/v1/v2, when present, are unused
      SS_RETURN_IF_ERROR(vec(a + "v0", C, &L.v0));
      SS_RETURN_IF_ERROR(ld.MatT(a + "v1", C, c.d_mv, &L.v1));
      SS_RETURN_IF_ERROR(ld.MatT(a + "v2", c.d_mv, C, &L.v2));
    }
    SS_RETURN_IF_ERROR(ld.MatT(a + "g1", C, c.d_gate, &L.g1));
    SS_RETURN_IF_ERROR(ld.MatT(a + "g2", c.d_gate, C, &L.g2));
    SS_RETURN_IF_ERROR(vec(a + "k_k", C, &L.k_k));
    SS_RETURN_IF_ERROR(vec(a + "k_a", C, &L.k_a));
    SS_RETURN_IF_ERROR(rwkv::CheckHeadShape(ld, a + "r_k", c));
    SS_RETURN_IF_ERROR(vec(a + "r_k", C, &L.r_k));
    SS_RETURN_IF_ERROR(ld.Mat(a + "receptance.weight", C, C, &L.receptance));
    SS_RETURN_IF_ERROR(ld.Mat(a + "key.weight", C, C, &L.key));
    SS_RETURN_IF_ERROR(ld.Mat(a + "value.weight", C, C, &L.value));
    SS_RETURN_IF_ERROR(ld.Mat(a + "output.weight", C, C, &L.output));
    SS_RETURN_IF_ERROR(vec(a + "ln_x.weight", C, &L.ln_x_w));
    SS_RETURN_IF_ERROR(vec(a + "ln_x.bias", C, &L.ln_x_b));
    SS_RETURN_IF_ERROR(vec(b + "ffn.x_k", C, &L.ffn_x_k));
    SS_RETURN_IF_ERROR(ld.Mat(b + "ffn.key.weight", F, C, &L.ffn_key));
    SS_RETURN_IF_ERROR(ld.Mat(b + "ffn.value.weight", C, F, &L.ffn_value));
  }
  return LoadHead(ld);
}

}  // namespace

absl::StatusOr<ModelConfig> ReadRwkv7Config(const WeightFile& file,
                                            WeightLoader& ld) {
  ModelConfig c;
  c.arch = Arch::kRwkv7;
  SS_RETURN_IF_ERROR(rwkv::ReadCommonConfig(file, ld, &c));
  int unused;
  SS_RETURN_IF_ERROR(
      rwkv::Dims2(ld, "blocks.0.att.r_k", &c.n_head, &c.head_size));
  SS_RETURN_IF_ERROR(rwkv::Dims2(ld, "blocks.0.att.w1", &unused, &c.d_decay));
  SS_RETURN_IF_ERROR(rwkv::Dims2(ld, "blocks.0.att.a1", &unused, &c.d_aaa));
  SS_RETURN_IF_ERROR(rwkv::Dims2(ld, "blocks.0.att.g1", &unused, &c.d_gate));
  if (c.n_layer > 1) {
    SS_RETURN_IF_ERROR(rwkv::Dims2(ld, "blocks.1.att.v1", &unused, &c.d_mv));
  }
  if (static_cast<int64_t>(c.n_head) * c.head_size != c.n_embd) {
    return rwkv::BadModel(absl::StrCat("att.r_k is [", c.n_head, ",",
                                       c.head_size, "] but n_embd is ",
                                       c.n_embd));
  }
  SS_RETURN_IF_ERROR(
      rwkv::CheckHeads(c, {c.d_decay, c.d_aaa, c.d_gate, c.d_mv}));
  return c;
}

bool LooksLikeRwkv7(const WeightFile& file) {
  return file.Find("blocks.0.att.r_k") != nullptr &&
         file.Find("blocks.0.att.w0") != nullptr;
}

absl::StatusOr<std::unique_ptr<Model>> LoadRwkv7(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options) {
  SS_ASSIGN_OR_RETURN(const rwkv::EngineSetup setup,
                      rwkv::ResolveEngineOptions(options));
  const Kernels* kernels = setup.kernels;
  const int threads = setup.threads;
  WeightLoader loader(file, options.precision);
  loader.set_bf16_activations(options.bf16_activations);
  SS_ASSIGN_OR_RETURN(ModelConfig config, ReadRwkv7Config(*file, loader));
  ModelInfo info;
  info.config = config;
  info.state_floats =
      static_cast<int64_t>(config.n_layer) *
      (2 * config.n_embd + static_cast<int64_t>(config.n_head) *
                               config.head_size * config.head_size);
  info.kernels = kernels->name;
  auto model = std::make_unique<Rwkv7>(info, file, *kernels, options, threads);
  SS_RETURN_IF_ERROR(model->Init(loader));
  ModelInfo& final_info = model->mutable_info();
  final_info.params = loader.params();
  loader.Describe(&final_info);
  final_info.fingerprint = rwkv::Fingerprint(config, loader);
  return model;
}

}  // namespace statestream::engine
