// SPDX-License-Identifier: Apache-2.0
// The worker end to end, in one run on one model (issue 5's bench):
//   1. tokens/s of one session's Generate through the gRPC API (a worker
//      served in this process on 127.0.0.1 with the in-memory store) vs the
//      engine alone (Model::Forward + the sampler driven directly);
//   2. aggregate Generate throughput of 1, 8, 32, 64 concurrent sessions
//      through the API, beside the engine's own batched decode at the same
//      batch sizes (the ceiling continuous batching can reach);
//   3. time to first token of an interactive session while another session
//      ingests a long document (100k tokens by default);
//   4. a long Score through the scheduler in prefill chunks vs one token a
//      step.
// The model is a random x070 from the project's generator (written to a
// temporary .safetensors and loaded like any checkpoint). A 65,536-token
// vocabulary is served with a synthetic World vocab file (the 256 byte
// tokens; the text is irrelevant here), 256 with the byte tokenizer.
// Prints a Markdown report. Results: bench/RESULTS.md.
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/malloc_tuning.h"
#include "services/server.h"
#include "state_store/memory_state_store.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/engine/model.h"
#include "worker/engine/random_model.h"
#include "worker/engine/sampler.h"
#include "worker/engine/tokenizer.h"
#include "worker/engine/weight_writer.h"
#include "worker/scheduler.h"
#include "worker/session_manager.h"
#include "worker/tasks.h"
#include "worker/worker_service.h"

ABSL_FLAG(int, layers, 6, "Model: layers.");
ABSL_FLAG(int, embd, 512, "Model: width C (a multiple of --head-size).");
ABSL_FLAG(int, head_size, 64, "Model: head size.");
ABSL_FLAG(int, ffn, 2048, "Model: FFN width.");
ABSL_FLAG(int, vocab, 65536,
          "Model: vocabulary, 65536 (World tokenizer) or 256 (bytes).");
ABSL_FLAG(std::string, dtype, "bf16",
          "Weights: f32 or bf16 (as stored), or int8 (stored f32, "
          "quantized at load).");
ABSL_FLAG(int, threads, 0, "Engine threads; 0 = one per hardware thread.");
ABSL_FLAG(std::string, parts, "1,2,3,4", "Which parts to run.");
ABSL_FLAG(int, tokens, 256, "Part 1: tokens per Generate at one session.");
ABSL_FLAG(int, repeats, 3,
          "Part 1: engine and API runs, interleaved; medians are reported.");
ABSL_FLAG(std::string, sessions, "1,8,32,64",
          "Part 2: concurrent session counts.");
ABSL_FLAG(int, session_tokens, 128, "Part 2: tokens per session's Generate.");
ABSL_FLAG(int, engine_steps, 32,
          "Part 2: decode steps of the engine-alone batched runs.");
ABSL_FLAG(int, ingest_tokens, 100000, "Part 3: tokens of the document.");
ABSL_FLAG(int, score_tokens, 1024, "Part 4: tokens of the Score.");
ABSL_FLAG(int, ingest_chunk, 4096, "Part 3: tokens per Append request.");
ABSL_FLAG(int, ttft_tokens, 4, "Part 3: max_tokens of each interactive call.");
ABSL_FLAG(absl::Duration, ttft_pause, absl::Milliseconds(100),
          "Part 3: pause between interactive calls.");

