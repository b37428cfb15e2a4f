// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/thread_pool.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <system_error>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/address_space_test_util.h"
#include "worker/engine/huge_pages.h"
#include "worker/engine/ops.h"
#include "worker/engine/weight_loader.h"

namespace statestream::engine {
namespace {

// A thread that cannot start (the process is out of address space for its
// stack, or of threads) is a std::system_error the loader turns into an
// error: the pool stops and joins the threads it had started. It used to
// abort (a joinable std::thread destroyed while unwinding).
TEST(ThreadPoolDeathTest, AThreadThatCannotStartIsAnErrorNotAnAbort) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan reserves address space beyond any RLIMIT_AS";
#else
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        // Room for two or three more 8 MiB thread stacks, not 63.
        if (!testing::CapAddressSpace(24 << 20)) std::_Exit(3);
        try {
          ThreadPool pool(64);
          std::_Exit(1);
        } catch (const std::system_error&) {
          std::_Exit(0);
        } catch (...) {
          std::_Exit(2);
        }
      },
      ::testing::ExitedWithCode(0), "");
#endif
}

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

// Every `then` task must see every `first` task's plain (non-atomic)
// writes, each task of both kinds runs once, and either count may be 0.
// Slow `first` tasks make `then` tasks start while they still run.
TEST(ThreadPoolTest, ThenTasksRunAfterEveryFirstTaskAndSeeItsWrites) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int round = 0; round < 3000; ++round) {
      const int n_first = round % 5, n_then = (round / 5) % 7;
      std::vector<int> written(n_first, 0);
      std::vector<std::atomic<int>> first_hits(n_first), then_hits(n_then);
      std::atomic<int> missed{0};
      pool.ParallelForThen(
          n_first,
          [&](int i) {
            std::atomic<int> spin{0};
            while (spin.fetch_add(1, std::memory_order_relaxed) < 50 * i) {
            }
            written[i] = round + 1;
            first_hits[i].fetch_add(1);
          },
          n_then,
          [&](int j) {
            for (int i = 0; i < n_first; ++i) {
              if (written[i] != round + 1) missed.fetch_add(1);
            }
            then_hits[j].fetch_add(1);
          });
      ASSERT_EQ(missed.load(), 0)
          << "threads " << threads << " round " << round;
      for (int i = 0; i < n_first; ++i) ASSERT_EQ(first_hits[i].load(), 1);
      for (int j = 0; j < n_then; ++j) ASSERT_EQ(then_hits[j].load(), 1);
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

// ReadAheadWhenIdle counts 4 KiB chunks from each region's cache line, of
// the first kMaxReadAhead regions. Workers that never spin (spin_us 0) take
// none, so the counts stay put.
TEST(ThreadPoolTest, ReadAheadCountsChunksOfTheFirstRegions) {
  ThreadPool pool(2, /*spin_us=*/0);
  alignas(64) static char buf[64 * 1024];
  using R = ThreadPool::Region;
  EXPECT_EQ(pool.ReadAheadLeft(), 0);
  const R one[] = {{buf, 4096}};
  pool.ReadAheadWhenIdle(one);
  EXPECT_EQ(pool.ReadAheadLeft(), 1);
  const R past[] = {{buf, 4097}};
  pool.ReadAheadWhenIdle(past);
  EXPECT_EQ(pool.ReadAheadLeft(), 2);
  const R unaligned[] = {{buf + 100, 4000}};  // lines [64, 4100)
  pool.ReadAheadWhenIdle(unaligned);
  EXPECT_EQ(pool.ReadAheadLeft(), 1);
  std::vector<R> many(ThreadPool::kMaxReadAhead + 2, R{buf, 8192});
  pool.ReadAheadWhenIdle(many);
  EXPECT_EQ(pool.ReadAheadLeft(), 2 * ThreadPool::kMaxReadAhead);
  pool.ReadAheadWhenIdle({});
  EXPECT_EQ(pool.ReadAheadLeft(), 0);
}

// A worker spinning between calls prefetches the whole list (the caller
// only posts and polls: no ParallelFor of its own drains it).
TEST(ThreadPoolTest, SpinningWorkersReadAheadEveryChunk) {
  ThreadPool pool(2, /*spin_us=*/10'000'000);
  std::vector<char> buf(size_t{1} << 20, 1);
  std::atomic<int> ran{0};
  pool.ParallelFor(2, [&](int) { ran.fetch_add(1); });  // the worker is up
  const ThreadPool::Region r[] = {{buf.data(), buf.size()}};
  pool.ReadAheadWhenIdle(r);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (pool.ReadAheadLeft() > 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  EXPECT_EQ(pool.ReadAheadLeft(), 0);
}

// Lists replaced (and emptied) from another thread while calls run: every
// task still runs exactly once, and the count left stays within the lists'.
TEST(ThreadPoolTest, TasksRunOnceWhileTheReadAheadListChanges) {
  ThreadPool pool(3);
  std::vector<char> a(size_t{256} << 10, 1), b(size_t{64} << 10, 2);
  std::atomic<bool> done{false};
  std::thread poster([&] {
    for (int i = 0; !done.load(); ++i) {
      const ThreadPool::Region r[] = {{a.data(), a.size()},
                                      {b.data(), b.size()}};
      pool.ReadAheadWhenIdle(
          absl::MakeConstSpan(r, static_cast<size_t>(i % 3)));
      ASSERT_GE(pool.ReadAheadLeft(), 0);
      ASSERT_LE(pool.ReadAheadLeft(), 64 + 16 + 2);  // + unaligned starts
    }
  });
  for (int round = 0; round < 5000; ++round) {
    const int tasks = 1 + round % 9;
    std::vector<std::atomic<int>> hits(tasks);
    pool.ParallelFor(tasks, [&](int t) { hits[t].fetch_add(1); });
    for (int t = 0; t < tasks; ++t) ASSERT_EQ(hits[t].load(), 1);
  }
  done.store(true);
  poster.join();
}

// WeightStream learns the order products run in and, before each hand-off,
// posts the hand-offs after it (wrapping to the first) until 1 MiB is named,
// at most 8 MiB. (spin_us 0: nobody takes chunks, so ReadAheadLeft counts
// what was posted.)
TEST(WeightStreamTest, PostsTheHandOffsAfterTheCurrentOneInStepOrder) {
  ThreadPool pool(2, /*spin_us=*/0);
  WeightStream stream;
  // 2, 1, 3, 256 and 1 chunks of 4 KiB, and 16 MiB.
  alignas(64) static float a[2048], b[1024], c[3072], mid[262144], e[1024];
  HugePageVector<float> big(size_t{4} << 20);
  Matrix ma, mb, mc, mmid, me, mbig;
  auto set = [](Matrix& m, const float* data, size_t floats) {
    m.rows = static_cast<int>(floats / 256);
    m.cols = 256;
    m.f32 = data;
  };
  set(ma, a, 2048);
  set(mb, b, 1024);
  set(mc, c, 3072);
  set(mmid, mid, 262144);
  set(me, e, 1024);
  set(mbig, big.data(), big.size());
  auto before = [&](std::initializer_list<const Matrix*> ms) {
    std::vector<MatMulJob> jobs;
    for (const Matrix* m : ms) jobs.push_back({m, nullptr, 0, nullptr, 0});
    stream.Before(jobs, pool);
    return pool.ReadAheadLeft();
  };
  EXPECT_EQ(before({}), 0);  // nothing to learn, nothing posted
  // The first step teaches the order a, b, c, big, (mid, e) and posts what
  // it knows so far.
  EXPECT_EQ(before({&ma}), 0);
  EXPECT_EQ(before({&mb}), 2);  // a, wrapping
  EXPECT_EQ(before({&mc}), 2 + 1);
  EXPECT_EQ(before({&mbig}), 2 + 1 + 3);
  EXPECT_EQ(before({&mmid, &me}), 2048);  // a, b, c, then big to the cap
  // From then on, what follows: small hand-offs are joined until 1 MiB...
  EXPECT_EQ(before({&ma}), 1 + 3 + (2048 - 1 - 3));
  EXPECT_EQ(before({&mc}), 2048);  // big, cut at 8 MiB
  // ...and a hand-off is read ahead whole (mid and e), the next one not.
  EXPECT_EQ(before({&mbig}), 256 + 1);
  EXPECT_EQ(before({&mmid, &me}), 2 + 1 + 3 + (2048 - 6));
  EXPECT_EQ(before({}), 2048);  // an empty hand-off changes nothing
}

// Threads default to the CPUs the process may use: its affinity, not the
// machine's cores.
TEST(AvailableCpusTest, FollowsTheAffinityMask) {
  cpu_set_t saved;
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  const int all = AvailableCpus();
  EXPECT_GE(all, 1);
  EXPECT_LE(all, CPU_COUNT(&saved));
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &saved)) {
      CPU_SET(c, &one);
      break;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(AvailableCpus(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof(saved), &saved), 0);
  EXPECT_EQ(AvailableCpus(), all);
}

TEST(AvailableCpusTest, ReadsACgroupQuotaRoundedUp) {
  EXPECT_EQ(CpusFromCgroupMax("max 100000"), 0);
  EXPECT_EQ(CpusFromCgroupMax("200000 100000"), 2);
  EXPECT_EQ(CpusFromCgroupMax("150000 100000"), 2);
  EXPECT_EQ(CpusFromCgroupMax("50000 100000"), 1);
  EXPECT_EQ(CpusFromCgroupMax("-1 100000"), 0);  // cgroup v1: no quota
  EXPECT_EQ(CpusFromCgroupMax(""), 0);
  EXPECT_EQ(CpusFromCgroupMax("garbage"), 0);
}

}  // namespace
}  // namespace statestream::engine
