// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/random_model.h"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "worker/engine/rwkv_common.h"

namespace statestream::engine {
namespace {

// The most layers a random model has (the loader takes block indices up to
// 4096; nothing needs that many random ones).
constexpr int kMaxLayers = 512;

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

int64_t TrainingFfn(int c) { return (c * 7 / 2) / 32 * 32; }

// The FFN width of `arch` for spec `s` (n_embd >= 1): --ffn, else the
// architecture's default.
int64_t FfnWidth(const std::string& arch, const RandomModelSpec& s) {
  if (s.dim_ffn > 0) return s.dim_ffn;
  if (arch == "x070" || arch == "v4") return int64_t{4} * s.n_embd;
  // At least 32, within the 16 n_embd every loader allows.
  return std::min<int64_t>(std::max<int64_t>(32, TrainingFfn(s.n_embd)),
                           int64_t{16} * s.n_embd);
}

}  // namespace

absl::StatusOr<std::vector<NamedTensor>> RandomRwkv7(
    const RandomModelSpec& in) {
  RandomModelSpec s = in;
  if (s.n_layer < 1 || s.n_embd < 1 || s.vocab_size < 1 || s.head_size < 1 ||
      s.n_embd % s.head_size != 0 || s.n_layer > kMaxLayers ||
      s.n_embd > 65536 || s.vocab_size > rwkv::kMaxVocab) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        absl::StrCat("impossible x070 dimensions: layers ", s.n_layer,
                     ", embd ", s.n_embd, ", head size ", s.head_size,
                     ", vocab ", s.vocab_size));
  }
  const int64_t C = s.n_embd, H = s.n_embd / s.head_size, N = s.head_size;
  s.dim_ffn = FfnWidth("x070", s);
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

namespace {

// The parts every v4/x052/x060 file shares: embedding, ln0, per-layer
// ln1/ln2 and the channel mix (mix names differ), ln_out and head. `att`
// adds a layer's time-mix tensors.
std::vector<NamedTensor> RandomRecurrent(
    const RandomModelSpec& s, int64_t F, const char* ffn_mix_prefix, Filler& f,
    const std::function<void(int l, const std::string& a,
                             std::vector<NamedTensor>& t)>& att) {
  const int64_t C = s.n_embd;
  const float mc = 1.0f / std::sqrt(static_cast<float>(C));
  const float mf = 1.0f / std::sqrt(static_cast<float>(F));
  std::vector<NamedTensor> t;
  t.push_back(f.Uniform("emb.weight", {s.vocab_size, C}, -1, 1));
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string b = absl::StrCat("blocks.", l, ".");
    if (l == 0) {
      t.push_back(f.Uniform(b + "ln0.weight", {C}, 0.8f, 1.2f));
      t.push_back(f.Uniform(b + "ln0.bias", {C}, -0.1f, 0.1f));
    }
    t.push_back(f.Uniform(b + "ln1.weight", {C}, 0.8f, 1.2f));
    t.push_back(f.Uniform(b + "ln1.bias", {C}, -0.1f, 0.1f));
    t.push_back(f.Uniform(b + "ln2.weight", {C}, 0.8f, 1.2f));
    t.push_back(f.Uniform(b + "ln2.bias", {C}, -0.1f, 0.1f));
    att(l, b + "att.", t);
    const std::string m = b + "ffn." + ffn_mix_prefix;
    t.push_back(f.Uniform(m + "k", {1, 1, C}, 0, 1));
    t.push_back(f.Uniform(m + "r", {1, 1, C}, 0, 1));
    t.push_back(f.Uniform(b + "ffn.key.weight", {F, C}, -mc, mc));
    t.push_back(f.Uniform(b + "ffn.receptance.weight", {C, C}, -mc, mc));
    t.push_back(f.Uniform(b + "ffn.value.weight", {C, F}, -mf, mf));
  }
  t.push_back(f.Uniform("ln_out.weight", {C}, 0.8f, 1.2f));
  t.push_back(f.Uniform("ln_out.bias", {C}, -0.1f, 0.1f));
  t.push_back(f.Uniform("head.weight", {s.vocab_size, C}, -mc, mc));
  return t;
}

