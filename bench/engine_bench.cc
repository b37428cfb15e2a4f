// SPDX-License-Identifier: Apache-2.0
// Engine throughput on a random x070 model (6 layers, C = 512, vocab 16384,
// ~35M parameters): decode one token for B sessions, and prefill a prompt in
// one chunked call versus token by token. Run:
//   build/bench/engine_bench --benchmark_counters_tabular=true
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "worker/engine/huge_pages.h"
#include "worker/engine/kernels.h"
#include "worker/engine/model.h"
#include "worker/engine/ops.h"
#include "worker/engine/random_model.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_arena.h"
#include "worker/engine/weight_loader.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine {
namespace {

enum Weights { kF32 = 0, kBF16 = 1, kInt8 = 2 };

// Packed weights where the model keeps them, in a WeightArena (huge pages
// whatever their size), zeroed as the packers expect. On a plain vector
// (4 KiB pages) the AMX int8 kernel took 29 us for 32 rows x 768 x 768
// against 16 (session 11): the benchmark measured page walks.
template <typename T>
class ArenaWeights {
 public:
  explicit ArenaWeights(size_t n)
      : n_(n), p_(static_cast<T*>(arena_.Allocate(n * sizeof(T)))) {
    std::memset(p_, 0, n * sizeof(T));
  }
  T* data() { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }

 private:
  WeightArena arena_;
  size_t n_;
  T* p_;
};

// `threads` engine threads (1 or 2): with one, the CPU time column is the
// whole cost, which stays comparable on a busy machine. kInt8 loads the f32
// file with int8 weights (W8A8, AMX/VNNI kernels where present).
Model& BenchModel(Weights weights, int threads = 2) {
  static std::unique_ptr<Model> models[3][3];
  std::unique_ptr<Model>& m = models[weights][threads];
  const bool bf16 = weights == kBF16;
  if (m == nullptr) {
    RandomModelSpec spec;
    spec.n_layer = 6;
    spec.n_embd = 512;
    spec.vocab_size = 16384;
    auto tensors = RandomRwkv7(spec);
    std::string path = "/tmp/ss_engine_bench_" + std::to_string(getpid()) +
                       (bf16 ? "_bf16" : "_f32") + ".safetensors";
    if (!tensors.ok() ||
        !WriteCheckpoint(path, *tensors, bf16 ? DType::kBF16 : DType::kF32)
             .ok()) {
      std::abort();
    }
    ModelOptions options;
    options.threads = threads;
    if (weights == kInt8) options.precision = WeightPrecision::kInt8;
    auto loaded = LoadModel(path, options);
    std::remove(path.c_str());
    if (!loaded.ok()) std::abort();
    m = std::move(*loaded);
  }
  return *m;
}

// One decode step (one token, logits) for range(0) sessions at once, on
// range(1) threads.
void BM_Decode(benchmark::State& st, Weights weights) {
  Model& m = BenchModel(weights, static_cast<int>(st.range(1)));
  const int batch = static_cast<int>(st.range(0));
  const int V = m.info().config.vocab_size;
  std::vector<std::vector<float>> states(
      batch, std::vector<float>(m.info().state_floats, 0.0f));
  std::vector<float> logits(static_cast<size_t>(batch) * V);
  std::vector<int32_t> tokens(batch);
  const int32_t zero = 0;
  std::vector<SequenceWork> work(batch);
  for (int b = 0; b < batch; ++b) {
    tokens[b] = (b * 7919) % V;
    work[b] = {absl::MakeConstSpan(&tokens[b], 1), states[b].data(),
               absl::MakeConstSpan(&zero, 1), &logits[size_t(b) * V]};
  }
  for (auto _ : st) {
    if (!m.Forward(work).ok()) st.SkipWithError("forward failed");
    benchmark::DoNotOptimize(logits.data());
  }
  st.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()) * batch,
                         benchmark::Counter::kIsRate);
}

// A 256-token prompt, logits for the last token only, fed in chunks of
// range(0) tokens per call.
void BM_Prefill(benchmark::State& st, Weights weights) {
  Model& m = BenchModel(weights);
  const int chunk = static_cast<int>(st.range(0));
  const int kPrompt = 256;
  const int V = m.info().config.vocab_size;
  std::vector<int32_t> prompt(kPrompt);
  for (int i = 0; i < kPrompt; ++i) prompt[i] = (i * 104729) % V;
  std::vector<float> state(m.info().state_floats);
  std::vector<float> logits(V);
  for (auto _ : st) {
    m.InitState(state.data());
    for (int i = 0; i < kPrompt; i += chunk) {
      const int n = std::min(chunk, kPrompt - i);
      const int32_t last = n - 1;
      const bool final_chunk = i + n == kPrompt;
      SequenceWork w{absl::MakeConstSpan(&prompt[i], n), state.data(),
                     final_chunk ? absl::MakeConstSpan(&last, 1)
                                 : absl::Span<const int32_t>(),
                     logits.data()};
      if (!m.Forward({&w, 1}).ok()) st.SkipWithError("forward failed");
    }
  }
  st.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()) * kPrompt,
                         benchmark::Counter::kIsRate);
}

