// SPDX-License-Identifier: Apache-2.0
// Server log lines that never hold up their caller, and a line said at
// most once per interval.
#ifndef STATESTREAM_COMMON_THROTTLED_LOG_H_
#define STATESTREAM_COMMON_THROTTLED_LOG_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace statestream {

// Queues `line` for stderr and returns at once: a thread of its own writes
// it, so a caller (perhaps holding a lock a gRPC thread waits on) never
// waits on a stalled stderr reader. One line each: control characters are
// escaped (\xNN; a message may echo stored or client bytes) and lines over
// kMaxLogLineBytes are cut. At most kMaxQueuedLogLines wait; more are
// dropped and counted in the next line written. Lines still queued at exit
// get up to 200 ms (an exit by _Exit: FlushLogLines first). Thread-safe.
// A process that forks without exec gets no writer in the child (none of
// the servers does).
void WriteLogLine(absl::string_view line);
// Waits up to `limit` for the lines queued so far to be written; whether
// they were.
bool FlushLogLines(absl::Duration limit);
inline constexpr size_t kMaxLogLineBytes = 4096;
inline constexpr size_t kMaxQueuedLogLines = 1024;

// `line` as WriteLogLine writes it, without the newline: with it, at most
// kMaxLogLineBytes (a pipe takes a write of up to PIPE_BUF whole).
std::string CleanLogLine(absl::string_view line);

// A log line said at most once per interval, with the number not said
// since: under load every call meets the same failure, and one line per
// call would bury the log.
class ThrottledLog {
 public:
  using Sink = std::function<void(absl::string_view line)>;

  // Lines go to `sink` (WriteLogLine: stderr) as "<prefix><line>".
  explicit ThrottledLog(std::string prefix,
                        absl::Duration every = absl::Seconds(10),
                        Clock* clock = Clock::Real(), Sink sink = WriteLogLine)
      : prefix_(std::move(prefix)),
        every_(every),
        clock_(clock),
        sink_(std::move(sink)) {}

  // Writes make_line() unless a line was written less than `every` ago
  // (then only counts it, and make_line is not called). The next line
  // written says how many were not. Thread-safe; the sink is called
  // outside the lock. Returns whether the line was written.
  bool Say(absl::FunctionRef<std::string()> make_line);
  bool Say(absl::string_view line) {
    return Say([line] { return std::string(line); });
  }

 private:
  const std::string prefix_;
  const absl::Duration every_;
  Clock* const clock_;
  const Sink sink_;
  absl::Mutex mu_;
  absl::Time said_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t unsaid_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace statestream

#endif  // STATESTREAM_COMMON_THROTTLED_LOG_H_
