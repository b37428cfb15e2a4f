// SPDX-License-Identifier: Apache-2.0
// What the Streams service's reactors share (streams_service.cc,
// append_reactor.cc, generate_reactor.cc). Not part of the public interface.
#ifndef STATESTREAM_WORKER_STREAMS_INTERNAL_H_
#define STATESTREAM_WORKER_STREAMS_INTERNAL_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "services/request_checks.h"  // BadField
#include "services/tenants.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/client_stalls.h"
#include "worker/executor.h"
#include "worker/model_set.h"
#include "worker/worker_service.h"

namespace statestream::worker::streams_internal {

// INVALID_TOKEN for an id beyond int32, which no vocabulary holds (smaller
// ones are checked against the model's vocabulary downstream), reported as
// sent.
absl::Status WideToken(uint32_t id, absl::string_view field);

// The ids of `t`, or WideToken for the first beyond int32.
absl::StatusOr<std::vector<int32_t>> Ids(const v1::Tokens& t,
                                         absl::string_view field);

// Outlives the reactor, so late "superseded" notifications are harmless.
template <typename R>
struct Link {
  absl::Mutex mu;
  R* reactor ABSL_GUARDED_BY(mu) = nullptr;
};

// Holds a reactor's mu_; on release calls Finish if the locked section
// decided to finish. Finish must not be called under mu_: OnDone (which
// deletes the reactor, mutex included) may run at once on another thread.
// Nothing may touch the reactor after a Locked that finished it.
template <typename R>
class Locked {
 public:
  explicit Locked(R* r) ABSL_NO_THREAD_SAFETY_ANALYSIS : r_(r) {
    r_->mu_.Lock();
  }
  ~Locked() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::optional<grpc::Status> finish = std::move(r_->finish_now_);
    r_->finish_now_.reset();
    R* r = r_;
    r->mu_.Unlock();
    if (finish) r->Finish(*finish);
  }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  R* r_;
};

// The reactors of Streams.Append and Streams.Generate; each deletes itself
// in OnDone.
// The calls that keep a caller's credentials open (Append streams), told
// when the API keys change (serve rereads --api-keys): a call whose key was
// revoked then ends, idle or not, within kInterval. Thread-safe.
class KeyWatchers {
 public:
  // Watches `auth` (which outlives this) from a thread of its own, none in
  // development mode (no keys: nothing can be revoked).
  explicit KeyWatchers(const TenantAuth* auth);
  ~KeyWatchers();  // stops the thread
  KeyWatchers(const KeyWatchers&) = delete;
  KeyWatchers& operator=(const KeyWatchers&) = delete;

  // `changed` runs on the watcher's thread after each change, outside any
  // lock of this, from Add until Remove(id) — and may run once more just
  // after Remove returns: it must hold its call weakly.
  uint64_t Add(std::function<void()> changed);
  void Remove(uint64_t id);

  static constexpr absl::Duration kInterval = absl::Milliseconds(100);

 private:
  void Loop();

  const TenantAuth* const auth_;
  absl::Mutex mu_;
  std::map<uint64_t, std::function<void()>> watchers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  SteadyWaiter wake_;  // told when stopping_ is set
  std::thread thread_;
};

grpc::ServerBidiReactor<v1::AppendRequest, v1::AppendResponse>*
NewAppendReactor(ModelSet* models, const CallerPolicy* policy, Executor* pool,
                 KeyWatchers* keys, ClientStalls* stalls,
                 grpc::CallbackServerContext* ctx);
grpc::ServerWriteReactor<v1::GenerateResponse>* NewGenerateReactor(
    ModelSet* models, const CallerPolicy* policy, ClientStalls* stalls,
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req);

}  // namespace statestream::worker::streams_internal

#endif  // STATESTREAM_WORKER_STREAMS_INTERNAL_H_
