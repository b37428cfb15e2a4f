// SPDX-License-Identifier: Apache-2.0
// A log line said at most once per interval, with the number not said
// since: under load every call meets the same failure, and one line per call
// would bury the log.
#ifndef STATESTREAM_COMMON_THROTTLED_LOG_H_
#define STATESTREAM_COMMON_THROTTLED_LOG_H_

#include <cstdint>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace statestream {

class ThrottledLog {
 public:
  // Lines go to stderr as "<prefix><line>".
  explicit ThrottledLog(std::string prefix,
                        absl::Duration every = absl::Seconds(10))
      : prefix_(std::move(prefix)), every_(every) {}

  // Writes `line` unless one was written less than `every` ago (then only
  // counts it). The next line written says how many were not. Written
  // outside the lock: a stalled stderr reader holds up only the writing
  // call. Thread-safe. Returns whether the line was written.
  bool Say(absl::string_view line);

 private:
  const std::string prefix_;
  const absl::Duration every_;
  absl::Mutex mu_;
  absl::Time said_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t unsaid_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace statestream

#endif  // STATESTREAM_COMMON_THROTTLED_LOG_H_
