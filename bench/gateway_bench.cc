// SPDX-License-Identifier: Apache-2.0
// The distributed path, with real processes on 127.0.0.1 (issue 6's bench):
// one redis-server, `statestream worker` processes over a random x070 model
// and one `statestream gateway`. Measures, in one run:
//   1. what the gateway adds per streamed message: Append round trips of
//      one token on an open stream, and whole one-token Generate calls,
//      through the gateway vs straight to the session's worker (the two
//      alternate, so machine noise hits both alike);
//   2. failover time: SIGKILL of the worker serving a long Generate, to the
//      first token after the stall (the largest gap between tokens in the
//      window after the kill), beside the normal gap between tokens;
//   3. with --burst_streams=N: N open Append streams whose owner is killed
//      at once, the time from the kill to their next acks;
//   4. resuming a session on a cold worker (state loaded from Redis + the
//      first token) vs re-ingesting its history into a new session (+ the
//      first token), for histories of 1k, 10k and 100k tokens.
// Prints a Markdown report. Results: bench/RESULTS.md.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/cluster_process.h"
#include "tests/subprocess.h"

ABSL_FLAG(int, layers, 6, "Model: layers.");
ABSL_FLAG(int, embd, 512, "Model: width C (head size 64).");
ABSL_FLAG(std::string, histories, "1000,10000,100000",
          "Session histories (tokens) for cold resume vs re-ingest.");
ABSL_FLAG(int, round_trips, 300, "Round trips per path for the overhead.");
ABSL_FLAG(int, failovers, 5, "Worker kills for the failover time.");
ABSL_FLAG(int, burst_streams, 0,
          "Open Append streams whose owner is killed at once (0: skip).");
ABSL_FLAG(int, gateway_task_threads, 0,
          "The gateway's --max-task-threads (0: its default).");
ABSL_FLAG(std::string, statestream, STATESTREAM_BIN, "The statestream binary.");

namespace statestream {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::hours(1));
  return ctx;
}

std::vector<uint32_t> RandomTokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> t(n);
  for (uint32_t& x : t) x = rng() % 256;
  return t;
}

class Bench {
 public:
  absl::Status SetUp() {
    dir_ = absl::StrCat(std::filesystem::temp_directory_path().string(),
                        "/ss-gateway-bench-", getpid());
    std::filesystem::create_directories(dir_);
    model_ = dir_ + "/model.safetensors";
    const int embd = absl::GetFlag(FLAGS_embd);
    auto made =
        e2e::Run({bin_, "model", "random", "--arch=x070",
                  absl::StrCat("--layers=", absl::GetFlag(FLAGS_layers)),
                  absl::StrCat("--embd=", embd), "--vocab=256", "--dtype=bf16",
                  "--seed=1", "--out=" + model_},
                 absl::Minutes(5));
    if (!made.ok()) return made.status();
    if (made->exit_code != 0) return absl::InternalError(made->err);
    auto redis = testing::RedisServer::Start({});
    if (!redis.ok()) return redis.status();
    redis_ = *std::move(redis);
    RedisStateStoreOptions o;
    o.addresses = {redis_->address()};
    auto store = NewRedisStateStore(o);
    if (!store.ok()) return store.status();
    store_ = *std::move(store);
    for (int i = 0; i < 2; ++i) {
      if (absl::Status s = AddWorker(); !s.ok()) return s;
    }
    std::vector<std::string> gateway = {bin_, "gateway", "--listen=127.0.0.1:0",
                                        "--redis=" + redis_->address(),
                                        "--shutdown-grace=1s"};
    if (const int t = absl::GetFlag(FLAGS_gateway_task_threads); t > 0) {
      gateway.push_back(absl::StrCat("--max-task-threads=", t));
    }
    auto g = e2e::ClusterProcess::Start(gateway, dir_ + "/gateway.log",
                                        absl::Seconds(60));
    if (!g.ok()) return g.status();
    gateway_ = *std::move(g);
    gw_sessions_ = v1::Sessions::NewStub(Channel(gateway_->address()));
    gw_streams_ = v1::Streams::NewStub(Channel(gateway_->address()));
    return absl::OkStatus();
  }

