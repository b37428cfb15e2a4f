// SPDX-License-Identifier: Apache-2.0
// A count of bytes held in memory by calls in flight, against a limit: the
// worker's state transfers (--max-transfer-bytes) and the gateway's buffers
// (--max-buffered-bytes).
#ifndef STATESTREAM_COMMON_BYTE_BUDGET_H_
#define STATESTREAM_COMMON_BYTE_BUDGET_H_

#include <cstdint>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace statestream {

// Thread-safe.
class ByteBudget {
 public:
  // `max` bytes; `what` names the limit in refusals (e.g. the flag).
  ByteBudget(int64_t max, std::string what);

  // Bytes taken from the budget until Release() or destruction.
  class Hold {
   public:
    Hold() = default;
    Hold(Hold&& other) noexcept { *this = std::move(other); }
    Hold& operator=(Hold&& other) noexcept;
    ~Hold() { Release(); }
    void Release();
    int64_t bytes() const { return bytes_; }

   private:
    friend class ByteBudget;
    Hold(ByteBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
    ByteBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
  };

  // `bytes` if they fit, or if nothing is held (one always fits alone, so a
  // request within every other bound is never refused forever); else
  // RESOURCE_EXHAUSTED/OVERLOADED with retry_after_ms.
  absl::StatusOr<Hold> Acquire(int64_t bytes);
  // `bytes` more for `hold` (one of this budget's), by Acquire's rule: if
  // they fit, or if nothing but `hold` is held.
  absl::Status Grow(Hold* hold, int64_t bytes);
  // Counts `bytes` as held whether or not they fit (memory already taken);
  // Give() returns them.
  void Take(int64_t bytes);
  void Give(int64_t bytes);
  // Whether more than `max` is held.
  bool over() const;
  int64_t held() const;
  int64_t max() const { return max_; }

 private:
  const int64_t max_;
  const std::string what_;
  mutable absl::Mutex mu_;
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace statestream

#endif  // STATESTREAM_COMMON_BYTE_BUDGET_H_
