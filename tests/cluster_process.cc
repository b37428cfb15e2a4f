// SPDX-License-Identifier: Apache-2.0
#include "tests/cluster_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/child_setup.h"

namespace statestream::e2e {

absl::StatusOr<std::unique_ptr<ClusterProcess>> ClusterProcess::Start(
    const std::vector<std::string>& argv, const std::string& log_path,
    absl::Duration timeout) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe");
  int log =
      open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return absl::InternalError("open log");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    if (!PrepareChild(parent, out[1], log)) _exit(127);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  close(log);
  std::unique_ptr<ClusterProcess> p(new ClusterProcess());
  p->pid_ = pid;
  p->log_path_ = log_path;
  std::string buffered;
  const absl::Time deadline = absl::Now() + timeout;
  constexpr absl::string_view kPrefix = "listening on ";
  constexpr absl::string_view kMetrics = "metrics on ";
  while (true) {
    const size_t nl = buffered.find('\n');
    if (nl != std::string::npos) {
      const std::string line = buffered.substr(0, nl);
      buffered.erase(0, nl + 1);
      if (absl::StartsWith(line, kMetrics)) {
        p->metrics_address_ = line.substr(kMetrics.size());
        continue;
      }
      close(out[0]);  // nothing else is printed on stdout
      if (!absl::StartsWith(line, kPrefix)) {
        return absl::InternalError(absl::StrCat("unexpected line: ", line));
      }
      p->address_ = line.substr(kPrefix.size());
      break;
    }
    pollfd fd{out[0], POLLIN, 0};
    const int ms =
        static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0 || poll(&fd, 1, ms) <= 0) {
      close(out[0]);
      return absl::DeadlineExceededError(absl::StrCat("no listening line from ",
                                                      argv[0], " ", argv[1],
                                                      "; log:\n", p->Log()));
    }
    char buf[256];
    ssize_t n = read(out[0], buf, sizeof(buf));
    if (n <= 0) {
      close(out[0]);
      return absl::UnavailableError(
          absl::StrCat("process exited before listening; log:\n", p->Log()));
    }
    buffered.append(buf, n);
  }
  return p;
}

ClusterProcess::~ClusterProcess() { Kill(); }

void ClusterProcess::Signal(int signal_number) {
  if (pid_ > 0) kill(pid_, signal_number);
}

void ClusterProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int ClusterProcess::Terminate() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ClusterProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace statestream::e2e
