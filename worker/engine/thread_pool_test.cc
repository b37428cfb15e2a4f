// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/thread_pool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace statestream::engine {
namespace {

TEST(ThreadPoolTest, RunsEveryTaskExactlyOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int round = 0; round < 2000; ++round) {
      const int tasks = 1 + round % 37;
      std::vector<std::atomic<int>> hits(tasks);
      pool.ParallelFor(tasks, [&](int t) { hits[t].fetch_add(1); });
      for (int t = 0; t < tasks; ++t) {
        ASSERT_EQ(hits[t].load(), 1)
            << "threads " << threads << " round " << round << " task " << t;
      }
    }
  }
}

// Back-to-back calls whose task counts grow by one: a worker finishing the
// previous call must never claim a task of the next one under the old
// generation (it would run twice and ParallelFor would never return).
TEST(ThreadPoolTest, StragglersNeverClaimTheNextCallsTasks) {
  ThreadPool pool(2);
  for (int round = 0; round < 200000; ++round) {
    const int tasks = 2 + round % 2;
    std::atomic<int> hits[3] = {0, 0, 0};
    pool.ParallelFor(tasks, [&](int t) {
      // Long enough that the worker takes part in most calls.
      std::atomic<int> spin{0};
      while (spin.fetch_add(1, std::memory_order_relaxed) < 200) {
      }
      hits[t].fetch_add(1);
    });
    for (int t = 0; t < tasks; ++t) {
      ASSERT_EQ(hits[t].load(), 1) << "round " << round << " task " << t;
    }
  }
}

TEST(ThreadPoolTest, DestroyedAtOnceOrAfterSleepingDoesNotHang) {
  for (int i = 0; i < 200; ++i) ThreadPool pool(3);  // workers may not run yet
  ThreadPool sleepy(2, /*spin_us=*/0);
  std::atomic<int> n{0};
  for (int i = 0; i < 50; ++i) {
    sleepy.ParallelFor(4, [&](int) { n.fetch_add(1); });
    if (i % 10 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(n.load(), 200);
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialised) {
  ThreadPool pool(2);
  std::atomic<int> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&] {
      for (int i = 0; i < 300; ++i) {
        pool.ParallelFor(8, [&](int) { total.fetch_add(1); });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 3 * 300 * 8);
}

}  // namespace
}  // namespace statestream::engine
