// SPDX-License-Identifier: Apache-2.0
// What the RWKV-4, RWKV-5.2 and RWKV-6 CPU engines share: packing a batch
// into chunks of rows, the embedding and the output head, token shift, and
// reading dimensions from tensor shapes. Each architecture derives from
// ChunkedModel and supplies one layer (Block). Same determinism rules as
// rwkv7.cc (docs/engine.md): projections are MatMul over the chunk's rows,
// the recurrence runs per (sequence, head) task with a fixed loop order.
// Internal to the engine; use LoadModel() in model.h.
#ifndef STATESTREAM_WORKER_ENGINE_RWKV_COMMON_H_
#define STATESTREAM_WORKER_ENGINE_RWKV_COMMON_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "worker/engine/kernels.h"
#include "worker/engine/model.h"
#include "worker/engine/ops.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine::rwkv {

inline constexpr float kLayerNormEps = 1e-5f;
inline constexpr float kGroupNormEps = 64e-5f;  // x052 and x060 ln_x
inline constexpr int kMaxRows = 64;             // rows per chunk
// Workspace buffers 0..2 belong to ChunkedModel; layers use the others.
inline constexpr int kFirstLayerBuffer = 3;

// The per-layer state of x052, x060 and x070: att_x_prev[C], wkv[H][N][N],
// ffn_x_prev[C] (docs/state-format.md; the wkv index order differs).
class MatrixStateLayout {
 public:
  explicit MatrixStateLayout(const ModelConfig& c)
      : c_(c.n_embd),
        stride_(2 * int64_t{c.n_embd} +
                int64_t{c.n_head} * c.head_size * c.head_size) {}
  float* AttShift(float* state, int l) const { return state + l * stride_; }
  float* Wkv(float* state, int l) const { return AttShift(state, l) + c_; }
  float* FfnShift(float* state, int l) const {
    return state + (l + 1) * stride_ - c_;
  }

 private:
  int64_t c_;
  int64_t stride_;
};

// The rows of one chunk that belong to one sequence.
struct Segment {
  int seq;          // index into the batch
  int begin, end;   // rows [begin, end) of the chunk
  int token_begin;  // index of the segment's first token in the sequence
};

// Scratch for one Forward call: numbered [kMaxRows][width] buffers, grown on
// first use and kept by the model for later calls; every buffer is written
// before it is read within a chunk.
class Workspace {
 public:
  float* Get(int id, size_t floats_per_row);

 private:
  std::vector<std::vector<float>> bufs_;
};

// One chunk as a layer sees it.
struct Chunk {
  absl::Span<const SequenceWork> batch;
  const std::vector<Segment>& segs;
  int rows;
  float* x;  // [rows][C], the residual stream, updated in place
  Workspace& ws;
};

// Token shift: for every row t of every segment, prev(t) is the previous
// row of `cur` in the same sequence, or `shift(state)` for a segment's first
// row. Calls f(t, cur_row, prev_row).
void ForEachShift(
    const Chunk& c, const float* cur, int n,
    const std::function<float*(float* state)>& shift,
    const std::function<void(int t, const float* cur, const float* prev)>& f);
// Stores each segment's last row of `cur` into shift(state).
void SaveShift(const Chunk& c, const float* cur, int n,
               const std::function<float*(float* state)>& shift);

// Token-shift mixes. kCurrent (v4, x052): out = cur*mu + prev*(1 - mu), the
// parameter weights the current token. kPrevious (x060, x070):
// out = cur + (prev - cur)*mu.
enum class MixStyle { kCurrent, kPrevious };
inline void Mix(MixStyle style, const float* cur, const float* prev,
                const float* mu, int n, float* out) {
  if (style == MixStyle::kCurrent) {
    for (int i = 0; i < n; ++i) {
      out[i] = cur[i] * mu[i] + prev[i] * (1.0f - mu[i]);
    }
  } else {
    for (int i = 0; i < n; ++i) out[i] = cur[i] + (prev[i] - cur[i]) * mu[i];
  }
}

