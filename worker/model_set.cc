// SPDX-License-Identifier: Apache-2.0
#include "worker/model_set.h"

#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/executor.h"

namespace statestream::worker {

absl::StatusOr<std::unique_ptr<ModelSet>> ModelSet::Create(
    std::vector<SessionManager*> managers, StateStore* store) {
  if (managers.empty()) {
    return absl::InvalidArgumentError("a worker serves at least one model");
  }
  if (managers.size() > 1 && store == nullptr) {
    return absl::InvalidArgumentError("several models need the shared store");
  }
  std::set<std::string> ids, fingerprints;
  for (const SessionManager* m : managers) {
    if (!ids.insert(m->options().model_id).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "two models have the id \"", m->options().model_id, "\""));
    }
    if (!fingerprints.insert(m->fingerprint()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("model \"", m->options().model_id,
                       "\" is the same model (weights and tokenizer) as "
                       "another one served here"));
    }
  }
  for (SessionManager* m : managers) {
    std::vector<std::string> beside;
    for (const SessionManager* other : managers) {
      if (other != m) beside.push_back(other->fingerprint());
    }
    m->SetServedBeside(std::move(beside));
  }
  return std::unique_ptr<ModelSet>(new ModelSet(std::move(managers), store));
}

ModelSet::ModelSet(std::vector<SessionManager*> managers, StateStore* store)
    : managers_(std::move(managers)), store_(store) {
  if (managers_.size() > 1) lookups_ = std::make_unique<Executor>(2);
}

ModelSet::~ModelSet() = default;

absl::StatusOr<SessionManager*> ModelSet::ForModel(
    const std::string& model_id) const {
  if (model_id.empty()) return managers_.front();
  for (SessionManager* m : managers_) {
    if (m->options().model_id == model_id) return m;
  }
  return MakeError(absl::StatusCode::kNotFound, Reason::kModelNotFound,
                   absl::StrCat("model ", model_id, " is not served here"),
                   {{"model_id", model_id}});
}

SessionManager* ModelSet::ForFingerprint(const std::string& fingerprint) const {
  for (SessionManager* m : managers_) {
    if (m->fingerprint() == fingerprint) return m;
  }
  return nullptr;
}

SessionManager* ModelSet::Resident(const std::string& tenant,
                                   const std::string& session_id) const {
  if (managers_.size() == 1) return managers_.front();
  for (SessionManager* m : managers_) {
    if (m->IsResident(tenant, session_id)) return m;
  }
  return nullptr;
}

absl::StatusOr<SessionManager*> ModelSet::FromHead(
    const std::string& tenant, const std::string& session_id) const {
  absl::StatusOr<SessionHead> head = store_->GetHead({tenant, session_id});
  if (head.ok()) {
    if (SessionManager* m = ForFingerprint(head->model_fingerprint)) return m;
  } else if (!absl::IsNotFound(head.status()) &&
             head.status().code() != absl::StatusCode::kDataLoss) {
    return head.status();  // the store down: another read may answer
  }
  // No such session, a damaged head (the default manager answers
  // STATE_CORRUPT, and still deletes it) or a model not served here.
  return &default_manager();
}

absl::StatusOr<SessionManager*> ModelSet::ForSession(
    const std::string& tenant, const std::string& session_id) const {
  if (SessionManager* m = Resident(tenant, session_id)) return m;
  return FromHead(tenant, session_id);
}

void ModelSet::ForSessionAsync(
    const std::string& tenant, const std::string& session_id,
    std::function<void(absl::StatusOr<SessionManager*>)> then) const {
  if (SessionManager* m = Resident(tenant, session_id)) return then(m);
  lookups_->Post([this, tenant, session_id, then = std::move(then)] {
    then(FromHead(tenant, session_id));
  });
}

std::vector<std::string> ModelSet::fingerprints() const {
  std::vector<std::string> out;
  for (const SessionManager* m : managers_) out.push_back(m->fingerprint());
  return out;
}

void ModelSet::Drain() {
  // Each drain waits for its running operations and commits; in parallel,
  // the slowest model sets the time a shutdown takes, not their sum.
  std::vector<std::thread> others;
  for (size_t i = 1; i < managers_.size(); ++i) {
    others.emplace_back([m = managers_[i]] { m->Drain(); });
  }
  managers_.front()->Drain();
  for (std::thread& t : others) t.join();
}

SessionManager::Stats ModelSet::stats() const {
  SessionManager::Stats sum;
  for (const SessionManager* m : managers_) {
    const SessionManager::Stats s = m->stats();
    sum.resident += s.resident;
    sum.active += s.active;
    sum.resident_bytes += s.resident_bytes;
    sum.loads += s.loads;
    sum.evictions += s.evictions;
    sum.commits += s.commits;
    sum.fenced += s.fenced;
    sum.drain_commit_failures += s.drain_commit_failures;
  }
  return sum;
}

}  // namespace statestream::worker
