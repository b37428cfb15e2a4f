// SPDX-License-Identifier: Apache-2.0
// The fixture the cluster fault tests share (cluster_chaos_test.cc,
// cluster_retry_test.cc): a fresh e2e::Cluster per test, its processes'
// logs on failure, an uninterrupted reference run, and the gateways'
// Append failover count.
#ifndef STATESTREAM_TESTS_CLUSTER_FIXTURE_H_
#define STATESTREAM_TESTS_CLUSTER_FIXTURE_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/cluster_harness.h"
#include "tests/metrics_scrape.h"

namespace statestream::e2e {

class ClusterFixture : public ::testing::Test {
 protected:
  void StartCluster(ClusterOptions options) {
    auto c = Cluster::Start(STATESTREAM_BIN, options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
  }
  void TearDown() override {
    if (HasFailure() && cluster_) ADD_FAILURE() << cluster_->Logs();
  }
  // The reference: `chunks` appended to a fresh session with no fault.
  void Reference(const std::vector<std::string>& chunks, v1::Session* head,
                 std::string* state) {
    ASSERT_TRUE(cluster_->Create("reference").ok());
    ASSERT_TRUE(AppendResumable(cluster_.get(), "reference", chunks, 5,
                                [](const grpc::Status&) { return false; })
                    .ok());
    auto s = cluster_->Get("reference");
    ASSERT_TRUE(s.ok()) << s.status();
    *head = *s;
    auto blob = cluster_->Export("reference");
    ASSERT_TRUE(blob.ok()) << blob.status();
    *state = *blob;
  }
  // Whether `n` reached `at_least` within two minutes.
  [[nodiscard]] static bool WaitFor(const std::atomic<int>& n, int at_least) {
    const absl::Time deadline = absl::Now() + absl::Minutes(2);
    while (n.load() < at_least) {
      if (absl::Now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  // statestream_gateway_failovers_total{method="Append"} over the
  // gateways (-1 when one cannot be read).
  double AppendFailovers() {
    double sum = 0;
    for (auto& g : cluster_->gateways()) {
      auto samples = ScrapeMetrics(g->metrics_address());
      if (!samples) return -1;
      auto it = samples->find(
          "statestream_gateway_failovers_total{method=\"Append\"}");
      if (it != samples->end()) sum += it->second;
    }
    return sum;
  }

  std::unique_ptr<Cluster> cluster_;
};

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_CLUSTER_FIXTURE_H_
