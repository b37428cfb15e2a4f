// SPDX-License-Identifier: Apache-2.0
// A few threads for the worker services' blocking work (store I/O), which
// gRPC's callback threads must not do. Internal to the worker's services.
#ifndef STATESTREAM_WORKER_EXECUTOR_H_
#define STATESTREAM_WORKER_EXECUTOR_H_

#include <algorithm>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace statestream::worker {

// Runs closures in FIFO order on `threads` threads. Thread-safe. The
// destructor runs what is queued, then joins.
class Executor {
 public:
  // At least one thread.
  explicit Executor(int threads) {
    for (int i = 0; i < std::max(threads, 1); ++i) {
      threads_.emplace_back([this] { Loop(); });
    }
  }
  ~Executor() { Shutdown(); }
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs what is queued (and what that queues), then joins the threads.
  // Idempotent; not from one of them.
  void Shutdown() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  void Post(std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || !queue_.empty();
        };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_EXECUTOR_H_
