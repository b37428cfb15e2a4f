// SPDX-License-Identifier: Apache-2.0
#include "tests/cluster_harness.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "state_store/redis_state_store.h"
#include "tests/e2e_calls.h"
#include "tests/subprocess.h"

namespace statestream::e2e {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(90);

}  // namespace

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(
    const std::string& bin, const ClusterOptions& options) {
  std::unique_ptr<Cluster> c(new Cluster());
  c->bin_ = bin;
  c->options_ = options;
  static int instance = 0;
  c->dir_ = absl::StrCat(std::filesystem::temp_directory_path().string(),
                         "/ss-cluster-", getpid(), "-", instance++);
  std::filesystem::create_directories(c->dir_);
  auto tiny = c->MakeModel("tiny", 7);
  if (!tiny.ok()) return tiny.status();
  c->tiny_ = *tiny;
  testing::RedisServerOptions redis_options;
  redis_options.args = options.redis_args;
  auto redis = testing::RedisServer::Start(redis_options);
  if (!redis.ok()) return redis.status();
  c->redis_ = *std::move(redis);
  RedisStateStoreOptions store_options;
  store_options.addresses = {c->redis_->address()};
  auto store = NewRedisStateStore(store_options);
  if (!store.ok()) return store.status();
  c->store_ = *std::move(store);
  for (int i = 0; i < options.workers; ++i) {
    auto w = c->AddWorker();
    if (!w.ok()) return w.status();
  }
  for (int i = 0; i < options.gateways; ++i) {
    if (absl::Status st = c->StartGateway(i); !st.ok()) return st;
  }
  return c;
}

Cluster::~Cluster() {
  sessions_.clear();
  streams_.clear();
  models_.clear();
  gateways_.clear();
  workers_.clear();
  store_.reset();
  redis_.reset();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

absl::StatusOr<std::string> Cluster::MakeModel(const std::string& name,
                                               uint32_t seed) {
  const std::string path = absl::StrCat(dir_, "/", name, ".safetensors");
  if (absl::Status made = MakeTinyModel(bin_, path, seed); !made.ok()) {
    return made;
  }
  return path;
}

absl::StatusOr<int> Cluster::AddWorker(const std::string& model_path) {
  const std::string id = absl::StrCat("w", next_worker_++);
  std::vector<std::string> argv = {
      bin_,
      "worker",
      "--listen=127.0.0.1:0",
      "--redis=" + redis_->address(),
      "--model=" + (model_path.empty() ? tiny_ : model_path),
      "--worker-id=" + id,
      "--heartbeat-interval=300ms",
      "--shutdown-grace=2s"};
  argv.insert(argv.end(), options_.worker_args.begin(),
              options_.worker_args.end());
  auto w = ClusterProcess::Start(argv, absl::StrCat(dir_, "/", id, ".log"),
                                 kStartTimeout);
  if (!w.ok()) return w.status();
  workers_.push_back(*std::move(w));
  return static_cast<int>(workers_.size()) - 1;
}

absl::Status Cluster::StartGateway(int index) {
  std::vector<std::string> argv = {bin_,
                                   "gateway",
                                   "--listen=127.0.0.1:0",
                                   "--redis=" + redis_->address(),
                                   "--metrics-listen=127.0.0.1:0",
                                   "--upstream-stall-timeout=2s",
                                   "--suspect-for=2s",
                                   "--shutdown-grace=1s"};
  argv.insert(argv.end(), options_.gateway_args.begin(),
              options_.gateway_args.end());
  auto g = ClusterProcess::Start(
      argv, absl::StrCat(dir_, "/gateway", index, ".log"), kStartTimeout);
  if (!g.ok()) return g.status();
  auto channel =
      grpc::CreateChannel((*g)->address(), grpc::InsecureChannelCredentials());
  sessions_.push_back(v1::Sessions::NewStub(channel));
  streams_.push_back(v1::Streams::NewStub(channel));
  models_.push_back(v1::Models::NewStub(channel));
  gateways_.push_back(*std::move(g));
  return absl::OkStatus();
}

ClusterProcess* Cluster::Owner(const std::string& session,
                               const std::string& tenant) {
  auto lease = store_->GetOwner({tenant, session});
  if (!lease.ok() || lease->owner.empty()) return nullptr;
  auto listed = store_->ListWorkers();
  if (!listed.ok()) return nullptr;
  for (const auto& info : *listed) {
    if (info.worker_id != lease->owner) continue;
    for (auto& w : workers_) {
      if (w->pid() > 0 && w->address() == info.address) return w.get();
    }
  }
  return nullptr;
}

std::string Cluster::Logs() const {
  std::string out;
  for (const auto& g : gateways_) absl::StrAppend(&out, "gateway:\n", g->Log());
  for (const auto& w : workers_) absl::StrAppend(&out, "worker:\n", w->Log());
  return out;
}

absl::Status Cluster::Create(const std::string& id, int gw,
                             const std::string& model_id) {
  v1::CreateSessionRequest req;
  req.set_request_id("create-" + id);
  req.set_session_id(id);
  req.set_model_id(model_id);
  v1::Session s;
  auto ctx = ClientContext();
  return FromGrpcStatus(sessions_[gw]->CreateSession(ctx.get(), req, &s));
}

absl::StatusOr<v1::Session> Cluster::Get(const std::string& id, int gw) {
  v1::GetSessionRequest req;
  req.set_session_id(id);
  v1::Session s;
  auto ctx = ClientContext();
  grpc::Status st = sessions_[gw]->GetSession(ctx.get(), req, &s);
  if (!st.ok()) return FromGrpcStatus(st);
  return s;
}

absl::StatusOr<std::string> Cluster::Export(const std::string& id, int gw) {
  return ExportBlob(sessions_[gw].get(), id, ClientContext());
}

std::unique_ptr<grpc::ClientContext> ClientContext() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(120));
  return ctx;
}

