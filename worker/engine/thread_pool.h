// SPDX-License-Identifier: Apache-2.0
// A fixed pool of worker threads for data-parallel loops inside one engine
// step. Results never depend on the number of threads: callers split work by
// output element, never by reduction.
//
// A decode step is ~100 small parallel loops a few tens of microseconds
// apart, so a futex wake-up per loop would cost as much as the loop. Workers
// therefore spin (with `pause`) for up to Options::spin_us after their last
// task before they sleep on a futex; the caller hands out work by bumping an
// atomic generation and wakes sleepers only when there are any. Threads are
// created once, in the constructor.
#ifndef STATESTREAM_WORKER_ENGINE_THREAD_POOL_H_
#define STATESTREAM_WORKER_ENGINE_THREAD_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace statestream::engine {

// Thread-safe: concurrent ParallelFor calls are serialised.
class ThreadPool {
 public:
  // `threads` >= 1 counts the calling thread: ThreadPool(1) runs everything
  // inline and starts no thread. Idle workers spin for `spin_us`
  // microseconds before sleeping (0: sleep at once). Throws
  // std::system_error when a thread cannot start, having stopped and
  // joined those that did.
  explicit ThreadPool(int threads, int spin_us = 200);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(task) for task in [0, tasks) across the pool and the caller;
  // returns when all are done. `fn` must not call ParallelFor.
  void ParallelFor(int tasks, const std::function<void(int)>& fn);

  // Runs first(i) for every i < n_first, then then(j) for every j < n_then,
  // in one hand-off instead of two: `then` may read anything `first`
  // wrote. Tasks are claimed in order, so a thread that claims a `then`
  // task while `first` tasks still run waits for them (it spins, fetching
  // the read-ahead list meanwhile, like a caller waiting for its last
  // tasks). Neither function may call the pool.
  void ParallelForThen(int n_first, const std::function<void(int)>& first,
                       int n_then, const std::function<void(int)>& then);

  // Memory the caller will read soon.
  struct Region {
    const void* data;
    size_t bytes;
  };
  static constexpr int kMaxReadAhead = 8;
  // Until the next call, threads with nothing else to do (spinning workers,
  // and a ParallelFor caller waiting for its last tasks) prefetch these
  // regions into their L2 (the first kMaxReadAhead, in order, 4 KiB at a
  // time, at most 64 GiB in all; a region's start is rounded down to a
  // cache line), so memory the caller reads next arrives while the bus
  // would otherwise idle (WeightStream in ops.h uses it). A hint only: it
  // changes no result, and an empty list stops it. A pool of one thread
  // has nobody to wait and ignores it.
  void ReadAheadWhenIdle(absl::Span<const Region> regions);
  // 4 KiB chunks of the current read-ahead list no thread has taken yet.
  int64_t ReadAheadLeft() const;

 private:
  // Stops the workers and joins them (the destructor; a failed start).
  void Stop();
  void WorkerLoop();
  // Claims and runs tasks of generation `gen` until none are left.
  void RunTasks(uint32_t gen);
  // Prefetches one unclaimed 4 KiB chunk of the read-ahead regions; false
  // when there is none.
  bool ReadAheadChunk();
  // Returns once ready() holds: spins (fetching the read-ahead list), then
  // yields. For a thread waiting on others' tasks.
  template <typename Ready>
  void WaitUntil(const Ready& ready);

  const int spin_us_;
  absl::Mutex call_mu_;  // serialises ParallelFor callers
  // (generation << 32) | next unclaimed task. A claim is a CAS on the whole
  // word, so a worker late from an older generation can never take a task
  // of a newer one.
  std::atomic<uint64_t> work_{0};
  // The generation, alone, for futex waits; bumped after work_.
  std::atomic<uint32_t> epoch_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<const std::function<void(int)>*> fn_{nullptr};
  std::atomic<int> tasks_{0};
  std::atomic<int> pending_{0};  // tasks of the generation not yet finished
  std::atomic<bool> stop_{false};
  // Read-ahead: (generation << 48) | (chunks << 24) | next unclaimed chunk,
  // claimed by CAS on the whole word like work_. The regions are atomics so
  // that a reader racing an update reads whole values, never torn ones (it
  // may mix two lists' slots: ReadAheadChunk).
  std::atomic<uint64_t> ahead_{0};
  std::atomic<uintptr_t> ahead_begin_[kMaxReadAhead] = {};
  std::atomic<uint32_t> ahead_end_chunk_[kMaxReadAhead] = {};  // cumulative
  absl::Mutex ahead_mu_;  // serialises ReadAheadWhenIdle callers
  std::vector<std::thread> workers_;
};

// The CPUs this process may use, the default for every thread count
// (engine, scheduler steps): the calling thread's affinity mask, capped by
// a cgroup CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us)
// rounded up; at least 1. A container limited either way gets pools of
// its share, not of the node's cores (std::thread::hardware_concurrency).
int AvailableCpus();

// The CPUs a cgroup v2 `cpu.max` line ("QUOTA PERIOD", or "max PERIOD")
// allows, rounded up; 0 when unlimited or unreadable.
int CpusFromCgroupMax(absl::string_view cpu_max);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_THREAD_POOL_H_
