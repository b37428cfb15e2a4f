// SPDX-License-Identifier: Apache-2.0
#include "services/gateway_router.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace statestream {
namespace {

// FNV-1a 64 then the splitmix64 finalizer: stable across processes and
// builds (absl::Hash is seeded per process, which gateways must not be).
uint64_t StableHash(const std::string& a, const std::string& b) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  mix(a);
  h ^= 0xff;
  h *= 1099511628211ull;
  mix(b);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

}  // namespace

double RendezvousScore(const std::string& hash_key,
                       const std::string& worker_id, double load) {
  const uint64_t h = StableHash(hash_key, worker_id);
  const double u = (static_cast<double>(h >> 11) + 0.5) / 9007199254740992.0;
  const double weight = 1.0 / (1.0 + std::max(0.0, load));
  return weight / -std::log(u);
}

GatewayRouter::GatewayRouter(StateStore* store, GatewayRouterOptions options)
    : store_(store),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : Clock::Steady()) {}

absl::StatusOr<std::vector<WorkerInfo>> GatewayRouter::Workers() {
  const absl::Time now = clock_->Now();
  mu_.Lock();
  if (now - workers_read_ < options_.registry_refresh) {
    std::vector<WorkerInfo> known = workers_;
    mu_.Unlock();
    return known;
  }
  if (store_ == nullptr) {
    std::vector<WorkerInfo> workers;
    AppendStatic(&workers);
    workers_ = workers;
    workers_read_ = now;
    mu_.Unlock();
    return workers;
  }
  // One read at a time. With workers known, a stale list is read again in
  // the background while calls route with it: while the registry is slow
  // or down no call waits for it (each read a store timeout). Only with
  // none known, or after MarkSuspect (a failover wants the worker that
  // replaces the failed one) while the store answers, does a call read it
  // itself; the others that wait for that read take its outcome instead of
  // reading again. With the registry unreachable (its last read failed) a
  // failover routes among the workers known too. (Not on a failed session
  // lookup alone: in a Cluster the registry's shard may answer while a
  // session's does not, and then the failover wants its replacement.)
  if (!workers_.empty() &&
      (workers_read_ != absl::InfinitePast() || !last_read_.ok())) {
    std::vector<WorkerInfo> known = workers_;
    const bool start = !reading_;
    const uint64_t marks = marks_;
    if (start) BeginRead();
    mu_.Unlock();
    if (start) {
      InBackground(&refresher_, [this, marks] {
        auto listed = store_->ListWorkers();
        absl::MutexLock lock(&mu_);
        FinishRead(std::move(listed), marks).IgnoreError();
      });
    }
    return known;
  }
  if (reading_ && !workers_.empty()) {
    std::vector<WorkerInfo> known = workers_;
    mu_.Unlock();
    return known;
  }
  if (AwaitReadOut()) {
    if (clock_->Now() - workers_read_ < options_.registry_refresh) {
      std::vector<WorkerInfo> fresh = workers_;
      mu_.Unlock();
      return fresh;
    }
    if (!last_read_.ok() && workers_.empty()) {
      absl::Status failed = last_read_;
      mu_.Unlock();
      return failed;
    }
  }
  return ReadRegistry();
}

bool GatewayRouter::AwaitReadOut() {
  const uint64_t reads_before = reads_;
  mu_.Await(absl::Condition(
      +[](bool* reading) { return !*reading; }, &reading_));
  return reads_ != reads_before;
}

void GatewayRouter::BeginRead() {
  reading_ = true;
  ++read_starts_;
}

absl::StatusOr<std::vector<WorkerInfo>> GatewayRouter::ReadRegistry() {
  BeginRead();
  const uint64_t marks = marks_;
  mu_.Unlock();
  auto listed = store_->ListWorkers();
  absl::MutexLock lock(&mu_);
  return FinishRead(std::move(listed), marks);
}