namespace statestream {
namespace {

constexpr int kPromptTokens = 16;

// CPU seconds used by this process so far (all threads: engine, scheduler,
// gRPC server and client). On a shared machine this is steadier than wall
// time: other processes' load slows a run but does not add to it.
double CpuSeconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec +
         (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Tokens per wall second and CPU milliseconds per token of one run.
struct Rate {
  double tps = 0;
  double cpu_ms = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out(n);
  // Avoid 0 (end of text in the World vocabulary).
  for (int32_t& t : out) t = 1 + static_cast<int32_t>(rng() % (vocab - 1));
  return out;
}

// The 256 single-byte tokens of the World vocab format (ids 1-256).
std::string SyntheticWorldVocab() {
  std::string out;
  for (int b = 0; b < 256; ++b) {
    absl::StrAppendFormat(&out, "%d %s'\\x%02x' 1\n", b + 1,
                          b < 0x80 ? "" : "b", b);
  }
  return out;
}

// --- The engine alone ------------------------------------------------------

// One batch of `batch` sessions decoding `steps` tokens each (Forward +
// sampling per step), from states that consumed kPromptTokens. Tokens/s.
absl::StatusOr<Rate> EngineDecode(engine::Model& model, int batch, int steps) {
  const engine::ModelInfo& info = model.info();
  const int vocab = info.config.vocab_size;
  std::vector<std::vector<float>> states(batch);
  std::vector<std::vector<float>> hidden(
      batch, std::vector<float>(info.config.n_embd));
  std::vector<float> logits(static_cast<size_t>(batch) * vocab);
  std::vector<engine::Sampler> samplers;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> next(batch);
  const std::vector<int32_t> last_pos = {kPromptTokens - 1};
  const std::vector<int32_t> zero = {0};
  std::vector<engine::SequenceWork> work(batch);
  for (int b = 0; b < batch; ++b) {
    states[b].resize(info.state_floats);
    model.InitState(states[b].data());
    engine::SamplingParams params;
    params.seed = 1 + b;
    samplers.emplace_back(params, engine::SamplerState{});
    prompts.push_back(RandomTokens(kPromptTokens, vocab, 100 + b));
    work[b] = {prompts[b], states[b].data(), last_pos,
               logits.data() + static_cast<size_t>(b) * vocab,
               hidden[b].data()};
  }
  if (absl::Status st = model.Forward(work); !st.ok()) return st;
  std::vector<float> scratch(vocab);
  const absl::Time start = absl::Now();
  const double cpu = CpuSeconds();
  for (int step = 0; step < steps; ++step) {
    for (int b = 0; b < batch; ++b) {
      const float* row = logits.data() + static_cast<size_t>(b) * vocab;
      scratch.assign(row, row + vocab);
      next[b] = samplers[b].Sample(absl::MakeSpan(scratch));
      work[b] = {absl::MakeConstSpan(&next[b], 1), states[b].data(), zero,
                 logits.data() + static_cast<size_t>(b) * vocab,
                 hidden[b].data()};
    }
    if (absl::Status st = model.Forward(work); !st.ok()) return st;
  }
  const double tokens = batch * steps;
  return Rate{tokens / absl::ToDoubleSeconds(absl::Now() - start),
              1000 * (CpuSeconds() - cpu) / tokens};
}

// --- The worker, served in this process --------------------------------------

struct InProcessWorker {
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<worker::Scheduler> scheduler;
  std::unique_ptr<worker::SessionManager> sessions;
  std::unique_ptr<Server> server;  // destroyed first
  std::shared_ptr<grpc::Channel> channel;
};

absl::StatusOr<std::unique_ptr<InProcessWorker>> StartWorker(
    engine::Model* model) {
  auto w = std::make_unique<InProcessWorker>();
  auto tokenizer = model->info().config.vocab_size == 256
                       ? engine::MakeByteTokenizer()
                       : engine::ParseWorldTokenizer(SyntheticWorldVocab());
  if (!tokenizer.ok()) return tokenizer.status();
  w->tokenizer = *std::move(tokenizer);
  auto store = NewMemoryStateStore(MemoryStateStoreOptions{});
  if (!store.ok()) return store.status();
  w->store = *std::move(store);
  w->scheduler =
      std::make_unique<worker::Scheduler>(model, worker::SchedulerOptions{});
  worker::SessionManagerOptions options;
  options.model_id = "bench";
  options.owner = "worker-bench";
  auto manager = worker::SessionManager::Create(
      options, model, w->tokenizer.get(), w->scheduler.get(), w->store.get());
  if (!manager.ok()) return manager.status();
  w->sessions = *std::move(manager);
  ServerOptions server;
  server.listen = "127.0.0.1:0";
  auto started =
      Server::Start(server, worker::PublicApiServices(w->sessions.get()));
  if (!started.ok()) return started.status();
  w->server = *std::move(started);
  w->channel = grpc::CreateChannel(w->server->address(),
                                   grpc::InsecureChannelCredentials());
  return w;
}

absl::Status FromGrpc(const grpc::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::UnknownError(absl::StrCat(what, ": ", s.error_message()));
}

// A client of the in-process worker. Thread-safe (stubs are).
class Client {
 public:
  explicit Client(const std::shared_ptr<grpc::Channel>& channel)
      : sessions_(v1::Sessions::NewStub(channel)),
        streams_(v1::Streams::NewStub(channel)) {}

  absl::Status Create(const std::string& id) {
    v1::CreateSessionRequest req;
    req.set_request_id("create-" + id);
    req.set_session_id(id);
    v1::Session out;
    grpc::ClientContext ctx;
    return FromGrpc(sessions_->CreateSession(&ctx, req, &out), "create");
  }

  // Appends `tokens` from input_offset `at` in requests of `chunk` tokens.
  absl::Status Append(const std::string& id, const std::vector<int32_t>& tokens,
                      uint64_t at, int chunk) {
    grpc::ClientContext ctx;
    auto stream = streams_->Append(&ctx);
    v1::AppendResponse ack;
    for (size_t i = 0; i < tokens.size(); i += chunk) {
      v1::AppendRequest req;
      req.set_session_id(id);
      req.set_request_id(absl::StrCat("append-", id, "-", at + i));
      req.set_expected_input_offset(at + i);
      const size_t end = std::min(tokens.size(), i + chunk);
      for (size_t j = i; j < end; ++j) req.mutable_tokens()->add_ids(tokens[j]);
      if (!stream->Write(req) || !stream->Read(&ack)) break;
    }
    stream->WritesDone();
    while (stream->Read(&ack)) {
    }
    return FromGrpc(stream->Finish(), "append");
  }

  struct Generated {
    int tokens = 0;
    absl::Duration first;  // time to the first chunk
    absl::Duration total;
  };
  absl::StatusOr<Generated> Generate(const std::string& id,
                                     const std::string& request_id,
                                     int max_tokens, bool commit) {
    v1::GenerateRequest req;
    req.set_session_id(id);
    req.set_request_id(request_id);
    req.set_max_tokens(max_tokens);
    req.set_commit(commit);
    grpc::ClientContext ctx;
    Generated out;
    const absl::Time start = absl::Now();
    auto reader = streams_->Generate(&ctx, req);
    v1::GenerateResponse msg;
    bool first = true;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) {
        if (first) out.first = absl::Now() - start;
        first = false;
        out.tokens += msg.chunk().tokens_size();
      }
    }
    out.total = absl::Now() - start;
    if (absl::Status st = FromGrpc(reader->Finish(), "generate"); !st.ok()) {
      return st;
    }
    return out;
  }

