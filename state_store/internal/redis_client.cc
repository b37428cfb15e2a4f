// SPDX-License-Identifier: Apache-2.0
#include "state_store/internal/redis_client.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "state_store/internal/redis_wire.h"
#include "state_store/internal/store_util.h"

namespace statestream::store_internal {

int KeySlot(absl::string_view key) {
  // Hash only the part between the first '{' and the next '}', if non-empty.
  const size_t open = key.find('{');
  if (open != absl::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != absl::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  uint16_t crc = 0;  // CRC16-CCITT (XModem), as Redis Cluster specifies.
  for (unsigned char c : key) {
    crc ^= static_cast<uint16_t>(c) << 8;
    for (int i = 0; i < 8; ++i) {
      crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                           : static_cast<uint16_t>(crc << 1);
    }
  }
  return crc & 16383;
}

namespace {

constexpr int kSlots = 16384;

// hiredis writes with write(2): a peer that died raises SIGPIPE, which
// kills the process by default. Blocks it in this thread for the scope and
// swallows one raised meanwhile, without touching process-wide handlers.
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock() {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old_);
  }
  ~ScopedSigpipeBlock() {
    if (!was_pending_) {
      sigset_t pipe, pending;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE)) {
        timespec zero{0, 0};
        while (sigtimedwait(&pipe, nullptr, &zero) == -1 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t old_;
  bool was_pending_ = false;
};

bool StartsWith(const redisReply* r, absl::string_view prefix) {
  return r->type == REDIS_REPLY_ERROR &&
         absl::string_view(r->str, r->len).substr(0, prefix.size()) == prefix;
}

// An error reply that Run answers by running the commands again (after a
// backoff): the node is busy, loading or without a quorum, or a script
// touched a key its migrating slot already moved (the scripts touch every
// such key before writing: redis_scripts.h probe_session), like TRYAGAIN.
bool IsRetried(const redisReply* r) {
  return StartsWith(r, "TRYAGAIN") || StartsWith(r, "LOADING") ||
         StartsWith(r, "CLUSTERDOWN") || StartsWith(r, "MASTERDOWN") ||
         (r->type == REDIS_REPLY_ERROR &&
          absl::string_view(r->str, r->len).find("non local key") !=
              absl::string_view::npos);
}

// "host:port", "[v6]:port" (as the flags take it) or "v6:port" (as a
// cluster's MOVED and CLUSTER SLOTS name nodes): the host without brackets.
bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return absl::SimpleAtoi(address.substr(colon + 1), port);
}

// `error` at the Redis node `address`: clients get "a Redis node" where its
// message names the address (common/status.h WithPublicMessage). The
// store's addresses are the deployment's, not the caller's; the message,
// which logs show, keeps it.
absl::Status AtNode(absl::Status error, absl::string_view address) {
  if (error.ok() || address.empty()) return error;
  const std::string shown = absl::StrReplaceAll(
      GetPublicMessage(error).value_or(std::string(error.message())),
      {{address, "a Redis node"}});
  return WithPublicMessage(std::move(error), shown);
}

// The error of a call whose last answer was `redirect` (Attempt): Redis's
// "try again" text (TRYAGAIN, CLUSTERDOWN, ...; without a script's
// " script: <sha>, on @user_script:N." suffix), or a second ASK, to the
// node it names.
absl::Status RedirectError(absl::string_view redirect) {
  if (absl::ConsumePrefix(&redirect, "RETRY ")) {
    return Unavailable(absl::StrCat(
        "Redis answered: ", redirect.substr(0, redirect.find(" script: "))));
  }
  absl::string_view to = redirect;
  if (!absl::ConsumePrefix(&to, "ASK ")) to = {};
  return AtNode(Unavailable(absl::StrCat("Redis redirected again: ", redirect)),
                to);
}

}  // namespace

bool IsClientLimit(absl::string_view error_text) {
  return absl::StartsWith(error_text, "ERR max number of clients reached");
}

bool IsAccessRefusal(const redisReply* r) {
  if (r == nullptr || r->type != REDIS_REPLY_ERROR) return false;
  const absl::string_view text(r->str, r->len);
  return absl::StartsWith(text, "NOAUTH ") ||
         absl::StartsWith(text, "NOPERM ") ||
         absl::StartsWith(text, "WRONGPASS ");
}

absl::Status AccessRefused(bool connected, absl::string_view what) {
  if (!connected) {
    return MakeError(absl::StatusCode::kPermissionDenied,
                     Reason::kStoreUnavailable, what);
  }
  // The refusal's code is the error text's first word, past a "Redis AUTH
  // failed on HOST:PORT: " prefix when there is one.
  absl::string_view text = what;
  if (const size_t at = text.rfind(": "); at != absl::string_view::npos) {
    text.remove_prefix(at + 2);
  }
  return MakeError(
      absl::StatusCode::kUnavailable, Reason::kStoreUnavailable, what,
      {{"redis_error", std::string(text.substr(0, text.find(' ')))}});
}

struct RedisClient::Node {
  std::string address;
  absl::Mutex mu;
  std::vector<redisContext*> idle ABSL_GUARDED_BY(mu);
  ~Node() {
    for (redisContext* c : idle) redisFree(c);
  }
};

RedisClient::RedisClient(const RedisClientOptions& options)
    : options_(options), clock_(options.clock ? options.clock : Clock::Real()) {
  slots_.resize(kSlots);
}

RedisClient::~RedisClient() = default;

void RedisClient::Close() {
  absl::MutexLock lock(&close_mu_);
  closed_ = true;
  closed_wake_.Notify();
  // The calls blocked in recv or send on these return at once.
  for (int fd : busy_fds_) shutdown(fd, SHUT_RDWR);
}

bool RedisClient::closed() {
  absl::MutexLock lock(&close_mu_);
  return closed_;
}

bool RedisClient::MarkBusy(int fd) {
  absl::MutexLock lock(&close_mu_);
  if (closed_) return false;
  busy_fds_.insert(fd);
  return true;
}

void RedisClient::MarkIdle(int fd) {
  absl::MutexLock lock(&close_mu_);
  busy_fds_.erase(fd);
}

absl::Status RedisClient::ClosedError() {
  return Unavailable("the Redis client is closed (the process is stopping)");
}

void RedisClient::Backoff(absl::Duration d) {
  if (clock_ != Clock::Real()) {
    clock_->SleepFor(d);
    return;
  }
  absl::MutexLock lock(&close_mu_);
  // On the steady clock: a wall clock stepped back must not hold a retry.
  closed_wake_.Await(
      &close_mu_,
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(close_mu_) { return closed_; }, d);
}

absl::StatusOr<std::unique_ptr<RedisClient>> RedisClient::Connect(
    const RedisClientOptions& options) {
  if (options.seeds.empty()) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "no Redis address given");
  }
  std::unique_ptr<RedisClient> client(new RedisClient(options));
  if (options.cluster) {
    SS_RETURN_IF_ERROR(client->RefreshSlots());
    client->connected_ = true;
    return client;
  }
  absl::Status last, refused;
  for (const std::string& seed : options.seeds) {
    std::string redirect;
    auto r = client->Attempt(seed, {{"PING"}}, false, &redirect);
    if (r.ok() && IsAccessRefusal((*r)[0].get())) {
      refused = AccessRefused(
          false, absl::StrCat("Redis refused PING on ", seed, ": ",
                              absl::string_view((*r)[0]->str, (*r)[0]->len)));
      continue;
    }
    if (r.ok()) {
      absl::MutexLock lock(&client->mu_);
      client->standalone_address_ = seed;
      client->connected_ = true;
      return client;
    }
    if (r.status().code() == absl::StatusCode::kPermissionDenied) {
      refused = r.status();
    } else {
      last = r.status();
    }
  }
  // A seed that refused the credentials says more than one that is down.
  return refused.ok() ? last : refused;
}