void GatewayRouter::AppendStatic(std::vector<WorkerInfo>* workers) const {
  for (const std::string& address : options_.static_workers) {
    WorkerInfo info;
    info.worker_id = address;
    info.address = address;
    workers->push_back(std::move(info));
  }
}

absl::StatusOr<std::vector<WorkerInfo>> GatewayRouter::FinishRead(
    absl::StatusOr<std::vector<WorkerInfo>> listed, uint64_t marks) {
  reading_ = false;
  ++reads_;
  last_read_ = listed.status();
  // A worker marked suspect during the read: the list may predate its
  // failure, so the next route reads again.
  const absl::Time read_at =
      marks_ == marks ? clock_->Now() : absl::InfinitePast();
  if (!listed.ok()) {
    // Keep routing with what we knew while the registry is unreachable,
    // and do not ask it again for a refresh period (a failover's
    // MarkSuspect still asks at once).
    if (!workers_.empty()) {
      workers_read_ = read_at;
      return workers_;
    }
    return listed.status();
  }
  std::vector<WorkerInfo> workers = *std::move(listed);
  // An empty registry with workers known a moment ago is what a Redis
  // restart looks like until the workers' next heartbeats: keep routing
  // to the last known ones (a dead one fails fast) and read again next
  // time.
  if (workers.empty() && options_.static_workers.empty() && !workers_.empty()) {
    return workers_;
  }
  AppendStatic(&workers);
  listed_at_ = read_at;
  const absl::Time now = clock_->Now();
  absl::erase_if(served_, [&](const auto& entry) {
    return entry.second < now - options_.served_memory;
  });
  for (const WorkerInfo& w : workers) {
    for (const std::string& fp : w.model_fingerprints) served_[fp] = now;
  }
  workers_ = std::move(workers);
  workers_read_ = read_at;
  listed_by_ = read_starts_;  // no other read began while this one was out
  return workers_;
}

void GatewayRouter::InBackground(std::thread* slot, std::function<void()> fn) {
  {
    absl::MutexLock lock(&threads_mu_);
    // The slot's previous work has reported (only it clears its flag, and
    // a new one starts only once the flag is clear): its thread is ending
    // or gone, so this join is short.
    if (slot->joinable()) slot->join();
    try {
      *slot = std::thread(fn);  // a copy: `fn` is still whole if this throws
      return;
    } catch (...) {  // out of threads or memory
    }
  }
  fn();  // run it here: its flag must be cleared
}

absl::Status GatewayRouter::RefreshNow() {
  uint64_t began;
  {
    absl::MutexLock lock(&mu_);
    if (store_ == nullptr ||
        clock_->Now() - listed_at_ <= options_.registry_refresh) {
      return absl::OkStatus();
    }
    began = read_starts_;
  }
  return ReadWorkersSince(began).status();
}

bool GatewayRouter::IsSuspect(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = suspects_.find(worker_id);
  return it != suspects_.end() && it->second > clock_->Now();
}

GatewayRouter::Stats GatewayRouter::stats() {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  Stats s;
  s.known = static_cast<int>(workers_.size());
  for (const WorkerInfo& w : workers_) {
    auto it = suspects_.find(w.worker_id);
    if (it != suspects_.end() && it->second > now) ++s.suspect;
  }
  return s;
}

void GatewayRouter::MarkSuspect(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  suspects_[worker_id] = clock_->Now() + options_.suspect_for;
  ++marks_;
  // A worker just failed: the cached registry may be missing its
  // replacement (and still list other dead workers), so the next route
  // reads it again instead of retrying among stale entries.
  workers_read_ = absl::InfinitePast();
}

