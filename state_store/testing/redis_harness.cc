// SPDX-License-Identifier: Apache-2.0
#include "state_store/testing/redis_harness.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace statestream::testing {
namespace {

// Binds 127.0.0.1:port (0 = any); returns the fd and the port, or -1.
int BindPort(int port, int* bound) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return -1;
  }
  *bound = ntohs(a.sin_port);
  return fd;
}

}  // namespace

int StablePort(int neighbour) {
  // The kernel's ephemeral range (where outgoing connections take their
  // source ports, and bind(0) picks); 32768-60999 by default.
  int low = 32768, high = 60999;
  if (FILE* f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (fscanf(f, "%d %d", &low, &high) != 2) low = 32768, high = 60999;
    fclose(f);
  }
  // Below it, leaving room for the neighbour below it too.
  const int first = 10000, last = low - 1 - neighbour;
  if (last - first >= 1000) {
    std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(getpid()));
    std::uniform_int_distribution<int> pick(first, last);
    for (int attempt = 0; attempt < 200; ++attempt) {
      const int port = pick(rng);
      int bound = 0;
      const int fd = BindPort(port, &bound);
      if (fd < 0) continue;
      const int fd2 = neighbour != 0 ? BindPort(port + neighbour, &bound) : -1;
      close(fd);
      if (neighbour == 0 || fd2 >= 0) {
        if (fd2 >= 0) close(fd2);
        return port;
      }
    }
  }
  // A host whose ephemeral range leaves no room below it: any free port.
  for (int attempt = 0; attempt < 200; ++attempt) {
    int port = 0;
    const int fd = BindPort(0, &port);
    if (fd < 0) continue;
    int bus = 0;
    const int fd2 = neighbour != 0 && port + neighbour < 65536
                        ? BindPort(port + neighbour, &bus)
                        : -1;
    close(fd);
    if (neighbour == 0 || fd2 >= 0) {
      if (fd2 >= 0) close(fd2);
      return port;
    }
  }
  return 0;
}

namespace {

std::string ReplyText(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      return std::string(r->str, r->len);
    case REDIS_REPLY_INTEGER:
      return absl::StrCat(r->integer);
    case REDIS_REPLY_ARRAY: {
      std::vector<std::string> parts;
      for (size_t i = 0; i < r->elements; ++i) {
        parts.push_back(ReplyText(r->element[i]));
      }
      return absl::StrJoin(parts, "\n");
    }
    default:
      return "";
  }
}

}  // namespace

absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv,
                                       int* exit_code) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  return out;
}

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(
    RedisServerOptions options) {
  std::unique_ptr<RedisServer> s(new RedisServer());
  s->options_ = std::move(options);
  s->port_ = s->options_.port ? s->options_.port : StablePort(10000);
  if (s->port_ == 0) return absl::UnavailableError("no free port");
  if (s->options_.dir.empty()) {
    // Under $TMPDIR when set; removed by the destructor.
    std::error_code ec;
    std::string tmpl =
        (std::filesystem::temp_directory_path(ec) / "ss-redis-XXXXXX").string();
    if (ec || mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError(
          absl::StrCat("cannot make a directory like ", tmpl));
    }
    s->dir_ = tmpl;
    s->own_dir_ = true;
  } else {
    s->dir_ = s->options_.dir;
  }
  absl::Status st = s->Spawn();
  // A port picked here can be taken before redis-server binds it (by a
  // test running in parallel): pick another.
  for (int retry = 0;
       retry < 5 && !st.ok() && s->options_.port == 0 && absl::IsInternal(st);
       ++retry) {
    s->port_ = StablePort(10000);
    if (s->port_ == 0) return absl::UnavailableError("no free port");
    st = s->Spawn();
  }
  if (!st.ok()) return st;
  return s;
}

