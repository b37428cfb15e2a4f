// SPDX-License-Identifier: Apache-2.0
// What the RWKV-4, RWKV-5.2, RWKV-6 and RWKV-7 CPU engines share: packing a
// batch into chunks of rows, the embedding and the output head, token
// shift, and reading dimensions from tensor shapes. Each architecture
// derives from ChunkedModel and supplies one layer (Block). Determinism
// (docs/engine.md): projections are MatMul over the chunk's rows, the
// recurrence runs per (sequence, head) task with a fixed loop order.
// Internal to the engine; use LoadModel() in model.h.
#ifndef STATESTREAM_WORKER_ENGINE_RWKV_COMMON_H_
#define STATESTREAM_WORKER_ENGINE_RWKV_COMMON_H_

#include <algorithm>
#include <functional>
#include <initializer_list>
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

// Scratch for one Forward call: numbered [rows][width] buffers, grown on
// first use and kept by the model for later calls; every buffer is written
// before it is read within a chunk (a layer may keep one for the next
// layers of the same chunk, as RWKV-7's v_first). `rows` is the largest
// chunk any call has reserved, so one-session decode holds one row a buffer
// (all buffers at 64 rows were ~6 MB more at the 0.1B shape).
class Workspace {
 public:
  // Before a call's first Get: room for chunks of `rows` rows (<= kMaxRows).
  void Reserve(int rows);
  float* Get(int id, size_t floats_per_row);
  // RunChunk's own: the segment of each row, and the logits' scratch.
  std::vector<int> seg_of_row;
  std::vector<float> normed, logits;

 private:
  int rows_ = 0;
  std::vector<std::vector<float>> bufs_;
};

// The sequences a chunk's rows belong to.
struct ChunkRows {
  absl::Span<const SequenceWork> batch;
  const std::vector<Segment>& segs;
  const std::vector<int>& seg_of_row;  // index into segs of each row
};
// seg_of_row of `rows` rows cut into `segs`.
void IndexRows(const std::vector<Segment>& segs, int rows,
               std::vector<int>* seg_of_row);

// One chunk as a layer sees it.
struct Chunk : ChunkRows {
  int rows;
  float* x;  // [rows][C], the residual stream, updated in place
  Workspace& ws;
};

// fn(t) for every row t < rows, over the pool in tasks of a few rows (each
// row's work depends only on that row, so the bits are the same whichever
// core runs it); on the caller when there are few rows or `serial`.
template <typename F>
void ForRows(ThreadPool& pool, int rows, bool serial, const F& fn) {
  constexpr int kRowsPerTask = 4;
  if (rows < 2 * kRowsPerTask || serial) {
    for (int t = 0; t < rows; ++t) fn(t);
    return;
  }
  pool.ParallelFor((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int i) {
    const int end = std::min(rows, (i + 1) * kRowsPerTask);
    for (int t = i * kRowsPerTask; t < end; ++t) fn(t);
  });
}

// Token shift of row t of `cur` ([rows][n]): the previous row of the same
// sequence, or `shift(state)` for a segment's first row.
template <typename ShiftOf>
const float* Prev(const ChunkRows& c, const float* cur, int n, int t,
                  const ShiftOf& shift) {
  const Segment& g = c.segs[c.seg_of_row[t]];
  return t == g.begin ? shift(c.batch[g.seq].state)
                      : cur + static_cast<int64_t>(t - 1) * n;
}
// A segment's new shift state is its last row of `cur`. A one-row segment
// (every segment of a decode batch) saves it from the row's own task, right
// after that task read the old one (SaveOneRowShift, called by that task):
// over the pool and while the state's lines are in cache. Longer segments
// save theirs after the stage (SaveLongShifts): their first row may run
// after their last.
template <typename ShiftOf>
void SaveOneRowShift(const ChunkRows& c, const float* cur, int n, int t,
                     const ShiftOf& shift) {
  const Segment& g = c.segs[c.seg_of_row[t]];
  if (g.begin == t && g.end == t + 1) {
    std::copy_n(cur + static_cast<int64_t>(t) * n, n,
                shift(c.batch[g.seq].state));
  }
}
template <typename ShiftOf>
void SaveLongShifts(const ChunkRows& c, const float* cur, int n,
                    const ShiftOf& shift) {
  for (const Segment& g : c.segs) {
    if (g.end - g.begin < 2) continue;
    std::copy_n(cur + static_cast<int64_t>(g.end - 1) * n, n,
                shift(c.batch[g.seq].state));
  }
}

