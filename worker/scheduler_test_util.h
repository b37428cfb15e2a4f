// SPDX-License-Identifier: Apache-2.0
// What the scheduler's tests share: a small real (random-weight) model,
// token streams, and running tasks through a scheduler or the engine.
#ifndef STATESTREAM_WORKER_SCHEDULER_TEST_UTIL_H_
#define STATESTREAM_WORKER_SCHEDULER_TEST_UTIL_H_

#include <memory>
#include <random>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "worker/engine/random_model.h"
#include "worker/scheduler.h"
#include "worker/tasks.h"

namespace statestream::worker {

inline std::unique_ptr<engine::Model> SmallModel() {
  engine::RandomModelSpec spec;
  spec.n_layer = 2;
  spec.n_embd = 64;
  spec.head_size = 32;
  spec.vocab_size = 97;
  spec.seed = 3;
  auto model = engine::LoadRandomModel("x070", spec);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

inline std::vector<int32_t> Tokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 97);
  return t;
}

// Direct engine run: state after `tokens` and the logits after the last.
inline EngineState Direct(engine::Model& m, const std::vector<int32_t>& tokens,
                          std::vector<float>* logits = nullptr) {
  EngineState s = EngineState::Initial(m);
  std::vector<float> l(m.info().config.vocab_size);
  int32_t last = static_cast<int32_t>(tokens.size()) - 1;
  engine::SequenceWork w{tokens, s.state.data(), absl::MakeConstSpan(&last, 1),
                         l.data(), s.last_hidden.data()};
  EXPECT_TRUE(m.Forward({&w, 1}).ok());
  s.position = tokens.size();
  if (logits != nullptr) *logits = l;
  return s;
}

struct Waiter {
  absl::Notification done;
  absl::Status status;
};

// Feeds `tokens` into `state` through `sched` and waits: Submit's error,
// else the task's.
inline absl::Status Ingest(Scheduler& sched, EngineState* state,
                           std::vector<int32_t> tokens) {
  Waiter w;
  SS_RETURN_IF_ERROR(sched.Submit(std::make_shared<IngestTask>(
      state, std::move(tokens), [&](const absl::Status& s) {
        w.status = s;
        w.done.Notify();
      })));
  w.done.WaitForNotification();
  return w.status;
}

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_SCHEDULER_TEST_UTIL_H_