RedisServer::~RedisServer() {
  Kill();
  if (own_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string RedisServer::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

absl::Status RedisServer::Spawn() {
  std::vector<std::string> argv = {"redis-server",
                                   "--port",
                                   absl::StrCat(port_),
                                   "--bind",
                                   "127.0.0.1",
                                   "--dir",
                                   dir_,
                                   "--save",
                                   "",
                                   "--appendonly",
                                   "no",
                                   "--protected-mode",
                                   "no",
                                   "--daemonize",
                                   "no",
                                   "--logfile",
                                   dir_ + "/redis.log"};
  argv.insert(argv.end(), options_.args.begin(), options_.args.end());
  const pid_t parent = getpid();
  pid_ = fork();
  if (pid_ < 0) return absl::InternalError("fork failed");
  if (pid_ == 0) {
    // The server dies with the test process, however the test ends (a
    // suite-wide server that is never destroyed, a crash, a timeout kill).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    const int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  // Generous: a loaded machine, or an AOF to replay.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("redis-server exited; see ", dir_, "/redis.log"));
    }
    // Ours, not another test's server that took the port first (ours
    // then exits, failing to bind, and the loop above notices).
    auto info = Command({"INFO", "server"});
    if (info.ok() &&
        absl::StrContains(*info, absl::StrCat("process_id:", pid_, "\r\n"))) {
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("redis-server did not answer PING");
}

void RedisServer::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGCONT);
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

void RedisServer::Pause() {
  if (pid_ > 0) kill(pid_, SIGSTOP);
}

void RedisServer::Resume() {
  if (pid_ > 0) kill(pid_, SIGCONT);
}

absl::Status RedisServer::Restart() {
  Kill();
  return Spawn();
}

absl::StatusOr<std::string> RedisServer::Command(
    const std::vector<std::string>& argv, const std::string& password) {
  timeval tv{10, 0};
  redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
  if (c == nullptr || c->err) {
    if (c) redisFree(c);
    return absl::UnavailableError("connect failed");
  }
  redisSetTimeout(c, tv);
  auto run = [c](const std::vector<std::string>& words)
      -> absl::StatusOr<std::string> {
    std::vector<const char*> a;
    std::vector<size_t> l;
    for (const std::string& w : words) {
      a.push_back(w.data());
      l.push_back(w.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(a.size()), a.data(), l.data()));
    if (r == nullptr) return absl::UnavailableError(c->errstr);
    const bool error = r->type == REDIS_REPLY_ERROR;
    std::string text = ReplyText(r);
    freeReplyObject(r);
    if (error) return absl::InternalError(text);
    return text;
  };
  absl::StatusOr<std::string> out = std::string();
  if (!password.empty()) out = run({"AUTH", password});
  if (out.ok()) out = run(argv);
  redisFree(c);
  return out;
}

absl::StatusOr<std::unique_ptr<RedisCluster>> RedisCluster::Start(
    const std::vector<std::string>& args) {
  auto cluster = std::make_unique<RedisCluster>();
  std::vector<std::string> create = {"redis-cli", "--cluster", "create"};
  for (int i = 0; i < 6; ++i) {
    RedisServerOptions o;
    o.args = {"--cluster-enabled",      "yes",
              "--cluster-config-file",  "nodes.conf",
              "--cluster-node-timeout", "5000"};
    o.args.insert(o.args.end(), args.begin(), args.end());
    auto node = RedisServer::Start(o);
    if (!node.ok()) return node.status();
    create.push_back((*node)->address());
    cluster->nodes_.push_back(std::move(*node));
  }
  create.insert(create.end(), {"--cluster-replicas", "1", "--cluster-yes"});
  int code = 0;
  auto out = RunCommand(create, &code);
  if (!out.ok()) return out.status();
  if (code != 0)
    return absl::InternalError("redis-cli --cluster create: " + *out);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (auto& n : cluster->nodes_) {
    while (true) {
      auto info = n->Command({"CLUSTER", "INFO"});
      if (info.ok() && info->find("cluster_state:ok") != std::string::npos &&
          info->find("cluster_slots_ok:16384") != std::string::npos) {
        break;
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError("cluster did not become ok");
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  return cluster;
}

RedisCluster::~RedisCluster() = default;

std::vector<std::string> RedisCluster::addresses() const {
  std::vector<std::string> out;
  for (const auto& n : nodes_) out.push_back(n->address());
  return out;
}

absl::Status RedisCluster::MoveSlot(int slot,
                                    const std::vector<std::string>& first,
                                    const std::function<void()>& after_first) {
  auto nodes = nodes_[0]->Command({"CLUSTER", "NODES"});
  if (!nodes.ok()) return nodes.status();
  struct Primary {
    std::string id;
    int port = 0;
    bool owns = false;
  };
  std::vector<Primary> primaries;
  for (absl::string_view line : absl::StrSplit(*nodes, '\n')) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    // Primaries serving slots (a fresh replica can still look like an
    // empty master until gossip settles).
    if (f.size() < 9 || f[2].find("master") == std::string::npos) continue;
    Primary p;
    p.id = f[0];
    const std::string addr = f[1].substr(0, f[1].find('@'));
    if (!absl::SimpleAtoi(addr.substr(addr.rfind(':') + 1), &p.port)) continue;
    for (size_t i = 8; i < f.size(); ++i) {
      std::vector<std::string> r = absl::StrSplit(f[i], '-');
      int lo = 0, hi = 0;
      if (!absl::SimpleAtoi(r[0], &lo)) continue;
      hi = lo;
      if (r.size() == 2 && !absl::SimpleAtoi(r[1], &hi)) continue;
      if (slot >= lo && slot <= hi) p.owns = true;
    }
    primaries.push_back(p);
  }
  const Primary* src = nullptr;
  const Primary* dst = nullptr;
  for (const Primary& p : primaries) {
    if (p.owns) src = &p;
  }
  for (const Primary& p : primaries) {
    if (!p.owns) dst = &p;
  }
  if (src == nullptr || dst == nullptr) {
    return absl::InternalError("cannot find the slot's primary");
  }
  auto node = [&](int port) -> RedisServer* {
    for (auto& n : nodes_) {
      if (n->port() == port) return n.get();
    }
    return nullptr;
  };
  RedisServer* s = node(src->port);
  RedisServer* d = node(dst->port);
  const std::string slot_text = absl::StrCat(slot);
  auto st = d->Command({"CLUSTER", "SETSLOT", slot_text, "IMPORTING", src->id});
  if (!st.ok()) {
    return absl::InternalError(absl::StrCat(
        "IMPORTING on ", d->port(), ": ", st.status().message(), "\n", *nodes));
  }
  st = s->Command({"CLUSTER", "SETSLOT", slot_text, "MIGRATING", dst->id});
  if (!st.ok()) {
    return absl::InternalError(
        absl::StrCat("MIGRATING on ", s->port(), ": ", st.status().message()));
  }
  if (!first.empty()) {
    std::vector<std::string> cmd = {
        "MIGRATE", "127.0.0.1", absl::StrCat(dst->port), "", "0", "10000",
        "REPLACE", "KEYS"};
    cmd.insert(cmd.end(), first.begin(), first.end());
    st = s->Command(cmd);
    if (!st.ok()) return st.status();
  }
  if (after_first) after_first();
  while (true) {
    auto keys = s->Command({"CLUSTER", "GETKEYSINSLOT", slot_text, "10"});
    if (!keys.ok()) return keys.status();
    if (keys->empty()) break;
    std::vector<std::string> cmd = {
        "MIGRATE", "127.0.0.1", absl::StrCat(dst->port), "", "0", "10000",
        "REPLACE", "KEYS"};
    for (absl::string_view k : absl::StrSplit(*keys, '\n')) cmd.emplace_back(k);
    st = s->Command(cmd);
    if (!st.ok()) return st.status();
  }
  for (const Primary& p : primaries) {
    st = node(p.port)->Command(
        {"CLUSTER", "SETSLOT", slot_text, "NODE", dst->id});
    if (!st.ok()) return st.status();
  }
  return absl::OkStatus();
}

}  // namespace statestream::testing