 private:
  std::unique_ptr<v1::Sessions::Stub> sessions_;
  std::unique_ptr<v1::Streams::Stub> streams_;
};

// A session with kPromptTokens consumed.
absl::Status Prepare(Client& client, const std::string& id, int vocab) {
  if (absl::Status st = client.Create(id); !st.ok()) return st;
  return client.Append(id, RandomTokens(kPromptTokens, vocab, 7), 0,
                       kPromptTokens);
}

// --- The three parts --------------------------------------------------------

absl::Status PartOne(engine::Model& model, Client& client) {
  const int n = absl::GetFlag(FLAGS_tokens);
  const int vocab = model.info().config.vocab_size;
  if (absl::Status st = Prepare(client, "single", vocab); !st.ok()) return st;
  std::vector<double> engine_tps, api_tps, engine_cpu, api_cpu;
  for (int r = 0; r < absl::GetFlag(FLAGS_repeats); ++r) {
    auto e = EngineDecode(model, 1, n);
    if (!e.ok()) return e.status();
    engine_tps.push_back(e->tps);
    engine_cpu.push_back(e->cpu_ms);
    const double cpu = CpuSeconds();
    auto g = client.Generate("single", absl::StrCat("one-", r), n, true);
    if (!g.ok()) return g.status();
    api_tps.push_back(g->tokens / absl::ToDoubleSeconds(g->total));
    api_cpu.push_back(1000 * (CpuSeconds() - cpu) / g->tokens);
  }
  const double e = Median(engine_tps), a = Median(api_tps);
  const double ec = Median(engine_cpu), ac = Median(api_cpu);
  std::printf(
      "## 1. One session: gRPC API vs engine alone (%d tokens, median of "
      "%zu)\n\n",
      n, engine_tps.size());
  std::printf("| path | tok/s | runs | CPU ms/token |\n|---|---|---|---|\n");
  auto runs = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v)
      absl::StrAppendFormat(&s, "%s%.1f", s.empty() ? "" : " ", x);
    return s;
  };
  std::printf("| engine alone (Forward + sampler) | %.1f | %s | %.2f |\n", e,
              runs(engine_tps).c_str(), ec);
  std::printf("| Generate over gRPC (commit=true) | %.1f | %s | %.2f |\n", a,
              runs(api_tps).c_str(), ac);
  std::printf(
      "\nAPI overhead (target <= 10%%): %.1f%% in wall-clock tok/s, %.1f%% "
      "in CPU time per token (all threads of the process, client "
      "included)\n\n",
      100.0 * (e - a) / e, 100.0 * (ac - ec) / ec);
  return absl::OkStatus();
}

