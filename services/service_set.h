// SPDX-License-Identifier: Apache-2.0
// The gRPC services one server role registers, owned together so a role's
// wiring (cli/) can build them and hand them to a Server in one piece.
#ifndef STATESTREAM_SERVICES_SERVICE_SET_H_
#define STATESTREAM_SERVICES_SERVICE_SET_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace grpc {
class Service;
}  // namespace grpc

namespace statestream {

// Move-only. Not thread-safe; built before the server starts.
class ServiceSet {
 public:
  ServiceSet();
  ~ServiceSet();
  ServiceSet(ServiceSet&&);
  ServiceSet& operator=(ServiceSet&&);

  // Adds `service` under its full name (e.g. "statestream.v1.Sessions", from
  // the generated `Service::service_full_name()`); health checks report the
  // name SERVING while the server runs.
  void Add(std::string full_name, std::unique_ptr<grpc::Service> service);

  // Keeps `resource` (e.g. what the services point into) alive until after
  // every service is destroyed; resources are destroyed in reverse order of
  // Own() calls, after the services.
  void Own(std::shared_ptr<void> resource);

  // Adds `hook` to what Interrupt() runs: something that makes the work
  // the services block on (a store's network I/O) fail at once. Hooks must
  // be thread-safe and idempotent.
  void OnInterrupt(std::function<void()> hook);
  // Runs the hooks, in the order added; the server calls it when the
  // shutdown grace is over, as it cancels the calls still running, so that
  // none of them waits out a hung backend. Thread-safe once built.
  void Interrupt() const;

  // In the order added.
  const std::vector<std::string>& names() const { return names_; }
  // Parallel to names(); owned by this set.
  std::vector<grpc::Service*> services() const;

 private:
  std::vector<std::string> names_;
  // Declared before services_ so that it is destroyed after them.
  std::vector<std::shared_ptr<void>> resources_;
  std::vector<std::unique_ptr<grpc::Service>> services_;
  std::vector<std::function<void()>> interrupt_hooks_;
};

// The public statestream.v1 services (Sessions, Streams, Models) with every
// rpc answering UNIMPLEMENTED: the scaffolding that the worker and gateway
// implementations replace.
ServiceSet UnimplementedPublicApi();

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_SERVICE_SET_H_