absl::StatusOr<std::vector<WorkerInfo>> GatewayRouter::ReadWorkersSince(
    uint64_t began) {
  mu_.Lock();
  while (true) {
    if (!last_read_.ok()) {  // down: no call waits for it (see Workers)
      absl::Status failed = last_read_;
      mu_.Unlock();
      return failed;
    }
    if (listed_by_ > began) {
      std::vector<WorkerInfo> fresh = workers_;
      mu_.Unlock();
      return fresh;
    }
    if (!reading_) break;
    AwaitReadOut();  // one that began later counts; an older one does not
  }
  return ReadRegistry();
}

bool GatewayRouter::WorkersFresh() {
  absl::MutexLock lock(&mu_);
  return clock_->Now() - workers_read_ <= options_.registry_refresh;
}

bool GatewayRouter::Serves(const WorkerInfo& w,
                           const std::string& fingerprint) const {
  if (fingerprint.empty()) return true;
  const std::vector<std::string>* serves = &w.model_fingerprints;
  std::vector<std::string> learned;
  if (serves->empty() && options_.fingerprints_of) {
    learned = options_.fingerprints_of(w);
    serves = &learned;
  }
  return serves->empty() || std::find(serves->begin(), serves->end(),
                                      fingerprint) != serves->end();
}

const WorkerInfo* GatewayRouter::Best(const std::vector<WorkerInfo>& workers,
                                      const std::string& hash_key,
                                      const std::string& fingerprint,
                                      const std::set<std::string>& exclude) {
  const absl::Time now = clock_->Now();
  std::set<std::string> suspects;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = suspects_.begin(); it != suspects_.end();) {
      if (it->second <= now) {
        suspects_.erase(it++);
      } else {
        suspects.insert(it->first);
        ++it;
      }
    }
  }
  // Best among healthy workers; suspects only when nothing else is left.
  const WorkerInfo* best[2] = {nullptr, nullptr};
  double best_score[2] = {-1, -1};
  for (const WorkerInfo& w : workers) {
    if (exclude.count(w.worker_id) != 0) continue;
    if (!Serves(w, fingerprint)) continue;
    const int tier = suspects.count(w.worker_id) != 0 ? 1 : 0;
    const double score = RendezvousScore(hash_key, w.worker_id, w.load);
    if (score > best_score[tier]) {
      best_score[tier] = score;
      best[tier] = &w;
    }
  }
  return best[0] != nullptr ? best[0] : best[1];
}