// One kernel call, single-threaded: y[rows][out] = x[rows][in] W^T with
// W = [out = range(1)][in = 512]: 2048 is an FFN key projection (W stays in
// L2 between iterations), 16384 the head of the bench model (W comes from
// memory); range(0) rows; `in` replaces the 512 inputs (3072: the 0.1B
// shape's FFN value projection, through the wide-input panels); bf16
// products take `terms` activation terms a row (1: Bf16Activations::kRound).
// Reports GFLOP/s (2 per multiply-add).
void BM_Gemm(benchmark::State& st, bool bf16, const char* kernels = "",
             int in = 512, int terms = 2) {
  const int rows = static_cast<int>(st.range(0));
  const int out = static_cast<int>(st.range(1));
  // Packed in the kernels' panels (kernels.h), a row at a time.
  ArenaWeights<float> w(PanelPackedElems(out, in, PanelStep(4)));
  ArenaWeights<uint16_t> wb(PanelPackedElems(out, in, PanelStep(2)));
  std::vector<float> row(in);
  std::vector<uint16_t> row_bf16(in);
  for (int o = 0; o < out; ++o) {
    for (int i = 0; i < in; ++i) {
      const size_t n = static_cast<size_t>(o) * in + i;
      row[i] = static_cast<float>((n * 2654435761u) % 1000) / 1000.0f - 0.5f;
      uint32_t u;
      std::memcpy(&u, &row[i], 4);
      row_bf16[i] = static_cast<uint16_t>(u >> 16);
    }
    PackPanelRow(row.data(), o, in, w.data());
    PackPanelRow(row_bf16.data(), o, in, wb.data());
  }
  std::vector<float> x(static_cast<size_t>(rows) * in, 0.25f);
  std::vector<float> y(static_cast<size_t>(rows) * out);
  const Bf16Terms split(x.data(), in, rows, in, terms);
  const Kernels* kp = *kernels ? GetKernelsByName(kernels) : &GetKernels();
  if (kp == nullptr) {
    st.SkipWithError("kernels not available on this CPU");
    return;
  }
  const Kernels& k = *kp;
  for (auto _ : st) {
    if (bf16) {
      k.gemm_bf16(wb.data(), in, split.xs.data(), split.bf16(k), terms, rows,
                  y.data(), out, 0, out);
    } else {
      k.gemm_f32(w.data(), in, x.data(), in, rows, y.data(), out, 0, out);
    }
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * rows * in * out * static_cast<double>(st.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}

// One int8 kernel call (W8A8, packed weights), single-threaded: W is
// [out = range(1)][in = 768] (the 0.1B shape's width), range(0) rows. 3072
// is an FFN key projection (2.3 MiB, about L2), 65536 the 0.1B head (48 MiB,
// from memory). Reports GB/s of weights read and GOP/s.
void BM_GemmI8(benchmark::State& st, const char* kernels) {
  const int rows = static_cast<int>(st.range(0));
  const int in = 768, out = static_cast<int>(st.range(1));
  const Kernels* kp = GetKernelsByName(kernels);
  if (kp == nullptr) {
    st.SkipWithError("kernels not available on this CPU");
    return;
  }
  ArenaWeights<int8_t> w(I8PackedBytes(out, in));
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<int8_t>((i * 2654435761u) >> 24);
  }
  std::vector<float> wscale(out, 0.01f);
  std::vector<int32_t> wsum(out, 0);
  const int ldq = (in + 63) & ~63;
  std::vector<uint8_t> xq(static_cast<size_t>((rows + 15) & ~15) * ldq, 128);
  for (size_t i = 0; i < xq.size(); ++i) xq[i] = static_cast<uint8_t>(i * 31);
  std::vector<float> xscale(rows, 0.02f);
  std::vector<float> y(static_cast<size_t>(rows) * out);
  for (auto _ : st) {
    kp->gemm_i8(w.data(), wscale.data(), wsum.data(), in, xq.data(),
                xscale.data(), ldq, rows, y.data(), out, 0, out);
    benchmark::DoNotOptimize(y.data());
  }
  const double n = static_cast<double>(st.iterations());
  st.counters["GB/s"] = benchmark::Counter(
      n * static_cast<double>(w.size()) / 1e9, benchmark::Counter::kIsRate);
  st.counters["GOP/s"] = benchmark::Counter(2.0 * rows * in * out * n / 1e9,
                                            benchmark::Counter::kIsRate);
}

// The cost of one hand-off: ParallelFor of range(0) empty tasks over a pool
// of 2 (the caller and one worker), back to back as in a decode step.
void BM_ParallelFor(benchmark::State& st) {
  static ThreadPool pool(2);
  const int tasks = static_cast<int>(st.range(0));
  std::atomic<int> sink{0};
  for (auto _ : st) {
    pool.ParallelFor(
        tasks, [&](int i) { sink.fetch_add(i, std::memory_order_relaxed); });
  }
  benchmark::DoNotOptimize(sink.load());
}

BENCHMARK(BM_ParallelFor)->Arg(2)->Arg(8)->Arg(32)->UseRealTime();
// MatMul of `m` on `rows` rows as the model calls it (int8: quantize
// first; then output ranges over a pool of 2 threads), for the benchmark's
// iterations.
void RunMatMul(benchmark::State& st, const Matrix& m, int rows) {
  static ThreadPool pool(2);
  std::vector<float> x(static_cast<size_t>(rows) * m.cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 97) - 48;
  std::vector<float> y(static_cast<size_t>(rows) * m.rows);
  for (auto _ : st) {
    MatMul(GetKernels(), pool, m, x.data(), m.cols, rows, y.data(), m.rows);
    benchmark::DoNotOptimize(y.data());
  }
}

// An int8 [range(1)][768] matrix times range(0) rows. Reports GB/s of
// weights read.
void BM_MatMulI8(benchmark::State& st) {
  const int rows = static_cast<int>(st.range(0));
  const int in = 768, out = static_cast<int>(st.range(1));
  Matrix m;
  m.rows = out;
  m.cols = in;
  ArenaWeights<int8_t> w(I8PackedBytes(out, in));
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<int8_t>((i * 2654435761u) >> 24);
  }
  m.i8 = w.data();
  m.scale.assign(out, 0.01f);
  m.wsum.assign(out, 0);
  RunMatMul(st, m, rows);
  st.counters["GB/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()) * w.size() / 1e9,
                         benchmark::Counter::kIsRate);
}

