// SPDX-License-Identifier: Apache-2.0
// A fixed pool of worker threads for data-parallel loops inside one engine
// step. Results never depend on the number of threads: callers split work by
// output element, never by reduction.
#ifndef STATESTREAM_WORKER_ENGINE_THREAD_POOL_H_
#define STATESTREAM_WORKER_ENGINE_THREAD_POOL_H_

#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace statestream::engine {

// Thread-safe: concurrent ParallelFor calls are serialised.
class ThreadPool {
 public:
  // `threads` >= 1 counts the calling thread: ThreadPool(1) runs everything
  // inline and starts no thread.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(task) for task in [0, tasks) across the pool and the caller;
  // returns when all are done. `fn` must not call ParallelFor.
  void ParallelFor(int tasks, const std::function<void(int)>& fn);

 private:
  void WorkerLoop();
  void RunTasks();

  absl::Mutex call_mu_;  // serialises ParallelFor callers
  absl::Mutex mu_;
  const std::function<void(int)>* fn_ ABSL_GUARDED_BY(mu_) = nullptr;
  int tasks_ ABSL_GUARDED_BY(mu_) = 0;
  int next_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_THREAD_POOL_H_
