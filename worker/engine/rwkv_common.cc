// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/rwkv_common.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_file_internal.h"

namespace statestream::engine::rwkv {

void Workspace::Reserve(int rows) { rows_ = std::max(rows_, rows); }

float* Workspace::Get(int id, size_t floats_per_row) {
  if (bufs_.size() <= static_cast<size_t>(id)) bufs_.resize(id + 1);
  std::vector<float>& b = bufs_[id];
  const size_t n = floats_per_row * static_cast<size_t>(rows_);
  if (b.size() < n) b.resize(n);
  return b.data();
}

void IndexRows(const std::vector<Segment>& segs, int rows,
               std::vector<int>* seg_of_row) {
  seg_of_row->resize(rows);
  for (size_t i = 0; i < segs.size(); ++i) {
    std::fill(seg_of_row->begin() + segs[i].begin,
              seg_of_row->begin() + segs[i].end, static_cast<int>(i));
  }
}

void ChunkOutputs(const Kernels& k, ThreadPool& pool, WeightStream* stream,
                  const Matrix& head, const float* ln_w, const float* ln_b,
                  const ChunkRows& c, const float* x, int C, bool serial,
                  std::vector<float>& normed, std::vector<float>& logits) {
  const int V = head.rows;
  // `from` the chunk's row of each requested position, `dest` its logits.
  std::vector<int> from;
  std::vector<float*> dest;
  for (const Segment& g : c.segs) {
    const SequenceWork& w = c.batch[g.seq];
    const int token_end = g.token_begin + (g.end - g.begin);
    if (w.last_hidden != nullptr &&
        token_end == static_cast<int>(w.tokens.size())) {
      std::copy_n(x + static_cast<int64_t>(g.end - 1) * C, C, w.last_hidden);
    }
    for (size_t j = 0; j < w.logit_positions.size(); ++j) {
      const int p = w.logit_positions[j];
      if (p < g.token_begin || p >= token_end) continue;
      from.push_back(g.begin + (p - g.token_begin));
      dest.push_back(w.logits + static_cast<int64_t>(j) * V);
    }
  }
  const int n = static_cast<int>(from.size());
  if (n == 0) return;
  normed.resize(static_cast<size_t>(n) * C);
  ForRows(pool, n, serial, [&](int i) {
    LayerNorm(x + static_cast<int64_t>(from[i]) * C, C, ln_w, ln_b,
              kLayerNormEps, &normed[static_cast<size_t>(i) * C]);
  });
  // (Addresses compared as integers: the rows may be separate buffers.)
  auto gap = [&](int i) {
    return static_cast<int64_t>(reinterpret_cast<uintptr_t>(dest[i]) -
                                reinterpret_cast<uintptr_t>(dest[i - 1]));
  };
  const int64_t bytes = n > 1 ? gap(1) : int64_t{V} * 4;
  const int64_t stride = bytes / 4;
  bool even = bytes % 4 == 0 && stride >= V &&
              stride <= std::numeric_limits<int>::max();
  for (int i = 2; even && i < n; ++i) even = gap(i) == bytes;
  if (even) {
    MatMul(k, pool, head, normed.data(), C, n, dest[0],
           static_cast<int>(stride), stream);
    return;
  }
  logits.resize(static_cast<size_t>(n) * V);
  MatMul(k, pool, head, normed.data(), C, n, logits.data(), V, stream);
  for (int i = 0; i < n; ++i) {
    std::copy_n(&logits[static_cast<size_t>(i) * V], V, dest[i]);
  }
}

absl::Status LoadChannelMix(WeightLoader& ld, int l, const char* mix_k,
                            const char* mix_r, int C, int F,
                            ChannelMixWeights* out) {
  const std::string b = absl::StrCat("blocks.", l, ".");
  const std::string f = b + "ffn.";
  SS_RETURN_IF_ERROR(ld.Vector(b + "ln2.weight", C, &out->ln_w));
  SS_RETURN_IF_ERROR(ld.Vector(b + "ln2.bias", C, &out->ln_b));
  SS_RETURN_IF_ERROR(ld.Vector(f + mix_k, C, &out->mix_k));
  SS_RETURN_IF_ERROR(ld.Vector(f + mix_r, C, &out->mix_r));
  SS_RETURN_IF_ERROR(ld.Mat(f + "key.weight", F, C, &out->key));
  SS_RETURN_IF_ERROR(ld.Mat(f + "receptance.weight", C, C, &out->receptance));
  return ld.Mat(f + "value.weight", C, F, &out->value);
}

SS_ROW_CLONES void Mix(MixStyle style, const float* cur, const float* prev,
                       const float* mu, int n, float* out) {
  if (style == MixStyle::kCurrent) {
    for (int i = 0; i < n; ++i) {
      out[i] = cur[i] * mu[i] + prev[i] * (1.0f - mu[i]);
    }
  } else {
    for (int i = 0; i < n; ++i) out[i] = cur[i] + (prev[i] - cur[i]) * mu[i];
  }
}

SS_ROW_CLONES void TanhRow(float* x, int n) {
  for (int i = 0; i < n; ++i) x[i] = Tanh(x[i]);
}

SS_ROW_CLONES void SiluRow(float* x, int n) {
  for (int i = 0; i < n; ++i) x[i] = x[i] * Sigmoid(x[i]);
}

SS_ROW_CLONES void AddRow(const float* y, int n, float* x) {
  for (int i = 0; i < n; ++i) x[i] += y[i];
}

SS_ROW_CLONES void MulRow(const float* y, int n, float* x) {
  for (int i = 0; i < n; ++i) x[i] *= y[i];
}

namespace {

// kv = sigmoid(r) * kv; x += kv.
SS_ROW_CLONES void GateAndAddRow(const float* r, int n, float* kv, float* x) {
  for (int i = 0; i < n; ++i) kv[i] = Sigmoid(r[i]) * kv[i];
  for (int i = 0; i < n; ++i) x[i] += kv[i];
}

}  // namespace

// Lanes along the value channel j: every element's operations and their
// order are the same in each clone.
SS_ROW_CLONES void WkvStep5(float* __restrict s, int n,
                            const float* __restrict r,
                            const float* __restrict k,
                            const float* __restrict v,
                            const float* __restrict w,
                            const float* __restrict u, float* __restrict y,
                            const float* next) {
  for (int j = 0; j < n; ++j) y[j] = 0.0f;
  for (int i = 0; i < n; ++i) {
    float* __restrict si = s + static_cast<int64_t>(i) * n;
    if (next != nullptr) {
      // The same row of the next state, in step with this walk.
      const float* ahead = next + static_cast<int64_t>(i) * n;
      for (int j = 0; j < n; j += 16) __builtin_prefetch(ahead + j, 1, 3);
    }
    const float ri = r[i], ki = k[i], ui = u[i], wi = w[i];
    for (int j = 0; j < n; ++j) {
      const float a = ki * v[j];
      y[j] += ri * (ui * a + si[j]);
      si[j] = a + wi * si[j];
    }
  }
}

void ChunkedModel::LayerNormAndMix(const Chunk& c, const float* residual,
                                   const std::vector<float>& ln_w,
                                   const std::vector<float>& ln_b, float* xx,
                                   MixStyle style,
                                   std::initializer_list<ShiftMix> mixes,
                                   const std::function<float*(float*)>& shift) {
  const int C = this->C();
  ForRows(c.rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    if (residual != nullptr) AddRow(residual + o, C, c.x + o);
    LayerNorm(c.x + o, C, ln_w.data(), ln_b.data(), kLayerNormEps, xx + o);
  });
  ForRows(c.rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    const float* prev = Prev(c, xx, C, t, shift);
    for (const ShiftMix& m : mixes)
      Mix(style, xx + o, prev, m.mu, C, m.out + o);
    SaveOneRowShift(c, xx, C, t, shift);
  });
}

