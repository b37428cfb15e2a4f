// SPDX-License-Identifier: Apache-2.0
// The gateway role: serves the public API (statestream.v1 Sessions,
// Streams, Models) by forwarding every call to a worker, holding no session
// state of its own. Routing: services/gateway_router.h. Tenants:
// services/tenants.h. Documentation: docs/gateway.md.
//
// Forwarding. Each call is authenticated (tenant), routed, and sent to the
// worker with the caller's deadline and cancellation (gRPC propagation) and
// the metadata x-statestream-tenant, x-statestream-forwarded-by and
// x-statestream-attempt. Responses and errors (with their ErrorInfo) come
// back unchanged.
//
// Failover. A worker that fails at the transport level (connection refused
// or reset: UNAVAILABLE without ErrorInfo), cancels a call the client did
// not cancel (it shut down), says it is draining, fences the call
// (ABORTED/FENCED: another worker took the session), or stalls (Append:
// no ack for upstream_stall_timeout while requests are outstanding; every
// call: its connection leaves pings unanswered that long; a worker that
// answers pings but never the call holds the other calls to their
// deadlines) is marked suspect (except for FENCED: the worker is fine,
// only that session moved) and the call moves to the next worker:
//   * unary calls and ExportState (before its first message) are resent;
//   * Append keeps every request not yet covered by a reported
//     committed_input_offset (bounded: past append_buffer_bytes the next
//     request is forwarded with checkpoint=true, and reading from the client
//     pauses until a commit frees room) and replays them on the new owner
//     at their original offsets; what was applied twice comes back as a
//     duplicate and is dropped, acks already sent are not sent again;
//   * Generate is re-issued unchanged (same request_id and seed, so the same
//     tokens); output already delivered is checked token by token and byte
//     by byte and skipped. If the new output differs (the session moved:
//     uncommitted input was lost with the worker, or another backend), the
//     call ends with UNAVAILABLE and metadata diverged_at /
//     delivered_tokens instead of splicing two continuations.
// Other errors end the call as the worker sent them.
//
// Models. CreateSession with a model_id goes to a worker serving that model
// (NOT_FOUND/MODEL_NOT_FOUND when no ready worker does); with fork_from and
// no model_id, where the source session lives. ListModels and GetModel are
// answered from the models of all ready workers (ListModels on each, cached
// per worker), merged by (model_id, fingerprint): `workers` counts them,
// `backends` is the union.
#ifndef STATESTREAM_SERVICES_GATEWAY_H_
#define STATESTREAM_SERVICES_GATEWAY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/gateway_metrics.h"
#include "services/gateway_router.h"
#include "services/service_set.h"
#include "services/tenants.h"
#include "services/tls.h"
#include "state_store/state_store.h"

