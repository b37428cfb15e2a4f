// SPDX-License-Identifier: Apache-2.0
#include "worker/client_stalls.h"

#include <algorithm>
#include <chrono>

namespace statestream::worker {

ClientStalls::ClientStalls(absl::Duration timeout, WorkerMetrics* metrics)
    : timeout_(timeout), metrics_(metrics) {
  if (timeout_ != absl::InfiniteDuration()) {
    thread_ = std::thread([this] { Loop(); });
  }
}

ClientStalls::~ClientStalls() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<ClientStalls::Call> ClientStalls::Watch(
    grpc::CallbackServerContext* ctx, const char* method) {
  const bool watched = thread_.joinable();
  std::unique_ptr<Call> call(new Call(watched ? this : nullptr, ctx, method));
  if (watched) {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.insert(call.get());
  }
  return call;
}

ClientStalls::Call::~Call() {
  if (owner_ == nullptr) return;
  std::lock_guard<std::mutex> lock(owner_->mu_);
  owner_->calls_.erase(this);
}

void ClientStalls::Call::Waiting() {
  since_.store(NowNs(), std::memory_order_relaxed);
}

int64_t ClientStalls::NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void ClientStalls::Loop() {
  const int64_t timeout_ns = absl::ToInt64Nanoseconds(timeout_);
  // A cut-off comes at most a tenth of the timeout (100 ms at most) late.
  const auto interval = std::chrono::nanoseconds(std::clamp<int64_t>(
      timeout_ns / 10, int64_t{1000000}, int64_t{100000000}));
  std::unique_lock<std::mutex> lock(mu_);
  while (!wake_.wait_for(lock, interval, [this] { return stopping_; })) {
    const int64_t now = NowNs();
    for (Call* call : calls_) {
      int64_t since = call->since_.load(std::memory_order_relaxed);
      if (call->cut_ || since == Call::kIdle || now - since <= timeout_ns) {
        continue;
      }
      // Not a call that moved since the load (a write that ended just now
      // is not cut off): the wait is claimed only if still the same.
      if (!call->since_.compare_exchange_strong(since, Call::kIdle,
                                                std::memory_order_relaxed)) {
        continue;
      }
      // Under mu_, so the call (and its context) cannot go meanwhile: its
      // Call is destroyed in OnDone, which gRPC runs on its own threads,
      // never inside TryCancel. The pending write or read ends not ok.
      call->cut_ = true;
      if (metrics_ != nullptr) metrics_->IncClientStall(call->method_);
      call->ctx_->TryCancel();
    }
  }
}

}  // namespace statestream::worker
