// SPDX-License-Identifier: Apache-2.0
// RedisClient's own RESP I/O: every reply type and multi-MB values against a
// real redis-server, and malformed or cut-off replies from a fake server,
// which must end as UNAVAILABLE without crashing or reusing the connection.
#include "state_store/internal/redis_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/internal/redis_store.h"
#include "state_store/testing/redis_harness.h"

namespace statestream::store_internal {
namespace {

RedisClientOptions Options(const std::string& address) {
  RedisClientOptions o;
  o.seeds = {address};
  o.connect_timeout = absl::Seconds(2);
  o.command_timeout = absl::Seconds(2);
  o.retry_deadline = absl::Milliseconds(50);
  o.backoff_initial = absl::Milliseconds(5);
  o.backoff_max = absl::Milliseconds(20);
  return o;
}

std::string Text(const redisReply* r) { return std::string(r->str, r->len); }

class RealRedisTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto s = testing::RedisServer::Start({});
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = s->release();
  }
  static void TearDownTestSuite() { delete server_; }
  static testing::RedisServer* server_;
};
testing::RedisServer* RealRedisTest::server_ = nullptr;

TEST_F(RealRedisTest, EveryReplyTypeInOnePipeline) {
  auto client = RedisClient::Connect(Options(server_->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string small(100, 's');
  auto r = (*client)->Run(
      "k", {{"SET", "k", small},
            {"GET", "k"},
            {"GET", "missing"},
            {"INCR", "n"},
            {"EVAL", "return {1, 'two', {3, {'four'}}, false}", "0"},
            {"NOSUCHCOMMAND"},
            {"SET", "empty", ""},
            {"GET", "empty"}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 8u);
  EXPECT_EQ((*r)[0]->type, REDIS_REPLY_STATUS);
  EXPECT_EQ(Text((*r)[0].get()), "OK");
  EXPECT_EQ(Text((*r)[1].get()), small);
  EXPECT_EQ((*r)[2]->type, REDIS_REPLY_NIL);
  EXPECT_EQ((*r)[3]->type, REDIS_REPLY_INTEGER);
  EXPECT_EQ((*r)[3]->integer, 1);
  const redisReply* a = (*r)[4].get();
  ASSERT_EQ(a->type, REDIS_REPLY_ARRAY);
  ASSERT_EQ(a->elements, 4u);
  EXPECT_EQ(a->element[0]->integer, 1);
  EXPECT_EQ(Text(a->element[1]), "two");
  ASSERT_EQ(a->element[2]->elements, 2u);
  EXPECT_EQ(Text(a->element[2]->element[1]->element[0]), "four");
  EXPECT_EQ(a->element[3]->type, REDIS_REPLY_NIL);
  EXPECT_EQ((*r)[5]->type, REDIS_REPLY_ERROR);
  EXPECT_TRUE(absl::StartsWith(Text((*r)[5].get()), "ERR"));
  EXPECT_EQ((*r)[7]->type, REDIS_REPLY_STRING);
  EXPECT_EQ((*r)[7]->len, 0u);
}

// An IPv6 address as the flags take it ("[::1]:PORT") reaches the node:
// the brackets are not part of the host (getaddrinfo("[::1]") fails).
TEST(RedisClientAddressTest, ABracketedIpv6AddressConnects) {
  {
    const int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    const bool v6 = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&a),
                                         sizeof(a)) == 0;
    if (probe >= 0) ::close(probe);
    if (!v6) GTEST_SKIP() << "no IPv6 loopback here";
  }
  testing::RedisServerOptions o;
  o.args = {"--bind", "127.0.0.1", "::1"};
  auto server = testing::RedisServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client =
      RedisClient::Connect(Options(absl::StrCat("[::1]:", (*server)->port())));
  ASSERT_TRUE(client.ok()) << client.status();
  auto r = (*client)->Run("k", {{"PING"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Text((*r)[0].get()), "PONG");
}

TEST_F(RealRedisTest, LargeValuesRoundTripWithAndWithoutASink) {
  auto client = RedisClient::Connect(Options(server_->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  std::string big(5'000'017, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131);
  const std::string tail(3 << 20, 't');
  ASSERT_TRUE(
      (*client)->Run("a", {{"SET", "a", big}, {"SET", "b", tail}}).ok());

  auto plain = (*client)->Run("a", {{"GET", "a"}});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(Text((*plain)[0].get()) == big);

  // The sink takes command 1's value only; command 0's is allocated.
  std::string into(tail.size(), '\0');
  std::vector<size_t> asked;
  auto sunk = (*client)->Run("a", {{"GET", "a"}, {"GET", "b"}, {"GET", "x"}},
                             [&](size_t command, size_t n) -> char* {
                               asked.push_back(command);
                               if (command == 1) {
                                 EXPECT_EQ(n, tail.size());
                               }
                               return command == 1 ? into.data() : nullptr;
                             });
  ASSERT_TRUE(sunk.ok()) << sunk.status();
  EXPECT_EQ(asked, (std::vector<size_t>{0, 1}));  // nil asks nothing
  EXPECT_TRUE(Text((*sunk)[0].get()) == big);
  EXPECT_EQ((*sunk)[1]->type, REDIS_REPLY_STRING);
  EXPECT_EQ((*sunk)[1]->str, nullptr);
  EXPECT_EQ((*sunk)[1]->len, tail.size());
  EXPECT_TRUE(into == tail);
  EXPECT_EQ((*sunk)[2]->type, REDIS_REPLY_NIL);
}

// A server that answers PING properly and every other command with
// `reply`, then closes the connection.
class FakeRedis {
 public:
  explicit FakeRedis(std::string reply) : reply_(std::move(reply)) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    listen(listener_, 16);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeRedis() {
    stop_ = true;
    shutdown(listener_, SHUT_RDWR);
    close(listener_);
    thread_.join();
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int connections() const { return connections_; }

 private:
  void Serve() {
    while (!stop_) {
      const int c = accept(listener_, nullptr, nullptr);
      if (c < 0) return;
      ++connections_;
      char buf[4096];
      ssize_t n;
      while ((n = read(c, buf, sizeof(buf))) > 0) {
        const std::string got(buf, static_cast<size_t>(n));
        if (absl::StrContains(got, "PING")) {
          (void)!write(c, "+PONG\r\n", 7);
          continue;
        }
        (void)!write(c, reply_.data(), reply_.size());
        break;
      }
      close(c);
    }
  }

  const std::string reply_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

// After a restart every pooled connection is dead. The first that fails
// takes the others with it, so the retry connects afresh at once instead of
// trying each dead one with a backoff between (which a full pool made
// longer than the retry deadline).
TEST(RedisClientRestartTest, AFullPoolOfDeadConnectionsCostsOneRetry) {
  auto server = testing::RedisServer::Start({});
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClientOptions o = Options((*server)->address());
  o.max_idle_connections_per_node = 16;
  o.retry_deadline = absl::Milliseconds(300);
  o.backoff_initial = absl::Milliseconds(40);
  o.backoff_max = absl::Milliseconds(160);
  auto client = RedisClient::Connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  // 16 calls at once: 16 connections, all back in the pool afterwards.
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      auto r = (*client)->Run("k", {{"BLPOP", absl::StrCat("none", i), "0.2"}});
      if (r.ok()) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(ok.load(), 16);
  (*server)->Kill();
  ASSERT_TRUE((*server)->Restart().ok());
  auto r = (*client)->Run("k", {{"PING"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Text((*r)[0].get()), "PONG");
}

// A Redis node's address is in an error's message, for the logs, and not in
// its public message, which is all a client is told (ToGrpcStatus): the
// refused connect, a connection that broke, a refused AUTH.
TEST(RedisClientErrorTest, ClientsAreNotToldARedisNodesAddress) {
  auto expect_withheld = [](const absl::Status& error,
                            const std::string& address) {
    EXPECT_EQ(GetReason(error), Reason::kStoreUnavailable) << error;
    EXPECT_TRUE(absl::StrContains(error.message(), address)) << error;
    const std::optional<std::string> shown = GetPublicMessage(error);
    ASSERT_TRUE(shown.has_value()) << error;
    EXPECT_FALSE(absl::StrContains(*shown, address)) << *shown;
    EXPECT_FALSE(absl::StrContains(*shown, "127.0.0.1")) << *shown;
    EXPECT_TRUE(absl::StrContains(*shown, "a Redis node")) << *shown;
  };
  {
    auto server = testing::RedisServer::Start({});
    ASSERT_TRUE(server.ok()) << server.status();
    const std::string address = (*server)->address();
    auto client = RedisClient::Connect(Options(address));
    ASSERT_TRUE(client.ok()) << client.status();
    (*server)->Kill();
    auto r = (*client)->Run("k", {{"PING"}});
    ASSERT_FALSE(r.ok());
    expect_withheld(r.status(), address);
  }
  {
    FakeRedis fake("$5\r\nab");
    auto client = RedisClient::Connect(Options(fake.address()));
    ASSERT_TRUE(client.ok()) << client.status();
    auto r = (*client)->Run("k", {{"GET", "k"}});
    ASSERT_FALSE(r.ok());
    expect_withheld(r.status(), fake.address());
  }
  {
    auto server = testing::RedisServer::Start({});
    ASSERT_TRUE(server.ok()) << server.status();
    ASSERT_TRUE(
        (*server)->Command({"CONFIG", "SET", "requirepass", "right"}).ok());
    RedisClientOptions o = Options((*server)->address());
    o.password = "wrong";
    auto client = RedisClient::Connect(o);
    ASSERT_FALSE(client.ok());
    expect_withheld(client.status(), (*server)->address());
  }
}

// A Cluster node refusing CLUSTER SLOTS to the store's ACL user: the log
// has Redis's text (which, from 7.2, names the user) and the node; a
// client is told the refusal's code.
TEST(RedisClientErrorTest, ARefusedSlotMapShowsOnlyTheRefusalsCode) {
  auto cluster = testing::RedisCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  for (int i = 0; i < (*cluster)->size(); ++i) {
    ASSERT_TRUE((*cluster)
                    ->node(i)
                    ->Command({"ACL", "SETUSER", "noslots", "on", ">pw", "~*",
                               "+@all", "-cluster|slots"})
                    .ok());
  }
  RedisClientOptions o = Options((*cluster)->addresses()[0]);
  o.seeds = (*cluster)->addresses();
  o.cluster = true;
  o.user = "noslots";
  o.password = "pw";
  auto client = RedisClient::Connect(o);
  ASSERT_FALSE(client.ok());
  const absl::Status& error = client.status();
  EXPECT_EQ(GetReason(error), Reason::kStoreUnavailable) << error;
  EXPECT_TRUE(absl::StrContains(error.message(), "cluster|slots")) << error;
  const std::optional<std::string> shown = GetPublicMessage(error);
  ASSERT_TRUE(shown.has_value()) << error;
  EXPECT_TRUE(absl::EndsWith(*shown, "failed: NOPERM")) << *shown;
  EXPECT_FALSE(absl::StrContains(*shown, "127.0.0.1")) << *shown;
}

// WAITAOF only when every primary has it (Redis 7.2+): a Cluster in the
// middle of an upgrade from 7.0 reads the fsync settings instead.
TEST(RedisReplyTest, WaitaofWhenEveryPrimaryIsAtLeast7Point2) {
  using store_internal::AllHaveWaitaof;
  const std::string v70 =
      "# Server\r\nredis_version:7.0.15\r\nredis_mode:x\r\n";
  const std::string v72 = "# Server\r\nredis_version:7.2.4\r\nredis_mode:x\r\n";
  const std::string v8 = "redis_version:8.0.0\n";
  EXPECT_TRUE(AllHaveWaitaof({v72}));
  EXPECT_TRUE(AllHaveWaitaof({v72, v8}));
  EXPECT_FALSE(AllHaveWaitaof({v70}));
  EXPECT_FALSE(AllHaveWaitaof({v72, v70}));  // the first no longer decides
  EXPECT_FALSE(AllHaveWaitaof({v70, v72}));
  EXPECT_FALSE(AllHaveWaitaof({}));
  EXPECT_FALSE(AllHaveWaitaof({"# Server\r\n"}));
  EXPECT_FALSE(AllHaveWaitaof({"redis_version:seven\r\n"}));
}

TEST(RedisClientProtocolTest, MalformedRepliesAreUnavailableNotCrashes) {
  const std::string deep = [] {
    std::string s;
    for (int i = 0; i < 40; ++i) s += "*1\r\n";
    return s + ":1\r\n";
  }();
  for (const std::string& bad :
       {std::string("$5\r\nab"),           // cut off inside a value
        std::string("$3\r\nabcXY"),        // value not terminated by CRLF
        std::string("?what\r\n"),          // unknown type
        std::string("$99999999999\r\n"),   // absurd length
        std::string("$-7\r\n"),            // negative length
        std::string("*-3\r\n"),            // negative array length
        std::string(":12x\r\n"),           // bad integer
        std::string("+OK\n"),              // LF without CR
        std::string("+OK\r\n+EXTRA\r\n"),  // more replies than commands
        std::string(70000, 'x'),           // a line without end
        std::string(""),                   // closed without a reply
        deep}) {
    FakeRedis fake(bad);
    auto client = RedisClient::Connect(Options(fake.address()));
    ASSERT_TRUE(client.ok()) << client.status();
    auto r = (*client)->Run("k", {{"GET", "k"}});
    ASSERT_FALSE(r.ok()) << "reply " << absl::CEscape(bad.substr(0, 40));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    // The broken connection was not returned to the pool: a second call
    // opens a new one.
    const int before = fake.connections();
    EXPECT_FALSE((*client)->Run("k", {{"GET", "k"}}).ok());
    EXPECT_GT(fake.connections(), before);
  }
}

}  // namespace
}  // namespace statestream::store_internal
