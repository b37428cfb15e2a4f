// SPDX-License-Identifier: Apache-2.0
// ClientStalls: cuts off a worker's streaming calls whose client stopped
// moving (`statestream serve --client-stall-timeout`), as a gateway does
// its own: a message left unread (Generate, ExportState, an Append ack) or
// an import left unsent holds memory, a transfer budget share and a tenant
// stream slot until the client goes away or its deadline passes.
#ifndef STATESTREAM_WORKER_CLIENT_STALLS_H_
#define STATESTREAM_WORKER_CLIENT_STALLS_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "absl/time/time.h"
#include "worker/metrics.h"

namespace statestream::worker {

// Thread-safe. Watches calls from a thread of its own (none when the
// timeout is infinite: a worker behind gateways, whose gateways cut their
// own clients off and whose connections to dead gateways keepalive
// closes). A call that waits on its client longer than the timeout is
// cancelled (the client sees CANCELLED; the reactor's pending operation
// ends not ok, as when the client goes away) and counted in
// statestream_client_stalls_total{method}.
class ClientStalls {
 public:
  // `metrics` may be null, else outlives this.
  ClientStalls(absl::Duration timeout, WorkerMetrics* metrics);
  ~ClientStalls();  // stops the thread; every Call must be gone
  ClientStalls(const ClientStalls&) = delete;
  ClientStalls& operator=(const ClientStalls&) = delete;

  // One call's watch. Waiting and Moved are lock-free (one atomic store)
  // and may be called from any reaction, under the reactor's locks.
  class Call {
   public:
    ~Call();  // no longer watched; before the call's context goes (OnDone)
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

    // The call waits on its client from now (a write or read started):
    // it is cut off unless Moved comes within the timeout.
    void Waiting();
    // The wait is over (the write or read ended).
    void Moved() { since_.store(kIdle, std::memory_order_relaxed); }

   private:
    friend class ClientStalls;
    static constexpr int64_t kIdle = std::numeric_limits<int64_t>::max();
    Call(ClientStalls* owner, grpc::CallbackServerContext* ctx,
         const char* method)
        : owner_(owner), ctx_(ctx), method_(method) {}

    ClientStalls* const owner_;  // null: not watched (no timeout)
    grpc::CallbackServerContext* const ctx_;
    const char* const method_;
    // Steady-clock nanoseconds the current wait began at, or kIdle.
    std::atomic<int64_t> since_{kIdle};
    bool cut_ = false;  // under owner_->mu_
  };

  // Watches `ctx`'s call (method: "Generate", ...; a literal) until the
  // returned Call is destroyed.
  std::unique_ptr<Call> Watch(grpc::CallbackServerContext* ctx,
                              const char* method);

  absl::Duration timeout() const { return timeout_; }

 private:
  static int64_t NowNs();
  void Loop();

  const absl::Duration timeout_;
  WorkerMetrics* const metrics_;
  // std::mutex and std::condition_variable: their timed waits run on the
  // steady clock (Abseil 20220623's follow the wall clock).
  std::mutex mu_;
  std::condition_variable wake_;
  std::set<Call*> calls_;  // under mu_
  bool stopping_ = false;  // under mu_
  std::thread thread_;
};

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_CLIENT_STALLS_H_
