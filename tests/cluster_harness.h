// SPDX-License-Identifier: Apache-2.0
// A whole cluster on 127.0.0.1 for the end-to-end fault and load tests: a
// real redis-server, `statestream worker`s over small random byte-level
// models and `statestream gateway`s (tests/cluster_process.h), plus the
// client calls the tests share. Not thread-safe except the client calls
// (Create, Get, Export, AppendResumable), which any thread may use.
#ifndef STATESTREAM_TESTS_CLUSTER_HARNESS_H_
#define STATESTREAM_TESTS_CLUSTER_HARNESS_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "state_store/state_store.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/cluster_process.h"
#include "tests/e2e_calls.h"  // TextChunks

namespace statestream::e2e {

struct ClusterOptions {
  int workers = 3;
  int gateways = 2;
  // Extra arguments for redis-server, workers and gateways.
  std::vector<std::string> redis_args;
  std::vector<std::string> worker_args;
  std::vector<std::string> gateway_args;
};

class Cluster {
 public:
  // `bin`: the statestream binary. Makes the model `tiny` (seed 7) and
  // starts everything; workers serve `tiny` unless AddWorker says else.
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(
      const std::string& bin, const ClusterOptions& options);
  ~Cluster();  // kills every process, removes the directory

  // A random model `name` (model_id = name) with `seed`; returns its path.
  absl::StatusOr<std::string> MakeModel(const std::string& name, uint32_t seed);
  // Starts one more worker (id w0, w1, ...) serving `model_path` ("" =
  // tiny). Returns its index in workers().
  absl::StatusOr<int> AddWorker(const std::string& model_path = "");

  testing::RedisServer* redis() { return redis_.get(); }
  StateStore* store() { return store_.get(); }
  std::vector<std::unique_ptr<ClusterProcess>>& workers() { return workers_; }
  std::vector<std::unique_ptr<ClusterProcess>>& gateways() { return gateways_; }
  // The running worker holding the session's lease, or nullptr.
  ClusterProcess* Owner(const std::string& session,
                        const std::string& tenant = "default");
  // Every process's log, for failure messages.
  std::string Logs() const;

  // Client calls through gateway `gw` (thread-safe).
  v1::Sessions::Stub* sessions(int gw) { return sessions_[gw].get(); }
  v1::Streams::Stub* streams(int gw) { return streams_[gw].get(); }
  v1::Models::Stub* models(int gw) { return models_[gw].get(); }
  absl::Status Create(const std::string& id, int gw = 0,
                      const std::string& model_id = "");
  absl::StatusOr<v1::Session> Get(const std::string& id, int gw = 0);
  absl::StatusOr<std::string> Export(const std::string& id, int gw = 0);

 private:
  Cluster() = default;
  absl::Status StartGateway(int index);

  std::string bin_;
  ClusterOptions options_;
  std::string dir_;
  std::string tiny_;
  int next_worker_ = 0;
  std::unique_ptr<testing::RedisServer> redis_;
  std::unique_ptr<StateStore> store_;
  std::vector<std::unique_ptr<ClusterProcess>> workers_;
  std::vector<std::unique_ptr<ClusterProcess>> gateways_;
  std::vector<std::unique_ptr<v1::Sessions::Stub>> sessions_;
  std::vector<std::unique_ptr<v1::Streams::Stub>> streams_;
  std::vector<std::unique_ptr<v1::Models::Stub>> models_;
};

// A client context with a 120 s deadline.
std::unique_ptr<grpc::ClientContext> ClientContext();

// Appends `chunks` to session `id` one request at a time (each acked before
// the next), with checkpoint=true on every `checkpoint_every`-th. When a
// call fails it asks `on_error(status)` whether to go on (false: give up
// with that status), reads the session's committed_input_offset (retrying
// while that fails the same way) and resumes from there on the next
// gateway, accepting duplicate acknowledgements — the client side of
// exactly-once appends. `max_committed` (optional) gets the
// largest committed_input_offset acknowledged.
absl::Status AppendResumable(
    Cluster* cluster, const std::string& id,
    const std::vector<std::string>& chunks, int checkpoint_every,
    const std::function<bool(const grpc::Status&)>& on_error,
    std::atomic<uint64_t>* max_committed = nullptr,
    std::atomic<int>* acked = nullptr);

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_CLUSTER_HARNESS_H_
