// SPDX-License-Identifier: Apache-2.0
// `statestream bench engine`: engine throughput on one machine, beside the
// memory-bandwidth roofline measured in the same run. One JSON line.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "cli/cli_util.h"
#include "cli/command.h"
#include "cli/engine_flags.h"
#include "cli/model_flag.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "worker/engine/huge_pages.h"
#include "worker/engine/kernels.h"
#include "worker/engine/model.h"
#include "worker/engine/ops.h"
#include "worker/engine/thread_pool.h"
#include "worker/engine/weight_loader.h"

ABSL_FLAG(std::string, mode, "decode",
          "decode: one token per session per step; prefill: --tokens tokens "
          "of one session in one call.");
ABSL_FLAG(int, batch, 1, "decode: sessions decoded together.");
ABSL_FLAG(double, seconds, 3, "Minimum measuring time.");
ABSL_FLAG(int, versus_batch, 0,
          "decode: also time steps of this many other sessions, alternated "
          "with --batch's in the same process, and report the ratio of the "
          "two throughputs (robust to the machine's drift; 0: off).");
ABSL_FLAG(std::string, kernels, "",
          "Kernel build: empty = the best bit-identical one for this CPU, or "
          "avx512amx, avx512bf16, avx512vnni (AMX tiles / vdpbf16ps / "
          "vpdpbusd; same results), avx512, avx2, scalar.");

namespace statestream::cli {
namespace {

// The most timed steps a run takes.
constexpr size_t kMaxSteps = 100000;

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Sums [b, e) with wide vector loads (compiled for the best instruction set
// at run time), eight independent accumulators so the loads never wait.
__attribute__((target_clones("avx512f", "avx2", "default"))) uint64_t SumRange(
    const uint64_t* p, size_t n) {
  uint64_t s[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) s[k] += p[i + k];
  }
  for (; i < n; ++i) s[0] += p[i];
  return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

// Resets this process's peak-RSS mark (VmHWM) to its current RSS
// (/proc/self/clear_refs, "5"); false where the kernel refuses.
bool ResetPeakRss() {
  const int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = write(fd, "5", 1) == 1;
  close(fd);
  return ok;
}

// Peak RSS in MiB since the process started or the last ResetPeakRss
// (VmHWM), or getrusage's lifetime peak where /proc has no VmHWM.
double PeakRssMib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    absl::string_view v = line;
    int64_t kib;
    if (absl::ConsumePrefix(&v, "VmHWM:") &&
        absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(v), "kB"),
                         &kib)) {
      return kib / 1024.0;
    }
  }
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// Read bandwidth of `threads` threads summing a 512 MiB buffer (best of 5),
// in bytes per second. The buffer is on huge pages like the model's weights
// (huge_pages.h): on 4 KiB pages the page walks alone cost this VM a fifth
// of its bandwidth, and a roofline measured that way would flatter decode.
double MeasureReadBandwidth(int threads) {
  const size_t n = (size_t{512} << 20) / sizeof(uint64_t);
  const engine::HugePageVector<uint64_t> buf(n, 1);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<uint64_t> sums(threads);
    const auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t b = n * t / threads, e = n * (t + 1) / threads;
        sums[t] = SumRange(buf.data() + b, e - b);
      });
    }
    for (auto& t : ts) t.join();
    const double s = Seconds(t0, Clock::now());
    uint64_t total = 0;
    for (uint64_t v : sums) total += v;
    if (total != n) return 0;  // uses the sums, so the loop stays
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s);
  }
  return best;
}

