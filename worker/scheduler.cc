// SPDX-License-Identifier: Apache-2.0
#include "worker/scheduler.h"

#include <algorithm>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace statestream::worker {

Scheduler::Scheduler(engine::Model* model, const SchedulerOptions& options,
                     Clock* clock)
    : model_(model), options_(options), clock_(clock) {
  const int step_threads =
      options.step_threads > 0 ? options.step_threads : engine::AvailableCpus();
  if (step_threads > 1) {
    // Short spins: these threads run between engine batches, when the
    // engine's own pool is about to need the cores.
    step_pool_ = std::make_unique<engine::ThreadPool>(step_threads, 20);
  }
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Stop(); }

absl::Status Scheduler::Submit(std::shared_ptr<Task> task) {
  SS_RETURN_IF_ERROR(task->CheckInput(model_->info().config.vocab_size));
  absl::MutexLock lock(&mu_);
  SS_RETURN_IF_ERROR(RoomFor(task->queued_tokens));
  ++admitted_;
  admitted_tokens_ += task->queued_tokens;
  task->admitted_at = clock_->Now();
  incoming_.push_back(std::move(task));
  idle_wake_.Notify();
  return absl::OkStatus();
}

absl::Status Scheduler::CheckRoom(int64_t queued_tokens) const {
  absl::MutexLock lock(&mu_);
  return RoomFor(queued_tokens);
}

absl::Status Scheduler::RoomFor(int64_t queued_tokens) const {
  if (stopping_) {
    return MakeError(absl::StatusCode::kUnavailable, Reason::kOverloaded,
                     "the worker is shutting down",
                     {{"retry_after_ms", "100"}, {"stopping", "true"}});
  }
  // A task over the whole token bound would be refused with a retry hint
  // forever: it is too large, not waiting for room.
  if (queued_tokens > options_.max_queued_tokens) {
    return MakeError(
        absl::StatusCode::kInvalidArgument, Reason::kMessageTooLarge,
        absl::StrCat("the call needs ", queued_tokens,
                     " tokens of work, more than this worker queues in all (",
                     options_.max_queued_tokens,
                     "): send less input or ask for fewer tokens"),
        {{"tokens", absl::StrCat(queued_tokens)},
         {"limit", absl::StrCat(options_.max_queued_tokens)}});
  }
  if (admitted_ >= options_.max_tasks ||
      admitted_tokens_ + queued_tokens > options_.max_queued_tokens) {
    // A rough hint: the time to drain a batch's worth of queued work.
    const int64_t hint_ms =
        std::clamp<int64_t>(admitted_tokens_ / 1000 + 50, 50, 5000);
    return MakeError(
        absl::StatusCode::kResourceExhausted, Reason::kOverloaded,
        absl::StrCat("worker overloaded: ", admitted_, " tasks and ",
                     admitted_tokens_, " tokens queued; retry later"),
        {{"retry_after_ms", absl::StrCat(hint_ms)}});
  }
  return absl::OkStatus();
}

void Scheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // A second caller waits here for the first one's join, then finds the
  // thread joined (two joins of one thread are undefined behaviour).
  absl::MutexLock join(&join_mu_);
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  absl::MutexLock lock(&mu_);
  SchedulerStats stats = stats_;
  stats.active_tasks = admitted_;
  return stats;
}

void Scheduler::Loop() {
  std::vector<std::shared_ptr<Task>> active;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !incoming_.empty() || !active.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      while (!incoming_.empty()) {
        active.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      if (stopping_) break;
    }
    Retire(active);
    if (!Iterate(active)) {
      // Every active task is idle (waiting on its owner): poll gently, on
      // the steady clock (a wall clock stepped back would stop the polls
      // until new work came).
      absl::MutexLock lock(&mu_);
      idle_wake_.Await(
          &mu_,
          [this]()
              ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !incoming_.empty(); },
          absl::Milliseconds(1));
    }
  }
  const absl::Status stopped =
      MakeError(absl::StatusCode::kUnavailable, Reason::kOverloaded,
                "the worker is shutting down",
                {{"retry_after_ms", "100"}, {"stopping", "true"}});
  for (auto& t : active) t->OnError(stopped);
  absl::MutexLock lock(&mu_);
  for (auto& t : incoming_) t->OnError(stopped);
  incoming_.clear();
  admitted_ = 0;
  admitted_tokens_ = 0;
}

