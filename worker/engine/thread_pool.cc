// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/thread_pool.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SS_CPU_RELAX() _mm_pause()
#define SS_PREFETCH_L2(p) _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1)
#else
#define SS_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
#define SS_CPU_RELAX() \
  do {                 \
  } while (0)
#endif

namespace statestream::engine {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kChunkBits = 12;  // read-ahead in 4 KiB chunks
constexpr uint64_t kChunkMask = (uint64_t{1} << 24) - 1;

// Sleeps while *word == expected (the kernel checks atomically).
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE,
          expected, nullptr, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE,
          INT_MAX, nullptr, nullptr, 0);
}

}  // namespace

ThreadPool::ThreadPool(int threads, int spin_us) : spin_us_(spin_us) {
  try {
    for (int i = 1; i < threads; ++i) {
      workers_.emplace_back([this] { WorkerLoop(); });
    }
  } catch (...) {
    // Out of threads or memory part-way (std::system_error): the threads
    // already started stop and are joined, so the error reaches the caller
    // (a joinable std::thread destroyed in the unwinding would abort).
    Stop();
    throw;
  }
}

ThreadPool::~ThreadPool() { Stop(); }

void ThreadPool::Stop() {
  stop_.store(true);
  epoch_.fetch_add(1);
  FutexWakeAll(&epoch_);
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::RunTasks(uint32_t gen) {
  uint64_t cur = work_.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(cur >> 32) != gen) return;
    const int task = static_cast<int>(cur & 0xffffffffu);
    if (task >= tasks_.load(std::memory_order_acquire)) return;
    if (!work_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
      continue;  // `cur` was reloaded
    }
    // The claimed task keeps the generation open, so fn_ is still its.
    (*fn_.load(std::memory_order_relaxed))(task);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
    cur = work_.load(std::memory_order_acquire);
  }
}

void ThreadPool::WorkerLoop() {
  // Generation 0 is the constructor's: a ParallelFor or the destructor that
  // runs before this thread starts has already moved the epoch past it.
  uint32_t seen = 0;
  for (;;) {
    // Spin for new work, then sleep until the epoch moves.
    uint32_t now = epoch_.load(std::memory_order_acquire);
    if (now == seen && spin_us_ > 0) {
      // Pure spinning for the first 20 us; after that every check also
      // yields, so on a busy machine a spinning worker gives its core to
      // the caller (or anyone) instead of stealing the caller's time slice.
      const auto start = Clock::now();
      const auto eager = start + std::chrono::microseconds(20);
      const auto deadline = start + std::chrono::microseconds(spin_us_);
      for (int i = 0; now == seen; ++i) {
        // A read-ahead chunk takes as long as ~64 pauses: the clock is
        // checked after each, so the spin phases keep their lengths.
        const bool read_ahead = ReadAheadChunk();
        if (!read_ahead) SS_CPU_RELAX();
        now = epoch_.load(std::memory_order_acquire);
        if (read_ahead || (i & 63) == 63) {
          const auto t = Clock::now();
          if (t > deadline) break;
          if (t > eager) std::this_thread::yield();
        }
      }
    }
    if (now == seen) {
      sleepers_.fetch_add(1);
      FutexWait(&epoch_, seen);
      sleepers_.fetch_sub(1);
      now = epoch_.load(std::memory_order_acquire);
    }
    if (stop_.load()) return;
    seen = now;
    RunTasks(now);
  }
}

void ThreadPool::ParallelFor(int tasks, const std::function<void(int)>& fn) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1) {
    for (int i = 0; i < tasks; ++i) fn(i);
    return;
  }
  absl::MutexLock call_lock(&call_mu_);
  const uint32_t gen = epoch_.load(std::memory_order_relaxed) + 1;
  // work_ moves to the new generation first. A worker still in the last
  // generation's RunTasks holds that generation's final work_ value; if it
  // could read the new tasks_ while work_ still held that value, its CAS
  // would succeed and claim a task of the new fn_ under the old generation,
  // running it twice and leaving pending_ below zero (ParallelFor then
  // never returned). With work_ changed first, that CAS fails.
  work_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_seq_cst);
  fn_.store(&fn, std::memory_order_relaxed);
  // Release: a straggler that reads this count (acquire) also sees work_'s
  // new generation, so its CAS fails.
  tasks_.store(tasks, std::memory_order_release);
  pending_.store(tasks, std::memory_order_relaxed);
  epoch_.store(gen);  // seq_cst: pairs with the sleepers_ check below
  if (sleepers_.load() > 0) FutexWakeAll(&epoch_);
  RunTasks(gen);
  // The last tasks run on workers.
  WaitUntil([this] { return pending_.load(std::memory_order_acquire) == 0; });
}