// A chunk's outputs, from its final residual rows x ([rows][C]): each
// sequence's last hidden row where asked for (SequenceWork::last_hidden)
// and the chunk holds its last token, and the logits of the rows asked for
// (one per requested position; positions may repeat), through the output
// LayerNorm and the head. Straight into the caller's rows when they are
// evenly spaced (one logits row per sequence in one buffer, as the
// scheduler and the benchmarks pass them: at 32 sessions a copy would move
// 8 MB a step); else through `logits`. `normed` and `logits` are scratch;
// LayerNorm rows over the pool unless `serial`.
void ChunkOutputs(const Kernels& k, ThreadPool& pool, WeightStream* stream,
                  const Matrix& head, const float* ln_w, const float* ln_b,
                  const ChunkRows& c, const float* x, int C, bool serial,
                  std::vector<float>& normed, std::vector<float>& logits);

// Token-shift mixes. kCurrent (v4, x052): out = cur*mu + prev*(1 - mu), the
// parameter weights the current token. kPrevious (x060, x070):
// out = cur + (prev - cur)*mu.
enum class MixStyle { kCurrent, kPrevious };
void Mix(MixStyle style, const float* cur, const float* prev, const float* mu,
         int n, float* out);

// Per-row element-wise functions are compiled for the widest vectors the
// CPU has (the engine's other code targets the baseline instruction set).
// Each element's operations are the same in every clone — no reductions
// across lanes, and no contraction (-ffp-contract=off) — so every CPU gets
// the same bits.
#define SS_ROW_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default")))

// Element-wise rows (SS_ROW_CLONES).
void TanhRow(float* x, int n);                 // x = tanh(x)
void SiluRow(float* x, int n);                 // x = x * sigmoid(x)
void AddRow(const float* y, int n, float* x);  // x += y
void MulRow(const float* y, int n, float* x);  // x *= y

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
// `next`, when not null, is the state this thread steps next (n * n floats;
// only prefetched for writing as s is walked: a hint that never changes a
// result). Pass it only for a state no other thread is writing.
void WkvStep5(float* s, int n, const float* r, const float* k, const float* v,
              const float* w, const float* u, float* y,
              const float* next = nullptr);

class ChunkedModel : public Model {
 public:
  ChunkedModel(ModelInfo info, std::shared_ptr<const WeightFile> file,
               const Kernels& kernels, const ModelOptions& options,
               int threads);
  absl::Status Forward(absl::Span<const SequenceWork> batch) override;
  absl::Status Logits(const float* hidden, int rows, float* logits) override;

  using Model::mutable_info;

 protected:
  // emb.weight, blocks.0.ln0.*, ln_out.*, head.weight: LoadEmbedding
  // (the first two), then LoadHead. The order of loads defines the
  // fingerprint's digest.
  absl::Status LoadEmbeddingAndHead(WeightLoader& ld);
  absl::Status LoadEmbedding(WeightLoader& ld);
  absl::Status LoadHead(WeightLoader& ld);
  // Runs layer l over the chunk, updating c.x and the states.
  virtual void Block(int l, const Chunk& c) = 0;

