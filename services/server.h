// SPDX-License-Identifier: Apache-2.0
// A running gRPC server for one role (serve, gateway, worker): binds the
// listen address, registers the role's services plus the standard
// grpc.health.v1.Health and server reflection, and shuts down on request.
#ifndef STATESTREAM_SERVICES_SERVER_H_
#define STATESTREAM_SERVICES_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "services/service_set.h"
#include "services/tls.h"

namespace grpc {
class HealthCheckServiceInterface;
class Server;
}  // namespace grpc

namespace statestream {

struct ServerOptions {
  // HOST:PORT to listen on. HOST is an IPv4 address, a bracketed IPv6
  // address ("[::1]") or a name; PORT 0 picks a free port.
  std::string listen = "127.0.0.1:7700";
  // Largest message received, in bytes (gRPC's default is 4 MiB). 8 MiB
  // leaves room for the API's largest fields (1 MiB text chunks, 1 MiB
  // state chunks) with margin; larger messages fail with RESOURCE_EXHAUSTED.
  int max_receive_message_bytes = 8 << 20;
  // Largest message sent, in bytes.
  int max_send_message_bytes = 8 << 20;
  // Readiness probe (e.g. "the state store answers"); empty: always ready.
  // Called once before Start returns, then every `readiness_interval` on a
  // thread of the server until StopServing: while it returns false, every
  // grpc.health.v1 status is NOT_SERVING; SERVING again once it returns
  // true. Must be thread-safe; it may block (about an interval at most).
  std::function<bool()> readiness;
  absl::Duration readiness_interval = absl::Seconds(1);
  // TLS (optionally mutual) on the listening port; default plaintext.
  ServerTlsOptions tls;
  // HOST:PORT of a second, plaintext port that serves only grpc.health.v1
  // with the same statuses, for probes that cannot speak (mutual) TLS, such
  // as Kubernetes' native gRPC probes. Empty: none.
  std::string health_listen;
  // After about this long (gRPC jitters it by +-10 %) a client connection
  // is told to go away (HTTP/2 GOAWAY): calls open on it go on to their
  // end, the client's next calls open a new connection. Behind a
  // connection-balancing Service, clients thus spread over gateways added
  // since they connected. Zero: never.
  absl::Duration max_connection_age = absl::ZeroDuration();
};

// Thread-safe. Serving runs on gRPC's threads; the owner only starts and
// stops it.
class Server {
 public:
  // Binds and starts serving `services` (plus health and reflection).
  // INVALID_ARGUMENT for a malformed listen address or bad TLS material
  // (ValidateServerTls); UNAVAILABLE if it
  // cannot be bound (e.g. the port is taken: port sharing is disabled).
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options, ServiceSet services);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  // Shuts down at once if Shutdown has not been called.
  ~Server();

  // "HOST:PORT" with the port actually bound.
  const std::string& address() const { return address_; }
  // The health-only port's "HOST:PORT" ("" without health_listen).
  const std::string& health_address() const { return health_address_; }

  // Marks every health status NOT_SERVING for good and stops the readiness
  // probe: the first step of Shutdown, for a role that drains its own work
  // before calling it. Calls are still served. Idempotent.
  void StopServing();

  // Drains and stops: StopServing (so load balancers stop sending calls),
  // waits up to `grace` for the calls in flight to finish (new calls are
  // still served meanwhile), then cancels whatever is left (running the
  // services' interrupt hooks, ServiceSet::OnInterrupt), closes all
  // connections and returns. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  class InFlightCalls;
  class ReadinessPoller;

  Server(std::string address, ServiceSet services,
         std::unique_ptr<InFlightCalls> calls,
         std::unique_ptr<grpc::Server> server);
  // The health services of both ports.
  std::vector<grpc::HealthCheckServiceInterface*> Healths();

  const std::string address_;
  std::string health_address_;
  // Both outlive server_.
  ServiceSet services_;
  std::unique_ptr<InFlightCalls> calls_;
  std::unique_ptr<grpc::Server> server_;
  // A synchronous service on the health port (all UNIMPLEMENTED): without
  // one gRPC does not poll that server, and the default health service
  // needs it. Outlives health_server_.
  std::unique_ptr<grpc::Service> health_placeholder_;
  std::unique_ptr<grpc::Server> health_server_;  // null without health_listen
  std::unique_ptr<ReadinessPoller> readiness_;   // null without a probe
};

// Splits "HOST:PORT" into host and port (0-65535). INVALID_ARGUMENT if
// malformed.
absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(
    absl::string_view address);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_SERVER_H_