absl::StatusOr<Route> GatewayRouter::Pick(const std::string& hash_key,
                                          const std::string& fingerprint,
                                          const std::set<std::string>& exclude,
                                          bool unserved_is_mismatch) {
  uint64_t began;
  {
    absl::MutexLock lock(&mu_);
    began = read_starts_;
  }
  auto workers = Workers();
  if (!workers.ok()) return workers.status();
  const WorkerInfo* chosen = Best(*workers, hash_key, fingerprint, exclude);
  if (chosen == nullptr && store_ != nullptr && !exclude.empty()) {
    // A failover has excluded every worker it knows. The list may predate
    // their replacements: after a burst of worker deaths a failover
    // crosses the dead off one by one while calls route on the list cached
    // before (or while a read that began before is out). Before giving up,
    // take a list read after this route began (not when nothing is
    // excluded: a model no worker serves would cost a read per call).
    auto fresh = ReadWorkersSince(began);
    if (fresh.ok()) {
      workers = std::move(fresh);
      chosen = Best(*workers, hash_key, fingerprint, exclude);
    }
  }
  if (chosen == nullptr && unserved_is_mismatch && !fingerprint.empty()) {
    // Perhaps not a worker lost but a model nobody serves (a state exported
    // from another model, say), which retrying would not help. Decided on a
    // list the registry gave within a refresh: an older one may predate the
    // model's workers, so it is read again first (one read, shared, for
    // the calls of a refresh period; the registry unreachable: UNAVAILABLE).
    bool fresh_list = false;
    {
      // The fresh list may be newer than the one this call routed on (a
      // background read may have ended since): decide on it.
      absl::MutexLock lock(&mu_);
      fresh_list = clock_->Now() - listed_at_ <= options_.registry_refresh;
      if (fresh_list) workers = workers_;
    }
    if (fresh_list) {
      chosen = Best(*workers, hash_key, fingerprint, exclude);
    } else if (store_ != nullptr) {
      auto fresh = ReadWorkersSince(began);
      fresh_list = fresh.ok();
      if (fresh.ok()) {
        workers = std::move(fresh);
        chosen = Best(*workers, hash_key, fingerprint, exclude);
      }
    }
    if (chosen != nullptr) {
      return Route{chosen->worker_id, chosen->address, false};
    }
    std::set<std::string> served;
    bool unlisted = false;  // a worker that does not say (serves anything)
    for (const WorkerInfo& w : *workers) {
      unlisted = unlisted || w.model_fingerprints.empty();
      served.insert(w.model_fingerprints.begin(), w.model_fingerprints.end());
    }
    // Its workers may be restarting (listed lately): a retry may succeed.
    bool lately = false;
    {
      absl::MutexLock lock(&mu_);
      auto it = served_.find(fingerprint);
      lately = it != served_.end() &&
               it->second >= clock_->Now() - options_.served_memory;
    }
    if (fresh_list && !workers->empty() && !unlisted && !lately &&
        served.count(fingerprint) == 0) {
      return MakeError(
          absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
          absl::StrCat("no worker serves model fingerprint ", fingerprint),
          {{"expected_fingerprint", absl::StrJoin(served, ",")},
           {"actual_fingerprint", fingerprint}});
    }
  }
  if (chosen == nullptr) {
    return NoWorker(
        fingerprint.empty()
            ? "no live worker; retry"
            : absl::StrCat("no live worker serves model fingerprint ",
                           fingerprint, "; retry"));
  }
  return Route{chosen->worker_id, chosen->address, false};
}

absl::Status GatewayRouter::NoWorker(absl::string_view message) const {
  // Typed like the gateway's other "no worker could take it" answer
  // (Gateway::GaveUp).
  return MakeError(
      absl::StatusCode::kUnavailable, Reason::kOverloaded, message,
      {{"retry_after_ms",
        absl::StrCat(std::max<int64_t>(
            1, absl::ToInt64Milliseconds(options_.registry_refresh)))}});
}

absl::StatusOr<Route> GatewayRouter::RouteAny(
    const std::string& hash_key, const std::string& fingerprint,
    const std::set<std::string>& exclude) {
  return Pick(hash_key, fingerprint, exclude, true);
}

GatewayRouter::~GatewayRouter() { AwaitBackgroundReads(); }

void GatewayRouter::AwaitBackgroundReads() {
  absl::MutexLock lock(&threads_mu_);
  if (prober_.joinable()) prober_.join();
  if (refresher_.joinable()) refresher_.join();
}

GatewayRouter::Lookup GatewayRouter::HowToLookUp(const std::string& hash_key,
                                                 Seen* seen) {
  absl::MutexLock lock(&mu_);
  if (lookups_resume_ == absl::InfinitePast()) return Lookup::kRead;
  // Paused, but nothing remembered: ask the store (and wait for it), as
  // hashing would hand the session to a worker that takes it over from its
  // owner, which a brief outage does not justify.
  auto it = seen_.find(hash_key);
  if (it == seen_.end()) return Lookup::kRead;
  *seen = it->second;
  if (probing_ || clock_->Now() < lookups_resume_) return Lookup::kRemembered;
  probing_ = true;
  return Lookup::kProbe;
}

