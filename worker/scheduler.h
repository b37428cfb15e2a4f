// SPDX-License-Identifier: Apache-2.0
// The scheduler: the only code that calls the engine. RPC handlers submit
// Tasks; one scheduler thread gathers the next step of every active task
// into a batch (continuous batching), runs Model::Forward once per
// iteration, and hands each task its logits.
//
// Each iteration fills a token budget: first one token for every decoding
// task (interactive latency), then prefill chunks for ingesting tasks in
// round-robin order, so a 100k-token document advances in chunks between
// decode steps instead of stalling them. Admission is bounded (OVERLOADED /
// RESOURCE_EXHAUSTED with a retry hint); cancelled tasks (a client gone or
// its gRPC deadline passed: the call's OnCancel cancels its task) and tasks
// past a Task::deadline set on them are dropped at the next iteration.
#ifndef STATESTREAM_WORKER_SCHEDULER_H_
#define STATESTREAM_WORKER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "worker/engine/huge_pages.h"
#include "worker/engine/model.h"
#include "worker/engine/thread_pool.h"

namespace statestream::worker {

// What a task wants from the next engine step.
struct StepRequest {
  // Tokens to feed (at most the `max_tokens` offered). Empty together with
  // !logits_from_hidden means the task has nothing to do this iteration.
  absl::Span<const int32_t> tokens;
  // Logits after the last token fed are wanted.
  bool want_logits = false;
  // With want_logits: the logits after every token fed, one row each in
  // order (Score's continuation), instead of after the last only.
  bool logits_at_every_token = false;
  // Instead of feeding tokens: recompute the logits of the session's last
  // token from its stored hidden vector (Model::Logits).
  bool logits_from_hidden = false;
  // Prefill (bulk ingest) rather than decode; decides the share of budget.
  bool prefill = false;
};

// One unit of work on one session's state. All methods except Cancel() run
// on the scheduler thread, one task at a time, so a task needs no locking
// for its own fields; results leave through the task's own thread-safe
// channel (e.g. a gRPC reactor). The state and hidden buffers must stay
// valid and untouched by anything else until OnDone or OnError.
class Task {
 public:
  virtual ~Task() = default;

  virtual float* state() = 0;        // Model::info().state_floats floats
  virtual float* last_hidden() = 0;  // n_embd floats

  // The next step, given a budget of `max_tokens` (>= 1). Must not change
  // the task: it may be asked more than once per iteration, and only
  // OnStep advances it. The returned span must stay valid until OnStep.
  virtual StepRequest NextStep(int max_tokens) = 0;
  // The step ran: the first `fed` tokens of the request were consumed (the
  // scheduler may feed fewer than asked); `logits` is set when the request
  // wanted them (vocab floats, `fed` rows of them for
  // logits_at_every_token; valid during the call only). They are this
  // task's own: it may use them as scratch (the sampler does).
  virtual void OnStep(int fed, float* logits) = 0;
  // True once the task needs no further step; OnDone follows.
  virtual bool Finished() const = 0;
  virtual void OnDone() = 0;
  // Ends the task (cancelled, deadline exceeded, engine error). Whatever
  // the task fed is already in its state; the owner decides what to keep.
  virtual void OnError(const absl::Status& status) = 0;
  // Whether every token the task will feed or look up is in [0,
  // vocab_size): else INVALID_ARGUMENT/kInvalidToken naming the first bad
  // one. Submit refuses a task that fails it, so one bad sequence never
  // reaches a batch (whose Forward would fail every task in it) and no
  // task indexes logits with a bad id.
  virtual absl::Status CheckInput(int vocab_size) const {
    (void)vocab_size;
    return absl::OkStatus();
  }

  // Thread-safe: asks the scheduler to drop the task (client went away).
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  // Infinite by default.
  absl::Time deadline = absl::InfiniteFuture();
  // Tokens still to ingest, for admission control.
  int64_t queued_tokens = 0;
  // Set by the scheduler: admission time, and whether the task has been
  // in a step yet (for the queue-time hook).
  absl::Time admitted_at = absl::InfinitePast();
  bool stepped = false;