void ChunkedModel::ChannelMix(int l, const Chunk& c, const ChannelMixWeights& w,
                              MixStyle style,
                              const std::function<float*(float*)>& shift,
                              const float* att_out) {
  const int C = this->C(), F = info().config.dim_ffn, rows = c.rows;
  // Buffers 1 and 2 are free until the logits; att_out is none of these.
  float* xx = c.ws.Get(1, C);
  float* xk = c.ws.Get(kFirstLayerBuffer, C);
  float* xr = c.ws.Get(kFirstLayerBuffer + 1, C);
  float* r = c.ws.Get(kFirstLayerBuffer + 2, C);
  float* kv = c.ws.Get(kFirstLayerBuffer + 3, C);
  float* hidden = c.ws.Get(kFirstLayerBuffer + 4, F);
  LayerNormAndMix(c, att_out, w.ln_w, w.ln_b, xx, style,
                  {{w.mix_k.data(), xk}, {w.mix_r.data(), xr}}, shift);
  Trace(l, "ln2_out", xx, C);
  Muls({{&w.receptance, xr, C, r, C}, {&w.key, xk, C, hidden, F}}, rows);
  ForRows(rows,
          [&](int t) { ReluSquare(hidden + static_cast<int64_t>(t) * F, F); });
  Mul(w.value, hidden, rows, kv);
  ForRows(rows, [&](int t) {
    const int64_t o = static_cast<int64_t>(t) * C;
    GateAndAddRow(r + o, C, kv + o, c.x + o);
  });
  Trace(l, "ffn_out", kv, C);
  Trace(l, "x_out", c.x, C);
  SaveLongShifts(c, xx, C, shift);
}