void Scheduler::Release(const std::vector<std::shared_ptr<Task>>& ended) {
  int64_t tokens = 0;
  for (const auto& t : ended) tokens += t->queued_tokens;
  absl::MutexLock lock(&mu_);
  admitted_ -= static_cast<int>(ended.size());
  admitted_tokens_ -= tokens;
}

// Drops finished, cancelled and expired tasks. They leave the admission
// counts before their callbacks end the client's call: a client that sees
// its call end may submit again at once and must find the capacity free.
void Scheduler::Retire(std::vector<std::shared_ptr<Task>>& active) {
  const absl::Time now = clock_->Now();
  std::vector<std::shared_ptr<Task>> ended;
  std::vector<absl::Status> outcome;  // OK: finished
  for (size_t i = 0; i < active.size();) {
    Task& t = *active[i];
    absl::Status why;
    if (t.cancelled()) {
      why = absl::CancelledError("cancelled by the client");
    } else if (now >= t.deadline) {
      why = absl::DeadlineExceededError("deadline exceeded");
    } else if (!t.Finished()) {
      ++i;
      continue;
    }
    // One that waited its whole life counts its wait too: under overload
    // the longest waits end this way, and leaving them out would make
    // queue times look better exactly as they get worse.
    if (!t.stepped && options_.on_first_step) {
      t.stepped = true;
      options_.on_first_step(now - t.admitted_at);
    }
    ended.push_back(std::move(active[i]));
    outcome.push_back(std::move(why));
    active.erase(active.begin() + static_cast<ptrdiff_t>(i));
  }
  if (ended.empty()) return;
  Release(ended);
  for (size_t i = 0; i < ended.size(); ++i) {
    if (outcome[i].ok()) {
      ended[i]->OnDone();
    } else {
      ended[i]->OnError(outcome[i]);
    }
  }
}