// A bf16 [range(1)][range(2)] matrix, packed in panels, times range(0)
// rows. Reports GFLOP/s for both cores together.
void BM_MatMulBf16(benchmark::State& st) {
  const int rows = static_cast<int>(st.range(0));
  const int out = static_cast<int>(st.range(1));
  const int in = static_cast<int>(st.range(2));
  Matrix m;
  m.rows = out;
  m.cols = in;
  m.panels = true;
  ArenaWeights<uint16_t> w(PanelPackedElems(out, in, PanelStep(2)));
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<uint16_t>(0x3c00 + (i * 2654435761u) % 0x100);
  }
  m.bf16 = w.data();
  RunMatMul(st, m, rows);
  st.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * rows * in * out * static_cast<double>(st.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}
// The 0.1B shape's products at 32 sessions: attention (768), FFN key
// (3072), head (65536), FFN value (3072 inputs).
BENCHMARK(BM_MatMulBf16)
    ->Args({32, 768, 768})
    ->Args({32, 3072, 768})
    ->Args({32, 65536, 768})
    ->Args({32, 768, 3072})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// The recurrence alone as a decode batch runs it: range(0) sessions, each
// with the 0.1B shape's states (12 layers x 12 heads x 64 x 64 fp32, 2.4 MB,
// one huge-page block), every layer's states stepped once per iteration,
// one task per session over a pool of range(1) threads. Reports GB/s of
// states read and written: one core alone is bound by its own memory
// parallelism, not the bus (docs/engine-kernels.md, "Batched fp32/bf16
// decode").
void BM_Wkv7States(benchmark::State& st) {
  constexpr int kLayers = 12, kHeads = 12, kN = 64, kC = kHeads * kN;
  constexpr size_t kLayerFloats = size_t{kHeads} * kN * kN;
  const int sessions = static_cast<int>(st.range(0));
  ThreadPool pool(static_cast<int>(st.range(1)));
  std::vector<HugePageVector<float>> states;
  for (int i = 0; i < sessions; ++i) {
    states.emplace_back(kLayers * kLayerFloats, 0.001f * static_cast<float>(i));
  }
  // Decay below 1 and small updates keep the states finite for any run.
  std::vector<float> r(kC, 0.1f), w(kC, 0.9f), k(kC, 0.02f), v(kC, 0.03f),
      neg_kk(kC, -0.01f), kka(kC, 0.005f);
  std::vector<std::vector<float>> y(sessions, std::vector<float>(kC));
  const Kernels& kernels = GetKernels();
  for (auto _ : st) {
    for (int l = 0; l < kLayers; ++l) {
      pool.ParallelFor(sessions, [&](int i) {
        float* s = states[i].data() + l * kLayerFloats;
        for (int h = 0; h < kHeads; ++h) {
          const int o = h * kN;
          // As the model walks a decode batch's heads (rwkv7.cc).
          const float* next = h + 1 < kHeads ? s + (o + kN) * kN : nullptr;
          kernels.wkv7_step(s + o * kN, kN, &r[o], &w[o], &k[o], &v[o],
                            &neg_kk[o], &kka[o], &y[i][o], next);
        }
      });
    }
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GB/s"] = benchmark::Counter(
      2.0 * sizeof(float) * kLayers * kLayerFloats * sessions *
          static_cast<double>(st.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Wkv7States)
    ->Args({8, 2})
    ->Args({16, 2})
    ->Args({32, 1})
    ->Args({32, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The recurrence as a prefill runs it: one head's 64 x 64 state (in L1)
// walks range(0) tokens in order, each token's r, w, k, v, -kk and kk*a a
// row of [tokens][768] buffers (the 0.1B width), on one core. Reports the
// seconds a step (s/step, printed with an SI prefix: 773n is 773 ns).
void BM_Wkv7Chunk(benchmark::State& st) {
  constexpr int kN = 64, kC = 768;
  const int tokens = static_cast<int>(st.range(0));
  std::vector<float> state(kN * kN, 0.001f);
  auto rows = [&](float value) {
    return std::vector<float>(static_cast<size_t>(tokens) * kC, value);
  };
  // Decay below 1 and small updates keep the state finite for any run.
  std::vector<float> r = rows(0.1f), w = rows(0.9f), k = rows(0.02f),
                     v = rows(0.03f), neg_kk = rows(-0.01f), kka = rows(0.005f),
                     y = rows(0.0f);
  const Kernels& kernels = GetKernels();
  for (auto _ : st) {
    for (int t = 0; t < tokens; ++t) {
      const size_t o = static_cast<size_t>(t) * kC;
      kernels.wkv7_step(state.data(), kN, &r[o], &w[o], &k[o], &v[o],
                        &neg_kk[o], &kka[o], &y[o], nullptr);
    }
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["s/step"] = benchmark::Counter(
      static_cast<double>(st.iterations()) * tokens,
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_Wkv7Chunk)->Arg(64)->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_MatMulI8)
    ->ArgsProduct({{1, 32}, {768, 3072, 65536}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_GemmI8, amx, "avx512amx")
    ->ArgsProduct({{16, 32, 64}, {64, 768, 3072, 65536}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_GemmI8, vnni, "avx512vnni")
    ->ArgsProduct({{1, 8, 16, 32}, {3072, 65536}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, f32, false)
    ->ArgsProduct({{1, 8, 32, 64}, {2048, 16384}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, bf16, true)
    ->ArgsProduct({{1, 8, 32, 64}, {2048, 16384}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
// The activations rounded to bf16 (one term a row): half the arithmetic.
BENCHMARK_CAPTURE(BM_Gemm, bf16_round, true, "", 512, 1)
    ->ArgsProduct({{1, 8, 32, 64}, {2048, 16384}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
// The FMA emulation of the same arithmetic (CPUs without AMX-BF16 or
// AVX512_BF16), beside this CPU's best bf16 kernel above.
BENCHMARK_CAPTURE(BM_Gemm, bf16_fma, true, "avx512")
    ->ArgsProduct({{8, 32, 64}, {2048}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, f32_wide, false, "", 3072)
    ->ArgsProduct({{32, 64}, {768}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, bf16_wide, true, "", 3072)
    ->ArgsProduct({{32, 64}, {768}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Gemm, bf16_head768, true, "", 768)
    ->ArgsProduct({{32}, {65536}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Decode, f32, kF32)
    ->ArgsProduct({{1, 8, 32}, {2, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Decode, bf16, kBF16)
    ->ArgsProduct({{1, 8, 32}, {2, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Decode, int8, kInt8)
    ->ArgsProduct({{1, 8, 32}, {2, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill, f32, kF32)
    ->Arg(1)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill, bf16, kBF16)
    ->Arg(1)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill, int8, kInt8)
    ->Arg(1)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace statestream::engine

BENCHMARK_MAIN();