absl::Status PartTwo(engine::Model& model, Client& client) {
  std::vector<int> counts;
  for (absl::string_view s :
       absl::StrSplit(absl::GetFlag(FLAGS_sessions), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n < 1) {
      return absl::InvalidArgumentError("--sessions: bad count");
    }
    counts.push_back(n);
  }
  const int m = absl::GetFlag(FLAGS_session_tokens);
  const int vocab = model.info().config.vocab_size;
  const int most = *std::max_element(counts.begin(), counts.end());
  for (int i = 0; i < most; ++i) {
    if (absl::Status st = Prepare(client, absl::StrCat("many-", i), vocab);
        !st.ok()) {
      return st;
    }
  }
  std::printf(
      "## 2. Concurrent sessions (%d tokens each through the API; engine: "
      "%d batched decode steps)\n\n",
      m, absl::GetFlag(FLAGS_engine_steps));
  std::printf(
      "| sessions | API aggregate tok/s | × one session | API CPU ms/token "
      "| engine batched tok/s | × batch 1 | engine CPU ms/token |\n"
      "|---|---|---|---|---|---|---|\n");
  double api_one = 0, engine_one = 0;
  for (int count : counts) {
    absl::Barrier* barrier = new absl::Barrier(count + 1);
    std::vector<std::thread> threads;
    std::vector<absl::Status> errors(count);
    std::atomic<int> produced{0};
    for (int i = 0; i < count; ++i) {
      threads.emplace_back([&, i] {
        if (barrier->Block()) delete barrier;
        auto g = client.Generate(absl::StrCat("many-", i),
                                 absl::StrCat("many-", count, "-", i), m, true);
        if (!g.ok()) {
          errors[i] = g.status();
        } else {
          produced += g->tokens;
        }
      });
    }
    if (barrier->Block()) delete barrier;
    const absl::Time start = absl::Now();
    const double cpu = CpuSeconds();
    for (auto& t : threads) t.join();
    const double api = produced / absl::ToDoubleSeconds(absl::Now() - start);
    const double api_cpu = 1000 * (CpuSeconds() - cpu) / produced;
    for (const absl::Status& st : errors) {
      if (!st.ok()) return st;
    }
    auto engine = EngineDecode(model, count, absl::GetFlag(FLAGS_engine_steps));
    if (!engine.ok()) return engine.status();
    if (api_one == 0) api_one = api, engine_one = engine->tps;
    std::printf("| %d | %.1f | %.2f | %.2f | %.1f | %.2f | %.2f |\n", count,
                api, api / api_one, api_cpu, engine->tps,
                engine->tps / engine_one, engine->cpu_ms);
  }
  std::printf("\n");
  return absl::OkStatus();
}