// INVALID_ARGUMENT "ARCH: WHAT VALUE is outside [LO, HI]".
absl::Status OutOfRange(const std::string& arch, absl::string_view what,
                        int64_t value, int64_t lo, int64_t hi,
                        absl::string_view note = "") {
  return InvalidArgumentError(
      Reason::kInvalidArgument,
      absl::StrCat(arch, ": ", what, " ", value, " is outside [", lo, ", ", hi,
                   "]", note));
}

// Dimensions the engine loads: rwkv::ReadCommonConfig and rwkv::CheckHeads
// (worker/engine/rwkv_common.h) refuse bigger checkpoints, which could be
// written but never served and, far past the limits, would not fit in
// memory here (a bad_alloc, not an error). Each error names the dimension
// and its flag of `statestream model random`.
absl::Status CheckDims(const std::string& arch, const RandomModelSpec& s,
                       bool heads) {
  if (s.n_layer < 1 || s.n_layer > kMaxLayers) {
    return OutOfRange(arch, "n_layer (--layers)", s.n_layer, 1, kMaxLayers);
  }
  if (s.n_embd < 1 || s.n_embd > rwkv::kMaxEmbd) {
    return OutOfRange(arch, "n_embd (--embd)", s.n_embd, 1, rwkv::kMaxEmbd);
  }
  if (s.vocab_size < 1 || s.vocab_size > rwkv::kMaxVocab) {
    return OutOfRange(arch, "vocab_size (--vocab)", s.vocab_size, 1,
                      rwkv::kMaxVocab);
  }
  if (heads) {
    if (s.head_size < 1 || s.head_size > rwkv::kMaxHeadSize) {
      return OutOfRange(arch, "head_size (--head-size)", s.head_size, 1,
                        rwkv::kMaxHeadSize);
    }
    // x052's heads are told from x060's by a 2-D att.time_decay [H, N]
    // with N > 1 (docs/architectures.md): one of N = 1 would load as no
    // known architecture.
    if (arch == "x052" && s.head_size < 2) {
      return OutOfRange(arch, "head_size (--head-size)", s.head_size, 2,
                        rwkv::kMaxHeadSize);
    }
    if (s.n_embd % s.head_size != 0) {
      return InvalidArgumentError(
          Reason::kInvalidArgument,
          absl::StrCat(arch, ": n_embd (--embd) ", s.n_embd,
                       " is not a multiple of head_size (--head-size) ",
                       s.head_size));
    }
  }
  const int64_t max_ffn =
      std::min<int64_t>(int64_t{16} * s.n_embd, rwkv::kMaxMatrixInputs);
  const int64_t ffn = s.dim_ffn < 0 ? s.dim_ffn : FfnWidth(arch, s);
  if (ffn < 0 || ffn > max_ffn) {
    return OutOfRange(arch, "dim_ffn (--ffn)", ffn, 0, max_ffn,
                      " (at most 16 n_embd and 131,072; 0: the default)");
  }
  const std::pair<const char*, int> ranks[] = {
      {"d_decay", s.d_decay}, {"d_aaa", s.d_aaa}, {"d_mv", s.d_mv},
      {"d_gate", s.d_gate},   {"d_mix", s.d_mix},
  };
  for (const auto& [name, rank] : ranks) {
    if (rank < 0 || rank > rwkv::kMaxLoraRank) {
      return OutOfRange(arch, absl::StrCat("LoRA rank ", name), rank, 0,
                        rwkv::kMaxLoraRank, " (0: the default)");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<NamedTensor>> RandomModel(const std::string& arch,
                                                     const RandomModelSpec& s) {
  if (arch != "x070" && arch != "x060" && arch != "x052" && arch != "v4") {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                absl::StrCat("unknown architecture '", arch,
                                             "' (x070, x060, x052 or v4)"));
  }
  SS_RETURN_IF_ERROR(CheckDims(arch, s, arch != "v4"));
  if (arch == "x070") return RandomRwkv7(s);
  const int64_t C = s.n_embd;
  const int64_t F = FfnWidth(arch, s);
  const float mc = 1.0f / std::sqrt(static_cast<float>(C));
  Filler f(s.seed);
  if (arch == "v4") {
    return RandomRecurrent(
        s, F, "time_mix_", f,
        [&](int, const std::string& a, std::vector<NamedTensor>& t) {
          t.push_back(f.Uniform(a + "time_decay", {C}, -2, 1));
          t.push_back(f.Uniform(a + "time_first", {C}, -1, 1));
          for (const char* m : {"k", "v", "r"}) {
            t.push_back(f.Uniform(a + "time_mix_" + m, {1, 1, C}, 0, 1));
          }
          for (const char* m : {"key", "value", "receptance", "output"}) {
            t.push_back(f.Uniform(a + m + ".weight", {C, C}, -mc, mc));
          }
        });
  }
  const int64_t H = C / s.head_size, N = s.head_size;
  auto common_att = [&](const std::string& a, std::vector<NamedTensor>& t) {
    t.push_back(f.Uniform(a + "time_faaaa", {H, N}, -0.5f, 0.5f));
    for (const char* m : {"receptance", "key", "value", "gate", "output"}) {
      t.push_back(f.Uniform(a + m + ".weight", {C, C}, -mc, mc));
    }
    t.push_back(f.Uniform(a + "ln_x.weight", {C}, 0.8f, 1.2f));
    t.push_back(f.Uniform(a + "ln_x.bias", {C}, -0.1f, 0.1f));
  };
  if (arch == "x052") {
    return RandomRecurrent(
        s, F, "time_mix_", f,
        [&](int, const std::string& a, std::vector<NamedTensor>& t) {
          for (const char* m : {"k", "v", "r", "g"}) {
            t.push_back(f.Uniform(a + "time_mix_" + m, {1, 1, C}, 0, 1));
          }
          // Per-step decays exp(-exp(d)) between about 0.5 and 0.98.
          t.push_back(f.Uniform(a + "time_decay", {H, N}, -4.0f, -0.4f));
          common_att(a, t);
        });
  }
  const int64_t dm = s.d_mix > 0 ? s.d_mix : 32;
  const int64_t dd = s.d_decay > 0 ? s.d_decay : 64;
  return RandomRecurrent(
      s, F, "time_maa_", f,
      [&](int, const std::string& a, std::vector<NamedTensor>& t) {
        for (const char* m : {"x", "w", "k", "v", "r", "g"}) {
          t.push_back(f.Uniform(a + "time_maa_" + m, {1, 1, C}, 0, 1));
        }
        t.push_back(f.Uniform(a + "time_maa_w1", {C, 5 * dm}, -mc, mc));
        t.push_back(f.Uniform(a + "time_maa_w2", {5, dm, C}, -0.3f, 0.3f));
        t.push_back(f.Uniform(a + "time_decay", {1, 1, C}, -4.0f, -0.4f));
        t.push_back(f.Uniform(a + "time_decay_w1", {C, dd}, -mc, mc));
        t.push_back(f.Uniform(a + "time_decay_w2", {dd, C}, -0.3f, 0.3f));
        common_att(a, t);
      });
}

absl::StatusOr<std::unique_ptr<Model>> LoadRandomModel(
    const std::string& arch, const RandomModelSpec& spec,
    const ModelOptions& options) {
  SS_ASSIGN_OR_RETURN(std::vector<NamedTensor> tensors,
                      RandomModel(arch, spec));
  const std::string tmp = std::filesystem::temp_directory_path().string();
  std::string dir = tmp + "/statestream-XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot create a directory for a random model in ", tmp));
  }
  const std::string path = dir + "/random.safetensors";
  absl::Status written = WriteCheckpoint(path, tensors, DType::kF32);
  absl::StatusOr<std::unique_ptr<Model>> model =
      written.ok() ? LoadModel(path, options)
                   : absl::StatusOr<std::unique_ptr<Model>>(written);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return model;
}

}  // namespace statestream::engine
