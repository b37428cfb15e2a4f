// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/random_model.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace statestream::engine {
namespace {

// LoRA ranks of the RWKV-7 training code for width c (rounded to 32).
int LoraRank(double factor, double exponent, int c) {
  int r =
      static_cast<int>(std::round(factor * std::pow(c, exponent) / 32.0)) * 32;
  return r < 32 ? 32 : r;
}

class Filler {
 public:
  explicit Filler(uint64_t seed) : rng_(seed) {}
  NamedTensor Uniform(std::string name, std::vector<int64_t> shape, float lo,
                      float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    NamedTensor t{std::move(name), std::move(shape), {}};
    int64_t n = 1;
    for (int64_t s : t.shape) n *= s;
    t.values.resize(n);
    for (float& v : t.values) v = d(rng_);
    return t;
  }
  NamedTensor Const(std::string name, std::vector<int64_t> shape, float c) {
    return Uniform(std::move(name), std::move(shape), c, c);
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

absl::StatusOr<std::vector<NamedTensor>> RandomRwkv7(
    const RandomModelSpec& in) {
  RandomModelSpec s = in;
  if (s.n_layer < 1 || s.n_embd < 1 || s.vocab_size < 1 || s.head_size < 1 ||
      s.n_embd % s.head_size != 0 || s.n_layer > 512 || s.n_embd > 65536 ||
      s.vocab_size > (1 << 20)) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        absl::StrCat("impossible x070 dimensions: layers ", s.n_layer,
                     ", embd ", s.n_embd, ", head size ", s.head_size,
                     ", vocab ", s.vocab_size));
  }
  const int64_t C = s.n_embd, H = s.n_embd / s.head_size, N = s.head_size;
  if (s.dim_ffn <= 0) s.dim_ffn = 4 * s.n_embd;
  if (s.d_decay <= 0) s.d_decay = LoraRank(1.8, 0.5, s.n_embd);
  if (s.d_aaa <= 0) s.d_aaa = LoraRank(1.8, 0.5, s.n_embd);
  if (s.d_mv <= 0) s.d_mv = LoraRank(1.3, 0.5, s.n_embd);
  if (s.d_gate <= 0) s.d_gate = LoraRank(0.6, 0.8, s.n_embd);
  const int64_t F = s.dim_ffn;
  Filler f(s.seed);
  const float mc = 1.0f / std::sqrt(static_cast<float>(C));
  const float mf = 1.0f / std::sqrt(static_cast<float>(F));
  std::vector<NamedTensor> t;
  t.push_back(f.Uniform("emb.weight", {s.vocab_size, C}, -1, 1));
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string b = absl::StrCat("blocks.", l, ".");
    const std::string a = b + "att.";
    if (l == 0) {
      t.push_back(f.Uniform(b + "ln0.weight", {C}, 0.8f, 1.2f));
      t.push_back(f.Uniform(b + "ln0.bias", {C}, -0.1f, 0.1f));
    }
    t.push_back(f.Uniform(b + "ln1.weight", {C}, 0.8f, 1.2f));
    t.push_back(f.Uniform(b + "ln1.bias", {C}, -0.1f, 0.1f));
    t.push_back(f.Uniform(b + "ln2.weight", {C}, 0.8f, 1.2f));
    t.push_back(f.Uniform(b + "ln2.bias", {C}, -0.1f, 0.1f));
    for (const char* x : {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"}) {
      t.push_back(f.Uniform(a + x, {1, 1, C}, 0, 1));
    }
    auto lora = [&](const std::string& p, int d) {
      t.push_back(f.Uniform(a + p + "1", {C, d}, -mc, mc));
      t.push_back(f.Uniform(a + p + "2", {d, C}, -0.5f, 0.5f));
    };
    t.push_back(f.Uniform(a + "w0", {1, 1, C}, -2, 1));
    lora("w", s.d_decay);
    t.push_back(f.Uniform(a + "a0", {1, 1, C}, -1, 1));
    lora("a", s.d_aaa);
    if (l > 0) {
      t.push_back(f.Uniform(a + "v0", {1, 1, C}, -1, 1));
      lora("v", s.d_mv);
    }
    lora("g", s.d_gate);
    t.push_back(f.Uniform(a + "k_k", {1, 1, C}, 0.5f, 1.0f));
    t.push_back(f.Uniform(a + "k_a", {1, 1, C}, 0.5f, 1.5f));
    t.push_back(f.Uniform(a + "r_k", {H, N}, -0.5f, 0.5f));
    for (const char* m : {"receptance", "key", "value", "output"}) {
      t.push_back(f.Uniform(a + m + ".weight", {C, C}, -mc, mc));
    }
    t.push_back(f.Uniform(a + "ln_x.weight", {C}, 0.8f, 1.2f));
    t.push_back(f.Uniform(a + "ln_x.bias", {C}, -0.1f, 0.1f));
    t.push_back(f.Uniform(b + "ffn.x_k", {1, 1, C}, 0, 1));
    t.push_back(f.Uniform(b + "ffn.key.weight", {F, C}, -mc, mc));
    t.push_back(f.Uniform(b + "ffn.value.weight", {C, F}, -mf, mf));
  }
  t.push_back(f.Uniform("ln_out.weight", {C}, 0.8f, 1.2f));
  t.push_back(f.Uniform("ln_out.bias", {C}, -0.1f, 0.1f));
  t.push_back(f.Uniform("head.weight", {s.vocab_size, C}, -mc, mc));
  return t;
}

}  // namespace statestream::engine
