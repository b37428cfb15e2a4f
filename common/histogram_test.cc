// SPDX-License-Identifier: Apache-2.0
#include "common/histogram.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace statestream {
namespace {

// Prometheus text: cumulative buckets, +Inf, then _sum and _count.
TEST(HistogramTest, RendersCumulativeBucketsSumAndCount) {
  Histogram h({0.5, 1});
  h.Observe(0.25);
  h.Observe(0.75);
  h.Observe(5);
  std::string out;
  h.Render("x", "m=\"a\"", &out);
  EXPECT_EQ(out,
            "x_bucket{m=\"a\",le=\"0.5\"} 1\n"
            "x_bucket{m=\"a\",le=\"1\"} 2\n"
            "x_bucket{m=\"a\",le=\"+Inf\"} 3\n"
            "x_sum{m=\"a\"} 6\n"
            "x_count{m=\"a\"} 3\n");
}

// Latencies reach minutes (a gateway's rpc histogram times a stream's whole
// life; a load waits out store retries): past the last bound everything
// reads +Inf, and quantiles say nothing. They once stopped at 10 s.
TEST(HistogramTest, LatencyBoundsReachMinutes) {
  const std::vector<double> b = Histogram::LatencyBounds();
  ASSERT_FALSE(b.empty());
  EXPECT_LE(b.front(), 0.001);
  EXPECT_GE(b.back(), 300);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]) << i;
  Histogram h(b);
  for (int i = 0; i < 10; ++i) h.Observe(45);
  EXPECT_LE(h.Quantile(0.5), 60);
  EXPECT_GE(h.Quantile(0.5), 30);
}

// The sum keeps every digit: with six significant ones (absl::StrCat of a
// double) a sum past 1e5 s moved in whole seconds, so rate(_sum) over a
// scrape read 0 most of the time and average latencies were wrong.
TEST(HistogramTest, TheSumKeepsItsPrecision) {
  Histogram h({1});
  h.Observe(123456.0);
  h.Observe(0.25);
  std::string out;
  h.Render("x", "", &out);
  EXPECT_NE(out.find("x_sum 123456.25\n"), std::string::npos) << out;
  Histogram big({1});
  big.Observe(1234567.125);
  out.clear();
  big.Render("y", "", &out);
  EXPECT_NE(out.find("y_sum 1234567.125\n"), std::string::npos) << out;
}

// A duration from a wall clock stepped back counts as 0: a negative one
// would lower _sum, which Prometheus reads as a counter reset.
TEST(HistogramTest, ANegativeValueCountsAsZero) {
  Histogram h({1});
  h.Observe(2);
  h.Observe(-5);
  std::string out;
  h.Render("x", "", &out);
  EXPECT_NE(out.find("x_sum 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"1\"} 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_count 2\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace statestream
