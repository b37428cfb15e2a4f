// SPDX-License-Identifier: Apache-2.0
// The Redis store against a redis-server that refuses it, or may drop its
// keys: ACL users and passwords at connect and under a running store
// (refusals are PERMISSION_DENIED at connect, UNAVAILABLE with
// `redis_error` after), keys an ACL leaves out, and an evicting
// maxmemory-policy reported at connect.
#include <hiredis/hiredis.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/redis_state_store.h"
#include "state_store/redis_state_store_test_util.h"
#include "state_store/testing/redis_harness.h"

namespace statestream::testing {
namespace {

TEST(RedisStateStoreTest, AuthWithAclUser) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)
                  ->Command({"ACL", "SETUSER", "statestream", "on", ">s3cret",
                             "~ss:*", "+@all"})
                  .ok());
  ASSERT_TRUE((*server)
                  ->Command({"ACL", "SETUSER", "elsewhere", "on", ">s3cret",
                             "~other:*", "+@all"})
                  .ok());
  // The default user needs a password from here on (the test's own).
  ASSERT_TRUE(
      (*server)->Command({"ACL", "SETUSER", "default", ">admin-pw"}).ok());
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  // A refused user is a configuration error, not an outage to wait out:
  // standalone (NOAUTH at SCRIPT LOAD) and Cluster (at CLUSTER SLOTS).
  auto anonymous = NewRedisStateStore(o);
  EXPECT_EQ(anonymous.status().code(), absl::StatusCode::kPermissionDenied)
      << anonymous.status();
  o.cluster = true;
  anonymous = NewRedisStateStore(o);
  EXPECT_EQ(anonymous.status().code(), absl::StatusCode::kPermissionDenied)
      << anonymous.status();
  EXPECT_TRUE(absl::StrContains(anonymous.status().message(), "NOAUTH"))
      << anonymous.status();
  o.cluster = false;
  o.user = "statestream";
  o.password = "wrong";
  auto wrong = NewRedisStateStore(o);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied);
  o.password = "s3cret";
  auto store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE(
      (*store)->CreateSession(NewSession("a", Durability::kMemory)).ok());
  auto loaded = (*store)->LoadVersion({"acme", "a"}, 0);
  ASSERT_TRUE(loaded.ok()) << loaded.status();

  // The password changed under the running store: its next connection is
  // refused, which is an outage for the operator to mend (UNAVAILABLE with
  // Redis's answer), not a verdict on the caller.
  ASSERT_TRUE(
      (*server)
          ->Command({"ACL", "SETUSER", "statestream", "resetpass", ">rotated"},
                    "admin-pw")
          .ok());
  ASSERT_TRUE(
      (*server)
          ->Command({"CLIENT", "KILL", "USER", "statestream"}, "admin-pw")
          .ok());
  auto rotated = (*store)->GetHead({"acme", "a"});
  EXPECT_EQ(rotated.status().code(), absl::StatusCode::kUnavailable)
      << rotated.status();
  EXPECT_EQ(GetReason(rotated.status()), Reason::kStoreUnavailable);
  EXPECT_EQ(GetErrorMetadata(rotated.status(), "redis_error").value_or(""),
            "WRONGPASS")
      << rotated.status();
  ASSERT_TRUE(
      (*server)
          ->Command({"ACL", "SETUSER", "statestream", "resetpass", ">s3cret"},
                    "admin-pw")
          .ok());
  EXPECT_TRUE((*store)->GetHead({"acme", "a"}).ok());

  // A user whose ACL leaves out the store's keys connects, and each call
  // is refused with Redis's answer (an operator's fix, not a bug).
  o.user = "elsewhere";
  auto fenced_off = NewRedisStateStore(o);
  ASSERT_TRUE(fenced_off.ok()) << fenced_off.status();
  auto refused =
      (*fenced_off)->CreateSession(NewSession("b", Durability::kMemory));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable)
      << refused.status();
  EXPECT_EQ(GetReason(refused.status()), Reason::kStoreUnavailable);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "NOPERM"))
      << refused.status();

  // A user that may read every key but the state chunks ("...:c<i>"; the
  // version records are "...:v<n>"): loading is refused, not reported as a
  // missing chunk.
  ASSERT_TRUE((*server)
                  ->Command({"ACL", "SETUSER", "nochunks", "on", ">s3cret",
                             "~ss:*[a-z]", "~ss:*:v[0-9]", "%W~ss:*", "+@all"},
                            "admin-pw")
                  .ok());
  o.user = "nochunks";
  auto no_chunks = NewRedisStateStore(o);
  ASSERT_TRUE(no_chunks.ok()) << no_chunks.status();
  auto head_read = (*no_chunks)->GetHead({"acme", "a"});
  ASSERT_TRUE(head_read.ok()) << head_read.status();
  auto unread = (*no_chunks)->LoadVersion({"acme", "a"}, 0);
  EXPECT_EQ(unread.status().code(), absl::StatusCode::kUnavailable)
      << unread.status();
  EXPECT_EQ(GetErrorMetadata(unread.status(), "redis_error").value_or(""),
            "NOPERM")
      << unread.status();
}