absl::Status PartThree(engine::Model& model, Client& client) {
  const int vocab = model.info().config.vocab_size;
  const int doc_tokens = absl::GetFlag(FLAGS_ingest_tokens);
  const int ttft_tokens = absl::GetFlag(FLAGS_ttft_tokens);
  if (absl::Status st = Prepare(client, "chat", vocab); !st.ok()) return st;
  if (absl::Status st = client.Create("doc"); !st.ok()) return st;
  int calls = 0;
  auto ttft = [&](std::vector<double>* out) -> absl::Status {
    auto g = client.Generate("chat", absl::StrCat("chat-", calls++),
                             ttft_tokens, false);
    if (!g.ok()) return g.status();
    out->push_back(absl::ToDoubleMilliseconds(g->first));
    return absl::OkStatus();
  };
  std::vector<double> idle, busy;
  for (int i = 0; i < 10; ++i) {
    if (absl::Status st = ttft(&idle); !st.ok()) return st;
  }
  const std::vector<int32_t> doc = RandomTokens(doc_tokens, vocab, 11);
  std::atomic<bool> ingesting{true};
  absl::Status ingest_status;
  const absl::Time start = absl::Now();
  absl::Time end;
  std::thread ingest([&] {
    ingest_status =
        client.Append("doc", doc, 0, absl::GetFlag(FLAGS_ingest_chunk));
    end = absl::Now();
    ingesting = false;
  });
  while (ingesting) {
    if (absl::Status st = ttft(&busy); !st.ok()) {
      ingest.join();
      return st;
    }
    absl::SleepFor(absl::GetFlag(FLAGS_ttft_pause));
  }
  ingest.join();
  if (!ingest_status.ok()) return ingest_status;
  const double seconds = absl::ToDoubleSeconds(end - start);
  std::printf(
      "## 3. Time to first token while another session ingests %d tokens\n\n",
      doc_tokens);
  std::printf(
      "Ingest: %.1f s, %.0f tok/s (Append, %d-token requests) with the "
      "interactive calls beside it.\n\n",
      seconds, doc_tokens / seconds, absl::GetFlag(FLAGS_ingest_chunk));
  std::printf("| interactive TTFT | calls | p50 ms | p90 ms | max ms |\n");
  std::printf("|---|---|---|---|---|\n");
  std::printf("| idle worker | %zu | %.1f | %.1f | %.1f |\n", idle.size(),
              Median(idle), Quantile(idle, 0.9), Quantile(idle, 1.0));
  std::printf("| during the ingest | %zu | %.1f | %.1f | %.1f |\n", busy.size(),
              Median(busy), Quantile(busy, 0.9), Quantile(busy, 1.0));
  std::printf(
      "\nWithout interleaving, a call arriving with the document would wait "
      "for all of it: ~%.0f ms.\n",
      1000 * seconds);
  return absl::OkStatus();
}

