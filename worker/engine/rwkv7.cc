// SPDX-License-Identifier: Apache-2.0
// RWKV-7 forward pass. A call to Forward packs the tokens of all sequences
// into chunks of up to kMaxRows rows (each sequence's tokens contiguous and
// in order) and runs the chunk layer by layer: projections are matrix-matrix
// products over every row of the chunk (weights read once per chunk), the
// recurrence walks each sequence's rows in order, one task per (sequence,
// head). See docs/engine.md.
#include "worker/engine/rwkv7.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "worker/engine/kernels.h"
#include "worker/engine/ops.h"
#include "worker/engine/rwkv_common.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {
namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr float kGroupNormEps = 64e-5f;
constexpr float kExpMinusHalf = 0.60653065971263342f;  // e^-0.5
constexpr int kMaxRows = 64;

struct Layer {
  std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;
  std::vector<float> x_r, x_w, x_k, x_v, x_a, x_g;
  std::vector<float> w0, a0, v0, k_k, k_a, r_k, ln_x_w, ln_x_b;
  Matrix w1, w2, a1, a2, v1, v2, g1, g2;  // transposed LoRA factors
  Matrix receptance, key, value, output;
  std::vector<float> ffn_x_k;
  Matrix ffn_key, ffn_value;
};

// Scratch for one call, [rows][width] row-major. Kept by the model between
// calls (a decode step would otherwise allocate, fault in and clear ~20
// buffers) and grown to the largest chunk seen (`rows` <= kMaxRows). Every
// buffer is written before it is read within a chunk.
struct Scratch {
  void Reserve(const ModelConfig& c, int rows) {
    if (rows <= rows_) return;
    rows_ = rows;
    const int d = std::max({c.d_decay, c.d_aaa, c.d_mv, c.d_gate});
    for (auto* v : {&x, &xa, &xr, &xw, &xk, &xv, &xaa, &xg, &r, &w, &k, &v, &a,
                    &g, &kk, &v_first, &y, &tmp}) {
      v->resize(static_cast<size_t>(rows) * c.n_embd);
    }
    for (auto* v : {&lora_w, &lora_a, &lora_g, &lora_v}) {
      v->resize(static_cast<size_t>(rows) * d);
    }
    ffn.resize(static_cast<size_t>(rows) * c.dim_ffn);
  }
  int rows_ = 0;
  std::vector<float> x, xa, xr, xw, xk, xv, xaa, xg, r, w, k, v, a, g, kk,
      v_first, y, tmp, lora_w, lora_a, lora_g, lora_v, ffn, normed, logits;
  // The segment of each row of the chunk being run (for token shift).
  std::vector<int> seg_of_row;
};

using rwkv::Segment;

class Rwkv7 final : public Model {
 public:
  Rwkv7(ModelInfo info, std::shared_ptr<const WeightFile> file,
        const Kernels& kernels, const ModelOptions& options, int threads)
      : Model(std::move(info)),
        file_(std::move(file)),
        k_(kernels),
        pool_(threads),
        trace_(options.trace) {}

  absl::Status Init(WeightLoader& loader);
  using Model::mutable_info;
  absl::Status Forward(absl::Span<const SequenceWork> batch) override;
  absl::Status Logits(const float* hidden, int rows, float* logits) override;

 private:
  void RunChunk(absl::Span<const SequenceWork> batch,
                const std::vector<Segment>& segs, const int32_t* tokens,
                int rows, Scratch& s);
  void TimeMix(int l, absl::Span<const SequenceWork> batch,
               const std::vector<Segment>& segs, int rows, Scratch& s);
  void ChannelMix(int l, absl::Span<const SequenceWork> batch,
                  const std::vector<Segment>& segs, int rows, Scratch& s);
  int C() const { return info().config.n_embd; }
  // Runs fn(t) for every row t < rows, over the pool when the chunk is big
  // enough to pay for the hand-off. Rows are independent, so results do not
  // change; with a trace hook set, rows run in order on the caller (the
  // hook sees row 0 from the calling thread).
  template <typename F>
  void ForRows(int rows, const F& fn) {
    rwkv::ForRows(pool_, rows, static_cast<bool>(trace_), fn);
  }
  // Reports row 0 of `rows` (a [rows][n] buffer) to the trace hook.
  void Trace(int layer, const char* name, const std::vector<float>& rows,
             int n) const {
    if (trace_) trace_(layer, name, rows.data(), n);
  }

