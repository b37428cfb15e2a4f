// SPDX-License-Identifier: Apache-2.0
// Options of the C++ client: where and how to connect (ClientOptions), and
// per-operation deadlines and cancellation (CallOptions, Cancellation).
#ifndef STATESTREAM_SDK_CPP_STATESTREAM_OPTIONS_H_
#define STATESTREAM_SDK_CPP_STATESTREAM_OPTIONS_H_

#include <condition_variable>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace statestream::client {

// The least ClientOptions::max_receive_message_bytes (gRPC's own default):
// below it, listings and exports, whose messages reach 2 MiB, would fail.
inline constexpr int kMinReceiveMessageBytes = 4 << 20;

struct ClientOptions {
  // Gateways (or `statestream serve` addresses), "host:port". Calls start on
  // the first and move to the next after a failure that may be the
  // target's fault (BlamesTarget below), retried or not. Required.
  std::vector<std::string> targets;
  // Sent as `authorization: Bearer <api_key>`; empty: none.
  std::string api_key;
  // Sent as `x-statestream-tenant` (development-mode servers only); empty:
  // none.
  std::string tenant;
  // TLS: off by default (plaintext). With `tls`, PEM contents (not paths);
  // empty root certs: the system roots. Any of the four below set without
  // `tls` is INVALID_ARGUMENT from Client::Create.
  bool tls = false;
  std::string tls_root_certs_pem;
  std::string tls_cert_chain_pem;   // client certificate (mTLS), optional
  std::string tls_private_key_pem;  // its key
  std::string tls_server_name;      // overrides the name checked; optional
  // Deadline of each attempt of a unary call (positive; InfiniteDuration:
  // none). An ExportState or ImportState
  // attempt may take as long as its state and the link need, but ends once
  // it goes this long without a message (1 MiB chunks) sent or received,
  // and an import attempt within this much per chunk, plus two.
  // Append and Generate streams have none unless CallOptions gives one;
  // their connection waits are gRPC's.
  absl::Duration timeout = absl::Seconds(60);
  // Attempts per operation before giving up (>= 1; Client::Create refuses
  // less, a timeout of 0 or less, a negative backoff, an infinite
  // initial_backoff), counted from the last
  // progress: an Append or Generate that made progress starts counting
  // again.
  int max_attempts = 10;
  // Backoff before retry n (1-based): min(initial_backoff * 2^(n-1),
  // max_backoff), with +-20% jitter, and at least the server's
  // retry_after_ms hint (OVERLOADED) when it gives one. An error that is
  // not retried, or the last one when attempts run out or the deadline
  // would pass, is returned with its code, Reason and metadata.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  // Largest message received, bytes (the server's default limit is 8 MiB;
  // -1: unlimited; less than kMinReceiveMessageBytes is INVALID_ARGUMENT at
  // Client::Create; a Score with top_logprobs can answer up to ~6 MB, which
  // needs the default). Messages sent may be up to the larger of this and
  // 8 MiB.
  int max_receive_message_bytes = 8 << 20;
  // Extra integer channel arguments (GRPC_ARG_*), e.g. HTTP/2 window tuning;
  // they override the SDK's own: keepalive pings every 20 s while a call is
  // open, failing a connection silent for 10 s more
  // (GRPC_ARG_KEEPALIVE_TIME_MS / GRPC_ARG_KEEPALIVE_TIMEOUT_MS).
  std::vector<std::pair<std::string, int>> channel_args;
};

// Cancels the calls it is given to, from any thread. Once cancelled, every
// operation using it fails with CANCELLED and is not retried.
class Cancellation {
 public:
  void Cancel();
  bool cancelled() const;
  // Waits up to `timeout` for Cancel(); true once cancelled.
  bool WaitForCancel(absl::Duration timeout) const;

 private:
  friend class CallScope;
  // Returns false if already cancelled.
  bool Register(grpc::ClientContext* ctx);
  void Unregister(grpc::ClientContext* ctx);
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // Told when cancelled_ is set: WaitForCancel waits on the steady clock.
  mutable std::condition_variable_any cancelled_cv_;
  std::vector<grpc::ClientContext*> contexts_ ABSL_GUARDED_BY(mu_);
};

// Per-operation options.
struct CallOptions {
  // Absolute deadline for the whole operation, all retries included;
  // InfiniteFuture: only the per-attempt ClientOptions::timeout of unary
  // calls.
  absl::Time deadline = absl::InfiniteFuture();
  // Not owned. Null: not cancellable. Must outlive the operation, and for
  // an AppendWriter or a GenerateStream opened with it, the writer or
  // stream itself: their open call stays registered with it between
  // operations (and their destructor unregisters it).
  Cancellation* cancellation = nullptr;
};

// True for failures after which the same request may be resent. False for
// CallerCancelled (a CANCELLED from the service, e.g. a worker shutting
// down, stays retryable).
bool IsRetryable(const absl::Status& status);
// The CANCELLED an operation ends with once its caller's own
// Cancellation::Cancel() was called, and whether `status` is one: a retry
// loop built on IsRetryable stops there.
absl::Status CallerCancelled();
bool IsCallerCancelled(const absl::Status& status);
// Whether `status` may be the target's fault (a transport failure, a
// gateway overloaded or misconfigured, INTERNAL), so the client moves to
// its next target. A typed answer about the request or the session
// (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT,
// OUT_OF_RANGE, ABORTED/SESSION_BUSY, RESOURCE_EXHAUSTED other than
// OVERLOADED) would be the same anywhere: the client stays. A
// DEADLINE_EXCEEDED moves it (a target that never answers looks so), and
// so does UNAUTHENTICATED (a gateway that has not loaded a rotated key
// yet).
bool BlamesTarget(const absl::Status& status);
// A fresh request id (random, 32 hex digits).
std::string NewRequestId();

}  // namespace statestream::client

#endif  // STATESTREAM_SDK_CPP_STATESTREAM_OPTIONS_H_