// Part 4: a Score of --score-tokens through the scheduler (ScoreTask):
// prefill chunks with logits after every token (the default 64) vs one
// token a step (prefill_chunk 1: how Score ran before 2026-12-06),
// alternating, median of --repeats.
absl::Status PartFour(engine::Model& model, Client&) {
  const int vocab = model.info().config.vocab_size;
  const int n = absl::GetFlag(FLAGS_score_tokens);
  const std::vector<int32_t> prefix = RandomTokens(kPromptTokens, vocab, 7);
  const std::vector<int32_t> cont = RandomTokens(n, vocab, 13);
  auto score = [&](int chunk) -> absl::StatusOr<double> {
    worker::SchedulerOptions o;
    o.prefill_chunk = chunk;
    worker::Scheduler sched(&model, o);
    worker::EngineState s = worker::EngineState::Initial(model);
    int32_t last = static_cast<int32_t>(prefix.size()) - 1;
    std::vector<float> logits(vocab);
    engine::SequenceWork w{prefix, s.state.data(),
                           absl::MakeConstSpan(&last, 1), logits.data(),
                           s.last_hidden.data()};
    if (absl::Status st = model.Forward({&w, 1}); !st.ok()) return st;
    s.position = prefix.size();
    absl::Notification done;
    absl::Status result;
    const absl::Time start = absl::Now();
    absl::Status submitted = sched.Submit(std::make_shared<worker::ScoreTask>(
        &s, vocab, cont,
        [&](const absl::Status& st, const std::vector<float>&,
            const std::vector<bool>&) {
          result = st;
          done.Notify();
        }));
    if (!submitted.ok()) return submitted;
    done.WaitForNotification();
    if (!result.ok()) return result;
    return n / absl::ToDoubleSeconds(absl::Now() - start);
  };
  std::vector<double> chunked, single;
  for (int r = 0; r < absl::GetFlag(FLAGS_repeats); ++r) {
    auto a = score(64);
    if (!a.ok()) return a.status();
    chunked.push_back(*a);
    auto b = score(1);
    if (!b.ok()) return b.status();
    single.push_back(*b);
  }
  std::printf("## 4. Score of %d tokens (scheduler, one session)\n\n", n);
  std::printf("| method | tokens/s |\n|---|---|\n");
  std::printf("| prefill chunks of 64, logits after every token | %.0f |\n",
              Median(chunked));
  std::printf("| one token a step (before 2026-12-06) | %.0f |\n",
              Median(single));
  std::printf("\nRatio %.1fx, median of %zu.\n\n",
              Median(chunked) / Median(single), chunked.size());
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "worker_bench [flags]: gRPC vs engine tokens/s, 1-64 concurrent "
      "sessions, TTFT during a long ingest (bench/RESULTS.md).");
  absl::ParseCommandLine(argc, argv);
  TuneMallocForLargeBuffers();
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype != "f32" && dtype != "bf16" && dtype != "int8") {
    std::fprintf(stderr, "--dtype: f32, bf16 or int8\n");
    return 2;
  }
  const int vocab = absl::GetFlag(FLAGS_vocab);
  if (vocab != 256 && vocab != engine::kWorldVocabSize) {
    std::fprintf(stderr, "--vocab: 256 or 65536\n");
    return 2;
  }
  engine::RandomModelSpec spec;
  spec.n_layer = absl::GetFlag(FLAGS_layers);
  spec.n_embd = absl::GetFlag(FLAGS_embd);
  spec.head_size = absl::GetFlag(FLAGS_head_size);
  spec.dim_ffn = absl::GetFlag(FLAGS_ffn);
  spec.vocab_size = vocab;
  auto tensors = engine::RandomRwkv7(spec);
  if (!tensors.ok()) {
    std::fprintf(stderr, "%s\n", tensors.status().ToString().c_str());
    return 1;
  }
  const std::string path =
      (std::filesystem::temp_directory_path() /
       absl::StrCat("worker-bench-", getpid(), ".safetensors"))
          .string();
  absl::Status written = engine::WriteCheckpoint(
      path, *tensors,
      dtype == "bf16" ? engine::DType::kBF16 : engine::DType::kF32);
  tensors->clear();
  engine::ModelOptions model_options;
  model_options.threads = absl::GetFlag(FLAGS_threads);
  if (dtype == "int8") model_options.precision = engine::WeightPrecision::kInt8;
  auto model = written.ok()
                   ? engine::LoadModel(path, model_options)
                   : absl::StatusOr<std::unique_ptr<engine::Model>>(written);
  std::remove(path.c_str());  // the mapping stays valid
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  const engine::ModelInfo& info = (*model)->info();
  std::printf(
      "# worker_bench: x070 L%d C%d H%d F%d V%d, %.1fM params, %s weights, "
      "%s kernels, state %.0f KiB\n\n",
      info.config.n_layer, info.config.n_embd, info.config.n_head,
      info.config.dim_ffn, info.config.vocab_size, info.params / 1e6,
      dtype.c_str(), info.kernels.c_str(), info.state_floats * 4 / 1024.0);
  std::fflush(stdout);
  auto w = StartWorker(model->get());
  if (!w.ok()) {
    std::fprintf(stderr, "%s\n", w.status().ToString().c_str());
    return 1;
  }
  Client client((*w)->channel);
  const std::string parts = absl::GetFlag(FLAGS_parts);
  const std::pair<char, absl::Status (*)(engine::Model&, Client&)> all[] = {
      {'1', &PartOne}, {'2', &PartTwo}, {'3', &PartThree}, {'4', &PartFour}};
  for (const auto& [name, part] : all) {
    if (parts.find(name) == std::string::npos) continue;
    if (absl::Status st = part(**model, client); !st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
    std::fflush(stdout);
  }
  (*w)->server->Shutdown(absl::Seconds(5));
  return 0;
}

}  // namespace
}  // namespace statestream

int main(int argc, char** argv) { return statestream::Main(argc, argv); }
