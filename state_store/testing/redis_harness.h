// SPDX-License-Identifier: Apache-2.0
// Real redis-server processes for tests: one server, or a 6-node Cluster
// (3 primaries, 3 replicas), on free loopback ports, in a temporary
// directory that is removed on destruction. Needs redis-server and
// redis-cli on PATH. Not thread-safe; one object per test (or suite).
#ifndef STATESTREAM_STATE_STORE_TESTING_REDIS_HARNESS_H_
#define STATESTREAM_STATE_STORE_TESTING_REDIS_HARNESS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace statestream::testing {

struct RedisServerOptions {
  // Extra redis-server arguments, e.g. {"--appendonly", "yes"}.
  std::vector<std::string> args;
  // 0 = pick a free port.
  int port = 0;
  // Data directory; "" = a fresh temporary one (removed with the server).
  std::string dir;
};

class RedisServer {
 public:
  // Starts redis-server and waits until it answers PING.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(
      RedisServerOptions options);
  ~RedisServer();  // kills the server, removes its temporary directory
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:port"
  const std::string& dir() const { return dir_; }

  // SIGKILL, and wait for the process to go.
  void Kill();
  // SIGSTOP / SIGCONT.
  void Pause();
  void Resume();
  // Starts it again on the same port and directory (after Kill).
  absl::Status Restart();
  // Runs one command (redis-cli style words) and returns the reply as text
  // (arrays joined by newlines). Errors are returned as INTERNAL.
  absl::StatusOr<std::string> Command(const std::vector<std::string>& argv,
                                      const std::string& password = "");

 private:
  RedisServer() = default;
  absl::Status Spawn();

  RedisServerOptions options_;
  int port_ = 0;
  std::string dir_;
  bool own_dir_ = false;
  pid_t pid_ = -1;
};

class RedisCluster {
 public:
  // Six nodes, --cluster-replicas 1, each with `args` too (e.g.
  // {"--appendonly", "yes"}); waits for cluster_state:ok.
  static absl::StatusOr<std::unique_ptr<RedisCluster>> Start(
      const std::vector<std::string>& args = {});
  ~RedisCluster();

  std::vector<std::string> addresses() const;
  RedisServer* node(int i) { return nodes_[i].get(); }
  int size() const { return static_cast<int>(nodes_.size()); }
  // Moves `slot` from its primary to another primary with MIGRATE, the way
  // redis-cli --cluster reshard does (keys then answer MOVED there). The
  // keys `first` move first; `after_first` (if set) runs then, while the
  // slot is half moved.
  absl::Status MoveSlot(int slot, const std::vector<std::string>& first = {},
                        const std::function<void()>& after_first = nullptr);

 private:
  std::vector<std::unique_ptr<RedisServer>> nodes_;
};

// A free loopback port below the kernel's ephemeral range (with port +
// `neighbour` free too, if not 0: a Cluster node's bus), for a server a
// test kills and restarts on the same port: no outgoing connection takes
// it in between, as one may take a port bind(0) picked. Falls back to such
// a port when the range leaves no room below it. 0 if none was found.
int StablePort(int neighbour = 0);

// Runs a command line, returns its exit status and output.
absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv,
                                       int* exit_code);

}  // namespace statestream::testing

#endif  // STATESTREAM_STATE_STORE_TESTING_REDIS_HARNESS_H_