// The arithmetic peak of this machine for one weight precision, measured in
// the same run with the engine's own product kernel on data that stays in
// cache (64 rows x 512 inputs x 384 outputs per call: whole blocks of 8
// rows x 48 outputs, so no partial block drags it below what a prefill of
// the real shapes reaches), `threads` threads each running their own calls
// for ~0.3 s. GFLOP/s (2 per multiply-add of the model: bf16's take the
// activation terms of `options`).
double MeasureKernelPeak(const engine::Kernels& k,
                         const engine::ModelOptions& options, int threads) {
  const engine::WeightPrecision precision = options.precision;
  const int bf16_terms = engine::Bf16TermsFor(options.bf16_activations);
  constexpr int kRows = 64, kIn = 512, kOut = 384;
  std::vector<double> rates(threads);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      // Constant weights: the panel layout (kernels.h) of any shape.
      std::vector<float> w(
          engine::PanelPackedElems(kOut, kIn, engine::PanelStep(4)), 0.01f);
      std::vector<uint16_t> wb(
          engine::PanelPackedElems(kOut, kIn, engine::PanelStep(2)),
          0x3c23);  // bf16 of ~0.01
      std::vector<int8_t> wi(engine::I8PackedBytes(kOut, kIn), 3);
      std::vector<float> scale(kOut, 0.01f), x(kRows * kIn, 0.5f);
      std::vector<int32_t> wsum(kOut, 3 * kIn);
      std::vector<uint8_t> xq(static_cast<size_t>(kRows) * kIn, 140);
      std::vector<float> xs(kRows, 0.01f), y(static_cast<size_t>(kRows) * kOut);
      const engine::Bf16Terms terms(x.data(), kIn, kRows, kIn, bf16_terms);
      int64_t calls = 0;
      const auto t0 = Clock::now();
      double elapsed = 0;
      while (elapsed < 0.3) {
        for (int rep = 0; rep < 8; ++rep, ++calls) {
          if (precision == engine::WeightPrecision::kInt8) {
            k.gemm_i8(wi.data(), scale.data(), wsum.data(), kIn, xq.data(),
                      xs.data(), kIn, kRows, y.data(), kOut, 0, kOut);
          } else if (precision == engine::WeightPrecision::kBF16) {
            k.gemm_bf16(wb.data(), kIn, terms.xs.data(), terms.bf16(k),
                        terms.terms, kRows, y.data(), kOut, 0, kOut);
          } else {
            k.gemm_f32(w.data(), kIn, x.data(), kIn, kRows, y.data(), kOut, 0,
                       kOut);
          }
        }
        elapsed = Seconds(t0, Clock::now());
      }
      rates[t] = 2.0 * kRows * kIn * kOut * calls / elapsed;
    });
  }
  for (auto& t : ts) t.join();
  double total = 0;
  for (double r : rates) total += r;
  return total / 1e9;
}

// Bytes of weights a decode step reads once: every matrix except the
// embedding (one row per token).
double WeightBytesPerStep(const engine::ModelInfo& info, double bytes_per_w) {
  const engine::ModelConfig& c = info.config;
  const double emb = static_cast<double>(c.vocab_size) * c.n_embd;
  return (static_cast<double>(info.params) - emb) * bytes_per_w;
}

// Arithmetic of a step that feeds `tokens` rows through the layers and asks
// for `logit_rows` rows of logits: 2 FLOPs per weight of the layers per
// row, and of the head (vocab x embd) per logits row only — the engine
// computes no other row's logits, so counting the head for every token
// would flatter a prefill's rate by ~1.5x at the 0.1B shape.
double FlopPerStep(const engine::ModelInfo& info, double tokens,
                   double logit_rows) {
  const engine::ModelConfig& c = info.config;
  const double head = static_cast<double>(c.vocab_size) * c.n_embd;
  const double layers = static_cast<double>(info.params) - 2 * head;
  return 2.0 * (layers * tokens + head * logit_rows);
}

// `sessions` fresh states, each fed `per_step` tokens a step, with one row
// of logits each.
struct Work {
  Work(const engine::ModelInfo& info, int sessions, int per_step)
      : input(static_cast<size_t>(sessions) * per_step),
        // As the worker's scheduler keeps them: rows start on cache lines.
        logits(static_cast<size_t>(sessions) * info.config.vocab_size),
        work(sessions) {
    const int V = info.config.vocab_size;
    // States on huge pages, as the worker keeps them (worker/tasks.h).
    states.reserve(sessions);
    for (int s = 0; s < sessions; ++s) {
      states.emplace_back(info.state_floats, 0.0f);
    }
    for (size_t i = 0; i < input.size(); ++i) {
      input[i] = static_cast<int32_t>((i * 7919 + 13) % V);
    }
    last = per_step - 1;
    for (int s = 0; s < sessions; ++s) {
      work[s].tokens = absl::MakeConstSpan(
          &input[static_cast<size_t>(s) * per_step], per_step);
      work[s].state = states[s].data();
      work[s].logit_positions = absl::MakeConstSpan(&last, 1);
      work[s].logits = &logits[static_cast<size_t>(s) * V];
    }
  }
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  std::vector<engine::HugePageVector<float>> states;
  std::vector<int32_t> input;
  engine::HugePageVector<float> logits;
  int32_t last = 0;
  std::vector<engine::SequenceWork> work;
};