 private:
  std::atomic<bool> cancelled_{false};
};

struct SchedulerOptions {
  // Tokens fed to the engine per iteration, across all tasks.
  int max_batch_tokens = 256;
  // Tokens of one task's prefill per iteration.
  int prefill_chunk = 64;
  // Rows of logits after every token (Score's chunks) per iteration, all
  // tasks together: each row is vocab floats (256 KiB at 65,536) in a
  // buffer kept for the process's life. Logits from saved hidden vectors
  // (a Score's first token, a Generate without a prompt, a resumed
  // generation) take at most as many rows an iteration, in turns.
  int max_score_rows = 64;
  // Tasks admitted (queued or running) before Submit answers OVERLOADED.
  int max_tasks = 1024;
  // Sum of queued_tokens over admitted tasks before OVERLOADED (a task over
  // it alone is MESSAGE_TOO_LARGE).
  int64_t max_queued_tokens = int64_t{1} << 22;
  // Threads (the scheduler's own included) that run the tasks' per-step
  // work after each engine batch — sampling 32 sessions over a 65k
  // vocabulary is ~10 ms on one core — when 4 or more sessions stepped;
  // 0 = one per CPU, 1 = all on the scheduler thread. Each task's step is
  // independent, so the results are the same.
  int step_threads = 0;
  // Observability hooks, called on the scheduler thread (must not block):
  // each engine batch (sequences, tokens), and each task's time from
  // admission to its first step (or, for one that ends before any, its
  // end: cancelled or past its deadline while queued).
  std::function<void(int sequences, int tokens)> on_batch;
  std::function<void(absl::Duration queued)> on_first_step;
};

struct SchedulerStats {
  int64_t iterations = 0;
  int64_t tokens = 0;
  int64_t max_batch_sequences = 0;
  int active_tasks = 0;  // admitted: running or queued
};

// Thread-safe.
class Scheduler {
 public:
  // `model` and `clock` must outlive the scheduler.
  Scheduler(engine::Model* model, const SchedulerOptions& options,
            Clock* clock = Clock::Real());
  ~Scheduler();  // Stop()s
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Admits `task`, or returns RESOURCE_EXHAUSTED (reason OVERLOADED, with a
  // "retry_after_ms" metadata hint) without calling it, or UNAVAILABLE when
  // stopping. On admission the task will get exactly one OnDone/OnError.
  absl::Status Submit(std::shared_ptr<Task> task);
  // What Submit would answer now for a task of (at least) `queued_tokens`,
  // admitting nothing: lets a caller refuse before it takes a resource
  // (a committing Generate, the session's writer slot). Submit decides.
  absl::Status CheckRoom(int64_t queued_tokens) const;

  // Ends every task with UNAVAILABLE and joins the thread. Idempotent and
  // safe to call from several threads at once: each returns once the
  // thread is joined.
  void Stop();

  SchedulerStats stats() const;
  const engine::Model& model() const { return *model_; }

 private:
  // Submit's refusals for a task of `queued_tokens`.
  absl::Status RoomFor(int64_t queued_tokens) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Loop();
  // One iteration over `active`; false when there was nothing to do.
  bool Iterate(std::vector<std::shared_ptr<Task>>& active);
  void Retire(std::vector<std::shared_ptr<Task>>& active);
  // The batch's logits, reused across iterations (scheduler thread only).
  // On huge pages from 2 MiB, so every session's row starts on a cache
  // line: the head's stores are whole lines (engine-kernels.md).
  engine::HugePageVector<float> logits_;
  // 0, 1, 2, ...: the logit positions of a logits_at_every_token request.
  std::vector<int32_t> every_position_;
  // Takes ended tasks out of the admission counts.
  void Release(const std::vector<std::shared_ptr<Task>>& ended);

  engine::Model* model_;
  const SchedulerOptions options_;
  Clock* clock_;

  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<Task>> incoming_ ABSL_GUARDED_BY(mu_);
  SteadyWaiter idle_wake_;  // told when incoming_ grows
  int admitted_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t admitted_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  SchedulerStats stats_ ABSL_GUARDED_BY(mu_);

  // Where the next iteration starts taking decodes (when they are more than
  // their slots) and prefills (when the budget left does not cover them
  // all): each rotates over its own kind, so every task gets an equal share
  // whatever sits between them. Scheduler thread only.
  size_t decode_rr_ = 0;
  size_t prefill_rr_ = 0;
  size_t hidden_rr_ = 0;  // the same for logits from hidden vectors
  // Those hidden vectors' rows, reused (scheduler thread only).
  std::vector<float> hidden_rows_;
  std::unique_ptr<engine::ThreadPool> step_pool_;  // null: one thread
  absl::Mutex join_mu_;  // one joiner at a time (Stop)
  std::thread thread_ ABSL_GUARDED_BY(join_mu_);
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_SCHEDULER_H_