RedisClient::Node* RedisClient::NodeFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& n = nodes_[address];
  if (n == nullptr) {
    n = std::make_unique<Node>();
    n->address = address;
  }
  return n.get();
}

absl::StatusOr<std::vector<Reply>> RedisClient::Attempt(
    const std::string& address, const std::vector<Command>& cmds, bool asking,
    std::string* redirect, const BulkSink& sink) {
  redirect->clear();
  if (closed()) return ClosedError();
  ScopedSigpipeBlock no_sigpipe;
  Node* node = NodeFor(address);
  redisContext* c = nullptr;
  {
    absl::MutexLock lock(&node->mu);
    if (!node->idle.empty()) {
      c = node->idle.back();
      node->idle.pop_back();
    }
  }
  const bool pooled = c != nullptr;
  if (c == nullptr) {
    std::string host;
    int port = 0;
    if (!SplitHostPort(address, &host, &port)) {
      // A seed's is the operator's flag; one a Cluster named later (in
      // CLUSTER SLOTS or a redirect) is the store's failure, not the
      // caller's request.
      const std::string what =
          absl::StrCat("bad Redis node address \"", address, "\"");
      return WithPublicMessage(
          connected_ ? Unavailable(what)
                     : InvalidArgumentError(Reason::kInvalidArgument, what),
          connected_ ? "state store unavailable: bad Redis node address"
                     : "bad Redis node address");
    }
    c = redisConnectWithTimeout(host.c_str(), port,
                                absl::ToTimeval(options_.connect_timeout));
    if (c == nullptr || c->err) {
      const std::string err = c ? c->errstr : "out of memory";
      if (c) redisFree(c);
      return AtNode(
          Unavailable(absl::StrCat("connect to ", address, ": ", err)),
          address);
    }
    redisSetTimeout(c, absl::ToTimeval(options_.command_timeout));
    redisEnableKeepAlive(c);
  }
  if (!MarkBusy(c->fd)) {
    redisFree(c);
    return ClosedError();
  }
  // From here on the socket is unmarked before it is closed.
  auto drop = [this, c] {
    MarkIdle(c->fd);
    redisFree(c);
  };
  if (!pooled) {
    if (!options_.password.empty()) {
      Command auth = {"AUTH"};
      if (!options_.user.empty()) auth.push_back(options_.user);
      auth.push_back(options_.password);
      std::string ignored;
      // Authenticate through the normal path on this fresh context.
      std::vector<const char*> argv;
      std::vector<size_t> lens;
      for (absl::string_view a : auth) {
        argv.push_back(a.data());
        lens.push_back(a.size());
      }
      Reply r(static_cast<redisReply*>(redisCommandArgv(
          c, static_cast<int>(argv.size()), argv.data(), lens.data())));
      if (r == nullptr) {
        const std::string err = c->errstr;
        drop();
        if (closed()) return ClosedError();
        return AtNode(Unavailable(absl::StrCat("AUTH on ", address, ": ", err)),
                      address);
      }
      if (r->type == REDIS_REPLY_ERROR) {
        const std::string err(r->str, r->len);
        drop();
        if (IsClientLimit(err)) {
          return AtNode(
              Unavailable(absl::StrCat("AUTH on ", address, ": ", err)),
              address);
        }
        return AtNode(
            AccessRefused(connected_, absl::StrCat("Redis AUTH failed on ",
                                                   address, ": ", err)),
            address);
      }
    }
  }
  // A connection is only reused after a complete, clean exchange; after any
  // error its stream position is unknown, so it is closed.
  std::vector<Reply> replies;
  absl::Status io = ExchangePipeline(c->fd, cmds, asking, sink, &replies);
  if (!io.ok()) {
    drop();
    // A pooled connection that failed says the node went away (a restart,
    // a failover): its other idle ones are as dead. Close them all, so the
    // retry connects afresh instead of trying each with a backoff between.
    if (pooled) {
      std::vector<redisContext*> stale;
      {
        absl::MutexLock lock(&node->mu);
        stale.swap(node->idle);
      }
      for (redisContext* s : stale) redisFree(s);
    }
    if (closed()) return ClosedError();
    // io's message has Unavailable's prefix already.
    return AtNode(
        WithMessage(io, absl::StrCat(io.message(), " (at ", address, ")")),
        address);
  }
  for (const Reply& r : replies) {
    if (r->type == REDIS_REPLY_ERROR &&
        IsClientLimit(absl::string_view(r->str, r->len))) {
      // Redis closed this connection after that reply: not pooled (its
      // failure would close the node's sound idle ones), and an outage to
      // retry like a connection refused.
      const std::string err(r->str, r->len);
      drop();
      if (closed()) return ClosedError();
      return AtNode(Unavailable(absl::StrCat("Redis at ", address, ": ", err)),
                    address);
    }
  }
  MarkIdle(c->fd);
  {
    absl::MutexLock lock(&node->mu);
    if (static_cast<int>(node->idle.size()) <
        options_.max_idle_connections_per_node) {
      node->idle.push_back(c);
      c = nullptr;
    }
  }
  if (c != nullptr) redisFree(c);
  for (const Reply& r : replies) {
    if (IsRetried(r.get())) {
      *redirect = absl::StrCat("RETRY ", absl::string_view(r->str, r->len));
      return replies;
    }
    if (StartsWith(r.get(), "MOVED ") || StartsWith(r.get(), "ASK ")) {
      std::vector<std::string> parts =
          absl::StrSplit(absl::string_view(r->str, r->len), ' ');
      if (parts.size() == 3) {
        *redirect = absl::StrCat(parts[0], " ", parts[2]);
        return replies;
      }
    }
  }
  return replies;
}