  void Mul(const Matrix& m, const float* x, int rows, float* y) {
    MatMul(k_, pool_, m, x, m.cols, rows, y, m.rows, &stream_);
  }
  // Independent products in one hand-off to the pool (MatMuls).
  void Muls(std::initializer_list<MatMulJob> jobs, int rows) {
    MatMuls(k_, pool_, absl::MakeConstSpan(jobs.begin(), jobs.size()), rows,
            &stream_);
  }
  // fn(segment, h, next_is_mine) for every segment of the chunk and h <
  // heads, over the pool; fn walks the segment's rows in order. With many
  // segments (decode batches) a task takes all heads of one segment, so its
  // states are read as one stream (next_is_mine: head h + 1, if any, is this
  // task's next, so fn may prefetch it); otherwise one task per (segment,
  // head), so every core gets work.
  template <typename Fn>
  void ForSegmentHeads(const Chunk& c, int heads, const Fn& fn) {
    const int segs = static_cast<int>(c.segs.size());
    const int per_task = segs >= 4 * pool_.size() ? heads : 1;
    pool_.ParallelFor(segs * heads / per_task, [&](int task) {
      for (int i = task * per_task; i < (task + 1) * per_task; ++i) {
        const int h = i % heads;
        fn(c.segs[i / heads], h, per_task > 1 && h + 1 < heads);
      }
    });
  }
  // The matrix-state recurrence of layer l (x052, x060, x070), over
  // ForSegmentHeads: for each segment's rows t in order and each head h,
  // step(S, h, o, next) with S head h's n x n state in `layout`, o =
  // t * C + h * n (the row's slice of the head in [rows][C] buffers) and
  // `next`, on the segment's last row only, the state this task steps next
  // (to prefetch), else null.
  template <typename Step>
  void ForHeadSteps(const Chunk& c, const MatrixStateLayout& layout, int l,
                    const Step& step) {
    const int C = this->C(), N = info().config.head_size;
    ForSegmentHeads(
        c, info().config.n_head, [&](const Segment& seg, int h, bool mine) {
          float* S = layout.Wkv(c.batch[seg.seq].state, l) +
                     static_cast<int64_t>(h) * N * N;
          const float* next = mine ? S + static_cast<int64_t>(N) * N : nullptr;
          for (int t = seg.begin; t < seg.end; ++t) {
            step(S, h, static_cast<int64_t>(t) * C + h * N,
                 t + 1 == seg.end ? next : nullptr);
          }
        });
  }
  // rwkv::ForRows over this model's pool; on the caller when tracing.
  template <typename F>
  void ForRows(int rows, const F& fn) {
    rwkv::ForRows(pool_, rows, static_cast<bool>(trace_), fn);
  }
  // Reports row 0 of `rows` to the trace hook.
  void Trace(int layer, const char* name, const float* rows, int n) const {
    if (trace_) trace_(layer, name, rows, n);
  }
  int C() const { return info().config.n_embd; }
  // A block's first two stages, per row over the pool: x += residual (when
  // not null), xx = LayerNorm(x; ln_w, ln_b); then each mix's
  // out = Mix(style, xx, prev) with prev by token shift from `shift`
  // (one-row segments save their new shift state here; longer ones are
  // left to SaveLongShifts).
  struct ShiftMix {
    const float* mu;
    float* out;
  };
  void LayerNormAndMix(const Chunk& c, const float* residual,
                       const std::vector<float>& ln_w,
                       const std::vector<float>& ln_b, float* xx,
                       MixStyle style, std::initializer_list<ShiftMix> mixes,
                       const std::function<float*(float*)>& shift);
  // Channel mix of layer l; `shift` is the layer's ffn_x_prev in a state.
  // `att_out` ([rows][C]) is the time mix's output, added to the residual
  // stream first (in the rows' first task, not a hand-off of its own).
  void ChannelMix(int l, const Chunk& c, const ChannelMixWeights& w,
                  MixStyle style, const std::function<float*(float*)>& shift,
                  const float* att_out);

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

// Shapes the engine refuses (INVALID_MODEL_FILE) although a file may hold
// them: far past any RWKV release, they would size per-call buffers and
// states in gigabytes.
inline constexpr int kMaxEmbd = 32768;
inline constexpr int kMaxVocab = 1 << 21;
inline constexpr int kMaxHeadSize = 256;
inline constexpr int kMaxLoraRank = 4096;
// The most inputs of any matrix (the FFN's value matrix has dim_ffn): an
// int8 product sums up to this many terms of at most 127 x 128 in int32
// (exact below 2^31 / 16,256 = 132,104 terms).
inline constexpr int kMaxMatrixInputs = 1 << 17;

// n_layer (largest blocks.<i> index + 1), n_embd and vocab (emb.weight) and
// dim_ffn (blocks.0.ffn.key.weight), within the limits above.
absl::Status ReadCommonConfig(const WeightFile& file, WeightLoader& ld,
                              ModelConfig* c);
// The head size and the given LoRA ranks within the limits above.
absl::Status CheckHeads(const ModelConfig& c,
                        std::initializer_list<int> lora_ranks = {});
// The two dimensions of a non-empty 2-D tensor.
absl::Status Dims2(WeightLoader& ld, const std::string& name, int* d0, int* d1);
// A per-head tensor of a layer ([H, N]: x070's att.r_k, x060's and x052's
// att.time_faaaa, x052's att.time_decay) has block 0's head layout, which
// set the config's n_head and head_size: a layer that differs is a bad
// file, not the same bytes read as block 0's heads.
absl::Status CheckHeadShape(WeightLoader& ld, const std::string& name,
                            const ModelConfig& c);
absl::Status BadModel(absl::string_view what);

// "<arch>-L<layers>-C<embd>-H<heads>-F<ffn>-V<vocab>-<digest>".
std::string Fingerprint(const ModelConfig& c, const WeightLoader& ld);

}  // namespace statestream::engine::rwkv

#endif  // STATESTREAM_WORKER_ENGINE_RWKV_COMMON_H_
