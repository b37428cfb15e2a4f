// SPDX-License-Identifier: Apache-2.0
// Runs a child process with its stdout and stderr piped back, for the
// end-to-end tests of the `statestream` binary.
#ifndef STATESTREAM_TESTS_SUBPROCESS_H_
#define STATESTREAM_TESTS_SUBPROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace statestream::e2e {

// Changes to the child's environment: a value sets the variable, nullopt
// removes it; the rest is inherited. (No setenv in the test process, whose
// other threads may read the environment.)
using EnvChanges = std::map<std::string, std::optional<std::string>>;

// Not thread-safe.
class Subprocess {
 public:
  // Starts argv[0] (a path) with `argv`, the environment changed by `env`,
  // default signal dispositions and an empty signal mask. The child is
  // SIGKILLed when the thread that started it ends (PR_SET_PDEATHSIG), so a
  // crashed or killed test leaves no server running: start long-lived
  // children from the test's main thread.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(
      const std::vector<std::string>& argv, const EnvChanges& env = {});

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  // Kills (SIGKILL) and reaps the child if it is still running.
  ~Subprocess();

  // The next line the child writes to stdout, without the newline.
  // DEADLINE_EXCEEDED after `timeout`; UNAVAILABLE if stdout closes first.
  absl::StatusOr<std::string> ReadStdoutLine(absl::Duration timeout);

  void Signal(int signal_number);

  // Closes this end of the child's stderr pipe: the child's next write to
  // stderr fails with EPIPE (or kills it by SIGPIPE, where not ignored), as
  // when a log shipper reading a server's stderr dies.
  void CloseStderr();

  // Waits for the child to exit, collecting its output meanwhile. Returns
  // the exit status, or 128 + the signal number if a signal killed it.
  // DEADLINE_EXCEEDED after `timeout` (the child keeps running).
  absl::StatusOr<int> Wait(absl::Duration timeout);

  // All output read so far.
  const std::string& stdout_text() const { return out_; }
  const std::string& stderr_text() const { return err_; }

 private:
  Subprocess(pid_t pid, int out_fd, int err_fd);
  // Reads what is available, waiting at most `timeout` for something.
  void Pump(absl::Duration timeout);

  pid_t pid_;
  int out_fd_;
  int err_fd_;
  bool exited_ = false;
  int status_ = 0;  // from waitpid, once exited_
  std::string out_;
  size_t out_consumed_ = 0;  // bytes of out_ returned by ReadStdoutLine
  std::string err_;
};

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// A server role (`serve`, `worker`, `gateway`) started by StartServer.
struct StartedServer {
  std::unique_ptr<Subprocess> process;
  std::string address;          // HOST:PORT of its "listening on" line
  std::string metrics_address;  // of a "metrics on" line before it, or ""
};

// Starts `argv` and reads stdout up to its "listening on HOST:PORT" line
// (after an optional "metrics on HOST:PORT"). An error naming the line and
// the process's stderr if something else comes first or nothing within
// `timeout`; the process is killed then.
absl::StatusOr<StartedServer> StartServer(const std::vector<std::string>& argv,
                                          absl::Duration timeout,
                                          const EnvChanges& env = {});

// Runs `argv` to completion (killing it after `timeout`).
absl::StatusOr<RunResult> Run(const std::vector<std::string>& argv,
                              absl::Duration timeout = absl::Seconds(30),
                              const EnvChanges& env = {});

// Writes the tests' tiny model to `path` with `bin model random`: RWKV-7,
// 2 layers, 64 wide, the byte-level 256-token vocabulary, `seed`.
absl::Status MakeTinyModel(const std::string& bin, const std::string& path,
                           uint32_t seed = 7);

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_SUBPROCESS_H_
