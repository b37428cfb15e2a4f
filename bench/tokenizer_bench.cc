// SPDX-License-Identifier: Apache-2.0
// Tokenizer throughput: whole-text Encode and streamed EncodeStream (the
// tail carried between chunks, as a session's appends carry it) for the
// World, GPT-NeoX-20B and byte tokenizers, on generated prose with some
// non-Latin words; and the NeoX tokenizer's worst case, a long run without
// whitespace streamed a byte at a time (its tail is rescanned each call:
// tokenizer.h). Every streamed run is checked once against Encode. Run:
//   build/bench/tokenizer_bench --benchmark_counters_tabular=true
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "worker/engine/tokenizer.h"

namespace statestream::engine {
namespace {

enum Kind { kWorld = 0, kNeox = 1, kBytes = 2 };

// The tokenizer, or the program ends with the load's error.
const Tokenizer* OrExit(absl::StatusOr<std::unique_ptr<Tokenizer>> t) {
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    std::exit(1);
  }
  return t->release();
}

const Tokenizer& Get(Kind kind) {
  static const Tokenizer* const tokenizers[3] = {
      OrExit(LoadWorldTokenizer(absl::StrCat(
          STATESTREAM_SHARED_DIR, "/testdata/rwkv_vocab_v20230424.txt"))),
      OrExit(LoadNeoxTokenizer(absl::StrCat(STATESTREAM_SHARED_DIR,
                                            "/testdata/20B_tokenizer.json"))),
      OrExit(MakeByteTokenizer()),
  };
  return *tokenizers[kind];
}

const char* Name(Kind kind) {
  return kind == kWorld ? "world" : kind == kNeox ? "neox" : "bytes";
}

// `bytes` of prose-like text from a fixed word list (a fixed generator, so
// every run tokenizes the same text): mostly English, with punctuation,
// numbers, line breaks and words in other scripts.
std::string Prose(size_t bytes) {
  static const char* const kWords[] = {
      "the",     "of",        "and",        "a",        "to",     "in",
      "is",      "session",   "state",      "stream",   "worker", "token",
      "model",   "recurrent", "resume",     "exactly",  "once",   "append",
      "gateway", "Redis",     "checkpoint", "version",  "lease",  "fence",
      "agent",   "memory",    "document",   "pipeline", "long",   "running",
      "naïve",   "café",      "Zürich",     "東京",     "データ", "данные",
      "مرحبا",   "2026",      "3.14",       "x+=1;",    "(see",   "below)",
      "it's",    "don't",     "👍",          "—",        "e.g.",   "RWKV-7"};
  constexpr size_t kCount = sizeof(kWords) / sizeof(kWords[0]);
  std::string out;
  out.reserve(bytes + 32);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  while (out.size() < bytes) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out += kWords[x % kCount];
    const uint64_t sep = (x >> 32) % 20;
    out += sep == 0 ? ". " : sep == 1 ? ", " : sep == 2 ? "\n" : " ";
  }
  out.resize(bytes);
  // Cut inside a character: drop the incomplete last one.
  while (!out.empty() && (static_cast<uint8_t>(out.back()) & 0xC0) == 0x80) {
    out.pop_back();
  }
  if (!out.empty() && static_cast<uint8_t>(out.back()) >= 0xC0) out.pop_back();
  return out;
}

// Streams `text` in `chunk`-byte pieces, the tail carried; flushes at the
// end. The tokens, concatenated.
std::vector<int32_t> Stream(const Tokenizer& t, const std::string& text,
                            size_t chunk) {
  std::vector<int32_t> out;
  std::string tail;
  for (size_t at = 0; at < text.size(); at += chunk) {
    const bool last = at + chunk >= text.size();
    StreamEncodeResult r =
        t.EncodeStream(tail, absl::string_view(text).substr(at, chunk), last);
    out.insert(out.end(), r.tokens.begin(), r.tokens.end());
    tail = std::move(r.tail);
  }
  return out;
}

void BM_Encode(benchmark::State& state) {
  const Kind kind = static_cast<Kind>(state.range(0));
  const Tokenizer& t = Get(kind);
  const std::string text = Prose(256 << 10);
  size_t tokens = 0;
  for (auto _ : state) {
    std::vector<int32_t> ids = t.Encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetLabel(Name(kind));
  state.SetBytesProcessed(state.iterations() * text.size());
  state.counters["bytes_per_token"] =
      static_cast<double>(text.size()) / static_cast<double>(tokens);
}
BENCHMARK(BM_Encode)->DenseRange(kWorld, kBytes)->Unit(benchmark::kMillisecond);

void BM_EncodeStream(benchmark::State& state) {
  const Kind kind = static_cast<Kind>(state.range(0));
  const size_t chunk = static_cast<size_t>(state.range(1));
  const Tokenizer& t = Get(kind);
  const std::string text = Prose(chunk < 16 ? (16 << 10) : (256 << 10));
  if (Stream(t, text, chunk) != t.Encode(text)) {
    state.SkipWithError("streamed tokens differ from Encode");
    return;
  }
  for (auto _ : state) {
    std::vector<int32_t> ids = Stream(t, text, chunk);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetLabel(absl::StrCat(Name(kind), ", ", chunk, "-byte chunks"));
  state.SetBytesProcessed(state.iterations() * text.size());
}
BENCHMARK(BM_EncodeStream)
    ->ArgsProduct({{kWorld, kNeox}, {1, 16, 256, 4096}})
    ->Unit(benchmark::kMillisecond);

// One run of `n` letters, no whitespace, a byte per call: the NeoX tail
// grows with the run (to its 64 KiB cap) and each call rescans it.
void BM_EncodeStreamOneWord(benchmark::State& state) {
  const Kind kind = static_cast<Kind>(state.range(0));
  const size_t n = static_cast<size_t>(state.range(1));
  const Tokenizer& t = Get(kind);
  std::string text(n, 'a');
  for (size_t i = 0; i < n; ++i) text[i] = static_cast<char>('a' + i % 26);
  if (Stream(t, text, 1) != t.Encode(text)) {
    state.SkipWithError("streamed tokens differ from Encode");
    return;
  }
  for (auto _ : state) {
    std::vector<int32_t> ids = Stream(t, text, 1);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetLabel(absl::StrCat(Name(kind), ", ", n, " letters"));
  state.SetBytesProcessed(state.iterations() * text.size());
}
BENCHMARK(BM_EncodeStreamOneWord)
    ->ArgsProduct({{kWorld, kNeox}, {1 << 10, 16 << 10}})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace statestream::engine

BENCHMARK_MAIN();