absl::StatusOr<std::string> RedisClient::AddressForSlot(int slot) {
  {
    absl::MutexLock lock(&mu_);
    if (!options_.cluster) return standalone_address_;
    if (!slots_[slot].empty()) return slots_[slot];
  }
  SS_RETURN_IF_ERROR(RefreshSlots());
  absl::MutexLock lock(&mu_);
  if (slots_[slot].empty()) {
    return Unavailable(
        absl::StrCat("no Redis Cluster node serves slot ", slot));
  }
  return slots_[slot];
}

void RedisClient::SetSlot(int slot, const std::string& address) {
  absl::MutexLock lock(&mu_);
  slots_[slot] = address;
}

absl::Status RedisClient::RefreshSlots() {
  std::vector<std::string> candidates = options_.seeds;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [address, node] : nodes_) candidates.push_back(address);
  }
  absl::Status last = Unavailable("no Redis Cluster node reachable");
  absl::Status refused;
  for (const std::string& address : candidates) {
    std::string redirect;
    auto r = Attempt(address, {{"CLUSTER", "SLOTS"}}, false, &redirect);
    if (!r.ok()) {
      if (r.status().code() != absl::StatusCode::kUnavailable) {
        return r.status();
      }
      last = r.status();
      continue;
    }
    const redisReply* slots = (*r)[0].get();
    if (slots->type != REDIS_REPLY_ARRAY) {
      const std::string text = slots->type == REDIS_REPLY_ERROR
                                   ? std::string(slots->str, slots->len)
                                   : std::string("not an array");
      // Redis's text may name the store's ACL user (NOPERM): a client is
      // told its code.
      const bool refusal = IsAccessRefusal(slots);
      auto failed = [&](absl::string_view said) {
        const std::string what =
            absl::StrCat("CLUSTER SLOTS on ", address, " failed: ", said);
        return refusal ? AccessRefused(connected_, what) : Unavailable(what);
      };
      const std::string code = slots->type == REDIS_REPLY_ERROR
                                   ? text.substr(0, text.find(' '))
                                   : text;
      const absl::Status error = WithPublicMessage(
          failed(text),
          GetPublicMessage(AtNode(failed(code), address)).value_or(""));
      (refusal ? refused : last) = error;
      continue;
    }
    std::vector<std::string> map(kSlots);
    std::string host;
    int ignored_port;
    SplitHostPort(address, &host, &ignored_port);
    for (size_t i = 0; i < slots->elements; ++i) {
      const redisReply* e = slots->element[i];
      if (e->type != REDIS_REPLY_ARRAY || e->elements < 3) continue;
      const redisReply* primary = e->element[2];
      if (primary->type != REDIS_REPLY_ARRAY || primary->elements < 2) continue;
      std::string node_host(primary->element[0]->str ? primary->element[0]->str
                                                     : "");
      if (node_host.empty() || node_host == "?") node_host = host;
      const std::string node =
          absl::StrCat(node_host, ":", primary->element[1]->integer);
      const long long lo = std::max(0LL, e->element[0]->integer);
      const long long hi =
          std::min<long long>(kSlots - 1, e->element[1]->integer);
      for (long long s = lo; s <= hi; ++s) map[s] = node;
    }
    absl::MutexLock lock(&mu_);
    slots_ = std::move(map);
    return absl::OkStatus();
  }
  return refused.ok() ? last : refused;
}

