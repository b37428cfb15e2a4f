// SPDX-License-Identifier: Apache-2.0
#include "tests/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/child_setup.h"

extern char** environ;

namespace statestream::e2e {

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(
    const std::vector<std::string>& argv, const EnvChanges& env) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe2");
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    return absl::InternalError("pipe2");
  }
  std::vector<char*> args;
  for (const std::string& arg : argv)
    args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view var(*e);
    if (env.count(std::string(var.substr(0, var.find('=')))) == 0) {
      vars.emplace_back(var);
    }
  }
  for (const auto& [name, value] : env) {
    if (value) vars.push_back(absl::StrCat(name, "=", *value));
  }
  std::vector<char*> envp;
  for (std::string& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  // exec's errno comes back through `status`; end of file means exec ran.
  int status[2];
  if (pipe2(status, O_CLOEXEC) != 0) {
    for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
    return absl::InternalError("pipe2");
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    if (!PrepareChild(parent, out[1], err[1])) _exit(127);
    execve(args[0], args.data(), envp.data());
    const int error = errno;
    (void)!write(status[1], &error, sizeof(error));
    _exit(127);
  }
  const int fork_error = errno;
  close(out[1]);
  close(err[1]);
  close(status[1]);
  int error = 0;
  if (pid < 0) {
    error = fork_error;
  } else {
    ssize_t n;
    do {
      n = read(status[0], &error, sizeof(error));
    } while (n < 0 && errno == EINTR);
    if (n != sizeof(error)) error = 0;
    if (error != 0) waitpid(pid, nullptr, 0);
  }
  close(status[0]);
  if (error != 0) {
    close(out[0]);
    close(err[0]);
    return absl::InternalError(
        absl::StrCat("starting ", argv[0], ": ", std::strerror(error)));
  }
  return std::unique_ptr<Subprocess>(new Subprocess(pid, out[0], err[0]));
}

Subprocess::Subprocess(pid_t pid, int out_fd, int err_fd)
    : pid_(pid), out_fd_(out_fd), err_fd_(err_fd) {}

Subprocess::~Subprocess() {
  if (!exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
  if (err_fd_ >= 0) close(err_fd_);
}

void Subprocess::Pump(absl::Duration timeout) {
  pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
  int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  if (poll(fds, 2, ms) <= 0) return;
  int* fd_of[2] = {&out_fd_, &err_fd_};
  std::string* text_of[2] = {&out_, &err_};
  for (int i = 0; i < 2; ++i) {
    if (fds[i].fd < 0 || fds[i].revents == 0) continue;
    char buffer[4096];
    ssize_t n = read(fds[i].fd, buffer, sizeof(buffer));
    if (n > 0) {
      text_of[i]->append(buffer, n);
    } else if (n == 0 || errno != EINTR) {
      close(*fd_of[i]);
      *fd_of[i] = -1;
    }
  }
}

absl::StatusOr<std::string> Subprocess::ReadStdoutLine(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t newline = out_.find('\n', out_consumed_);
    if (newline != std::string::npos) {
      std::string line = out_.substr(out_consumed_, newline - out_consumed_);
      out_consumed_ = newline + 1;
      return line;
    }
    if (out_fd_ < 0) {
      return absl::UnavailableError(
          absl::StrCat("stdout closed; stderr: ", err_));
    }
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("no stdout line; stderr: ", err_));
    }
    Pump(std::min(left, absl::Milliseconds(100)));
  }
}

void Subprocess::Signal(int signal_number) {
  if (!exited_) kill(pid_, signal_number);
}

void Subprocess::CloseStderr() {
  if (err_fd_ >= 0) close(err_fd_);
  err_fd_ = -1;
}

absl::StatusOr<int> Subprocess::Wait(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!exited_) {
    pid_t done = waitpid(pid_, &status_, WNOHANG);
    if (done == pid_) {
      exited_ = true;
      break;
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("child still running");
    }
    Pump(absl::Milliseconds(20));
  }
  // Collect what is left in the pipes (bounded, in case a descendant holds
  // them open).
  absl::Time drain_deadline = absl::Now() + absl::Seconds(5);
  while ((out_fd_ >= 0 || err_fd_ >= 0) && absl::Now() < drain_deadline) {
    Pump(absl::Milliseconds(100));
  }
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return WEXITSTATUS(status_);
}

absl::StatusOr<RunResult> Run(const std::vector<std::string>& argv,
                              absl::Duration timeout, const EnvChanges& env) {
  auto child = Subprocess::Start(argv, env);
  if (!child.ok()) return child.status();
  auto exit_code = (*child)->Wait(timeout);
  if (!exit_code.ok()) return exit_code.status();
  return RunResult{*exit_code, (*child)->stdout_text(),
                   (*child)->stderr_text()};
}

absl::StatusOr<StartedServer> StartServer(const std::vector<std::string>& argv,
                                          absl::Duration timeout,
                                          const EnvChanges& env) {
  auto process = Subprocess::Start(argv, env);
  if (!process.ok()) return process.status();
  StartedServer out;
  out.process = *std::move(process);
  constexpr absl::string_view kListening = "listening on ";
  constexpr absl::string_view kMetrics = "metrics on ";
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    auto line = out.process->ReadStdoutLine(deadline - absl::Now());
    if (!line.ok()) {
      return absl::Status(line.status().code(),
                          absl::StrCat(line.status().message(), "; stderr:\n",
                                       out.process->stderr_text()));
    }
    if (absl::StartsWith(*line, kMetrics) && out.metrics_address.empty()) {
      out.metrics_address = line->substr(kMetrics.size());
      continue;
    }
    if (!absl::StartsWith(*line, kListening)) {
      return absl::InternalError(absl::StrCat("unexpected line \"", *line,
                                              "\"; stderr:\n",
                                              out.process->stderr_text()));
    }
    out.address = line->substr(kListening.size());
    return out;
  }
}

absl::Status MakeTinyModel(const std::string& bin, const std::string& path,
                           uint32_t seed) {
  auto made =
      Run({bin, "model", "random", "--arch=x070", "--layers=2", "--embd=64",
           "--vocab=256", absl::StrCat("--seed=", seed), "--out=" + path},
          absl::Seconds(60));
  if (!made.ok()) return made.status();
  if (made->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("model random exited ", made->exit_code, ": ", made->err));
  }
  return absl::OkStatus();
}

}  // namespace statestream::e2e
