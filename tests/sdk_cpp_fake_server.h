// SPDX-License-Identifier: Apache-2.0
// A fake server for the C++ SDK's tests: a gRPC service of the test's own
// on a free loopback port, and a client of it (sdk_cpp_fake_server_test.cc,
// sdk_cpp_fake_retry_test.cc).
#ifndef STATESTREAM_TESTS_SDK_CPP_FAKE_SERVER_H_
#define STATESTREAM_TESTS_SDK_CPP_FAKE_SERVER_H_

#include <grpcpp/server_builder.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "statestream/client.h"

namespace statestream::sdk_test {

// A fake server (a gRPC service of the test's) on a free loopback port, and
// a client of it; the client goes first.
struct FakeServer {
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<client::Client> client;
  ~FakeServer() {
    client.reset();
    if (server != nullptr) server->Shutdown();
  }
};

// A server of `service` on a free loopback port, its "host:port" in
// `address`; null if it did not start.
inline std::unique_ptr<grpc::Server> Listen(grpc::Service* service,
                                            std::string* address) {
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  *address = absl::StrCat("127.0.0.1:", port);
  return server;
}

// Serves `service` into `out`; its client retries after 1 ms at first, at
// most `max_attempts` times (0: the default), with `more_targets` after the
// service's address.
inline void Serve(grpc::Service* service, FakeServer* out, int max_attempts = 0,
                  const std::vector<std::string>& more_targets = {}) {
  std::string address;
  out->server = Listen(service, &address);
  ASSERT_NE(out->server, nullptr);
  client::ClientOptions options;
  options.targets = {address};
  options.targets.insert(options.targets.end(), more_targets.begin(),
                         more_targets.end());
  if (max_attempts > 0) options.max_attempts = max_attempts;
  options.initial_backoff = absl::Milliseconds(1);
  auto c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  out->client = std::move(*c);
}

}  // namespace statestream::sdk_test

#endif  // STATESTREAM_TESTS_SDK_CPP_FAKE_SERVER_H_
