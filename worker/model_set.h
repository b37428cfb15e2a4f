// SPDX-License-Identifier: Apache-2.0
// The models one worker serves, and which of them a call is for. Each model
// has its own SessionManager (and Scheduler); all of them share one
// StateStore. CreateSession goes to the manager of the requested model;
// every call on an existing session goes to the manager of the model the
// session is bound to (the fingerprint its head records since creation).
// A state of one model is never offered to another's manager by mistake,
// and when a client does it on purpose (importing model A's state into a
// session of model B) the manager answers MODEL_MISMATCH.
#ifndef STATESTREAM_WORKER_MODEL_SET_H_
#define STATESTREAM_WORKER_MODEL_SET_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "state_store/state_store.h"
#include "worker/session_manager.h"

namespace statestream::worker {

class Executor;

// Thread-safe.
class ModelSet {
 public:
  // `managers`: one per served model, the default model (the one an empty
  // model_id means) first; model ids and fingerprints must be distinct
  // (INVALID_ARGUMENT otherwise). `store`: the store every manager uses,
  // read to route a session no manager holds; may be null with one manager.
  // Neither is owned; both must outlive the set.
  static absl::StatusOr<std::unique_ptr<ModelSet>> Create(
      std::vector<SessionManager*> managers, StateStore* store);
  ~ModelSet();
  ModelSet(const ModelSet&) = delete;
  ModelSet& operator=(const ModelSet&) = delete;

  // In configuration order; never empty.
  const std::vector<SessionManager*>& managers() const { return managers_; }
  SessionManager& default_manager() const { return *managers_.front(); }
  // The most durable level the managers' (one) store can ever reach.
  Durability max_durability() const {
    return default_manager().max_durability();
  }

  // The manager of `model_id` ("" = the default model).
  // NOT_FOUND/kModelNotFound (metadata model_id).
  absl::StatusOr<SessionManager*> ForModel(const std::string& model_id) const;

  // The manager of the model with this fingerprint; nullptr if none.
  SessionManager* ForFingerprint(const std::string& fingerprint) const;

  // The manager of the session's model. With one model, that one. Else the
  // manager holding the session resident, else the one whose fingerprint
  // the session's head records (one store read, on the caller's thread).
  // When there is no such session, its head is damaged (DATA_LOSS), or it
  // names a model not served here, the default manager: its answer is then
  // the call's error (SESSION_NOT_FOUND, STATE_CORRUPT, MODEL_MISMATCH
  // naming every model served), as on a worker serving one model, and a
  // damaged session can still be deleted. A head read that fails otherwise
  // (the store is down) is the call's error: guessing a manager would
  // answer a session of another model served here MODEL_MISMATCH, which a
  // client must not retry, once the store is back for that manager's own
  // read.
  absl::StatusOr<SessionManager*> ForSession(
      const std::string& tenant, const std::string& session_id) const;

  // ForSession for callers that must not block (gRPC callback threads):
  // `then` runs on the caller's thread when no store read is needed, else
  // on a thread of the set's own after the read. `then` must not block.
  void ForSessionAsync(
      const std::string& tenant, const std::string& session_id,
      std::function<void(absl::StatusOr<SessionManager*>)> then) const;

  // The fingerprints of every model, in configuration order (the worker
  // registry advertises them to gateways).
  std::vector<std::string> fingerprints() const;

  // Drains every manager (SessionManager::Drain), all at once. Idempotent.
  void Drain();

  // Summed over the managers.
  SessionManager::Stats stats() const;

 private:
  ModelSet(std::vector<SessionManager*> managers, StateStore* store);
  // The resident holder, or nullptr when a store read is needed.
  SessionManager* Resident(const std::string& tenant,
                           const std::string& session_id) const;
  absl::StatusOr<SessionManager*> FromHead(const std::string& tenant,
                                           const std::string& session_id) const;

  const std::vector<SessionManager*> managers_;
  StateStore* const store_;
  // Head reads of ForSessionAsync; only with more than one model.
  std::unique_ptr<Executor> lookups_;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_MODEL_SET_H_