// The v4/x052/x060 channel mix:
//   x += sigmoid(W_r x_r) * (W_v relu(W_k x_k)^2)
struct ChannelMixWeights {
  std::vector<float> ln_w, ln_b, mix_k, mix_r;
  Matrix key, receptance, value;
};
// Loads blocks.<l>.ln2.* and blocks.<l>.ffn.{<mix_k>, <mix_r>, key,
// receptance, value}.
absl::Status LoadChannelMix(WeightLoader& ld, int l, const char* mix_k,
                            const char* mix_r, int C, int F,
                            ChannelMixWeights* out);

// One x052/x060 state step for one head of size n, s[i][j] with i = key
// channel, j = value channel; w = the per-key decay, u = the bonus:
//   y[j] = sum_i r[i] * (u[i]*k[i]*v[j] + s[i][j])   (the old state)
//   s[i][j] = k[i]*v[j] + w[i]*s[i][j]
void WkvStep5(float* s, int n, const float* r, const float* k, const float* v,
              const float* w, const float* u, float* y);

class ChunkedModel : public Model {
 public:
  ChunkedModel(ModelInfo info, std::shared_ptr<const WeightFile> file,
               const Kernels& kernels, const ModelOptions& options,
               int threads);
  absl::Status Forward(absl::Span<const SequenceWork> batch) override;
  absl::Status Logits(const float* hidden, int rows, float* logits) override;

  using Model::mutable_info;

 protected:
  // emb.weight, blocks.0.ln0.*, ln_out.*, head.weight.
  absl::Status LoadEmbeddingAndHead(WeightLoader& ld);
  // Runs layer l over the chunk, updating c.x and the states.
  virtual void Block(int l, const Chunk& c) = 0;

  void Mul(const Matrix& m, const float* x, int rows, float* y) {
    MatMul(k_, pool_, m, x, m.cols, rows, y, m.rows, &stream_);
  }
  // Reports row 0 of `rows` to the trace hook.
  void Trace(int layer, const char* name, const float* rows, int n) const {
    if (trace_) trace_(layer, name, rows, n);
  }
  int C() const { return info().config.n_embd; }
  // Channel mix of layer l; `shift` is the layer's ffn_x_prev in a state.
  void ChannelMix(int l, const Chunk& c, const ChannelMixWeights& w,
                  MixStyle style, const std::function<float*(float*)>& shift);

  const Kernels& k_;
  ThreadPool pool_;
  // Read-ahead of the weights along the step (every product passes it).
  WeightStream stream_;

 private:
  void RunChunk(absl::Span<const SequenceWork> batch,
                const std::vector<Segment>& segs, const int32_t* tokens,
                int rows, Workspace& ws);

  // Keeps the mapping alive: matrices used as stored point into it.
  std::shared_ptr<const WeightFile> file_;
  Matrix emb_, head_;
  std::vector<float> ln0_w_, ln0_b_, ln_out_w_, ln_out_b_;
  std::function<void(int, const char*, const float*, int)> trace_;
  // One workspace per concurrent Forward call, reused across calls.
  absl::Mutex workspace_mu_;
  std::vector<std::unique_ptr<Workspace>> free_workspaces_
      ABSL_GUARDED_BY(workspace_mu_);
};

// Kernels and thread count from the options (INVALID_ARGUMENT for kernels
// this CPU lacks).
struct EngineSetup {
  const Kernels* kernels;
  int threads;
};
absl::StatusOr<EngineSetup> ResolveEngineOptions(const ModelOptions& options);

// n_layer (largest blocks.<i> index + 1), n_embd and vocab (emb.weight) and
// dim_ffn (blocks.0.ffn.key.weight).
absl::Status ReadCommonConfig(const WeightFile& file, WeightLoader& ld,
                              ModelConfig* c);
// The two dimensions of a non-empty 2-D tensor.
absl::Status Dims2(WeightLoader& ld, const std::string& name, int* d0, int* d1);
absl::Status BadModel(absl::string_view what);

// "<arch>-L<layers>-C<embd>-H<heads>-F<ffn>-V<vocab>-<digest>".
std::string Fingerprint(const ModelConfig& c, const WeightLoader& ld);

}  // namespace statestream::engine::rwkv

#endif  // STATESTREAM_WORKER_ENGINE_RWKV_COMMON_H_