namespace statestream {

struct GatewayOptions {
  // Sent as x-statestream-forwarded-by.
  std::string gateway_id = "gateway";
  GatewayRouterOptions router;
  // API keys; default: development mode.
  TenantAuth auth;
  // Per-tenant session and stream limits (shared by the copies of these
  // options); null: none.
  std::shared_ptr<TenantLimits> limits;
  // TLS towards workers (mutual with a client certificate); default
  // plaintext.
  ClientTlsOptions worker_tls;
  // Shown to workers on every call (x-statestream-internal-token); workers
  // started with the same token refuse callers without it. Default: none.
  InternalToken internal_token;
  // A worker that answers nothing this long while requests are outstanding
  // is treated as failed (paused, partitioned). Only speed depends on it:
  // moving a session that was merely slow is safe (fencing).
  absl::Duration upstream_stall_timeout = absl::Seconds(10);
  // An Append's worker gets this much longer per input unit (token or text
  // byte) of the oldest request in flight before its silence is a stall: a
  // request is acked only once it has all gone through the model. Liveness
  // meanwhile comes from the connection's pings.
  absl::Duration upstream_stall_per_unit = absl::Milliseconds(100);
  // A client that holds the gateway's buffers and does not move for this
  // long is cut off (CANCELLED): an Append whose client leaves an ack
  // unread (its replay log cannot be trimmed meanwhile), an import whose
  // client sends nothing more. Otherwise a few idle streams would hold
  // max_buffered_bytes, and every other tenant's Append and import with it.
  // An export or Generate client that leaves a message unread too (the
  // worker's stream, and an export's blob in its transfer budget, wait).
  absl::Duration client_stall_timeout = absl::Seconds(60);
  // An Append stream with nothing in flight whose log holds requests not
  // known committed asks its worker (GetSession) after this long idle
  // what the session has committed (again after twice as long each time
  // that trims nothing; not until the stream moves when asking cannot
  // help): a worker commits idle input on its own (its
  // --checkpoint-interval) and acks only requests, so the log of a stream
  // that went quiet was never trimmed. InfiniteDuration: never.
  absl::Duration append_idle_probe = absl::Seconds(15);
  // Calls served at once, streams included (a call holds a thread only
  // while it routes or fails over, not while it waits on a worker or its
  // client); more are RESOURCE_EXHAUSTED/OVERLOADED with retry_after_ms, as
  // is a call when no thread can be made.
  int max_calls = 4096;
  // Threads for the steps of calls that may block (routing, stream slots,
  // a failover's wait): started on demand up to this many, kept 2 s when
  // idle; beyond it the steps queue (a burst of failovers, e.g. a worker
  // with thousands of streams gone, then waits its turn instead of
  // needing a thread per stream).
  int max_task_threads = 256;
  // Workers tried per call (first attempt included); one that could not
  // be connected to costs none (see docs/gateway.md, Failover).
  int max_attempts = 5;
  // Bytes of Append requests kept for replay per call (see above).
  int64_t append_buffer_bytes = int64_t{64} << 20;
  // Bytes all calls together keep in memory: Append requests kept for
  // replay and imports read whole. Past it each Append reads one request
  // at a time, sent with checkpoint=true, and the next once that is acked
  // (its commit has emptied the log): every stream moves, a commit per
  // request, and the buffers stay within this plus two requests per
  // Append. An import is RESOURCE_EXHAUSTED/OVERLOADED with retry_after_ms
  // before a chunk is read, unless nothing else is held.
  int64_t max_buffered_bytes = int64_t{512} << 20;
  // Most state bytes one ImportState may stream (kept whole for a replay on
  // failover); the header's total_bytes bounds each call first, and a
  // header announcing more is refused before a chunk is read. Keep it
  // within max_buffered_bytes. (A 14B model's state is ~80 MB.)
  int64_t max_import_bytes = int64_t{256} << 20;
  // Message size limits towards workers, bytes.
  int max_message_bytes = 8 << 20;
  // The workers' request-id window (their --request-id-window): at the
  // tenant session limit, a generated-id create whose derived session is
  // younger is a retry of a create that succeeded.
  absl::Duration request_id_window = absl::Hours(1);
  // A connection to a worker address that no call used this long is closed
  // (worker addresses churn: a rescheduled pod comes back on another IP).
  absl::Duration idle_channel_timeout = absl::Minutes(10);
  // How long a worker may take to answer ListModels (asked once per worker
  // for model routing and the aggregated Models service).
  absl::Duration models_timeout = absl::Seconds(2);
  // Where the gateway counts (docs/gateway.md lists the series). Not owned;
  // must outlive the services. nullptr: counted, never shown.
  GatewayMetrics* metrics = nullptr;
};

// The three public services. `store` (registry and leases) may be null when
// options.router.static_workers is not empty; the set keeps it, and its
// server's shutdown interrupts it for good once the grace is over
// (StateStore::Interrupt): do not share it with a role that must write on.
// Threads: one per call in flight other than Append and Generate (those
// hold one only while they route or fail over), all joined before the set
// is destroyed.
absl::StatusOr<ServiceSet> GatewayServices(const GatewayOptions& options,
                                           std::shared_ptr<StateStore> store);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_GATEWAY_H_