  // Keeps the mapping alive: matrices used as stored point into it.
  std::shared_ptr<const WeightFile> file_;
  const Kernels& k_;
  ThreadPool pool_;
  // Read-ahead of the weights along the step (every product passes it).
  WeightStream stream_;
  std::vector<Layer> layers_;
  Matrix emb_, head_;
  std::vector<float> ln0_w_, ln0_b_, ln_out_w_, ln_out_b_;
  const rwkv::MatrixStateLayout layout_{info().config};
  std::function<void(int, const char*, const float*, int)> trace_;
  // One scratch per concurrent Forward call, reused across calls.
  absl::Mutex scratch_mu_;
  std::vector<std::unique_ptr<Scratch>> free_scratch_
      ABSL_GUARDED_BY(scratch_mu_);
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

void Rwkv7::TimeMix(int l, absl::Span<const SequenceWork> batch,
                    const std::vector<Segment>& segs, int rows, Scratch& s) {
  const ModelConfig& c = info().config;
  const Layer& L = layers_[l];
  const int C = c.n_embd, H = c.n_head, N = c.head_size;
  // Stages are per row and run over the pool (ForRows); the projections of
  // a stage go to the pool together (MatMuls). At decode batch sizes each
  // is a few microseconds, as much as a hand-off.
  ForRows(rows, [&](int t) {
    LayerNorm(&s.x[t * C], C, L.ln1_w.data(), L.ln1_b.data(), kLayerNormEps,
              &s.xa[t * C]);
  });
  // Token shift (rwkv_common.h): one-row segments save their new shift in
  // the row's own task, longer ones after the layer (SaveLongShifts).
  const rwkv::ChunkRows cr{batch, segs, s.seg_of_row};
  auto att_shift = [&](float* state) { return layout_.AttShift(state, l); };
  ForRows(rows, [&](int t) {
    const float* cur = &s.xa[t * C];
    const float* prev = rwkv::Prev(cr, s.xa.data(), C, t, att_shift);
    const auto mix = [&](const std::vector<float>& mu,
                         std::vector<float>& out) {
      rwkv::Mix(rwkv::MixStyle::kPrevious, cur, prev, mu.data(), C,
                &out[t * C]);
    };
    mix(L.x_r, s.xr);
    mix(L.x_w, s.xw);
    mix(L.x_k, s.xk);
    mix(L.x_v, s.xv);
    mix(L.x_a, s.xaa);
    mix(L.x_g, s.xg);
    rwkv::SaveOneRowShift(cr, s.xa.data(), C, t, att_shift);
  });
  Trace(l, "ln1_out", s.xa, C);
  // Projections, and the first factor of each LoRA:
  //   decay  w = exp(-e^-0.5 * sigmoid(w0 + tanh(xw @ w1) @ w2)),
  //   in-context learning rate  a = sigmoid(a0 + (xa @ a1) @ a2),
  //   gate  g = sigmoid(xg @ g1) @ g2,
  //   value residual (layers > 0)  v += (v_first - v) *
  //                                     sigmoid(v0 + (xv @ v1) @ v2).
  const int dw = L.w1.rows, da = L.a1.rows, dg = L.g1.rows;
  const int dv = l > 0 ? L.v1.rows : 0;
  {
    const MatMulJob first[] = {
        {&L.receptance, s.xr.data(), C, s.r.data(), C},
        {&L.key, s.xk.data(), C, s.k.data(), C},
        {&L.value, s.xv.data(), C, s.v.data(), C},
        {&L.w1, s.xw.data(), C, s.lora_w.data(), dw},
        {&L.a1, s.xaa.data(), C, s.lora_a.data(), da},
        {&L.g1, s.xg.data(), C, s.lora_g.data(), dg},
        {&L.v1, s.xv.data(), C, s.lora_v.data(), dv},
    };
    MatMuls(k_, pool_, absl::MakeConstSpan(first, l > 0 ? 7 : 6), rows,
            &stream_);
  }
  ForRows(rows, [&](int t) {
    for (int i = t * dw; i < (t + 1) * dw; ++i) {
      s.lora_w[i] = Tanh(s.lora_w[i]);
    }
    for (int i = t * dg; i < (t + 1) * dg; ++i) {
      s.lora_g[i] = Sigmoid(s.lora_g[i]);
    }
  });
  {
    const MatMulJob second[] = {
        {&L.w2, s.lora_w.data(), dw, s.w.data(), C},
        {&L.a2, s.lora_a.data(), da, s.a.data(), C},
        {&L.g2, s.lora_g.data(), dg, s.g.data(), C},
        {&L.v2, s.lora_v.data(), dv, s.tmp.data(), C},
    };
    MatMuls(k_, pool_, absl::MakeConstSpan(second, l > 0 ? 4 : 3), rows,
            &stream_);
  }
  // Then per row: the LoRA outputs; layer 0 records v_first, later layers
  // mix towards it; kk = normalize(k * k_k) per head; k = k * (1 + (a - 1)
  // * k_a); and the recurrence's -kk and kk*a, into xw and xaa (free since
  // the projections).
  float* neg_kk = s.xw.data();
  float* kka = s.xaa.data();
  ForRows(rows, [&](int t) {
    const int row = t * C;
    DecayAndRateRow(L.w0.data(), L.a0.data(), C, &s.w[row], &s.a[row]);
    if (l == 0) {
      std::copy_n(&s.v[row], C, &s.v_first[row]);
    } else {
      ValueResidualRow(L.v0.data(), &s.tmp[row], &s.v_first[row], C, &s.v[row]);
    }
    float* kk = &s.kk[row];
    for (int i = 0; i < C; ++i) kk[i] = s.k[row + i] * L.k_k[i];
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
    KeyRow(&s.kk[row], &s.a[row], L.k_a.data(), C, &s.k[row], &neg_kk[row],
           &kka[row]);
  });
  Trace(l, "r", s.r, C);
  Trace(l, "w_decay", s.w, C);
  Trace(l, "k", s.k, C);
  Trace(l, "v", s.v, C);
  Trace(l, "a", s.a, C);
  Trace(l, "g", s.g, C);
  Trace(l, "kk", s.kk, C);
  // The recurrence: rows in order per (segment, head). With many segments
  // (decode batches) a task takes all heads of one segment, walking the
  // segment's states (H * N * N floats, contiguous) as one stream, each
  // head's last step prefetching the next head's state (a decode batch's
  // states come from memory; 32 sessions, one core: ~21 GB/s of states read
  // and written without, ~27 with); otherwise one task per (segment, head)
  // so every core gets work, and no prefetch: the next head may be another
  // core's (prefetching it for writing cost a 512-token int8 prefill a
  // quarter of its speed).
  const int heads_per_task =
      static_cast<int>(segs.size()) >= 4 * pool_.size() ? H : 1;
  const int tasks = static_cast<int>(segs.size()) * H / heads_per_task;
  pool_.ParallelFor(tasks, [&](int task) {
    const int first = task * heads_per_task;
    for (int i = first; i < first + heads_per_task; ++i) {
      const Segment& g = segs[i / H];
      const int h = i % H;
      float* S =
          layout_.Wkv(batch[g.seq].state, l) + static_cast<int64_t>(h) * N * N;
      const float* next = heads_per_task == H && h + 1 < H
                              ? S + static_cast<int64_t>(N) * N
                              : nullptr;
      for (int t = g.begin; t < g.end; ++t) {
        const int o = t * C + h * N;
        k_.wkv7_step(S, N, &s.r[o], &s.w[o], &s.k[o], &s.v[o], neg_kk + o,
                     kka + o, &s.y[o], t + 1 == g.end ? next : nullptr);
      }
    }
  });
  // Output: GroupNorm, bonus (r.k.r_k) v, gate, projection, residual.
  Trace(l, "wkv_out", s.y, C);
  ForRows(rows, [&](int t) {
    float* y = &s.y[t * C];
    float* bonus = &s.tmp[t * C];  // row t's own slice: rows run in parallel
    GroupNorm(y, H, N, L.ln_x_w.data(), L.ln_x_b.data(), kGroupNormEps, y);
    if (t == 0) Trace(l, "ln_x_out", s.y, C);
    const int row = t * C;
    SumPerHead<float>(
        H, N,
        [&](int h, int i) {
          const int c = h * N + i;
          return s.r[row + c] * s.k[row + c] * L.r_k[c];
        },
        [&](int h, float dot) {
          for (int c = h * N; c < (h + 1) * N; ++c) {
            bonus[c] = dot * s.v[row + c];
            y[c] += bonus[c];
          }
        });
    if (t == 0) Trace(l, "bonus", s.tmp, C);
    for (int i = 0; i < C; ++i) y[i] *= s.g[t * C + i];
  });
  MatMul(k_, pool_, L.output, s.y.data(), C, rows, s.tmp.data(), C, &stream_);
  Trace(l, "att_out", s.tmp, C);
  // The residual (x += att_out) is ChannelMix's first step.
  rwkv::SaveLongShifts(cr, s.xa.data(), C, att_shift);
}

void Rwkv7::ChannelMix(int l, absl::Span<const SequenceWork> batch,
                       const std::vector<Segment>& segs, int rows, Scratch& s) {
  const Layer& L = layers_[l];
  const int C = this->C(), F = info().config.dim_ffn;
  ForRows(rows, [&](int t) {
    float* x = &s.x[t * C];
    rwkv::AddRow(&s.tmp[t * C], C, x);
    LayerNorm(x, C, L.ln2_w.data(), L.ln2_b.data(), kLayerNormEps,
              &s.xa[t * C]);
  });
  const rwkv::ChunkRows cr{batch, segs, s.seg_of_row};
  auto ffn_shift = [&](float* state) { return layout_.FfnShift(state, l); };
  ForRows(rows, [&](int t) {
    const float* prev = rwkv::Prev(cr, s.xa.data(), C, t, ffn_shift);
    rwkv::Mix(rwkv::MixStyle::kPrevious, &s.xa[t * C], prev, L.ffn_x_k.data(),
              C, &s.xk[t * C]);
    rwkv::SaveOneRowShift(cr, s.xa.data(), C, t, ffn_shift);
  });
  Trace(l, "ln2_out", s.xa, C);
  MatMul(k_, pool_, L.ffn_key, s.xk.data(), C, rows, s.ffn.data(), F, &stream_);
  ForRows(rows,
          [&](int t) { ReluSquare(&s.ffn[static_cast<size_t>(t) * F], F); });
  MatMul(k_, pool_, L.ffn_value, s.ffn.data(), F, rows, s.tmp.data(), C,
         &stream_);
  Trace(l, "ffn_out", s.tmp, C);
  ForRows(rows, [&](int t) { rwkv::AddRow(&s.tmp[t * C], C, &s.x[t * C]); });
  Trace(l, "x_out", s.x, C);
  rwkv::SaveLongShifts(cr, s.xa.data(), C, ffn_shift);
}

void Rwkv7::RunChunk(absl::Span<const SequenceWork> batch,
                     const std::vector<Segment>& segs, const int32_t* tokens,
                     int rows, Scratch& s) {
  const ModelConfig& c = info().config;
  const int C = c.n_embd;
  rwkv::IndexRows(segs, rows, &s.seg_of_row);
  ForRows(rows, [&](int t) {
    float* x = &s.x[t * C];
    emb_.ReadRow(tokens[t], x);
    LayerNorm(x, C, ln0_w_.data(), ln0_b_.data(), kLayerNormEps, x);
  });
  Trace(-1, "x_after_ln0", s.x, C);
  for (int l = 0; l < c.n_layer; ++l) {
    TimeMix(l, batch, segs, rows, s);
    ChannelMix(l, batch, segs, rows, s);
  }
  rwkv::ChunkOutputs(k_, pool_, &stream_, head_, ln_out_w_.data(),
                     ln_out_b_.data(), {batch, segs, s.seg_of_row}, s.x.data(),
                     C, static_cast<bool>(trace_), s.normed, s.logits);
}

absl::Status Rwkv7::Logits(const float* hidden, int rows, float* logits) {
  if (rows < 0 || (rows > 0 && (hidden == nullptr || logits == nullptr))) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "Logits: bad rows or null buffer");
  }
  const int C = this->C(), V = info().config.vocab_size;
  std::vector<float> normed(static_cast<size_t>(C));
  for (int i = 0; i < rows; ++i) {
    LayerNorm(hidden + static_cast<int64_t>(i) * C, C, ln_out_w_.data(),
              ln_out_b_.data(), kLayerNormEps, normed.data());
    MatMul(k_, pool_, head_, normed.data(), C, 1,
           logits + static_cast<int64_t>(i) * V, V, &stream_);
  }
  return absl::OkStatus();
}

