// SPDX-License-Identifier: Apache-2.0
// Real `statestream` processes for the cluster fault tests: started with
// fork + PR_SET_PDEATHSIG(SIGKILL), so they die with the test process even
// if it crashes; stderr goes to a log file for diagnostics.
#ifndef STATESTREAM_TESTS_CLUSTER_PROCESS_H_
#define STATESTREAM_TESTS_CLUSTER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace statestream::e2e {

// Not thread-safe. Start it from the test's main thread (the death signal
// is tied to the thread that forked).
class ClusterProcess {
 public:
  // Starts `argv` (argv[0] a path) and waits up to `timeout` for its
  // "listening on HOST:PORT" line (after an optional "metrics on
  // HOST:PORT").
  static absl::StatusOr<std::unique_ptr<ClusterProcess>> Start(
      const std::vector<std::string>& argv, const std::string& log_path,
      absl::Duration timeout);
  ~ClusterProcess();  // SIGKILL + reap if running
  ClusterProcess(const ClusterProcess&) = delete;
  ClusterProcess& operator=(const ClusterProcess&) = delete;

  const std::string& address() const { return address_; }
  // The `/metrics` HOST:PORT, or "" when none was printed.
  const std::string& metrics_address() const { return metrics_address_; }
  pid_t pid() const { return pid_; }
  void Signal(int signal_number);
  // SIGKILL and reap.
  void Kill();
  // SIGTERM and reap (a graceful stop: as long as the process takes).
  // Returns the exit code, or -1 when it did not exit normally.
  int Terminate();
  // The stderr log so far.
  std::string Log() const;

 private:
  ClusterProcess() = default;
  pid_t pid_ = -1;
  std::string address_;
  std::string metrics_address_;
  std::string log_path_;
};

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_CLUSTER_PROCESS_H_