void GatewayRouter::Looked(const std::string& hash_key,
                           const absl::StatusOr<SessionHead>& head,
                           bool probe) {
  absl::MutexLock lock(&mu_);
  if (probe) probing_ = false;
  if (head.status().code() == absl::StatusCode::kUnavailable) {
    lookups_resume_ = clock_->Now() + options_.lookup_pause;
    return;
  }
  lookups_resume_ = absl::InfinitePast();
  if (!head.ok() || head->owner.empty()) {
    seen_.erase(hash_key);
    return;
  }
  auto it = seen_.find(hash_key);
  if (it != seen_.end()) {
    it->second = Seen{head->owner, head->model_fingerprint};
    return;
  }
  // Full: one arbitrary entry makes room (the busy sessions come back).
  if (seen_.size() >= options_.max_remembered_owners && !seen_.empty()) {
    seen_.erase(seen_.begin());
  }
  seen_.emplace(hash_key, Seen{head->owner, head->model_fingerprint});
}

absl::StatusOr<Route> GatewayRouter::RouteSession(
    const SessionKey& key, const std::set<std::string>& exclude, bool any_model,
    const std::string& fingerprint_hint) {
  const std::string hash_key = absl::StrCat(key.tenant, "/", key.session_id);
  std::string fingerprint, owner;
  bool remembered = false;
  if (store_ != nullptr) {
    // One read gives both the live lease holder and the model. Errors
    // (missing session, store down) fall back to the owner last seen, else
    // to hashing: the worker then answers with the proper error.
    Seen seen;
    switch (HowToLookUp(hash_key, &seen)) {
      case Lookup::kRead: {
        absl::StatusOr<SessionHead> head = store_->GetHead(key);
        Looked(hash_key, head, /*probe=*/false);
        if (head.ok()) {
          fingerprint = head->model_fingerprint;
          owner = head->owner;
        } else if (head.status().code() == absl::StatusCode::kUnavailable) {
          absl::MutexLock lock(&mu_);
          auto it = seen_.find(hash_key);
          if (it != seen_.end()) {
            seen = it->second;
            remembered = true;
          }
        }
        break;
      }
      case Lookup::kProbe:
        InBackground(&prober_, [this, key, hash_key] {
          Looked(hash_key, store_->GetHead(key), /*probe=*/true);
        });
        remembered = true;
        break;
      case Lookup::kRemembered:
        remembered = true;
        break;
    }
    if (remembered) {
      owner = seen.owner;
      fingerprint = seen.fingerprint;
      if (exclude.count(owner) != 0) {
        // It failed this call (e.g. FENCED: the session moved meanwhile):
        // forget it, so the next calls hash instead of trying it again.
        absl::MutexLock lock(&mu_);
        auto it = seen_.find(hash_key);
        if (it != seen_.end() && it->second.owner == owner) seen_.erase(it);
      }
    }
    if (!owner.empty() && exclude.count(owner) == 0) {
      // Fresh or not as Workers() hands the list out: its background read
      // may finish before the owner is judged, on the old copy.
      const bool fresh = WorkersFresh();
      auto workers = Workers();
      if (workers.ok() && !IsSuspect(owner)) {
        for (const WorkerInfo& w : *workers) {
          // Not an owner that no longer serves the session's model (it
          // restarted with others under its id, the lease still live): it
          // would answer MODEL_MISMATCH, which moves no call. Judged on a
          // list read within a refresh only: an older one (an idle
          // gateway's, being read again) may predate a restart that added
          // the model, and passing a live owner over would have another
          // worker take the session from it.
          if (w.worker_id == owner && (Serves(w, fingerprint) || !fresh)) {
            return Route{w.worker_id, w.address, true, remembered};
          }
        }
      }
    }
  }
  const bool hinted = fingerprint.empty() && !fingerprint_hint.empty();
  if (hinted) fingerprint = fingerprint_hint;
  absl::StatusOr<Route> route = Pick(hash_key, fingerprint, exclude, hinted);
  if (!route.ok() && any_model && !fingerprint.empty() &&
      absl::IsUnavailable(route.status())) {
    // Its model's workers are gone (retired, or all failed this call):
    // the session can still be read, exported and deleted elsewhere.
    return Pick(hash_key, "", exclude, false);
  }
  return route;
}

}  // namespace statestream