ChunkedModel::ChunkedModel(ModelInfo info,
                           std::shared_ptr<const WeightFile> file,
                           const Kernels& kernels, const ModelOptions& options,
                           int threads)
    : Model(std::move(info)),
      k_(kernels),
      pool_(threads),
      file_(std::move(file)),
      trace_(options.trace) {}

absl::Status ChunkedModel::LoadEmbeddingAndHead(WeightLoader& ld) {
  SS_RETURN_IF_ERROR(LoadEmbedding(ld));
  return LoadHead(ld);
}

absl::Status ChunkedModel::LoadEmbedding(WeightLoader& ld) {
  const int C = this->C(), V = info().config.vocab_size;
  SS_RETURN_IF_ERROR(ld.Mat("emb.weight", V, C, &emb_));
  SS_RETURN_IF_ERROR(ld.Vector("blocks.0.ln0.weight", C, &ln0_w_));
  return ld.Vector("blocks.0.ln0.bias", C, &ln0_b_);
}

absl::Status ChunkedModel::LoadHead(WeightLoader& ld) {
  const int C = this->C(), V = info().config.vocab_size;
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.weight", C, &ln_out_w_));
  SS_RETURN_IF_ERROR(ld.Vector("ln_out.bias", C, &ln_out_b_));
  return ld.Mat("head.weight", V, C, &head_);
}

void ChunkedModel::RunChunk(absl::Span<const SequenceWork> batch,
                            const std::vector<Segment>& segs,
                            const int32_t* tokens, int rows, Workspace& ws) {
  const ModelConfig& cfg = info().config;
  const int C = cfg.n_embd;
  IndexRows(segs, rows, &ws.seg_of_row);
  float* x = ws.Get(0, C);
  ForRows(rows, [&](int t) {
    float* xt = x + static_cast<int64_t>(t) * C;
    emb_.ReadRow(tokens[t], xt);
    LayerNorm(xt, C, ln0_w_.data(), ln0_b_.data(), kLayerNormEps, xt);
  });
  Trace(-1, "x_after_ln0", x, C);
  const Chunk chunk{{batch, segs, ws.seg_of_row}, rows, x, ws};
  for (int l = 0; l < cfg.n_layer; ++l) Block(l, chunk);
  ChunkOutputs(k_, pool_, &stream_, head_, ln_out_w_.data(), ln_out_b_.data(),
               chunk, x, C, static_cast<bool>(trace_), ws.normed, ws.logits);
}

absl::Status ChunkedModel::Logits(const float* hidden, int rows,
                                  float* logits) {
  if (rows < 0 || (rows > 0 && (hidden == nullptr || logits == nullptr))) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "Logits: bad rows or null buffer");
  }
  const int C = this->C(), V = info().config.vocab_size;
  // Up to a chunk's rows in one product, as Forward's logits rows: the head
  // is read once per kMaxRows rows (bit-identical to one row at a time).
  std::vector<float> normed(static_cast<size_t>(std::min(rows, kMaxRows)) * C);
  for (int first = 0; first < rows; first += kMaxRows) {
    const int n = std::min(kMaxRows, rows - first);
    for (int i = 0; i < n; ++i) {
      LayerNorm(hidden + static_cast<int64_t>(first + i) * C, C,
                ln_out_w_.data(), ln_out_b_.data(), kLayerNormEps,
                normed.data() + static_cast<int64_t>(i) * C);
    }
    MatMul(k_, pool_, head_, normed.data(), C, n,
           logits + static_cast<int64_t>(first) * V, V, &stream_);
  }
  return absl::OkStatus();
}

