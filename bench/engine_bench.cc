// SPDX-License-Identifier: Apache-2.0
// Engine throughput on a random x070 model (6 layers, C = 512, vocab 16384,
// ~35M parameters): decode one token for B sessions, and prefill a prompt in
// one chunked call versus token by token. Run:
//   build/bench/engine_bench --benchmark_counters_tabular=true
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "worker/engine/model.h"
#include "worker/engine/random_model.h"
#include "worker/engine/weight_writer.h"

namespace statestream::engine {
namespace {

Model& BenchModel(bool bf16) {
  static std::unique_ptr<Model> models[2];
  std::unique_ptr<Model>& m = models[bf16 ? 1 : 0];
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
    auto loaded = LoadModel(path);
    std::remove(path.c_str());
    if (!loaded.ok()) std::abort();
    m = std::move(*loaded);
  }
  return *m;
}

// One decode step (one token, logits) for range(0) sessions at once.
void BM_Decode(benchmark::State& st, bool bf16) {
  Model& m = BenchModel(bf16);
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
void BM_Prefill(benchmark::State& st, bool bf16) {
  Model& m = BenchModel(bf16);
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

BENCHMARK_CAPTURE(BM_Decode, f32, false)
    ->Arg(1)
    ->Arg(8)
    ->Arg(32)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Decode, bf16, true)
    ->Arg(1)
    ->Arg(8)
    ->Arg(32)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill, f32, false)
    ->Arg(1)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill, bf16, true)
    ->Arg(1)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace statestream::engine

BENCHMARK_MAIN();
