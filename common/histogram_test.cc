// SPDX-License-Identifier: Apache-2.0
#include "common/histogram.h"

#include <string>

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