absl::Status BenchEngine() {
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "decode" && mode != "prefill") {
    return UsageError("--mode must be decode or prefill");
  }
  const int batch = absl::GetFlag(FLAGS_batch);
  if (batch < 1 || batch > 4096) {
    return UsageError("--batch must be in [1, 4096]");
  }
  const int versus = absl::GetFlag(FLAGS_versus_batch);
  if (versus < 0 || versus > 4096 || (versus > 0 && mode != "decode")) {
    return UsageError(
        "--versus-batch must be in [0, 4096], and only with --mode decode");
  }
  // --precision parses here (a flag of the engine options every loading
  // command shares) but bench takes the weights' precision from --dtype.
  if (FlagGiven("precision")) {
    return UsageError(
        "bench engine takes no --precision: give the weights' precision "
        "with --dtype fp32|bf16|int8");
  }
  // --tokens: the length of a prefill call; in decode, the tokens each
  // session decodes (the timed steps, instead of --seconds' minimum).
  int tokens = mode == "decode" ? 0 : 512;
  if (const std::string t = TokensFlagValue(); !t.empty()) {
    if (!absl::SimpleAtoi(t, &tokens) || tokens < 1 || tokens > (1 << 20)) {
      return UsageError("--tokens must be a count in [1, 2^20]");
    }
  }
  const int decode_steps = mode == "decode" ? tokens : 0;
  if (static_cast<size_t>(decode_steps) > kMaxSteps) {
    return UsageError(
        absl::StrCat("--tokens for --mode decode must be at most ", kMaxSteps,
                     " (the steps timed)"));
  }
  absl::StatusOr<engine::ModelOptions> engine_options =
      EngineOptionsFromFlags();
  if (!engine_options.ok()) return AsUsageError(engine_options.status());
  engine::ModelOptions options = *std::move(engine_options);
  options.kernels = absl::GetFlag(FLAGS_kernels);
  std::string dtype = DtypeFlagValue();
  if (dtype.empty() || dtype == "fp32" || dtype == "f32") {
    dtype = "fp32";
    options.precision = engine::WeightPrecision::kF32;
  } else if (dtype == "bf16") {
    options.precision = engine::WeightPrecision::kBF16;
  } else if (dtype == "int8") {
    options.precision = engine::WeightPrecision::kInt8;
  } else {
    return UsageError("--dtype must be fp32, bf16 or int8");
  }
  const std::string path = ModelFlagValue();
  if (path.empty()) {
    return UsageError("--model is required");
  }
  const int threads =
      options.threads > 0 ? options.threads : engine::AvailableCpus();
  // The bandwidth is probed twice, before the model loads and after the
  // timed steps, and the higher reading counts: a neighbour's burst during
  // a single probe would flatter the roofline fraction. The first probe's
  // 512 MiB are freed before the load and kept out of the peak-RSS figure
  // by resetting its mark; where that is refused, only the second runs.
  std::vector<double> probes;
  if (ResetPeakRss()) {
    probes.push_back(MeasureReadBandwidth(threads));
    ResetPeakRss();
  }
  SS_ASSIGN_OR_RETURN(auto model, engine::LoadModel(path, options));
  const engine::ModelInfo& info = model->info();

  // Work: `sessions` states; each step feeds `per_step` tokens per session.
  const int sessions = mode == "decode" ? batch : 1;
  const int per_step = mode == "decode" ? 1 : tokens;
  const bool seconds_given = FlagGiven("seconds");
  Work main_work(info, sessions, per_step);
  std::optional<Work> versus_work;
  if (versus > 0) versus_work.emplace(info, versus, 1);
  SS_RETURN_IF_ERROR(model->Forward(main_work.work));  // warm-up
  if (versus_work) SS_RETURN_IF_ERROR(model->Forward(versus_work->work));
  // With --versus-batch the two batches' steps alternate, so both see the
  // same moments of a shared machine.
  std::vector<double> step_s, versus_s;
  const double min_seconds = absl::GetFlag(FLAGS_seconds);
  const auto start = Clock::now();
  // With a decode --tokens count (and no --seconds), exactly that many
  // steps; else at least 3 and --seconds.
  const size_t min_steps = decode_steps > 0 ? decode_steps : 3;
  const bool by_time = decode_steps == 0 || seconds_given;
  while (step_s.size() < min_steps ||
         (by_time && Seconds(start, Clock::now()) < min_seconds)) {
    auto t0 = Clock::now();
    SS_RETURN_IF_ERROR(model->Forward(main_work.work));
    step_s.push_back(Seconds(t0, Clock::now()));
    if (versus_work) {
      t0 = Clock::now();
      SS_RETURN_IF_ERROR(model->Forward(versus_work->work));
      versus_s.push_back(Seconds(t0, Clock::now()));
    }
    if (step_s.size() >= kMaxSteps) break;
  }
  std::sort(step_s.begin(), step_s.end());
  const double median = step_s[step_s.size() / 2];
  const double tokens_per_step = static_cast<double>(sessions) * per_step;

  // Peak memory of the model and its work, before the bandwidth probe
  // allocates its own 512 MiB.
  const double peak_rss_mib = PeakRssMib();
  probes.push_back(MeasureReadBandwidth(threads));
  const double bandwidth = *std::max_element(probes.begin(), probes.end());
  // int8 also reads one fp32 scale per row: negligible beside the row.
  const double bytes_per_w =
      options.precision == engine::WeightPrecision::kBF16   ? 2
      : options.precision == engine::WeightPrecision::kInt8 ? 1
                                                            : 4;
  const double step_bytes = WeightBytesPerStep(info, bytes_per_w) +
                            2.0 * 4 * info.state_floats * sessions;

  nlohmann::ordered_json j;
  j["mode"] = mode;
  j["dtype"] = dtype;
  if (!info.bf16_activations.empty()) {
    j["bf16_activations"] = info.bf16_activations;
  }
  j["batch"] = sessions;
  j["tokens"] = per_step;
  j["threads"] = threads;
  j["kernels"] = info.kernels;
  j["tokens_per_s"] = tokens_per_step / median;
  j["ms_per_step_median"] = median * 1e3;
  j["steps"] = step_s.size();
  if (versus_work) {
    std::sort(versus_s.begin(), versus_s.end());
    const double versus_tps = versus / versus_s[versus_s.size() / 2];
    j["versus_batch"] = versus;
    j["versus_tokens_per_s"] = versus_tps;
    j["versus_ratio"] = (tokens_per_step / median) / versus_tps;
  }
  j["params"] = info.params;
  j["weight_bytes_per_step"] = WeightBytesPerStep(info, bytes_per_w);
  j["read_bandwidth_gb_s"] = bandwidth / 1e9;
  nlohmann::json probe_gb_s = nlohmann::json::array();
  for (double b : probes) probe_gb_s.push_back(b / 1e9);
  j["read_bandwidth_probes_gb_s"] = probe_gb_s;
  if (mode == "decode") {
    // Decode is bound by reading the weights (and states) once per step.
    const double roofline = tokens_per_step * bandwidth / step_bytes;
    j["roofline_tokens_per_s"] = roofline;
    j["roofline_fraction"] = (tokens_per_step / median) / roofline;
  } else {
    // Prefill is bound by arithmetic (FlopPerStep: one logits row per
    // session), beside the kernel's peak on cache-resident data measured in
    // this run.
    const double flop = FlopPerStep(info, tokens_per_step, sessions);
    const double gflops = flop / median / 1e9;
    j["flop_per_step"] = flop;
    const engine::Kernels* k =
        options.kernels.empty()
            ? &engine::GetKernels()
            : engine::GetKernelsByName(options.kernels.c_str());
    j["gflop_per_s"] = gflops;
    if (k != nullptr) {
      const double peak = MeasureKernelPeak(*k, options, threads);
      j["peak_gflop_per_s"] = peak;
      j["roofline_fraction"] = gflops / peak;
    }
  }
  j["peak_rss_mib"] = peak_rss_mib;
  std::cout << j.dump() << "\n";
  return absl::OkStatus();
}