absl::Status Rwkv7::Forward(absl::Span<const SequenceWork> batch) {
  SS_RETURN_IF_ERROR(ValidateBatch(batch));
  size_t total = 0;
  for (const SequenceWork& w : batch) total += w.tokens.size();
  std::unique_ptr<Scratch> owned;
  {
    absl::MutexLock lock(&scratch_mu_);
    if (!free_scratch_.empty()) {
      owned = std::move(free_scratch_.back());
      free_scratch_.pop_back();
    }
  }
  if (owned == nullptr) owned = std::make_unique<Scratch>();
  Scratch& scratch = *owned;
  scratch.Reserve(info().config,
                  static_cast<int>(std::min<size_t>(total, kMaxRows)));
  std::vector<Segment> segs;
  int32_t tokens[kMaxRows];
  int rows = 0;
  for (size_t q = 0; q < batch.size(); ++q) {
    const SequenceWork& w = batch[q];
    size_t i = 0;
    while (i < w.tokens.size()) {
      if (rows == kMaxRows) {
        RunChunk(batch, segs, tokens, rows, scratch);
        segs.clear();
        rows = 0;
      }
      const int take = static_cast<int>(
          std::min(w.tokens.size() - i, static_cast<size_t>(kMaxRows - rows)));
      segs.push_back(
          {static_cast<int>(q), rows, rows + take, static_cast<int>(i)});
      std::copy_n(w.tokens.data() + i, take, tokens + rows);
      rows += take;
      i += take;
    }
  }
  if (rows > 0) RunChunk(batch, segs, tokens, rows, scratch);
  absl::MutexLock lock(&scratch_mu_);
  free_scratch_.push_back(std::move(owned));
  return absl::OkStatus();
}

