// SPDX-License-Identifier: Apache-2.0
// What a child forked by a test does before exec (tests/subprocess.cc,
// tests/cluster_process.cc).
#ifndef STATESTREAM_TESTS_CHILD_SETUP_H_
#define STATESTREAM_TESTS_CHILD_SETUP_H_

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace statestream::e2e {

// In a child just forked from a (multithreaded) test process, so only
// async-signal-safe calls: the child is SIGKILLed when the thread that
// forked it ends (a crashed or killed test leaves no server behind), takes
// `out` and `err` as its stdout and stderr, and gets default dispositions
// for SIGINT, SIGTERM, SIGHUP and SIGPIPE (an ignored signal stays ignored
// across exec: under nohup a server would keep SIGHUP ignored) and an
// empty signal mask. False when `parent` is already gone: the
// child should _exit.
inline bool PrepareChild(pid_t parent, int out, int err) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) return false;
  dup2(out, STDOUT_FILENO);
  dup2(err, STDERR_FILENO);
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) {
    sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  return true;
}

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_CHILD_SETUP_H_