template <typename Ready>
void ThreadPool::WaitUntil(const Ready& ready) {
  // Spin briefly, fetching the read-ahead list, then give the core away.
  for (int i = 0; !ready();) {
    if (i < 4096) {  // (then it stays there: no overflow on long waits)
      if (ReadAheadChunk()) {
        i += 64;  // as long as ~64 pauses
      } else {
        SS_CPU_RELAX();
        ++i;
      }
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::ParallelForThen(int n_first,
                                 const std::function<void(int)>& first,
                                 int n_then,
                                 const std::function<void(int)>& then) {
  std::atomic<int> done{0};
  ParallelFor(n_first + n_then, [&](int task) {
    if (task < n_first) {
      first(task);
      done.fetch_add(1, std::memory_order_release);
      return;
    }
    // Every `first` task has been claimed (claims go in order) by a thread
    // that is running it: this wait ends.
    WaitUntil([&] { return done.load(std::memory_order_acquire) == n_first; });
    then(task - n_first);
  });
}

void ThreadPool::ReadAheadWhenIdle(absl::Span<const Region> regions) {
  if (workers_.empty()) return;  // nobody ever waits
  absl::MutexLock lock(&ahead_mu_);
  // Nothing claimable while the regions change (a new generation).
  const uint64_t gen = (ahead_.load(std::memory_order_relaxed) >> 48) + 1;
  ahead_.store(gen << 48, std::memory_order_release);
  uint64_t chunks = 0;
  const int n = std::min<int>(static_cast<int>(regions.size()), kMaxReadAhead);
  for (int i = 0; i < n; ++i) {
    const uintptr_t begin =
        reinterpret_cast<uintptr_t>(regions[i].data) & ~uintptr_t{63};
    const uintptr_t end =
        reinterpret_cast<uintptr_t>(regions[i].data) + regions[i].bytes;
    chunks += ((end - begin) + (uint64_t{1} << kChunkBits) - 1) >> kChunkBits;
    chunks = std::min(chunks, kChunkMask);
    ahead_begin_[i].store(begin, std::memory_order_relaxed);
    ahead_end_chunk_[i].store(static_cast<uint32_t>(chunks),
                              std::memory_order_relaxed);
  }
  for (int i = n; i < kMaxReadAhead; ++i) {
    ahead_end_chunk_[i].store(static_cast<uint32_t>(chunks),
                              std::memory_order_relaxed);
  }
  ahead_.store((gen << 48) | (chunks << 24), std::memory_order_release);
}

int64_t ThreadPool::ReadAheadLeft() const {
  const uint64_t cur = ahead_.load(std::memory_order_acquire);
  return static_cast<int64_t>(((cur >> 24) & kChunkMask) - (cur & kChunkMask));
}

bool ThreadPool::ReadAheadChunk() {
  uint64_t cur = ahead_.load(std::memory_order_acquire);
  uint64_t chunk;
  do {
    chunk = cur & kChunkMask;
    if (chunk >= ((cur >> 24) & kChunkMask)) return false;
  } while (!ahead_.compare_exchange_weak(
      cur, cur + 1, std::memory_order_acq_rel, std::memory_order_acquire));
  // Chunk `chunk` of the concatenated regions (the last chunk of a region
  // may run past its end into whatever follows: a prefetch never faults).
  // The slots are read one by one, so a claim racing a new list may mix
  // old and new slots and fetch a line nobody asked for: harmless, and
  // addresses are computed as integers so nothing is ever dereferenced.
  uint64_t first = 0;
  for (int i = 0; i < kMaxReadAhead; ++i) {
    const uint64_t end = ahead_end_chunk_[i].load(std::memory_order_relaxed);
    if (chunk < end) {
      const uintptr_t base = ahead_begin_[i].load(std::memory_order_relaxed);
      if (base == 0) return true;
      const uintptr_t p = base + ((chunk - first) << kChunkBits);
      for (uintptr_t line = 0; line < (uintptr_t{1} << kChunkBits);
           line += 64) {
        SS_PREFETCH_L2(reinterpret_cast<const char*>(p + line));
      }
      return true;
    }
    first = end;
  }
  return true;
}

namespace {

// The first line of `path`, or "" if it cannot be read.
std::string FirstLine(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

int CpusFromCgroupMax(absl::string_view cpu_max) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(cpu_max, ' ', absl::SkipEmpty());
  int64_t quota = 0, period = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &quota) ||
      !absl::SimpleAtoi(parts[1], &period) || quota <= 0 || period <= 0) {
    return 0;  // "max", or not a quota
  }
  return static_cast<int>(
      std::min<int64_t>((quota + period - 1) / period, 1 << 16));
}

int AvailableCpus() {
  int cpus = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  int quota = CpusFromCgroupMax(FirstLine("/sys/fs/cgroup/cpu.max"));
  if (quota == 0) {
    quota = CpusFromCgroupMax(
        absl::StrCat(FirstLine("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), " ",
                     FirstLine("/sys/fs/cgroup/cpu/cpu.cfs_period_us")));
  }
  if (quota > 0) cpus = std::min(cpus, quota);
  return std::max(cpus, 1);
}

}  // namespace statestream::engine