bool Scheduler::Iterate(std::vector<std::shared_ptr<Task>>& active) {
  if (active.empty()) return false;
  const engine::ModelInfo& info = model_->info();
  const int V = info.config.vocab_size;
  struct Entry {
    Task* task;
    StepRequest req;
  };
  std::vector<Entry> work;
  std::vector<Task*> hidden_only;
  int budget = options_.max_batch_tokens;
  // Pass 1 asks every task for one token: decode steps (at most one token
  // each), hidden->logits, and which tasks have a prefill. Decodes take the
  // budget but leave a share to the prefills, if any (with as many decoding
  // tasks as the budget, decodes beyond it and every ingest, prompt and
  // score tail waited for the first ones to finish); when they are more
  // than their slots, the ones taken rotate among the decodes.
  // Pass 2: prefill chunks with the rest, rotating among the prefills.
  const size_t n = active.size();
  std::vector<size_t> prefills;
  std::vector<Entry> decodes;
  for (size_t i = 0; i < n; ++i) {
    Task* t = active[i].get();
    StepRequest r = t->NextStep(1);
    if (r.logits_from_hidden) {
      hidden_only.push_back(t);
    } else if (!r.tokens.empty() && !r.prefill) {
      r.tokens = r.tokens.subspan(0, 1);
      decodes.push_back({t, r});
    } else if (!r.tokens.empty()) {
      prefills.push_back(i);  // asked again with its real budget
    }
  }
  // Each hidden vector's logits are a row of the kept buffer, like a
  // Score's: at most max_score_rows of them, taking turns (a burst of
  // 1,000 Scores was 1,000 rows, 256 MiB at a 65,536 vocabulary, in one
  // product every other task waited for).
  const size_t hidden_rows =
      static_cast<size_t>(std::max(options_.max_score_rows, 1));
  if (hidden_only.size() > hidden_rows) {
    const size_t start = hidden_rr_ % hidden_only.size();
    std::rotate(hidden_only.begin(),
                hidden_only.begin() + static_cast<ptrdiff_t>(start),
                hidden_only.end());
    hidden_only.resize(hidden_rows);
    hidden_rr_ = start + hidden_rows;
  }
  const int reserve =
      prefills.empty() ? 0
                       : std::min(options_.prefill_chunk,
                                  std::max(1, options_.max_batch_tokens / 4));
  const size_t decode_slots =
      static_cast<size_t>(std::min(budget, std::max(1, budget - reserve)));
  if (decodes.size() > decode_slots) {
    const size_t start = decode_rr_ % decodes.size();
    std::rotate(decodes.begin(),
                decodes.begin() + static_cast<ptrdiff_t>(start), decodes.end());
    decodes.resize(decode_slots);
    decode_rr_ = start + decode_slots;
  }
  work = std::move(decodes);
  budget -= static_cast<int>(work.size());
  size_t fed = 0;
  // The first score left without rows: the next iteration starts there.
  std::optional<size_t> unserved;
  int score_rows = std::max(options_.max_score_rows, 1);
  const size_t first = prefills.empty() ? 0 : prefill_rr_ % prefills.size();
  for (size_t k = 0; k < prefills.size() && budget > 0; ++k) {
    Task* t = active[prefills[(first + k) % prefills.size()]].get();
    const int offer = std::min(budget, options_.prefill_chunk);
    StepRequest r = t->NextStep(offer);
    ++fed;
    if (r.tokens.empty()) continue;
    int most = offer;
    if (r.want_logits && r.logits_at_every_token) {
      if (score_rows == 0) {  // its turn comes next iteration
        if (!unserved) unserved = k;
        continue;
      }
      most = std::min(most, score_rows);
      score_rows -= std::min(most, static_cast<int>(r.tokens.size()));
    }
    if (static_cast<int>(r.tokens.size()) > most) {
      r.tokens = r.tokens.subspan(0, most);
    }
    budget -= static_cast<int>(r.tokens.size());
    work.push_back({t, r});
  }
  prefill_rr_ = first + unserved.value_or(fed);
  if (work.empty() && hidden_only.empty()) return false;
  if (options_.on_first_step) {
    const absl::Time now = clock_->Now();
    auto first = [&](Task* t) {
      if (t->stepped) return;
      t->stepped = true;
      options_.on_first_step(now - t->admitted_at);
    };
    for (const Entry& e : work) first(e.task);
    for (Task* t : hidden_only) first(t);
  }
  if (options_.on_batch && !work.empty()) {
    int tokens = 0;
    for (const Entry& e : work) tokens += static_cast<int>(e.req.tokens.size());
    options_.on_batch(static_cast<int>(work.size()), tokens);
  }

  absl::Status status;
  // Kept across iterations: at 32 sessions a fresh buffer is 8 MB of page
  // faults and zeroing every step.
  engine::HugePageVector<float>& logits = logits_;
  if (!work.empty()) {
    std::vector<engine::SequenceWork> batch;
    // Each entry's logit positions: its last token's, or (every token)
    // a prefix of 0, 1, 2, ...
    std::vector<int32_t> last(work.size());
    size_t most = 0;
    int rows = 0;
    for (const Entry& e : work) {
      if (!e.req.want_logits) continue;
      const int n = e.req.logits_at_every_token
                        ? static_cast<int>(e.req.tokens.size())
                        : 1;
      rows += n;
      most = std::max(most, static_cast<size_t>(n));
    }
    while (every_position_.size() < most) {
      every_position_.push_back(static_cast<int32_t>(every_position_.size()));
    }
    if (logits.size() < static_cast<size_t>(rows) * V) {
      logits.resize(static_cast<size_t>(rows) * V);
    }
    int slot = 0;
    std::vector<int> slot_of(work.size(), -1);
    for (size_t i = 0; i < work.size(); ++i) {
      const Entry& e = work[i];
      last[i] = static_cast<int32_t>(e.req.tokens.size()) - 1;
      engine::SequenceWork w;
      w.tokens = e.req.tokens;
      w.state = e.task->state();
      w.last_hidden = e.task->last_hidden();
      if (e.req.want_logits) {
        w.logit_positions = e.req.logits_at_every_token
                                ? absl::MakeConstSpan(every_position_)
                                      .subspan(0, e.req.tokens.size())
                                : absl::MakeConstSpan(&last[i], 1);
        w.logits = logits.data() + static_cast<size_t>(slot) * V;
        slot_of[i] = slot;
        slot += static_cast<int>(w.logit_positions.size());
      }
      batch.push_back(w);
    }
    status = model_->Forward(batch);
    if (status.ok()) {
      const auto step = [&](int i) {
        work[i].task->OnStep(
            static_cast<int>(work[i].req.tokens.size()),
            slot_of[i] >= 0 ? logits.data() + size_t(slot_of[i]) * V : nullptr);
      };
      if (step_pool_ != nullptr && work.size() >= 4) {
        step_pool_->ParallelFor(static_cast<int>(work.size()), step);
      } else {
        for (size_t i = 0; i < work.size(); ++i) step(static_cast<int>(i));
      }
    }
    // Otherwise validation failed before any state changed; every task in
    // the batch is ended below (Submit checked each task's tokens, so this
    // is a bug path).
    absl::MutexLock lock(&mu_);
    ++stats_.iterations;
    for (const Entry& e : work) stats_.tokens += e.req.tokens.size();
    stats_.max_batch_sequences = std::max<int64_t>(
        stats_.max_batch_sequences, static_cast<int64_t>(work.size()));
  }
  // Tasks that errored must not run again.
  std::vector<std::pair<Task*, absl::Status>> errors;
  if (!status.ok()) {
    for (const Entry& e : work) errors.emplace_back(e.task, status);
  }
  if (!hidden_only.empty()) {
    // Logits from saved hidden vectors (every Score's first step, a
    // Generate without a prompt, a resumed generation): one head product
    // for all of them, which reads the head once (bit-identical to one
    // row at a time, like every batched product).
    // The batch's tasks took their rows in OnStep above: the buffer is
    // free again.
    const int C = info.config.n_embd;
    const int rows = static_cast<int>(hidden_only.size());
    std::vector<float>& hidden = hidden_rows_;
    hidden.resize(static_cast<size_t>(rows) * C);
    for (int r = 0; r < rows; ++r) {
      std::copy_n(hidden_only[r]->last_hidden(), C,
                  hidden.begin() + static_cast<ptrdiff_t>(r) * C);
    }
    if (logits.size() < static_cast<size_t>(rows) * V) {
      logits.resize(static_cast<size_t>(rows) * V);
    }
    absl::Status s = model_->Logits(hidden.data(), rows, logits.data());
    for (int r = 0; r < rows; ++r) {
      if (s.ok()) {
        hidden_only[r]->OnStep(0,
                               logits.data() + static_cast<ptrdiff_t>(r) * V);
      } else {
        errors.emplace_back(hidden_only[r], s);
      }
    }
  }
  if (!errors.empty()) {
    // They leave `active` and release their admission before their calls
    // end (as in Retire).
    std::vector<std::shared_ptr<Task>> keep, failed;
    std::vector<absl::Status> why;
    for (auto& t : active) {
      auto it = std::find_if(errors.begin(), errors.end(),
                             [&](const auto& e) { return e.first == t.get(); });
      if (it == errors.end()) {
        keep.push_back(t);
      } else {
        failed.push_back(t);
        why.push_back(it->second);
      }
    }
    active.swap(keep);
    Release(failed);
    for (size_t i = 0; i < failed.size(); ++i) failed[i]->OnError(why[i]);
  }
  return true;
}

}  // namespace statestream::worker