// A create at the tenant's limit that cannot write the listing's mark
// (here an ACL leaves it out; as well OOM or READONLY) is the store being
// unavailable, a retryable error naming the refusal, not TENANT_LIMIT:
// the limit may not be reached at all (entries of sessions gone).
TEST(RedisStateStoreTest, ARefusedListingMarkIsUnavailableNotTheLimit) {
  std::unique_ptr<RedisServer> server;
  std::unique_ptr<StateStore> admin;
  ASSERT_NO_FATAL_FAILURE(StartStandalone(&server, &admin));
  ASSERT_TRUE(server
                  ->Command({"ACL", "SETUSER", "nomark", "on", ">s3cret",
                             "~ss:{acme/*", "~ss:{t:acme}:sessions", "+@all"})
                  .ok());
  RedisStateStoreOptions o;
  o.addresses = {server->address()};
  o.user = "nomark";
  o.password = "s3cret";
  auto store = NewRedisStateStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  auto create = [&](StateStore& s, const std::string& id) {
    CreateSessionRequest r = NewSession(id, Durability::kMemory);
    r.max_tenant_sessions = 2;
    return s.CreateSession(r).status();
  };
  ASSERT_TRUE(create(**store, "a").ok());
  ASSERT_TRUE(create(**store, "b").ok());
  const absl::Status refused = create(**store, "c");
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_EQ(GetReason(refused), Reason::kStoreUnavailable) << refused;
  EXPECT_EQ(GetErrorMetadata(refused, "redis_error").value_or(""), "NOPERM")
      << refused;
  // Redis's text may name the store's ACL user (NOPERM on a command) or a
  // script: the log's to see; a client is told the refusal's code.
  EXPECT_EQ(GetPublicMessage(refused), "Redis refused the command (NOPERM)");
  // With the mark written, the same create is the limit.
  EXPECT_EQ(GetReason(create(*admin, "c")), Reason::kTenantLimit);
}

// A Redis that may evict keys with a TTL (every session state has one) is
// reported at connect; noeviction is not.
TEST(RedisStateStoreTest, AnEvictingRedisIsReportedAtConnect) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::string> warnings;
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  o.on_warning = [&warnings](const std::string& w) { warnings.push_back(w); };
  ASSERT_TRUE((*server)
                  ->Command({"CONFIG", "SET", "maxmemory-policy", "noeviction"})
                  .ok());
  ASSERT_TRUE(NewRedisStateStore(o).ok());
  EXPECT_TRUE(warnings.empty());
  ASSERT_TRUE(
      (*server)
          ->Command({"CONFIG", "SET", "maxmemory-policy", "volatile-lru"})
          .ok());
  ASSERT_TRUE(NewRedisStateStore(o).ok());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("volatile-lru"), std::string::npos);
}

// A Redis at its maxclients answers a new connection "ERR max number of
// clients reached" and closes it: an outage (UNAVAILABLE, the store's
// STORE_UNAVAILABLE), whether met at AUTH while connecting (it was
// PERMISSION_DENIED, so a worker starting in a connection storm exited
// instead of waiting) or by a running store's command on a new connection
// (it was INTERNAL, which clients do not retry).
TEST(RedisStateStoreTest, RedisAtItsClientLimitIsAnOutage) {
  auto server = RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  o.retry_deadline = absl::Milliseconds(300);
  auto running = NewRedisStateStore(o);  // its connection is pooled
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_TRUE(
      (*running)->CreateSession(NewSession("a", Durability::kMemory)).ok());
  // One connection held by the test, and no room for another.
  redisContext* held = redisConnect("127.0.0.1", (*server)->port());
  ASSERT_TRUE(held != nullptr && held->err == 0);
  const auto command = [held](const char* text) {
    auto* r = static_cast<redisReply*>(redisCommand(held, text));
    const bool ok = r != nullptr && r->type != REDIS_REPLY_ERROR;
    if (r != nullptr) freeReplyObject(r);
    return ok;
  };
  ASSERT_TRUE(command("CONFIG SET maxclients 1"));
  // The running store's pooled connection goes: its next command needs a
  // new one.
  ASSERT_TRUE(command("CLIENT KILL TYPE normal SKIPME yes"));
  auto head = (*running)->GetHead({"acme", "a"});
  EXPECT_EQ(head.status().code(), absl::StatusCode::kUnavailable)
      << head.status();
  EXPECT_EQ(GetReason(head.status()), Reason::kStoreUnavailable);
  // With room again, the running store connects afresh.
  ASSERT_TRUE(command("CONFIG SET maxclients 100"));
  head = (*running)->GetHead({"acme", "a"});
  EXPECT_TRUE(head.ok()) << head.status();
  ASSERT_TRUE(command("CONFIG SET maxclients 1"));
  // A store starting then (no AUTH: its PING meets the refusal).
  auto starting = NewRedisStateStore(o);
  EXPECT_EQ(starting.status().code(), absl::StatusCode::kUnavailable)
      << starting.status();
  ASSERT_TRUE(command("CONFIG SET requirepass pw"));
  o.password = "pw";
  starting = NewRedisStateStore(o);
  EXPECT_EQ(starting.status().code(), absl::StatusCode::kUnavailable)
      << starting.status();
  EXPECT_TRUE(
      absl::StrContains(starting.status().message(), "max number of clients"))
      << starting.status();
  ASSERT_TRUE(command("CONFIG SET maxclients 100"));
  redisFree(held);
  ASSERT_TRUE(NewRedisStateStore(o).ok());
}

}  // namespace
}  // namespace statestream::testing
