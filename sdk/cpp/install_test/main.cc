// SPDX-License-Identifier: Apache-2.0
// Usage: consumer HOST:PORT — creates a session, appends, prints its
// input_offset. Exits 1 on any error.
#include <iostream>

#include "common/status.h"
#include "statestream/client.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  statestream::client::ClientOptions options;
  options.targets = {argv[1]};
  auto client = statestream::client::Client::Create(options);
  if (!client.ok()) return 1;
  statestream::v1::CreateSessionRequest req;
  auto created = (*client)->CreateSession(req);
  if (!created.ok()) {
    std::cerr << created.status() << " "
              << statestream::ReasonName(
                     statestream::GetReason(created.status()))
              << "\n";
    return 1;
  }
  auto ack = (*client)->OpenSession(created->session_id()).AppendText("hello");
  if (!ack.ok()) return 1;
  std::cout << ack->committed_input_offset() << "\n";
  return 0;
}