absl::Status ChunkedModel::Forward(absl::Span<const SequenceWork> batch) {
  SS_RETURN_IF_ERROR(ValidateBatch(batch));
  // A workspace kept from an earlier call: buffers are grown once, not
  // allocated and cleared on every decode step.
  std::unique_ptr<Workspace> owned;
  {
    absl::MutexLock lock(&workspace_mu_);
    if (!free_workspaces_.empty()) {
      owned = std::move(free_workspaces_.back());
      free_workspaces_.pop_back();
    }
  }
  if (owned == nullptr) owned = std::make_unique<Workspace>();
  Workspace& ws = *owned;
  size_t total = 0;
  for (const SequenceWork& w : batch) total += w.tokens.size();
  ws.Reserve(static_cast<int>(std::min<size_t>(total, kMaxRows)));
  std::vector<Segment> segs;
  int32_t tokens[kMaxRows];
  int rows = 0;
  for (size_t q = 0; q < batch.size(); ++q) {
    const SequenceWork& w = batch[q];
    size_t i = 0;
    while (i < w.tokens.size()) {
      if (rows == kMaxRows) {
        RunChunk(batch, segs, tokens, rows, ws);
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
  if (rows > 0) RunChunk(batch, segs, tokens, rows, ws);
  absl::MutexLock lock(&workspace_mu_);
  free_workspaces_.push_back(std::move(owned));
  return absl::OkStatus();
}

absl::StatusOr<EngineSetup> ResolveEngineOptions(const ModelOptions& options) {
  const Kernels* kernels = options.kernels.empty()
                               ? &GetKernels()
                               : GetKernelsByName(options.kernels.c_str());
  if (kernels == nullptr) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        absl::StrCat("kernels '", options.kernels,
                     "' are unknown or not available on this CPU (builds: ",
                     kKernelBuildNames, ")"));
  }
  int threads = options.threads;
  if (threads <= 0) {
    threads = AvailableCpus();
  }
  return EngineSetup{kernels, threads};
}

absl::Status BadModel(absl::string_view what) {
  return InvalidArgumentError(Reason::kInvalidModelFile, what);
}

absl::Status Dims2(WeightLoader& ld, const std::string& name, int* d0,
                   int* d1) {
  SS_ASSIGN_OR_RETURN(std::vector<int64_t> s, ld.Shape(name));
  if (s.size() != 2 || s[0] <= 0 || s[1] <= 0 || s[0] > (1 << 24) ||
      s[1] > (1 << 24)) {
    return BadModel(absl::StrCat(name, " must be a non-empty 2-D tensor"));
  }
  *d0 = static_cast<int>(s[0]);
  *d1 = static_cast<int>(s[1]);
  return absl::OkStatus();
}

absl::Status CheckHeadShape(WeightLoader& ld, const std::string& name,
                            const ModelConfig& c) {
  int h, n;
  SS_RETURN_IF_ERROR(Dims2(ld, name, &h, &n));
  if (h != c.n_head || n != c.head_size) {
    return BadModel(absl::StrCat(name, " is [", h, ",", n, "], expected [",
                                 c.n_head, ",", c.head_size, "]"));
  }
  return absl::OkStatus();
}

absl::Status ReadCommonConfig(const WeightFile& file, WeightLoader& ld,
                              ModelConfig* c) {
  int max_block = -1;
  for (const std::string& name : file.Names()) {
    if (!absl::StartsWith(name, "blocks.")) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
    int idx;
    if (parts.size() < 2 || !absl::SimpleAtoi(parts[1], &idx) || idx < 0 ||
        idx > 4096) {
      // The name is the file's: escaped and cut (internal::Quoted).
      return BadModel(absl::StrCat("bad block index in tensor name ",
                                   internal::Quoted(name)));
    }
    max_block = std::max(max_block, idx);
  }
  if (max_block < 0) return BadModel("no blocks.N tensors");
  c->n_layer = max_block + 1;
  int unused;
  SS_RETURN_IF_ERROR(Dims2(ld, "emb.weight", &c->vocab_size, &c->n_embd));
  SS_RETURN_IF_ERROR(
      Dims2(ld, "blocks.0.ffn.key.weight", &c->dim_ffn, &unused));
  // Legal shapes far past any RWKV (the largest: C 5,120, F 4C, vocab
  // 65,536) would size per-call buffers in gigabytes: refuse them here.
  if (c->n_embd > kMaxEmbd || c->dim_ffn > 16 * c->n_embd ||
      c->dim_ffn > kMaxMatrixInputs || c->vocab_size > kMaxVocab) {
    return BadModel(absl::StrCat(
        "n_embd ", c->n_embd, ", dim_ffn ", c->dim_ffn, ", vocab ",
        c->vocab_size, " exceed what the engine takes (n_embd <= ", kMaxEmbd,
        ", dim_ffn <= min(16 n_embd, ", kMaxMatrixInputs,
        "), vocab <= ", kMaxVocab, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckHeads(const ModelConfig& c,
                        std::initializer_list<int> lora_ranks) {
  if (c.head_size > kMaxHeadSize) {
    return BadModel(absl::StrCat("head_size ", c.head_size,
                                 " exceeds what the engine takes (",
                                 kMaxHeadSize, ")"));
  }
  for (int rank : lora_ranks) {
    if (rank > kMaxLoraRank) {
      return BadModel(absl::StrCat("a LoRA rank of ", rank,
                                   " exceeds what the engine takes (",
                                   kMaxLoraRank, ")"));
    }
  }
  return absl::OkStatus();
}

std::string Fingerprint(const ModelConfig& c, const WeightLoader& ld) {
  return absl::StrCat(ArchName(c.arch), "-L", c.n_layer, "-C", c.n_embd, "-H",
                      c.n_head, "-F", c.dim_ffn, "-V", c.vocab_size, "-",
                      ld.Digest());
}

}  // namespace statestream::engine::rwkv
