// SPDX-License-Identifier: Apache-2.0
// SessionManager: the drain (Drain), which commits what each resident
// session holds uncommitted, retrying a store that refuses for now until
// its deadline and giving up on one that stops answering, then releases
// the leases.
#include <algorithm>
#include <iostream>
#include <memory>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/session_manager_internal.h"

namespace statestream::worker {

bool SessionManager::Impl::CommitForDrain(Session* s, absl::Time deadline,
                                          bool* level_short) {
  absl::Duration backoff = absl::Milliseconds(50);
  absl::Status st;
  while (true) {
    // Once one commit fell short of its level (a replica down), or past
    // the deadline, the rest go at the default level: each wait for the
    // level would take the whole durability timeout, session by session.
    const Durability d = *level_short || clock_->Now() >= deadline
                             ? opt_.default_durability
                             : PolicyDurability(s);
    st = CommitNow(s, d, "", s->dirty_cause);
    // Fenced: another worker owns it and its input; deleted: nobody wants
    // it. Not failures here.
    if (st.ok() || GetReason(st) == Reason::kFenced ||
        GetReason(st) == Reason::kSessionNotFound) {
      return true;
    }
    if (!s->dirty) {  // written below the level asked for: stored
      *level_short = true;
      return true;
    }
    if (st.code() != absl::StatusCode::kUnavailable ||
        clock_->Now() + backoff > deadline) {
      break;
    }
    clock_->SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
  ReportNotStored(s, st);
  return st.code() != absl::StatusCode::kUnavailable;
}

void SessionManager::Impl::ReportNotStored(const Session* s,
                                           const absl::Status& why) {
  {
    absl::MutexLock lock(&mu_);
    ++stats_.drain_commit_failures;
  }
  std::cerr << "drain: session " << s->key.tenant << "/" << s->key.session_id
            << " could not be committed; its input after offset "
            << s->head.head.input_offset << " (up to " << s->input_offset
            << ") is not stored, for clients to resend: " << why << "\n";
}

void SessionManager::Impl::Drain() {
  std::vector<std::shared_ptr<Session>> all;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return;
    draining_ = true;
    for (auto& [k, s] : resident_) all.push_back(s);
    for (auto& t : generating_) t->RequestStop();
  }
  for (auto& s : all) {
    absl::MutexLock lock(&s->mu);
    s->BarIngest(~uint64_t{0}, Draining());
  }
  const absl::Time deadline = clock_->Now() + opt_.drain_commit_timeout;
  bool level_short = false;
  // Once kDownAfter commits or lease releases in a row found the store
  // not answering (commits until the deadline, then past it; releases
  // past it), the rest are reported without store calls (each would wait
  // out the store client's timeouts: with a hung Redis and hundreds of
  // sessions, clean ones each releasing its lease, far past any
  // termination grace period, and dirty ones after them never reported)
  // and their leases left to expire. One failure is not enough: in a
  // Redis Cluster it may be one shard failing over.
  constexpr int kDownAfter = 3;
  int unanswered = 0;
  bool store_down = false;
  for (auto& s : all) {
    RunSync<bool>(s, [this, &s, deadline, &level_short, &store_down,
                      &unanswered] {
      if (GoneError(s.get()).ok()) {
        if (store_down) {
          if (s->dirty) {
            ReportNotStored(s.get(),
                            absl::UnavailableError(
                                "not tried: the store did not answer the "
                                "drain's calls past its deadline"));
          }
          Drop(s.get(), Session::Gone::kEvicted);
          return true;
        }
        // (Each asks the store: not once the drain's time is up.)
        if (clock_->Now() < deadline) AdoptIfStoreWentBack(s.get());
        if (s->dirty) {
          // (False: UNAVAILABLE until the deadline, or past it.)
          if (CommitForDrain(s.get(), deadline, &level_short)) {
            unanswered = 0;
          } else if (++unanswered >= kDownAfter) {
            store_down = true;
            Drop(s.get(), Session::Gone::kEvicted);
            return true;
          }
        }
        const absl::Status released =
            DropAndRelease(s.get(), Session::Gone::kEvicted);
        // Any answer (FENCED, NOT_FOUND too) is the store answering.
        if (released.code() != absl::StatusCode::kUnavailable) {
          unanswered = 0;
        } else if (clock_->Now() >= deadline && ++unanswered >= kDownAfter) {
          store_down = true;
        }
      }
      return true;
    });
  }
  // Side-branch generations released their session at once; told to
  // stop after their next token above, they end now: wait for that, so
  // their answers go out before the pool stops (bounded, in case the
  // scheduler no longer steps).
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](std::set<std::shared_ptr<GenerateTask>>* g) {
                             return g->empty();
                           },
                           &generating_),
                       absl::Seconds(30));
}

}  // namespace statestream::worker