absl::StatusOr<std::vector<Reply>> RedisClient::Run(
    absl::string_view routing_key, const std::vector<Command>& commands,
    const BulkSink& sink) {
  const int slot = KeySlot(routing_key);
  const absl::Time deadline = clock_->Now() + options_.retry_deadline;
  absl::Duration backoff = options_.backoff_initial;
  std::string ask_address;
  absl::Status last;
  for (int redirects = 0; redirects < 64;) {
    std::string address;
    if (!ask_address.empty()) {
      address = ask_address;
    } else {
      auto a = AddressForSlot(slot);
      if (a.ok()) {
        address = *a;
      } else {
        last = a.status();
      }
    }
    std::string redirect;
    absl::StatusOr<std::vector<Reply>> r =
        address.empty()
            ? absl::StatusOr<std::vector<Reply>>(last)
            : Attempt(address, commands, !ask_address.empty(), &redirect, sink);
    const bool was_asking = !ask_address.empty();
    ask_address.clear();
    if (r.ok() && redirect.empty()) return r;
    if (!r.ok() && r.status().code() != absl::StatusCode::kUnavailable) {
      return r.status();
    }
    if (absl::StartsWith(redirect, "MOVED ")) {
      SetSlot(slot, redirect.substr(6));
      ++redirects;
      continue;
    }
    if (absl::StartsWith(redirect, "ASK ") && !was_asking) {
      ask_address = redirect.substr(4);
      ++redirects;
      continue;
    }
    last = r.ok() ? RedirectError(redirect) : r.status();
    if (closed()) return ClosedError();
    if (!r.ok() && options_.cluster) RefreshSlots().IgnoreError();
    if (clock_->Now() + backoff > deadline) return last;
    Backoff(backoff);
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
  return Unavailable("too many Redis Cluster redirects");
}

std::string RedisClient::KnownAddress(int slot) {
  absl::MutexLock lock(&mu_);
  return options_.cluster ? slots_[slot] : standalone_address_;
}

std::vector<absl::StatusOr<Reply>> RedisClient::RunEach(
    const std::vector<Keyed>& commands, size_t batch) {
  std::vector<absl::StatusOr<Reply>> out(commands.size());
  const size_t step = std::max<size_t>(batch, 1);
  // By node; a command whose node is unknown goes alone through Run.
  std::map<std::string, std::vector<size_t>> by_node;
  std::vector<size_t> alone;
  for (size_t i = 0; i < commands.size(); ++i) {
    absl::StatusOr<std::string> a =
        AddressForSlot(KeySlot(commands[i].routing_key));
    (a.ok() ? by_node[*a] : alone).push_back(i);
  }
  for (const auto& [address, indexes] : by_node) {
    bool failed = false;  // a batch failed: the node's rest go alone
    for (size_t at = 0; at < indexes.size(); at += step) {
      const size_t end = std::min(indexes.size(), at + step);
      if (failed) {
        alone.insert(alone.end(), indexes.begin() + at, indexes.begin() + end);
        continue;
      }
      std::vector<Command> cmds;
      for (size_t k = at; k < end; ++k) {
        cmds.push_back(commands[indexes[k]].command);
      }
      std::string redirect;
      absl::StatusOr<std::vector<Reply>> r =
          Attempt(address, cmds, /*asking=*/false, &redirect);
      failed = !r.ok();
      for (size_t k = at; k < end; ++k) {
        const size_t i = indexes[k];
        Reply* reply = r.ok() ? &(*r)[k - at] : nullptr;
        if (reply != nullptr && !IsRetried(reply->get()) &&
            !StartsWith(reply->get(), "MOVED ") &&
            !StartsWith(reply->get(), "ASK ")) {
          out[i] = std::move(*reply);
          continue;
        }
        if (reply != nullptr && StartsWith(reply->get(), "MOVED ")) {
          // "MOVED <slot> <host:port>": the next call goes there at once.
          std::vector<std::string> parts = absl::StrSplit(
              absl::string_view((*reply)->str, (*reply)->len), ' ');
          int slot = -1;
          if (parts.size() == 3 && absl::SimpleAtoi(parts[1], &slot) &&
              slot >= 0 && slot < kSlots) {
            SetSlot(slot, parts[2]);
          }
        }
        alone.push_back(i);
      }
    }
  }
  // A node still UNAVAILABLE after Run's retries costs one retry deadline:
  // the rest of its commands get that answer at once, not one each.
  std::map<std::string, absl::Status> down;  // by node ("": unknown)
  for (size_t i : alone) {
    const std::string node = KnownAddress(KeySlot(commands[i].routing_key));
    if (auto d = down.find(node); d != down.end()) {
      out[i] = d->second;
      continue;
    }
    absl::StatusOr<std::vector<Reply>> r =
        Run(commands[i].routing_key, {commands[i].command});
    if (r.ok()) {
      out[i] = std::move((*r)[0]);
    } else {
      out[i] = r.status();
      if (r.status().code() == absl::StatusCode::kUnavailable) {
        down[node] = r.status();
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<Reply>> RedisClient::RunOnEveryPrimary(
    const Command& command) {
  std::set<std::string> addresses;
  {
    absl::MutexLock lock(&mu_);
    if (!options_.cluster) {
      addresses.insert(standalone_address_);
    } else {
      for (const std::string& a : slots_) {
        if (!a.empty()) addresses.insert(a);
      }
    }
  }
  std::vector<Reply> out;
  for (const std::string& a : addresses) {
    std::string redirect;
    SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                        Attempt(a, {command}, false, &redirect));
    out.push_back(std::move(r[0]));
  }
  return out;
}

absl::Status RedisClient::Ping() {
  absl::Status last;
  for (int attempt = 0; attempt < (options_.cluster ? 2 : 1); ++attempt) {
    if (attempt > 0) RefreshSlots().IgnoreError();
    absl::StatusOr<std::vector<Reply>> r = RunOnEveryPrimary({"PING"});
    if (r.ok()) {
      last =
          r->empty() ? Unavailable("no Redis primary known") : absl::OkStatus();
      for (const Reply& reply : *r) {
        if (reply->type == REDIS_REPLY_ERROR) {
          last = Unavailable(absl::StrCat(
              "PING: ", absl::string_view(reply->str, reply->len)));
        }
      }
    } else {
      last = r.status();
    }
    if (last.ok()) return last;
  }
  return last;
}

}  // namespace statestream::store_internal
