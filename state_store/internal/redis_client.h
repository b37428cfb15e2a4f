// SPDX-License-Identifier: Apache-2.0
// A small synchronous Redis client over hiredis 0.14 for the state store:
// per-node connection pools, AUTH, timeouts, retry with backoff, and Redis
// Cluster routing (CRC16 hash slots, CLUSTER SLOTS, MOVED/ASK/TRYAGAIN),
// which hiredis 0.14 lacks. Not part of the public interface.
#ifndef STATESTREAM_STATE_STORE_INTERNAL_REDIS_CLIENT_H_
#define STATESTREAM_STATE_STORE_INTERNAL_REDIS_CLIENT_H_

#include <hiredis/hiredis.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace statestream::store_internal {

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;
// One command: its arguments (not owned; must outlive the call).
using Command = std::vector<absl::string_view>;
// Where the bulk-string reply of a command goes instead of a fresh
// allocation: called with the command's index and the value's length as the
// reply arrives, it returns memory for `length` bytes, or nullptr to
// allocate as usual. A reply received into the sink is a REDIS_REPLY_STRING
// with str == nullptr and len == length. After a retried attempt the sink
// is called again from command 0.
using BulkSink = std::function<char*(size_t command, size_t length)>;

// The Redis Cluster hash slot of `key` (honours {hash tags}).
int KeySlot(absl::string_view key);

struct RedisClientOptions {
  std::vector<std::string> seeds;  // "host:port"; the first reachable is used
  bool cluster = false;
  std::string user;  // ACL user; "" = AUTH with password only
  std::string password;
  absl::Duration connect_timeout;
  absl::Duration command_timeout;
  absl::Duration retry_deadline;  // total time spent retrying one call
  absl::Duration backoff_initial;
  absl::Duration backoff_max;
  int max_idle_connections_per_node = 8;
  Clock* clock = nullptr;  // not owned
};

// Redis's answer to a connection past its maxclients ("ERR max number of
// clients reached", then it closes the socket): an outage to wait out, not
// a refusal of the user or a reply the store did not foresee.
bool IsClientLimit(absl::string_view error_text);

// An error reply refusing the connection's user: NOAUTH (no AUTH given),
// NOPERM (the ACL forbids the command or key), WRONGPASS.
bool IsAccessRefusal(const redisReply* r);

// Redis refused the user (`what`: its error text). While connecting, a
// configuration error: PERMISSION_DENIED, which waiting does not mend. Once
// connected (an ACL or password changed under a running process, met by a
// new connection or a command): UNAVAILABLE/STORE_UNAVAILABLE with metadata
// `redis_error`, for a retry once an operator fixed it.
absl::Status AccessRefused(bool connected, absl::string_view what);

// Thread-safe.
class RedisClient {
 public:
  // Connects to a seed (and loads the slot map in cluster mode).
  static absl::StatusOr<std::unique_ptr<RedisClient>> Connect(
      const RedisClientOptions& options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Sends `commands` pipelined on one connection to the node serving
  // `routing_key`'s slot and returns one reply per command. Error replies
  // (other than redirects and TRYAGAIN/LOADING/CLUSTERDOWN, which are
  // followed or retried) are returned as replies. Connection failures are
  // retried with backoff until retry_deadline, then UNAVAILABLE/
  // kStoreUnavailable; so every command must be safe to repeat.
  absl::StatusOr<std::vector<Reply>> Run(absl::string_view routing_key,
                                         const std::vector<Command>& commands,
                                         const BulkSink& sink = nullptr);
  // Runs each command as Run(routing key, {command}) would, pipelined:
  // those whose slots one node serves (standalone: all) share a connection,
  // up to `batch` at a time. A command answered with a redirect or a
  // retryable error, or in a batch whose connection failed (and the rest
  // of that node's), is run again alone through Run; a node that stays
  // UNAVAILABLE then answers the rest of its commands so at once. One
  // result per command, in order. The commands must be safe to repeat.
  struct Keyed {
    absl::string_view routing_key;
    Command command;
  };
  std::vector<absl::StatusOr<Reply>> RunEach(const std::vector<Keyed>& commands,
                                             size_t batch = 256);
  // Runs one command on every primary (standalone: the server), e.g. INFO.
  absl::StatusOr<std::vector<Reply>> RunOnEveryPrimary(const Command& command);
  // PING on every primary, one attempt each (no retry loop: a readiness
  // probe). In Cluster mode a failure refreshes the slot map and tries
  // once more, so a failover is not reported as an outage.
  absl::Status Ping();

  // Fails the calls in flight (their sockets are shut down) and every later
  // call at once with UNAVAILABLE/kStoreUnavailable, retrying nothing: for
  // a process that is stopping and must not wait out a hung Redis. A
  // connect already under way still takes up to connect_timeout.
  // Irreversible; idempotent.
  void Close();

 private:
  struct Node;
  explicit RedisClient(const RedisClientOptions& options);
  Node* NodeFor(const std::string& address);
  absl::StatusOr<std::string> AddressForSlot(int slot);
  // The node serving `slot` as last known ("" if none), without asking.
  std::string KnownAddress(int slot);
  absl::Status RefreshSlots();
  void SetSlot(int slot, const std::string& address);
  // Marks the socket `fd` as in use by a call, so Close() can shut it
  // down; false (nothing marked) once Close() was called.
  bool MarkBusy(int fd);
  // Unmarks it: before the socket is closed, so Close() never shuts down
  // an unrelated socket that reuses the number.
  void MarkIdle(int fd);
  // The error of a call made or cut short after Close().
  static absl::Status ClosedError();
  bool closed();
  // Sleeps `d` of the clock's time; wakes early at Close() (real clock).
  void Backoff(absl::Duration d);
  // One attempt on `address`. Sets *redirect to "ASK host:port" /
  // "MOVED host:port" or "RETRY" when the caller should try again.
  absl::StatusOr<std::vector<Reply>> Attempt(const std::string& address,
                                             const std::vector<Command>& cmds,
                                             bool asking, std::string* redirect,
                                             const BulkSink& sink = nullptr);

  const RedisClientOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Node>> nodes_ ABSL_GUARDED_BY(mu_);
  // Cluster: slot -> node address ("" = unknown). Standalone: unused.
  std::vector<std::string> slots_ ABSL_GUARDED_BY(mu_);
  std::string standalone_address_ ABSL_GUARDED_BY(mu_);
  // Connect succeeded (refusals are AccessRefused(true, ...) from then on).
  std::atomic<bool> connected_{false};
  absl::Mutex close_mu_;
  bool closed_ ABSL_GUARDED_BY(close_mu_) = false;
  SteadyWaiter closed_wake_;  // told when closed_ is set
  std::set<int> busy_fds_ ABSL_GUARDED_BY(close_mu_);
};

}  // namespace statestream::store_internal

#endif  // STATESTREAM_STATE_STORE_INTERNAL_REDIS_CLIENT_H_
