// SPDX-License-Identifier: Apache-2.0
// GPU throughput of the CUDA runners on random-weight RWKV-7 or RWKV-6
// models built directly in device memory (no multi-GB checkpoint files):
// decode tokens/s at several batch sizes (one token per session per step,
// logits for every session, states resident on the GPU) and prefill
// tokens/s. Prints a table; --json writes the details. Run by
// bench/gpu/run.sh.
//
//   cuda_bench [--arch x070|x060] [--shapes 0.1b,1.5b,7.2b]
//              [--batches 1,64,256,1024] [--prefill 2048]
//              [--prefill_seqs 1,16] [--steps 10]
//              [--mode bf16|bf16-split|f32] [--max_rows 1024] [--graphs 1]
//              [--json PATH]
// x070 shapes: 0.1b, 1.5b, 7.2b; x060 shapes: 1.6b, 7b (the released
// RWKV-6 World dimensions).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "worker/engine/cuda/rwkv6_cuda.h"
#include "worker/engine/cuda/rwkv7_cuda.h"

namespace {

using statestream::engine::cuda::Dims;
using statestream::engine::cuda::MatMode;
using statestream::engine::cuda::Runner;
using statestream::engine::cuda::RunnerOptions;
using statestream::engine::cuda::Rwkv6Dims;
using statestream::engine::cuda::Rwkv6Runner;
using statestream::engine::cuda::SeqWork;
using statestream::engine::cuda::StepRunner;

constexpr double kHbmBytesPerSec = 4.8e12;   // H200 HBM3e
constexpr double kBf16FlopsPerSec = 989e12;  // H200 dense bf16 peak

std::vector<int> IntList(const char* s) {
  std::vector<int> out;
  while (*s != 0) {
    out.push_back(std::atoi(s));
    const char* c = std::strchr(s, ',');
    if (c == nullptr) break;
    s = c + 1;
  }
  return out;
}

int LoraRank(double factor, double exponent, int c) {
  int r =
      static_cast<int>(std::lround(factor * std::pow(c, exponent) / 32.0)) * 32;
  return r < 32 ? 32 : r;
}

Dims Shape7(const std::string& name) {
  Dims d;
  if (name == "0.1b") {
    d.n_layer = 12, d.n_embd = 768;
  } else if (name == "1.5b") {
    d.n_layer = 24, d.n_embd = 2048;
  } else if (name == "7.2b") {
    d.n_layer = 32, d.n_embd = 4096;
  } else {
    std::fprintf(stderr, "unknown x070 shape %s\n", name.c_str());
    std::exit(2);
  }
  d.head_size = 64;
  d.n_head = d.n_embd / 64;
  d.dim_ffn = 4 * d.n_embd;
  d.vocab_size = 65536;
  d.d_decay = LoraRank(1.8, 0.5, d.n_embd);
  d.d_aaa = LoraRank(1.8, 0.5, d.n_embd);
  d.d_mv = LoraRank(1.3, 0.5, d.n_embd);
  d.d_gate = LoraRank(0.6, 0.8, d.n_embd);
  return d;
}

Rwkv6Dims Shape6(const std::string& name) {
  Rwkv6Dims d;
  if (name == "1.6b") {
    d.n_layer = 24, d.n_embd = 2048;
  } else if (name == "7b") {
    d.n_layer = 32, d.n_embd = 4096;
  } else {
    std::fprintf(stderr, "unknown x060 shape %s\n", name.c_str());
    std::exit(2);
  }
  d.head_size = 64;
  d.n_head = d.n_embd / 64;
  d.dim_ffn = d.n_embd * 7 / 2;  // int(3.5 C), a multiple of 32 here
  d.vocab_size = 65536;
  d.d_mix = 32;
  d.d_decay = 64;
  return d;
}

// A runner with the numbers the tables need.
struct BenchModel {
  std::unique_ptr<StepRunner> runner;
  int n_layer = 0, n_embd = 0, n_head = 0, dim_ffn = 0, vocab_size = 0;
  double matmul_params = 0;  // weights multiplied per token (FLOPs / 2)
};

BenchModel Make(const std::string& arch, const std::string& shape,
                const RunnerOptions& ro, std::string* err) {
  BenchModel m;
  if (arch == "x060") {
    const Rwkv6Dims d = Shape6(shape);
    const double C = d.n_embd, F = d.dim_ffn;
    const double lora = C * (5.0 * d.d_mix * 2 + 2.0 * d.d_decay);
    m.runner = Rwkv6Runner::Create(d, ro, err);
    m.n_layer = d.n_layer, m.n_embd = d.n_embd, m.n_head = d.n_head;
    m.dim_ffn = d.dim_ffn, m.vocab_size = d.vocab_size;
    m.matmul_params =
        d.n_layer * (5 * C * C + 2 * C * F + C * C + lora) + C * d.vocab_size;
  } else {
    const Dims d = Shape7(shape);
    const double C = d.n_embd, F = d.dim_ffn;
    const double lora = 2.0 * C * (d.d_decay + d.d_aaa + d.d_mv + d.d_gate);
    m.runner = Runner::Create(d, ro, err);
    m.n_layer = d.n_layer, m.n_embd = d.n_embd, m.n_head = d.n_head;
    m.dim_ffn = d.dim_ffn, m.vocab_size = d.vocab_size;
    m.matmul_params =
        d.n_layer * (4 * C * C + 2 * C * F + lora) + C * d.vocab_size;
  }
  return m;
}

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Die(const std::string& what, const std::string& err) {
  std::fprintf(stderr, "error: %s: %s\n", what.c_str(), err.c_str());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  std::string arch = "x070", shapes, json_path, mode_name = "bf16";
  std::vector<int> batches = {1, 64, 256, 1024}, prefill_seqs = {1, 16};
  int prefill = 2048, steps = 10, max_rows = 1024;
  bool graphs = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--arch")
      arch = v;
    else if (k == "--shapes")
      shapes = v;
    else if (k == "--batches")
      batches = IntList(v);
    else if (k == "--prefill")
      prefill = std::atoi(v);
    else if (k == "--prefill_seqs")
      prefill_seqs = IntList(v);
    else if (k == "--steps")
      steps = std::atoi(v);
    else if (k == "--mode")
      mode_name = v;
    else if (k == "--max_rows")
      max_rows = std::atoi(v);
    else if (k == "--json")
      json_path = v;
    else if (k == "--graphs")
      graphs = std::atoi(v) != 0;
    else
      Die("usage", "unknown flag " + k);
  }
  if (arch != "x070" && arch != "x060") Die("usage", "unknown arch " + arch);
  if (shapes.empty()) shapes = arch == "x060" ? "1.6b" : "0.1b,1.5b,7.2b";
  std::string err;
  if (statestream::engine::cuda::DeviceCount(&err) == 0) {
    Die("no CUDA device", err);
  }
  const std::string gpu = statestream::engine::cuda::DeviceName(0);
  RunnerOptions ro;
  ro.mode = mode_name == "f32"          ? MatMode::kF32
            : mode_name == "bf16-split" ? MatMode::kBF16Split
                                        : MatMode::kBF16;
  ro.max_rows = max_rows;
  ro.graphs = graphs;
  std::printf("GPU: %s, arch %s, mode %s, max_rows %d, graphs %d\n",
              gpu.c_str(), arch.c_str(),
              statestream::engine::cuda::MatModeName(ro.mode), max_rows,
              graphs ? 1 : 0);
  std::printf("%-5s %-14s %8s %12s %10s %12s %8s\n", "shape", "what", "batch",
              "tokens/s", "ms/step", "roofline/s", "frac");
  std::string json =
      "{\"gpu\":\"" + gpu + "\",\"arch\":\"" + arch + "\",\"mode\":\"" +
      statestream::engine::cuda::MatModeName(ro.mode) + "\",\"results\":[";
  bool first_json = true;
  auto record = [&](const std::string& shape, const char* what, int batch,
                    double tps, double ms, double roof) {
    std::printf("%-5s %-14s %8d %12.0f %10.3f %12.0f %7.1f%%\n", shape.c_str(),
                what, batch, tps, ms, roof, 100 * tps / roof);
    std::fflush(stdout);
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "%s{\"shape\":\"%s\",\"what\":\"%s\",\"batch\":%d,"
                  "\"tokens_per_s\":%.1f,\"ms_per_step\":%.4f,"
                  "\"roofline_tokens_per_s\":%.1f}",
                  first_json ? "" : ",", shape.c_str(), what, batch, tps, ms,
                  roof);
    json += buf;
    first_json = false;
  };

  size_t pos = 0;
  while (pos <= shapes.size()) {
    size_t comma = shapes.find(',', pos);
    if (comma == std::string::npos) comma = shapes.size();
    const std::string shape = shapes.substr(pos, comma - pos);
    pos = comma + 1;
    const double t0 = Now();
    BenchModel bm = Make(arch, shape, ro, &err);
    if (bm.runner == nullptr) Die("create " + shape, err);
    StepRunner* r = bm.runner.get();
    if (!r->Randomize(7, &err)) Die("randomize", err);
    const int64_t sf = r->StateFloats();
    const int vocab = bm.vocab_size;
    const double weight_bytes = r->WeightBytesPerPass();
    const double state_bytes = 4.0 * sf;
    const double flops_per_token = 2 * bm.matmul_params;
    std::printf(
        "# %s %s: L%d C%d H%d F%d V%d, weights %.2f GB/pass, state "
        "%.1f MB, setup %.1f s\n",
        arch.c_str(), shape.c_str(), bm.n_layer, bm.n_embd, bm.n_head,
        bm.dim_ffn, vocab, weight_bytes / 1e9, state_bytes / 1e6, Now() - t0);
    int max_b = 1;
    for (int b : batches) max_b = std::max(max_b, b);
    for (int s : prefill_seqs) max_b = std::max(max_b, s);
    float* states = r->AllocStates(max_b, &err);
    if (states == nullptr) Die("states", err);
    float* logits = r->AllocFloats(static_cast<int64_t>(max_b) * vocab, &err);
    if (logits == nullptr) Die("logits", err);
    std::vector<int32_t> tokens(max_b * 2 + prefill);
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<int32_t>((i * 2654435761u) % vocab);
    }
    const int32_t zero = 0;

    for (int b : batches) {
      std::vector<SeqWork> seqs(b);
      for (int i = 0; i < b; ++i) {
        seqs[i] = {&tokens[i], 1, states + i * sf,
                   &zero,      1, logits + static_cast<int64_t>(i) * vocab};
      }
      for (int w = 0; w < 2; ++w) {
        if (!r->Forward(seqs.data(), b, false, &err)) Die("decode", err);
      }
      const double s0 = Now();
      for (int s = 0; s < steps; ++s) {
        if (!r->Forward(seqs.data(), b, false, &err)) Die("decode", err);
      }
      const double dt = (Now() - s0) / steps;
      const double roof_time =
          std::max((weight_bytes + b * 2 * state_bytes) / kHbmBytesPerSec,
                   b * flops_per_token / kBf16FlopsPerSec);
      record(shape, "decode", b, b / dt, 1e3 * dt, b / roof_time);
    }
    for (int ns : prefill_seqs) {
      const int per = prefill / ns;
      if (per < 1) continue;
      std::vector<SeqWork> seqs(ns);
      std::vector<int32_t> last(ns, per - 1);
      for (int i = 0; i < ns; ++i) {
        seqs[i] = {
            &tokens[i * per], per, states + i * sf,
            &last[i],         1,   logits + static_cast<int64_t>(i) * vocab};
      }
      if (!r->Forward(seqs.data(), ns, false, &err)) Die("prefill", err);
      const int reps = 3;
      const double s0 = Now();
      for (int s = 0; s < reps; ++s) {
        if (!r->Forward(seqs.data(), ns, false, &err)) Die("prefill", err);
      }
      const double dt = (Now() - s0) / reps;
      const double tokens_done = static_cast<double>(per) * ns;
      const double roof_time =
          std::max(weight_bytes * ((tokens_done + max_rows - 1) / max_rows) /
                       kHbmBytesPerSec,
                   tokens_done * flops_per_token / kBf16FlopsPerSec);
      char what[32];
      std::snprintf(what, sizeof(what), "prefill %dx%d", ns, per);
      record(shape, what, ns, tokens_done / dt, 1e3 * dt,
             tokens_done / roof_time);
    }
    r->FreeStates(logits);
    r->FreeStates(states);
  }
  json += "]}\n";
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f != nullptr) {
      std::fputs(json.c_str(), f);
      std::fclose(f);
    }
  }
  return 0;
}