absl::Status Rwkv7::Init(WeightLoader& ld) {
  const ModelConfig& c = info().config;
  const int C = c.n_embd, V = c.vocab_size, F = c.dim_ffn;
  SS_RETURN_IF_ERROR(ld.Mat("emb.weight", V, C, &emb_));
  SS_RETURN_IF_ERROR(ld.Vector("blocks.0.ln0.weight", C, &ln0_w_));
  SS_RETURN_IF_ERROR(ld.Vector("blocks.0.ln0.bias", C, &ln0_b_));
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
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.weight", C, &ln_out_w_));
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.bias", C, &ln_out_b_));
  SS_RETURN_IF_ERROR(ld.Mat("head.weight", V, C, &head_));
  return absl::OkStatus();
}

absl::Status BadShape(absl::string_view what) {
  return InvalidArgumentError(Reason::kInvalidModelFile, what);
}

}  // namespace

absl::StatusOr<ModelConfig> ReadRwkv7Config(const WeightFile& file,
                                            WeightLoader& ld) {
  ModelConfig c;
  c.arch = Arch::kRwkv7;
  int max_block = -1;
  for (const std::string& name : file.Names()) {
    if (!absl::StartsWith(name, "blocks.")) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
    int idx;
    if (parts.size() < 2 || !absl::SimpleAtoi(parts[1], &idx) || idx < 0 ||
        idx > 4096) {
      return BadShape(absl::StrCat("bad block index in tensor name ", name));
    }
    max_block = std::max(max_block, idx);
  }
  if (max_block < 0) return BadShape("no blocks.N tensors");
  c.n_layer = max_block + 1;
  auto dims2 = [&](const std::string& name, int* d0, int* d1) -> absl::Status {
    SS_ASSIGN_OR_RETURN(std::vector<int64_t> s, ld.Shape(name));
    if (s.size() != 2 || s[0] <= 0 || s[1] <= 0 || s[0] > (1 << 24) ||
        s[1] > (1 << 24)) {
      return BadShape(absl::StrCat(name, " must be a non-empty 2-D tensor"));
    }
    *d0 = static_cast<int>(s[0]);
    *d1 = static_cast<int>(s[1]);
    return absl::OkStatus();
  };
  int unused;
  SS_RETURN_IF_ERROR(dims2("emb.weight", &c.vocab_size, &c.n_embd));
  SS_RETURN_IF_ERROR(dims2("blocks.0.ffn.key.weight", &c.dim_ffn, &unused));
  SS_RETURN_IF_ERROR(dims2("blocks.0.att.r_k", &c.n_head, &c.head_size));
  SS_RETURN_IF_ERROR(dims2("blocks.0.att.w1", &unused, &c.d_decay));
  SS_RETURN_IF_ERROR(dims2("blocks.0.att.a1", &unused, &c.d_aaa));
  SS_RETURN_IF_ERROR(dims2("blocks.0.att.g1", &unused, &c.d_gate));
  if (c.n_layer > 1) {
    SS_RETURN_IF_ERROR(dims2("blocks.1.att.v1", &unused, &c.d_mv));
  }
  if (static_cast<int64_t>(c.n_head) * c.head_size != c.n_embd) {
    return BadShape(absl::StrCat("att.r_k is [", c.n_head, ",", c.head_size,
                                 "] but n_embd is ", c.n_embd));
  }
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
  final_info.fingerprint = absl::StrCat(
      "x070-L", config.n_layer, "-C", config.n_embd, "-H", config.n_head, "-F",
      config.dim_ffn, "-V", config.vocab_size, "-", loader.Digest());
  return model;
}

}  // namespace statestream::engine