int RunBench(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0] != "engine") {
    return ReportUsageError("expected 'engine'");
  }
  // Output that did not reach stdout (a full disk) fails too.
  absl::Status s = BenchEngine();
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& BenchCommand() {
  static const Command kCommand{
      "bench",
      "Measure engine throughput against the machine's memory bandwidth.",
      "engine --model PATH --mode decode|prefill [--batch B] [--tokens N]\n"
      "             [--dtype fp32|bf16|int8] [--bf16-activations split|round]\n"
      "             [--threads T] [--seconds S] [--versus-batch N]\n"
      "             [--kernels avx512|avx512amx|avx512bf16|avx512vnni|avx2|\n"
      "                        scalar]\n\n"
      "Prints one JSON line: tokens_per_s (aggregate over the batch), the\n"
      "median step time, the read bandwidth measured in the same run, the\n"
      "decode roofline (weights + states read per step over that bandwidth),\n"
      "for prefill flop_per_step (2 per layer weight per token, and 2 per\n"
      "head weight for the one logits row) and gflop_per_s beside\n"
      "peak_gflop_per_s (the same kernels on cache-resident data, measured\n"
      "in the run) and peak RSS. prefill\n"
      "feeds --tokens (default 512) tokens of one session per call; decode\n"
      "feeds one token to each of --batch sessions. With --versus-batch N\n"
      "(decode), steps of N other sessions alternate with them and the line\n"
      "adds versus_batch, versus_tokens_per_s and versus_ratio\n"
      "(tokens_per_s over versus_tokens_per_s): a batching ratio both of\n"
      "whose sides saw the same moments of a shared machine. The weights'\n"
      "precision is --dtype (--precision is refused). With --mode decode,\n"
      "--tokens N times N steps (N tokens per session) instead of --seconds.",
      {__FILE__, kModelFlagFile, kEngineFlagsFile, kDtypeFlagFile,
       kTokenFlagsFile},
      &RunBench};
  return kCommand;
}

}  // namespace statestream::cli
