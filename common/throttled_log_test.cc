// SPDX-License-Identifier: Apache-2.0
#include "common/throttled_log.h"

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(ThrottledLogTest, SaysALinePerIntervalAndCountsTheRest) {
  FakeClock clock;
  std::vector<std::string> lines;
  ThrottledLog log("prefix: ", absl::Seconds(10), &clock,
                   [&](absl::string_view line) { lines.emplace_back(line); });
  EXPECT_TRUE(log.Say("first"));
  clock.Advance(absl::Seconds(9));
  EXPECT_FALSE(log.Say("second"));
  int made = 0;
  EXPECT_FALSE(log.Say([&] {
    ++made;
    return std::string("third");
  }));
  EXPECT_EQ(made, 0);  // a line not said is not formatted
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(log.Say("fourth"));
  EXPECT_FALSE(log.Say("fifth"));
  clock.Advance(absl::Seconds(10));
  EXPECT_TRUE(log.Say("sixth"));
  EXPECT_EQ(lines, (std::vector<std::string>{
                       "prefix: first",
                       "prefix: fourth; 2 more since the last such line",
                       "prefix: sixth; 1 more since the last such line"}));
}

// A message may echo stored or client bytes: each stays one line, and a
// newline cannot forge another.
TEST(ThrottledLogTest, ALogLineIsOneLineOfBoundedLength) {
  EXPECT_EQ(CleanLogLine("a\nstatestream: forged\r\x1b[0m\x7f caf\xc3\xa9"),
            "a\\x0astatestream: forged\\x0d\\x1b[0m\\x7f caf\xc3\xa9");
  const std::string cut = CleanLogLine(std::string(10000, 'x'));
  EXPECT_EQ(cut.size(), kMaxLogLineBytes - 1);  // with its newline: 4096
  EXPECT_EQ(cut.substr(cut.size() - 4), "x...");
  // Cut at a character, never inside one (é is two bytes).
  for (size_t pad = 0; pad < 4; ++pad) {
    std::string text(pad, 'y');
    while (text.size() < 10000) text += "\xc3\xa9";
    const std::string cut_utf8 = CleanLogLine(text);
    EXPECT_LE(cut_utf8.size(), kMaxLogLineBytes - 1);
    const std::string body = cut_utf8.substr(pad, cut_utf8.size() - pad - 3);
    EXPECT_EQ(body.size() % 2, 0u) << pad;
    EXPECT_EQ(body.substr(body.size() - 2), "\xc3\xa9") << pad;
  }
}

// WriteLogLine returns before the line is written (a thread writes it) and
// the line reaches stderr.
TEST(ThrottledLogTest, WriteLogLineReachesStderr) {
  ::testing::internal::CaptureStderr();
  WriteLogLine("statestream: a line\nwith a newline");
  EXPECT_TRUE(FlushLogLines(absl::Seconds(30)));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "statestream: a line\\x0awith a newline\n");
}

}  // namespace
}  // namespace statestream
