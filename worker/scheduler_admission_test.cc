// SPDX-License-Identifier: Apache-2.0
// The scheduler's admission and lifecycle: tasks too large or with bad
// tokens refused, overload, cancellation and deadlines, capacity given
// back when a call ends, and Stop.
#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/scheduler.h"
#include "worker/scheduler_test_util.h"
#include "worker/tasks.h"

namespace statestream::worker {
namespace {

// A task over the whole token bound is too large (not retryable), rather
// than OVERLOADED with a retry hint forever; one within it is admitted.
TEST(SchedulerTest, ATaskOverTheWholeTokenBoundIsTooLarge) {
  auto model = SmallModel();
  SchedulerOptions opts;
  opts.max_queued_tokens = 100;
  Scheduler sched(model.get(), opts);
  EngineState state = EngineState::Initial(*model);
  absl::Status refused = sched.Submit(std::make_shared<IngestTask>(
      &state, Tokens(101, 4), [](const absl::Status&) {}));
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_EQ(GetReason(refused), Reason::kMessageTooLarge);
  EXPECT_EQ(GetErrorMetadata(refused, "limit"), "100");
  EXPECT_TRUE(Ingest(sched, &state, Tokens(100, 4)).ok());
  EXPECT_EQ(state.position, 100u);
}

// A task with an out-of-range token is refused at Submit: it never joins
// a batch (whose Forward would fail the healthy tasks in it too), and a
// Score never indexes its logits with the bad id.
TEST(SchedulerTest, ATaskWithABadTokenIsRefusedAndSparesTheOthers) {
  auto model = SmallModel();
  Scheduler sched(model.get(), SchedulerOptions{});
  const int V = model->info().config.vocab_size;
  EngineState bad = EngineState::Initial(*model);
  for (std::vector<int32_t> tokens :
       {std::vector<int32_t>{1, 2, V}, std::vector<int32_t>{-1}}) {
    absl::Status st = sched.Submit(std::make_shared<IngestTask>(
        &bad, tokens,
        [](const absl::Status&) { ADD_FAILURE() << "a refused task ran"; }));
    EXPECT_EQ(GetReason(st), Reason::kInvalidToken) << st;
  }
  EngineState scored = Direct(*model, Tokens(5, 1));
  absl::Status st = sched.Submit(std::make_shared<ScoreTask>(
      &scored, V, std::vector<int32_t>{V + 5},
      [](const absl::Status&, const std::vector<float>&,
         const std::vector<bool>&) { ADD_FAILURE() << "a refused task ran"; }));
  EXPECT_EQ(GetReason(st), Reason::kInvalidToken) << st;
  GenerateSpec spec;
  spec.prompt = {3, V};
  spec.max_tokens = 4;
  st = sched.Submit(std::make_shared<GenerateTask>(
      &bad, V, nullptr, spec, [](const GeneratedToken&) {},
      [](const absl::Status&, const GenerateResult&) {
        ADD_FAILURE() << "a refused task ran";
      }));
  EXPECT_EQ(GetReason(st), Reason::kInvalidToken) << st;
  EXPECT_EQ(bad.position, 0u);
  // A healthy task still runs, alone.
  EngineState good = EngineState::Initial(*model);
  EXPECT_TRUE(Ingest(sched, &good, Tokens(8, 2)).ok());
  EXPECT_EQ(good.position, 8u);
}

TEST(SchedulerTest, OverloadCancelAndDeadline) {
  auto model = SmallModel();
  SchedulerOptions opts;
  opts.max_tasks = 2;
  opts.prefill_chunk = 8;
  opts.max_batch_tokens = 8;
  FakeClock clock;
  Scheduler sched(model.get(), opts, &clock);
  std::vector<EngineState> st(3, EngineState::Initial(*model));
  Waiter w0, w1;
  auto t0 = std::make_shared<IngestTask>(&st[0], Tokens(200000, 1),
                                         [&](const absl::Status& s) {
                                           w0.status = s;
                                           w0.done.Notify();
                                         });
  auto t1 = std::make_shared<IngestTask>(&st[1], Tokens(200000, 2),
                                         [&](const absl::Status& s) {
                                           w1.status = s;
                                           w1.done.Notify();
                                         });
  t1->deadline = clock.Now() + absl::Seconds(10);
  ASSERT_TRUE(sched.Submit(t0).ok());
  ASSERT_TRUE(sched.Submit(t1).ok());
  absl::Status over = sched.Submit(std::make_shared<IngestTask>(
      &st[2], Tokens(10, 3), [](const absl::Status&) {}));
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetReason(over), Reason::kOverloaded);
  EXPECT_TRUE(GetErrorMetadata(over, "retry_after_ms").has_value());
  t0->Cancel();
  w0.done.WaitForNotification();
  EXPECT_EQ(w0.status.code(), absl::StatusCode::kCancelled);
  clock.Advance(absl::Seconds(11));
  w1.done.WaitForNotification();
  EXPECT_EQ(w1.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(st[1].position, 200000u);
  // Room again.
  Waiter w2;
  ASSERT_TRUE(
      sched
          .Submit(std::make_shared<IngestTask>(&st[2], Tokens(10, 3),
                                               [&](const absl::Status& s) {
                                                 w2.status = s;
                                                 w2.done.Notify();
                                               }))
          .ok());
  w2.done.WaitForNotification();
  EXPECT_TRUE(w2.status.ok());
}

// The queue-time hook sees every task once, also one that ended before
// its first step (here: past its deadline when the scheduler first looks
// at it), with the time it waited: under overload those are the longest.
TEST(SchedulerTest, ATaskEndingQueuedCountsItsWait) {
  auto model = SmallModel();
  FakeClock clock;
  std::vector<absl::Duration> waits;
  absl::Mutex mu;
  SchedulerOptions opts;
  opts.on_first_step = [&](absl::Duration d) {
    absl::MutexLock lock(&mu);
    waits.push_back(d);
  };
  Scheduler sched(model.get(), opts, &clock);
  std::vector<EngineState> st(2, EngineState::Initial(*model));
  Waiter expired, ran;
  auto late = std::make_shared<IngestTask>(&st[0], Tokens(4, 1),
                                           [&](const absl::Status& s) {
                                             expired.status = s;
                                             expired.done.Notify();
                                           });
  late->deadline = clock.Now() - absl::Seconds(1);
  ASSERT_TRUE(sched.Submit(late).ok());
  expired.done.WaitForNotification();
  EXPECT_EQ(expired.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(st[0].position, 0u);  // never stepped
  ASSERT_TRUE(
      sched
          .Submit(std::make_shared<IngestTask>(&st[1], Tokens(4, 2),
                                               [&](const absl::Status& s) {
                                                 ran.status = s;
                                                 ran.done.Notify();
                                               }))
          .ok());
  ran.done.WaitForNotification();
  EXPECT_TRUE(ran.status.ok());
  absl::MutexLock lock(&mu);
  EXPECT_EQ(waits.size(), 2u);
}

// A task leaves the admission counts before its call ends: whoever sees it
// end (here its own callback, on the scheduler's thread) may submit again
// at once, at full capacity, and is admitted — for finished, cancelled and
// expired tasks alike.
TEST(SchedulerTest, CapacityIsFreeWhenACallEnds) {
  auto model = SmallModel();
  SchedulerOptions opts;
  opts.max_tasks = 1;
  opts.max_queued_tokens = 250000;
  FakeClock clock;
  Scheduler sched(model.get(), opts, &clock);
  std::vector<EngineState> st(2, EngineState::Initial(*model));
  for (int how = 0; how < 3; ++how) {  // finished, cancelled, expired
    Waiter first, second;
    absl::Status resubmitted;
    auto t = std::make_shared<IngestTask>(
        &st[0], Tokens(how == 0 ? 10 : 200000, how),
        [&](const absl::Status& s) {
          first.status = s;
          resubmitted = sched.Submit(std::make_shared<IngestTask>(
              &st[1], Tokens(1000, 7), [&](const absl::Status& s2) {
                second.status = s2;
                second.done.Notify();
              }));
          first.done.Notify();
        });
    t->deadline = clock.Now() + absl::Seconds(10);
    ASSERT_TRUE(sched.Submit(t).ok());
    if (how == 1) t->Cancel();
    if (how == 2) clock.Advance(absl::Seconds(11));
    first.done.WaitForNotification();
    EXPECT_EQ(first.status.ok(), how == 0) << first.status;
    EXPECT_TRUE(resubmitted.ok()) << how << ": " << resubmitted;
    if (resubmitted.ok()) {
      second.done.WaitForNotification();
      EXPECT_TRUE(second.status.ok()) << second.status;
    }
  }
}

TEST(SchedulerTest, StopEndsPendingTasks) {
  auto model = SmallModel();
  auto sched = std::make_unique<Scheduler>(model.get(), SchedulerOptions{});
  EngineState s = EngineState::Initial(*model);
  Waiter w;
  ASSERT_TRUE(
      sched
          ->Submit(std::make_shared<IngestTask>(&s, Tokens(500000, 1),
                                                [&](const absl::Status& st) {
                                                  w.status = st;
                                                  w.done.Notify();
                                                }))
          .ok());
  sched->Stop();
  w.done.WaitForNotification();
  EXPECT_EQ(w.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(sched
                ->Submit(std::make_shared<IngestTask>(
                    &s, Tokens(1, 1), [](const absl::Status&) {}))
                .code(),
            absl::StatusCode::kUnavailable);
}

TEST(SchedulerTest, StopFromSeveralThreadsAtOnceJoinsOnce) {
  auto model = SmallModel();
  Scheduler sched(model.get(), SchedulerOptions{});
  EngineState s = EngineState::Initial(*model);
  Waiter w;
  ASSERT_TRUE(
      sched
          .Submit(std::make_shared<IngestTask>(&s, Tokens(500000, 1),
                                               [&](const absl::Status& st) {
                                                 w.status = st;
                                                 w.done.Notify();
                                               }))
          .ok());
  // A server's shutdown and a signal's may stop one scheduler together:
  // every caller returns once the thread is joined, none joins it twice.
  std::vector<std::thread> stoppers;
  for (int i = 0; i < 4; ++i) stoppers.emplace_back([&] { sched.Stop(); });
  for (std::thread& t : stoppers) t.join();
  w.done.WaitForNotification();
  EXPECT_EQ(w.status.code(), absl::StatusCode::kUnavailable);
  sched.Stop();  // and once more, after
}

}  // namespace
}  // namespace statestream::worker