  ~Bench() {
    gateway_.reset();
    workers_.clear();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  void Overhead() {
    const int n = absl::GetFlag(FLAGS_round_trips);
    Create("rt-gw");
    Create("rt-direct");
    const auto prompt = RandomTokens(16, 3);
    Append(*gw_streams_, "rt-gw", 0, prompt, true);
    Append(*gw_streams_, "rt-direct", 0, prompt, true);
    auto direct = v1::Streams::NewStub(Channel(OwnerAddress("rt-direct")));
    auto direct_sessions =
        v1::Sessions::NewStub(Channel(OwnerAddress("rt-direct")));

    std::vector<double> append_gw, append_direct, gen_gw, gen_direct, get_gw,
        get_direct;
    auto gw_ctx = Ctx(), direct_ctx = Ctx();
    auto gw_stream = gw_streams_->Append(gw_ctx.get());
    auto direct_stream = direct->Append(direct_ctx.get());
    uint64_t offset = prompt.size();
    for (int i = 0; i < n; ++i) {
      for (auto [stream, out, id] :
           {std::tuple{gw_stream.get(), &append_gw, "rt-gw"},
            std::tuple{direct_stream.get(), &append_direct, "rt-direct"}}) {
        v1::AppendRequest r;
        r.set_session_id(id);
        r.set_expected_input_offset(offset);
        r.mutable_tokens()->add_ids(static_cast<uint32_t>(i % 256));
        v1::AppendResponse ack;
        const auto t0 = Clock::now();
        if (!stream->Write(r) || !stream->Read(&ack)) {
          std::fprintf(stderr, "append round trip failed\n");
          return;
        }
        out->push_back(Ms(Clock::now() - t0));
      }
      ++offset;
      for (auto [stub, out, id] :
           {std::tuple{gw_streams_.get(), &gen_gw, "rt-gw"},
            std::tuple{direct.get(), &gen_direct, "rt-direct"}}) {
        const auto t0 = Clock::now();
        if (GenerateOne(*stub, id).empty()) return;
        out->push_back(Ms(Clock::now() - t0));
      }
      for (auto [stub, out, id] :
           {std::tuple{gw_sessions_.get(), &get_gw, "rt-gw"},
            std::tuple{direct_sessions.get(), &get_direct, "rt-direct"}}) {
        v1::GetSessionRequest get;
        get.set_session_id(id);
        v1::Session session;
        auto ctx = Ctx();
        const auto t0 = Clock::now();
        grpc::Status st = stub->GetSession(ctx.get(), get, &session);
        if (!st.ok()) {
          std::fprintf(stderr, "GetSession: %s\n", st.error_message().c_str());
          return;
        }
        out->push_back(Ms(Clock::now() - t0));
      }
    }
    for (auto* s : {gw_stream.get(), direct_stream.get()}) {
      s->WritesDone();
      s->Finish();
    }
    std::printf(
        "\n### Gateway overhead (%d round trips per path)\n\n"
        "| call | direct p50 | direct p99 | gateway p50 | gateway p99 | "
        "added p50 |\n|---|---|---|---|---|---|\n",
        n);
    for (auto [name, d, g] :
         {std::tuple{"Append message (1 token, open stream)", &append_direct,
                     &append_gw},
          std::tuple{"Generate call (1 token, not committed)", &gen_direct,
                     &gen_gw},
          std::tuple{"GetSession call (unary)", &get_direct, &get_gw}}) {
      std::printf("| %s | %.3f ms | %.3f ms | %.3f ms | %.3f ms | %.3f ms |\n",
                  name, Percentile(*d, 0.5), Percentile(*d, 0.99),
                  Percentile(*g, 0.5), Percentile(*g, 0.99),
                  Percentile(*g, 0.5) - Percentile(*d, 0.5));
    }
  }

  void Failover() {
    const int rounds = absl::GetFlag(FLAGS_failovers);
    Create("fo");
    Append(*gw_streams_, "fo", 0, RandomTokens(64, 4), true);
    std::vector<double> stalls, gaps;
    for (int round = 0; round < rounds; ++round) {
      v1::GenerateRequest g;
      g.set_session_id("fo");
      g.set_request_id(absl::StrCat("fo-", round));
      g.set_max_tokens(8192);
      g.set_commit(true);
      g.mutable_sampling()->set_seed(round + 1);
      g.mutable_sampling()->set_temperature(1.0f);
      auto ctx = Ctx();
      auto reader = gw_streams_->Generate(ctx.get(), g);
      v1::GenerateResponse msg;
      size_t tokens = 0, after_kill = 0;
      bool killed = false, stopped = false;
      Clock::time_point last = Clock::now(), kill_at;
      double stall = 0;
      while (reader->Read(&msg)) {
        if (!msg.has_chunk()) continue;
        const auto now = Clock::now();
        if (killed) {
          stall = std::max(stall, Ms(now - std::max(last, kill_at)));
          after_kill += msg.chunk().tokens_size();
        } else if (tokens > 0) {
          gaps.push_back(Ms(now - last) / msg.chunk().tokens_size());
        }
        last = now;
        tokens += msg.chunk().tokens_size();
        if (!killed && tokens >= 256) {
          e2e::ClusterProcess* owner = Owner("fo");
          if (owner == nullptr) break;
          kill_at = Clock::now();
          owner->Kill();
          killed = true;
        }
        if (killed && after_kill >= 256) {
          stopped = true;
          break;
        }
      }
      if (stopped) ctx->TryCancel();
      const grpc::Status st = reader->Finish();
      if (!killed || after_kill == 0) {
        std::fprintf(stderr,
                     "failover round %d: %zu tokens, killed %d, %zu after: "
                     "%s\n",
                     round, tokens, killed, after_kill,
                     st.error_message().c_str());
        continue;
      }
      stalls.push_back(stall);
      if (!AddWorker().ok()) return;
      SweepDead();
    }
    std::printf(
        "\n### Failover (%zu SIGKILLs of the worker serving a Generate)\n\n"
        "| | p50 | max |\n|---|---|---|\n"
        "| kill -> next token (largest gap after the kill) | %.1f ms | %.1f "
        "ms |\n| normal gap between tokens | %.3f ms | %.3f ms |\n",
        stalls.size(), Percentile(stalls, 0.5), Percentile(stalls, 1.0),
        Percentile(gaps, 0.5), Percentile(gaps, 1.0));
  }

  void ResumeVsReingest() {
    std::printf(
        "\n### Cold resume vs re-ingest\n\n"
        "| history | state | re-ingest + first token | cold resume + first "
        "token, on the worker | the same through the gateway | then resident "
        "| re-ingest / cold (gateway) |\n|---|---|---|---|---|---|---|\n");
    for (absl::string_view h :
         absl::StrSplit(absl::GetFlag(FLAGS_histories), ',')) {
      size_t n = 0;
      if (!absl::SimpleAtoi(h, &n) || n == 0) continue;
      const std::string id = absl::StrCat("hist-", n);
      Create(id);
      const auto history = RandomTokens(n, static_cast<uint32_t>(n));
      // Re-ingest: the whole history into a new session, then a token.
      const auto t0 = Clock::now();
      Append(*gw_streams_, id, 0, history, true);
      if (GenerateOne(*gw_streams_, id).empty()) return;
      const double reingest = Ms(Clock::now() - t0);
      // Cold, straight to a fresh worker (already warmed up by another
      // session and connected, so only this session's resume is timed).
      auto fresh = MakeCold(id);
      if (!fresh) return;
      const auto t1 = Clock::now();
      if (GenerateOne(*fresh, id).empty()) return;
      const double cold_direct = Ms(Clock::now() - t1);
      // Cold again, through the gateway.
      if (!MakeCold(id)) return;
      absl::SleepFor(absl::Seconds(2));  // the gateway sees the registry
      const auto t2 = Clock::now();
      int attempts = 0;
      if (GenerateOne(*gw_streams_, id, &attempts).empty()) return;
      const double cold = Ms(Clock::now() - t2);
      const auto t3 = Clock::now();
      if (GenerateOne(*gw_streams_, id).empty()) return;
      const double warm = Ms(Clock::now() - t3);
      auto head = store_->GetHead({"default", id});
      const double mb =
          head.ok() ? static_cast<double>(head->head.state_bytes) / 1e6 : 0;
      std::printf(
          "| %zu tokens | %.2f MB | %.1f ms | %.1f ms | %.1f ms (%d "
          "attempts) | %.1f ms | %.0fx |\n",
          n, mb, reingest, cold_direct, cold, attempts, warm, reingest / cold);
      std::fflush(stdout);
    }
  }

 private:
  // Drains the session's owner (commit, release the lease, exit), starts a
  // fresh worker, warms it up with another session and returns a connected
  // stub to it; the session's next call loads its state from Redis.
  std::unique_ptr<v1::Streams::Stub> MakeCold(const std::string& id) {
    e2e::ClusterProcess* owner = Owner(id);
    if (owner == nullptr) {
      std::fprintf(stderr, "%s has no live owner\n", id.c_str());
      return nullptr;
    }
    owner->Signal(SIGTERM);
    int status;
    for (int i = 0; i < 200; ++i) {  // reaped here, or killed after 10 s
      if (waitpid(owner->pid(), &status, WNOHANG) == owner->pid()) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    owner->Kill();
    SweepDead();
    if (!AddWorker().ok()) return nullptr;
    auto channel = Channel(workers_.back()->address());
    channel->WaitForConnected(std::chrono::system_clock::now() +
                              std::chrono::seconds(10));
    auto sessions = v1::Sessions::NewStub(channel);
    auto streams = v1::Streams::NewStub(channel);
    const std::string warmup = absl::StrCat("warmup-", next_worker_);
    v1::CreateSessionRequest req;
    req.set_request_id("create-" + warmup);
    req.set_session_id(warmup);
    v1::Session s;
    auto ctx = Ctx();
    sessions->CreateSession(ctx.get(), req, &s);
    Append(*streams, warmup, 0, RandomTokens(64, 5), true);
    GenerateOne(*streams, warmup);
    return streams;
  }

  static std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetMaxSendMessageSize(64 << 20);
    return grpc::CreateCustomChannel(address,
                                     grpc::InsecureChannelCredentials(), args);
  }

  absl::Status AddWorker() {
    const std::string id = absl::StrCat("w", next_worker_++);
    auto w = e2e::ClusterProcess::Start(
        {bin_, "worker", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
         "--model=" + model_, "--worker-id=" + id, "--heartbeat-interval=300ms",
         "--shutdown-grace=2s"},
        absl::StrCat(dir_, "/", id, ".log"), absl::Seconds(60));
    if (!w.ok()) return w.status();
    workers_.push_back(*std::move(w));
    return absl::OkStatus();
  }

  void SweepDead() {
    workers_.erase(std::remove_if(workers_.begin(), workers_.end(),
                                  [](const auto& w) { return w->pid() <= 0; }),
                   workers_.end());
  }

  e2e::ClusterProcess* Owner(const std::string& session) {
    auto lease = store_->GetOwner({"default", session});
    auto listed = store_->ListWorkers();
    if (!lease.ok() || !listed.ok()) return nullptr;
    for (const auto& info : *listed) {
      if (info.worker_id != lease->owner) continue;
      for (auto& w : workers_) {
        if (w->pid() > 0 && w->address() == info.address) return w.get();
      }
    }
    return nullptr;
  }

  std::string OwnerAddress(const std::string& session) {
    e2e::ClusterProcess* owner = Owner(session);
    return owner == nullptr ? "" : owner->address();
  }

  void Create(const std::string& id) {
    v1::CreateSessionRequest req;
    req.set_request_id("create-" + id);
    req.set_session_id(id);
    v1::Session s;
    auto ctx = Ctx();
    grpc::Status st = gw_sessions_->CreateSession(ctx.get(), req, &s);
    if (!st.ok())
      std::fprintf(stderr, "create %s: %s\n", id.c_str(),
                   st.error_message().c_str());
  }

  // Appends `tokens` in messages of 1024, the last flushed and committed.
  static void Append(v1::Streams::Stub& stub, const std::string& id,
                     uint64_t offset, const std::vector<uint32_t>& tokens,
                     bool checkpoint) {
    auto ctx = Ctx();
    auto stream = stub.Append(ctx.get());
    size_t sent = 0, acks = 0;
    for (size_t at = 0; at < tokens.size(); at += 1024) {
      v1::AppendRequest r;
      r.set_session_id(id);
      r.set_expected_input_offset(offset + at);
      const size_t end = std::min(tokens.size(), at + 1024);
      for (size_t i = at; i < end; ++i) r.mutable_tokens()->add_ids(tokens[i]);
      if (end == tokens.size()) {
        r.set_flush(true);
        r.set_checkpoint(checkpoint);
      }
      stream->Write(r);
      ++sent;
    }
    stream->WritesDone();
    v1::AppendResponse ack;
    while (stream->Read(&ack)) ++acks;
    grpc::Status st = stream->Finish();
    if (!st.ok() || acks != sent) {
      std::fprintf(stderr, "append %s: %s (%zu/%zu acks)\n", id.c_str(),
                   st.error_message().c_str(), acks, sent);
    }
  }

  // A one-token side-branch generation; returns its tokens (and the
  // gateway's x-statestream-attempts trailer in *attempts).
  static std::vector<uint32_t> GenerateOne(v1::Streams::Stub& stub,
                                           const std::string& id,
                                           int* attempts = nullptr) {
    static int calls = 0;
    v1::GenerateRequest g;
    g.set_session_id(id);
    g.set_request_id(absl::StrCat("one-", ++calls));
    g.set_max_tokens(1);
    g.set_commit(false);
    g.mutable_sampling()->set_seed(7);
    auto ctx = Ctx();
    auto reader = stub.Generate(ctx.get(), g);
    v1::GenerateResponse msg;
    std::vector<uint32_t> out;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) {
        for (uint32_t t : msg.chunk().tokens()) out.push_back(t);
      }
    }
    grpc::Status st = reader->Finish();
    if (!st.ok()) {
      std::fprintf(stderr, "generate %s: %s\n", id.c_str(),
                   st.error_message().c_str());
      out.clear();
    }
    if (attempts != nullptr) {
      const auto& trailers = ctx->GetServerTrailingMetadata();
      auto it = trailers.find("x-statestream-attempts");
      *attempts = 0;
      if (it != trailers.end()) {
        (void)absl::SimpleAtoi(
            absl::string_view(it->second.data(), it->second.size()), attempts);
      }
    }
    return out;
  }

  const std::string bin_ = absl::GetFlag(FLAGS_statestream);

 public:
  // --burst_streams Append streams through the gateway, each with a
  // request acked; the owner of the first is killed (SIGKILL) and every
  // stream sends one more request: the time from the kill to the last
  // ack.
  void Burst() {
    const int n = absl::GetFlag(FLAGS_burst_streams);
    if (n <= 0) return;
    using Stream =
        grpc::ClientReaderWriter<v1::AppendRequest, v1::AppendResponse>;
    struct Open {
      std::string id;
      std::unique_ptr<grpc::ClientContext> ctx;
      std::unique_ptr<Stream> stream;
    };
    auto request = [](const std::string& id, uint64_t offset) {
      v1::AppendRequest r;
      r.set_session_id(id);
      r.set_expected_input_offset(offset);
      r.mutable_tokens()->add_ids(static_cast<uint32_t>(offset % 256));
      return r;
    };
    std::vector<Open> open(n);
    for (int i = 0; i < n; ++i) {
      open[i].id = absl::StrCat("burst-", i);
      Create(open[i].id);
      open[i].ctx = Ctx();
      open[i].stream = gw_streams_->Append(open[i].ctx.get());
      v1::AppendResponse ack;
      if (!open[i].stream->Write(request(open[i].id, 0)) ||
          !open[i].stream->Read(&ack)) {
        std::fprintf(stderr, "burst: stream %d did not open\n", i);
        return;
      }
    }
    e2e::ClusterProcess* victim = Owner(open[0].id);
    if (victim == nullptr) return;
    int moved = 0;
    for (const Open& o : open) moved += Owner(o.id) == victim;
    const auto kill_at = Clock::now();
    victim->Kill();
    for (Open& o : open) o.stream->Write(request(o.id, 1));
    std::vector<double> acked;
    for (Open& o : open) {
      v1::AppendResponse ack;
      if (!o.stream->Read(&ack) || ack.input_offset() != 2) {
        std::fprintf(stderr, "burst: %s lost its ack\n", o.id.c_str());
        return;
      }
      acked.push_back(Ms(Clock::now() - kill_at));
    }
    for (Open& o : open) {
      o.stream->WritesDone();
      o.stream->Finish();
    }
    const int threads = absl::GetFlag(FLAGS_gateway_task_threads);
    std::printf(
        "\n### %d Append streams, the owner of %d killed (gateway task "
        "threads: %s)\n\nkill -> every stream's next ack: %.1f ms\n",
        n, moved, threads > 0 ? absl::StrCat(threads).c_str() : "default",
        *std::max_element(acked.begin(), acked.end()));
    SweepDead();
    AddWorker().IgnoreError();
  }

 private:
  std::string dir_, model_;
  std::unique_ptr<testing::RedisServer> redis_;
  std::unique_ptr<StateStore> store_;
  std::vector<std::unique_ptr<e2e::ClusterProcess>> workers_;
  std::unique_ptr<e2e::ClusterProcess> gateway_;
  std::unique_ptr<v1::Sessions::Stub> gw_sessions_;
  std::unique_ptr<v1::Streams::Stub> gw_streams_;
  int next_worker_ = 0;
};

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "gateway_bench [--histories=1000,10000,100000] [--round_trips=N] "
      "[--failovers=N] [--burst_streams=N [--gateway_task_threads=T]] "
      "[--layers=N --embd=C]");
  absl::ParseCommandLine(argc, argv);
  Bench bench;
  if (absl::Status s = bench.SetUp(); !s.ok()) {
    std::fprintf(stderr, "setup: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("## gateway_bench: x070 %d layers, C = %d, vocab 256, bf16\n",
              absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_embd));
  bench.Overhead();
  std::fflush(stdout);
  bench.Failover();
  std::fflush(stdout);
  bench.Burst();
  std::fflush(stdout);
  bench.ResumeVsReingest();
  return 0;
}

}  // namespace
}  // namespace statestream

int main(int argc, char** argv) { return statestream::Main(argc, argv); }