absl::Status AppendResumable(
    Cluster* cluster, const std::string& id,
    const std::vector<std::string>& chunks, int checkpoint_every,
    const std::function<bool(const grpc::Status&)>& on_error,
    std::atomic<uint64_t>* max_committed, std::atomic<int>* acked) {
  // Offsets at chunk boundaries: ends[i] = offset after chunk i.
  std::vector<uint64_t> ends;
  uint64_t total = 0;
  for (const auto& c : chunks) ends.push_back(total += c.size());
  size_t next = 0;
  int gw = 0;
  const int gateways = static_cast<int>(cluster->gateways().size());
  while (next < chunks.size()) {
    auto ctx = ClientContext();
    auto stream = cluster->streams(gw)->Append(ctx.get());
    bool broken = false;
    for (; next < chunks.size(); ++next) {
      v1::AppendRequest r;
      r.set_session_id(id);
      r.set_expected_input_offset(next == 0 ? 0 : ends[next - 1]);
      r.set_text_utf8(chunks[next]);
      if (checkpoint_every > 0 && (next + 1) % checkpoint_every == 0) {
        r.set_checkpoint(true);
      }
      v1::AppendResponse ack;
      if (!stream->Write(r) || !stream->Read(&ack)) {
        broken = true;
        break;
      }
      // A resent request the session already holds is acknowledged as a
      // duplicate with the session's (further) offset.
      if (ack.duplicate() ? ack.input_offset() < ends[next]
                          : ack.input_offset() != ends[next]) {
        return absl::InternalError(absl::StrCat(
            id, ": ack at ", ack.input_offset(), ", expected ", ends[next]));
      }
      if (max_committed != nullptr) {
        uint64_t seen = max_committed->load();
        while (ack.committed_input_offset() > seen &&
               !max_committed->compare_exchange_weak(
                   seen, ack.committed_input_offset())) {
        }
      }
      if (acked != nullptr) acked->fetch_add(1);
    }
    if (!broken) stream->WritesDone();
    grpc::Status st = stream->Finish();
    if (!broken && st.ok()) break;
    if (st.ok()) st = grpc::Status(grpc::StatusCode::UNKNOWN, "stream broke");
    if (!on_error(st)) return FromGrpcStatus(st);
    gw = (gw + 1) % gateways;
    // Resume from what the service has committed (the proto's contract:
    // resend everything beyond committed_input_offset after a failure).
    // Not from input_offset: a worker that lost the session's lease may
    // still hold, and report, input it will never commit; resent input it
    // does hold is acknowledged as a duplicate.
    while (true) {
      auto s = cluster->Get(id, gw);
      if (s.ok()) {
        const uint64_t at = s->committed_input_offset();
        next = 0;
        while (next < ends.size() && ends[next] <= at) ++next;
        if (at != (next == 0 ? 0 : ends[next - 1])) {
          return absl::InternalError(absl::StrCat(
              id, ": committed_input_offset ", at, " is not a chunk end"));
        }
        break;
      }
      if (!on_error(ToGrpcStatus(s.status()))) return s.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      gw = (gw + 1) % gateways;
    }
  }
  return absl::OkStatus();
}

}  // namespace statestream::e2e
