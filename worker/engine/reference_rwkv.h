// SPDX-License-Identifier: Apache-2.0
// A plain float64 re-implementation of the RWKV equations in
// ../shared/testdata/README.md (x070, x060, x052, v4), for tests of the
// engine at shapes the golden files do not have (reference_model_test.cc).
// It reads the state dict a checkpoint is written from, never the engine's
// loader, packing or kernels: loops over doubles in the README's order,
// written for clarity rather than speed. Its state is the engine's
// canonical layout (docs/state-format.md).
#ifndef STATESTREAM_WORKER_ENGINE_REFERENCE_RWKV_H_
#define STATESTREAM_WORKER_ENGINE_REFERENCE_RWKV_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/model.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine::reference {

using Vec = std::vector<double>;

// Rounds to the nearest bf16, ties to even, as the checkpoint writer does.
inline float RoundToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Rounds to the nearest IEEE half (the compiler's conversion: ties to even,
// subnormals kept).
inline float RoundToF16(float f) {
  return static_cast<float>(static_cast<_Float16>(f));
}

// What the engine computes with, for each way of giving it the weights.
enum class Rounding {
  kNone,        // an fp32 file
  kAllBf16,     // a bf16 file: every tensor, widened before anything else
  kMatrixBf16,  // an fp32 file loaded with WeightPrecision::kBF16: the
                // embedding, the head and every Linear weight (the 2-D
                // `*.weight` tensors); the LoRA factors stay fp32
  kAllF16,      // an fp16 file: every tensor, widened
};

// The state dict by name, as doubles.
class Weights {
 public:
  Weights(const std::vector<NamedTensor>& tensors, Rounding rounding) {
    for (const NamedTensor& t : tensors) {
      const bool matrix =
          t.shape.size() == 2 && absl::EndsWith(t.name, ".weight");
      Vec& v = values_[t.name];
      for (float f : t.values) {
        switch (rounding) {
          case Rounding::kNone:
            break;
          case Rounding::kAllBf16:
            f = RoundToBf16(f);
            break;
          case Rounding::kMatrixBf16:
            if (matrix) f = RoundToBf16(f);
            break;
          case Rounding::kAllF16:
            f = RoundToF16(f);
            break;
        }
        v.push_back(f);
      }
      shapes_[t.name] = t.shape;
    }
  }
  const Vec& operator[](const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) {
      ADD_FAILURE() << "reference: no tensor " << name;
      static const Vec kEmpty;
      return kEmpty;
    }
    return it->second;
  }
  int64_t Dim(const std::string& name, int i) const {
    return shapes_.at(name).at(i);
  }

 private:
  std::map<std::string, Vec> values_;
  std::map<std::string, std::vector<int64_t>> shapes_;
};

