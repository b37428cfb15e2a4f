// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/thread_pool.h"

namespace statestream::engine {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i)
    workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunTasks() {
  for (;;) {
    const std::function<void(int)>* fn;
    int task;
    {
      absl::MutexLock lock(&mu_);
      if (fn_ == nullptr || next_ >= tasks_) return;
      fn = fn_;
      task = next_++;
    }
    (*fn)(task);
    absl::MutexLock lock(&mu_);
    --pending_;
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || (generation_ != seen && fn_ != nullptr);
      };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      seen = generation_;
    }
    RunTasks();
  }
}

void ThreadPool::ParallelFor(int tasks, const std::function<void(int)>& fn) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1) {
    for (int i = 0; i < tasks; ++i) fn(i);
    return;
  }
  absl::MutexLock call_lock(&call_mu_);
  {
    absl::MutexLock lock(&mu_);
    fn_ = &fn;
    tasks_ = tasks;
    next_ = 0;
    pending_ = tasks;
    ++generation_;
  }
  RunTasks();
  absl::MutexLock lock(&mu_);
  auto done = [&]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ == 0; };
  mu_.Await(absl::Condition(&done));
  fn_ = nullptr;
}

}  // namespace statestream::engine