inline double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// LayerNorm over the whole vector, population variance.
inline Vec LayerNorm(const Vec& x, const Vec& w, const Vec& b, double eps) {
  const size_t n = x.size();
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= n;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= n;
  Vec y(n);
  for (size_t i = 0; i < n; ++i) {
    y[i] = (x[i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
  }
  return y;
}

// LayerNorm of each of `groups` equal slices, with the affine parameters of
// the whole vector.
inline Vec GroupNorm(const Vec& x, int groups, const Vec& w, const Vec& b,
                     double eps) {
  const size_t n = x.size() / groups;
  Vec y(x.size());
  for (int g = 0; g < groups; ++g) {
    Vec slice(x.begin() + g * n, x.begin() + (g + 1) * n);
    Vec ws(w.begin() + g * n, w.begin() + (g + 1) * n);
    Vec bs(b.begin() + g * n, b.begin() + (g + 1) * n);
    Vec out = LayerNorm(slice, ws, bs, eps);
    std::copy(out.begin(), out.end(), y.begin() + g * n);
  }
  return y;
}

// y = W x for a Linear weight W [out, in].
inline Vec Linear(const Vec& w, const Vec& x) {
  const size_t in = x.size(), out = w.size() / in;
  Vec y(out);
  for (size_t o = 0; o < out; ++o) {
    double sum = 0;
    for (size_t i = 0; i < in; ++i) sum += w[o * in + i] * x[i];
    y[o] = sum;
  }
  return y;
}

// y = x @ M for a LoRA factor M [in, out], read from `offset` on.
inline Vec Times(const Vec& x, const Vec& m, size_t out, size_t offset = 0) {
  Vec y(out, 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    for (size_t o = 0; o < out; ++o) y[o] += x[i] * m[offset + i * out + o];
  }
  return y;
}

inline Vec Map(Vec x, double (*f)(double)) {
  for (double& v : x) v = f(v);
  return x;
}

inline Vec Slice(const Vec& x, size_t begin, size_t n) {
  return Vec(x.begin() + begin, x.begin() + begin + n);
}

inline double Tanh(double x) { return std::tanh(x); }
inline double Silu(double x) { return x * Sigmoid(x); }
inline double ReluSquared(double x) { return x > 0 ? x * x : 0; }

// One session of the reference: the state in the engine's canonical layout
// (docs/state-format.md), as doubles.
class Reference {
 public:
  Reference(const std::string& arch, const Weights& w, const ModelConfig& c)
      : arch_(arch), w_(w), c_(c) {
    const size_t C = c.n_embd,
                 HNN = size_t{1} * c.n_head * c.head_size * c.head_size;
    layer_floats_ = arch == "v4" ? 5 * C : 2 * C + HNN;
    state_.assign(layer_floats_ * c.n_layer, 0.0);
    if (arch == "v4") {
      for (int l = 0; l < c.n_layer; ++l) {
        std::fill_n(state_.begin() + l * layer_floats_ + 3 * C, C, -1e30);
      }
    }
  }

  const Vec& state() const { return state_; }

  Vec Step(int token) {
    const size_t C = c_.n_embd;
    Vec x = LayerNorm(Slice(w_["emb.weight"], size_t(token) * C, C),
                      w_["blocks.0.ln0.weight"], w_["blocks.0.ln0.bias"], 1e-5);
    Vec v_first;
    for (int l = 0; l < c_.n_layer; ++l) {
      double* s = state_.data() + l * layer_floats_;
      const std::string b = absl::StrCat("blocks.", l, ".");
      Vec xa = LayerNorm(x, w_[b + "ln1.weight"], w_[b + "ln1.bias"], 1e-5);
      Vec att = arch_ == "x070"   ? Rwkv7Att(b + "att.", l, xa, s, v_first)
                : arch_ == "v4"   ? Rwkv4Att(b + "att.", xa, s)
                : arch_ == "x052" ? Rwkv5Att(b + "att.", xa, s)
                                  : Rwkv6Att(b + "att.", xa, s);
      for (size_t i = 0; i < C; ++i) x[i] += att[i];
      Vec xf = LayerNorm(x, w_[b + "ln2.weight"], w_[b + "ln2.bias"], 1e-5);
      double* ffn_prev = s + layer_floats_ - C;
      Vec ffn = Ffn(b + "ffn.", xf, ffn_prev);
      for (size_t i = 0; i < C; ++i) x[i] += ffn[i];
      std::copy(xf.begin(), xf.end(), ffn_prev);
    }
    return Linear(w_["head.weight"],
                  LayerNorm(x, w_["ln_out.weight"], w_["ln_out.bias"], 1e-5));
  }

 private:
  // x_c = xa + (prev - xa) * mix: the parameter weights the previous token
  // (x060, x070).
  static Vec MixPrevious(const Vec& xa, const double* prev, const Vec& mix) {
    Vec y(xa.size());
    for (size_t i = 0; i < xa.size(); ++i) {
      y[i] = xa[i] + (prev[i] - xa[i]) * mix[i];
    }
    return y;
  }
  // x_c = xx * mix + prev * (1 - mix): the parameter weights the current
  // token (v4, x052).
  static Vec MixCurrent(const Vec& xx, const double* prev, const Vec& mix) {
    Vec y(xx.size());
    for (size_t i = 0; i < xx.size(); ++i) {
      y[i] = xx[i] * mix[i] + prev[i] * (1 - mix[i]);
    }
    return y;
  }

  Vec Rwkv7Att(const std::string& a, int layer, const Vec& xa, double* s,
               Vec& v_first) {
    const size_t C = c_.n_embd, H = c_.n_head, N = c_.head_size;
    auto mix = [&](const char* p) { return MixPrevious(xa, s, w_[a + p]); };
    auto lora = [&](const Vec& x, const std::string& p, double (*inner)(double),
                    const Vec* bias) {
      const size_t d = w_.Dim(a + p + "1", 1);
      Vec y =
          Times(Map(Times(x, w_[a + p + "1"], d), inner), w_[a + p + "2"], C);
      if (bias != nullptr) {
        for (size_t i = 0; i < C; ++i) y[i] += (*bias)[i];
      }
      return y;
    };
    auto identity = [](double v) { return v; };
    Vec r = Linear(w_[a + "receptance.weight"], mix("x_r"));
    Vec k = Linear(w_[a + "key.weight"], mix("x_k"));
    Vec v = Linear(w_[a + "value.weight"], mix("x_v"));
    Vec omega = lora(mix("x_w"), "w", Tanh, &w_[a + "w0"]);
    for (double& o : omega) o = std::exp(-std::exp(-0.5) * Sigmoid(o));
    Vec aa = Map(lora(mix("x_a"), "a", identity, &w_[a + "a0"]), Sigmoid);
    Vec g = lora(mix("x_g"), "g", Sigmoid, nullptr);
    Vec kk(C);
    const Vec& k_k = w_[a + "k_k"];
    for (size_t i = 0; i < C; ++i) kk[i] = k[i] * k_k[i];
    for (size_t h = 0; h < H; ++h) {
      double norm = 0;
      for (size_t j = 0; j < N; ++j) norm += kk[h * N + j] * kk[h * N + j];
      norm = std::max(std::sqrt(norm), 1e-12);
      for (size_t j = 0; j < N; ++j) kk[h * N + j] /= norm;
    }
    const Vec& k_a = w_[a + "k_a"];
    for (size_t i = 0; i < C; ++i) {
      k[i] *= 1 + (aa[i] - 1) * k_a[i];
    }
    if (layer == 0) {
      v_first = v;
    } else {
      Vec gate = Map(lora(mix("x_v"), "v", identity, &w_[a + "v0"]), Sigmoid);
      for (size_t i = 0; i < C; ++i) v[i] += (v_first[i] - v[i]) * gate[i];
    }
    Vec y(C, 0.0);
    for (size_t h = 0; h < H; ++h) {
      double* S = s + C + h * N * N;  // S[i][j]: i value, j key
      for (size_t i = 0; i < N; ++i) {
        double sa = 0;
        for (size_t m = 0; m < N; ++m) sa += S[i * N + m] * kk[h * N + m];
        for (size_t j = 0; j < N; ++j) {
          const size_t kj = h * N + j;
          S[i * N + j] = S[i * N + j] * omega[kj] - sa * kk[kj] * aa[kj] +
                         v[h * N + i] * k[kj];
        }
        for (size_t j = 0; j < N; ++j)
          y[h * N + i] += S[i * N + j] * r[h * N + j];
      }
    }
    y = GroupNorm(y, H, w_[a + "ln_x.weight"], w_[a + "ln_x.bias"], 64e-5);
    const Vec& r_k = w_[a + "r_k"];
    for (size_t h = 0; h < H; ++h) {
      double bonus = 0;
      for (size_t j = 0; j < N; ++j) {
        bonus += r[h * N + j] * k[h * N + j] * r_k[h * N + j];
      }
      for (size_t i = 0; i < N; ++i) y[h * N + i] += bonus * v[h * N + i];
    }
    for (size_t i = 0; i < C; ++i) y[i] *= g[i];
    std::copy(xa.begin(), xa.end(), s);
    return Linear(w_[a + "output.weight"], y);
  }

  Vec Rwkv4Att(const std::string& a, const Vec& xx, double* s) {
    const size_t C = c_.n_embd;
    double *aa = s + C, *bb = s + 2 * C, *pp = s + 3 * C;
    Vec r = Map(Linear(w_[a + "receptance.weight"],
                       MixCurrent(xx, s, w_[a + "time_mix_r"])),
                Sigmoid);
    Vec k =
        Linear(w_[a + "key.weight"], MixCurrent(xx, s, w_[a + "time_mix_k"]));
    Vec v =
        Linear(w_[a + "value.weight"], MixCurrent(xx, s, w_[a + "time_mix_v"]));
    Vec out(C);
    const Vec &decay = w_[a + "time_decay"], &first = w_[a + "time_first"];
    for (size_t i = 0; i < C; ++i) {
      const double w = -std::exp(decay[i]);
      const double u = first[i];
      double q = std::max(pp[i], u + k[i]);
      double e1 = std::exp(pp[i] - q), e2 = std::exp(u + k[i] - q);
      out[i] = r[i] * (e1 * aa[i] + e2 * v[i]) / (e1 * bb[i] + e2);
      q = std::max(w + pp[i], k[i]);
      e1 = std::exp(w + pp[i] - q);
      e2 = std::exp(k[i] - q);
      aa[i] = e1 * aa[i] + e2 * v[i];
      bb[i] = e1 * bb[i] + e2;
      pp[i] = q;
    }
    std::copy(xx.begin(), xx.end(), s);
    return Linear(w_[a + "output.weight"], out);
  }

  // The x052 and x060 recurrence, S[i][j] with i key and j value: read out
  // before the update, with the bonus; then decay along the key index.
  Vec KeyValueRecurrence(const std::string& a, const Vec& r, const Vec& k,
                         const Vec& v, const Vec& omega, double* s) {
    const size_t C = c_.n_embd, H = c_.n_head, N = c_.head_size;
    const Vec& u = w_[a + "time_faaaa"];
    Vec y(C, 0.0);
    for (size_t h = 0; h < H; ++h) {
      double* S = s + C + h * N * N;
      for (size_t i = 0; i < N; ++i) {
        const size_t ki = h * N + i;
        for (size_t j = 0; j < N; ++j) {
          const double kv = k[ki] * v[h * N + j];
          y[h * N + j] += r[ki] * (u[ki] * kv + S[i * N + j]);
          S[i * N + j] = omega[ki] * S[i * N + j] + kv;
        }
      }
    }
    return GroupNorm(y, H, w_[a + "ln_x.weight"], w_[a + "ln_x.bias"], 64e-5);
  }

  Vec Rwkv5Att(const std::string& a, const Vec& xx, double* s) {
    const size_t C = c_.n_embd;
    auto proj = [&](const char* m, const char* mix) {
      return Linear(w_[a + m + ".weight"], MixCurrent(xx, s, w_[a + mix]));
    };
    Vec r = proj("receptance", "time_mix_r"), k = proj("key", "time_mix_k");
    Vec v = proj("value", "time_mix_v");
    Vec g = Map(proj("gate", "time_mix_g"), Silu);
    Vec omega = w_[a + "time_decay"];
    for (double& o : omega) o = std::exp(-std::exp(o));
    Vec y = KeyValueRecurrence(a, r, k, v, omega, s);
    for (size_t i = 0; i < C; ++i) y[i] *= g[i];
    std::copy(xx.begin(), xx.end(), s);
    return Linear(w_[a + "output.weight"], y);
  }

  Vec Rwkv6Att(const std::string& a, const Vec& xx, double* s) {
    const size_t C = c_.n_embd;
    const size_t dm = w_.Dim(a + "time_maa_w2", 1);
    const size_t dd = w_.Dim(a + "time_decay_w1", 1);
    Vec xxx = MixPrevious(xx, s, w_[a + "time_maa_x"]);
    Vec m = Map(Times(xxx, w_[a + "time_maa_w1"], 5 * dm), Tanh);
    Vec mixed[5];  // w, k, v, r, g
    const char* names[5] = {"w", "k", "v", "r", "g"};
    for (size_t f = 0; f < 5; ++f) {
      Vec mf =
          Times(Slice(m, f * dm, dm), w_[a + "time_maa_w2"], C, f * dm * C);
      const Vec& maa = w_[a + "time_maa_" + names[f]];
      mixed[f].resize(C);
      for (size_t i = 0; i < C; ++i) {
        mixed[f][i] = xx[i] + (s[i] - xx[i]) * (maa[i] + mf[i]);
      }
    }
    Vec r = Linear(w_[a + "receptance.weight"], mixed[3]);
    Vec k = Linear(w_[a + "key.weight"], mixed[1]);
    Vec v = Linear(w_[a + "value.weight"], mixed[2]);
    Vec g = Map(Linear(w_[a + "gate.weight"], mixed[4]), Silu);
    Vec omega = Times(Map(Times(mixed[0], w_[a + "time_decay_w1"], dd), Tanh),
                      w_[a + "time_decay_w2"], C);
    const Vec& decay = w_[a + "time_decay"];
    for (size_t i = 0; i < C; ++i) {
      omega[i] = std::exp(-std::exp(decay[i] + omega[i]));
    }
    Vec y = KeyValueRecurrence(a, r, k, v, omega, s);
    for (size_t i = 0; i < C; ++i) y[i] *= g[i];
    std::copy(xx.begin(), xx.end(), s);
    return Linear(w_[a + "output.weight"], y);
  }

  Vec Ffn(const std::string& f, const Vec& xf, const double* prev) {
    if (arch_ == "x070") {
      Vec hidden = Map(
          Linear(w_[f + "key.weight"], MixPrevious(xf, prev, w_[f + "x_k"])),
          ReluSquared);
      return Linear(w_[f + "value.weight"], hidden);
    }
    Vec xk, xr;
    if (arch_ == "x060") {
      xk = MixPrevious(xf, prev, w_[f + "time_maa_k"]);
      xr = MixPrevious(xf, prev, w_[f + "time_maa_r"]);
    } else {
      xk = MixCurrent(xf, prev, w_[f + "time_mix_k"]);
      xr = MixCurrent(xf, prev, w_[f + "time_mix_r"]);
    }
    Vec hidden = Map(Linear(w_[f + "key.weight"], xk), ReluSquared);
    Vec out = Linear(w_[f + "value.weight"], hidden);
    Vec gate = Map(Linear(w_[f + "receptance.weight"], xr), Sigmoid);
    for (size_t i = 0; i < out.size(); ++i) out[i] *= gate[i];
    return out;
  }

  std::string arch_;
  const Weights& w_;
  ModelConfig c_;
  size_t layer_floats_ = 0;
  Vec state_;
};

}  // namespace statestream::engine::reference

#endif  // STATESTREAM_WORKER_ENGINE_REFERENCE_RWKV_H_
