// SPDX-License-Identifier: Apache-2.0
#include "services/tenants.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "common/throttled_log.h"
#include "gtest/gtest.h"
#include "state_store/memory_state_store.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/forwarding_store.h"
#include "state_store/testing/redis_harness.h"

namespace statestream {
namespace {

constexpr char kToken[] = "token-0123456789abcdef";

TenantAuth Keys() {
  return TenantAuth(std::map<std::string, std::string>{
      {kToken, "acme"}, {"other-token-0123456789", "globex"}});
}

TEST(InternalTokenTest, OnlyTheTokenPassesWhenOneIsConfigured) {
  EXPECT_TRUE(InternalToken().Check(std::nullopt).ok());
  EXPECT_TRUE(InternalToken().Check("anything").ok());
  // Surrounding whitespace (a file's trailing newline) is not the token's.
  auto token = InternalToken::FromValue("  internal-0123456789abcdef\n");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->value(), "internal-0123456789abcdef");
  EXPECT_TRUE(token->Check("internal-0123456789abcdef").ok());
  for (std::optional<absl::string_view> shown :
       {std::optional<absl::string_view>(),
        std::optional<absl::string_view>(""),
        std::optional<absl::string_view>("internal-0123456789abcdeF"),
        std::optional<absl::string_view>("internal-0123456789abcdef ")}) {
    absl::Status st = token->Check(shown);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(GetReason(st), Reason::kUnauthenticated);
    EXPECT_EQ(st.message().find("0123456789"), absl::string_view::npos);
  }
}

TEST(InternalTokenTest, AMalformedOrMissingTokenIsRefusedWithoutEchoingIt) {
  for (absl::string_view bad : std::initializer_list<absl::string_view>{
           "", "short-secret", "has a space-0123456789",
           "tab\t-0123456789abcdef",
           absl::string_view("nul\0-0123456789abcdef", 21)}) {
    auto token = InternalToken::FromValue(bad);
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(token.status().message().find("0123456789"),
              absl::string_view::npos);
  }
  EXPECT_EQ(InternalToken::FromValue(std::string(257, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(InternalToken::FromFile("/nonexistent/token").status().code(),
            absl::StatusCode::kNotFound);
}

// A file holds one token per line: the first is sent, any is accepted
// (rotation: add the new one second everywhere, then first, then drop the
// old one).
TEST(InternalTokenTest, AFileMayHoldSeveralTokensForRotation) {
  char dir[] = "/tmp/ss-token-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/token";
  auto write = [&](const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
  };
  write(
      "# rotating\n  "
      "new-token-0123456789abcdef\n\nold-token-0123456789abcdef\n");
  auto token = InternalToken::FromFile(path);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->value(), "new-token-0123456789abcdef");
  EXPECT_TRUE(token->Check("new-token-0123456789abcdef").ok());
  EXPECT_TRUE(token->Check("old-token-0123456789abcdef").ok());
  EXPECT_EQ(token->Check("another-token-0123456789").code(),
            absl::StatusCode::kUnauthenticated);
  write("good-token-0123456789abcdef\nbad token-0123456789\n");
  auto bad = InternalToken::FromFile(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(":2:"), absl::string_view::npos)
      << bad.status();
  EXPECT_EQ(bad.status().message().find("0123456789"), absl::string_view::npos);
  write("# nothing but a comment\n\n");
  EXPECT_EQ(InternalToken::FromFile(path).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The example manifests' placeholder, even as the second token (left
  // there after a rotation), is reported.
  EXPECT_FALSE(token->holds_placeholder());
  write("new-token-0123456789abcdef\nCHANGE-ME-0123456789abcdef\n");
  auto placeholder = InternalToken::FromFile(path);
  ASSERT_TRUE(placeholder.ok()) << placeholder.status();
  EXPECT_TRUE(placeholder->holds_placeholder());
  // A directory opens but cannot be read: NOT_FOUND, not a file of no
  // tokens (the same for the API keys).
  EXPECT_EQ(InternalToken::FromFile(dir).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(TenantAuth::FromFile(dir).status().code(),
            absl::StatusCode::kNotFound);
  std::remove(path.c_str());
  rmdir(dir);
}

TEST(TenantAuthTest, AKnownTokenNamesItsTenantInAnySchemeCase) {
  const TenantAuth auth = Keys();
  for (const std::string scheme : {"Bearer ", "bearer ", "BEARER "}) {
    auto tenant = auth.Authenticate(scheme + kToken, std::nullopt);
    ASSERT_TRUE(tenant.ok()) << scheme << tenant.status();
    EXPECT_EQ(*tenant, "acme");
  }
  auto other = auth.Authenticate("Bearer other-token-0123456789", std::nullopt);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(*other, "globex");
}

TEST(TenantAuthTest, AnythingElseIsUnauthenticatedWithoutEchoingTheToken) {
  const TenantAuth auth = Keys();
  const std::optional<absl::string_view> bad[] = {
      std::nullopt,
      "token-0123456789abcdef",          // no scheme
      "Basic token-0123456789abcdef",    // another scheme
      "Bearer token-0123456789abcdeF",   // one byte off
      "Bearer token-0123456789abcde",    // a prefix
      "Bearer token-0123456789abcdef ",  // trailing space
      "Bearer "};
  for (const auto& authorization : bad) {
    auto tenant = auth.Authenticate(authorization, std::nullopt);
    EXPECT_EQ(tenant.status().code(), absl::StatusCode::kUnauthenticated)
        << authorization.value_or("(none)");
    EXPECT_EQ(GetReason(tenant.status()), Reason::kUnauthenticated);
    EXPECT_EQ(tenant.status().message().find("0123456789"),
              absl::string_view::npos);
  }
  // With keys, the tenant header is refused even beside a valid token.
  EXPECT_EQ(auth.Authenticate(std::string("Bearer ") + kToken, "acme")
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TenantAuthTest, EachOfManyKeysNamesItsOwnTenantAndARereadRevokes) {
  // Keys that share all but their last bytes, as generated keys do.
  std::map<std::string, std::string> keys;
  for (int i = 0; i < 5000; ++i) {
    keys.emplace(absl::StrCat("sk-many-0123456789-", i),
                 absl::StrCat("tenant-", i % 97));
  }
  TenantAuth auth(keys);
  EXPECT_EQ(auth.key_count(), 5000u);
  for (const auto& [token, tenant] : keys) {
    auto named = auth.Authenticate("Bearer " + token, std::nullopt);
    ASSERT_TRUE(named.ok()) << token << " " << named.status();
    ASSERT_EQ(*named, tenant) << token;
  }
  EXPECT_EQ(auth.Authenticate("Bearer sk-many-0123456789-5000", std::nullopt)
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
  // A reread without key 7: it alone is refused, through every copy.
  const TenantAuth copy = auth;
  keys.erase("sk-many-0123456789-7");
  ASSERT_TRUE(auth.Replace(TenantAuth(keys)).ok());
  EXPECT_EQ(copy.Authenticate("Bearer sk-many-0123456789-7", std::nullopt)
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
  auto kept = copy.Authenticate("Bearer sk-many-0123456789-8", std::nullopt);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, "tenant-8");
}

// The dev overlay's public key (or a CHANGE-ME placeholder), even beside
// real keys, is reported, as the internal token's is.
TEST(TenantAuthTest, APublicExamplesKeyIsReported) {
  auto real = TenantAuth::FromText("keys", "real-key-0123456789abcdef acme\n");
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_FALSE(real->holds_placeholder());
  auto dev = TenantAuth::FromText(
      "keys",
      "real-key-0123456789abcdef acme\ndev-only-insecure-api-key default\n");
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_TRUE(dev->holds_placeholder());
  // And after a reload brings one in.
  ASSERT_TRUE(real->Replace(*dev).ok());
  EXPECT_TRUE(real->holds_placeholder());
  EXPECT_FALSE(TenantAuth().holds_placeholder());
}

TEST(TenantAuthTest, DevelopmentModeTakesTheTenantHeader) {
  const TenantAuth auth;
  EXPECT_TRUE(auth.development_mode());
  EXPECT_EQ(*auth.Authenticate(std::nullopt, std::nullopt), "default");
  EXPECT_EQ(*auth.Authenticate(std::nullopt, "acme"), "acme");
  EXPECT_EQ(auth.Authenticate(std::nullopt, "Not/Valid").status().code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
namespace {

// Counts listings; `bound_extra` is added to the store's session count (as
// Redis's index holds expired sessions no listing pruned yet), or with
// `count_fails` the count is UNAVAILABLE.
class ListingCounter final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  absl::StatusOr<int64_t> CountSessionsBound(const std::string& t) override {
    if (count_fails) return absl::UnavailableError("no count");
    auto n = ForwardingStore::CountSessionsBound(t);
    if (!n.ok()) return n;
    return *n + bound_extra;
  }
  absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& r) override {
    ++listings;
    return ForwardingStore::ListSessions(r);
  }
  int listings = 0;
  int64_t bound_extra = 0;
  bool count_fails = false;
};

// Below the limit a create costs one count, not a listing of every
// session; at the count's limit the listing decides (an inflated count
// does not refuse a tenant below its limit), and at the real limit the
// create is refused.
TEST(TenantLimitsTest, SessionLimitCountsOnceAndListsOnlyAtTheLimit) {
  auto memory = NewMemoryStateStore({});
  ASSERT_TRUE(memory.ok()) << memory.status();
  ListingCounter store(memory->get());
  TenantLimitsOptions options;
  options.defaults.max_sessions = 3;
  TenantLimits limits(options, &store);
  auto create = [&](const std::string& id) {
    CreateSessionRequest r;
    r.key = {"acme", id};
    r.model_id = "tiny";
    r.initial_state.model_fingerprint = "fp";
    ASSERT_TRUE(store.CreateSession(r).ok());
  };
  for (const char* id : {"a", "b"}) {
    EXPECT_TRUE(limits.CheckNewSession("acme").ok());
    create(id);
  }
  EXPECT_EQ(store.listings, 0);
  store.bound_extra = 5;  // stale entries: the count says 7
  EXPECT_TRUE(limits.CheckNewSession("acme").ok());
  EXPECT_GT(store.listings, 0);
  create("c");
  store.bound_extra = 0;
  const absl::Status full = limits.CheckNewSession("acme");
  EXPECT_EQ(GetReason(full), Reason::kTenantLimit) << full;
  EXPECT_TRUE(limits.CheckNewSession("other").ok());
  store.count_fails = true;  // a count that fails: listed every time
  const int before = store.listings;
  EXPECT_EQ(GetReason(limits.CheckNewSession("acme")), Reason::kTenantLimit);
  EXPECT_TRUE(limits.CheckNewSession("other").ok());
  EXPECT_EQ(store.listings, before + 2);
}

// Two gateways' limits over one Redis (each with its own client, as in
// two processes): max_streams holds across them, and a stream that ends
// frees its slot at once for either.
class StreamSlotsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::RedisServer::Start({});
    ASSERT_TRUE(server.ok()) << server.status();
    redis_ = *std::move(server);
    for (auto* store : {&store_a_, &store_b_}) {
      RedisStateStoreOptions o;
      o.addresses = {redis_->address()};
      o.retry_deadline = absl::Milliseconds(200);
      auto made = NewRedisStateStore(o);
      ASSERT_TRUE(made.ok()) << made.status();
      *store = *std::move(made);
    }
  }
  TenantLimitsOptions Options(int max_streams,
                              absl::Duration ttl = absl::Seconds(15)) {
    TenantLimitsOptions o;
    o.defaults.max_streams = max_streams;
    o.slot_ttl = ttl;
    return o;
  }
  int64_t InStore(const std::string& tenant) {
    absl::StatusOr<int64_t> n = store_a_->CountTenantSlots(tenant);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(-1);
  }

  std::unique_ptr<testing::RedisServer> redis_;
  std::unique_ptr<StateStore> store_a_, store_b_;
};

TEST_F(StreamSlotsTest, TheLimitHoldsAcrossGateways) {
  TenantLimits a(Options(2), store_a_.get());
  TenantLimits b(Options(2), store_b_.get());
  auto a1 = a.AcquireStream("acme");
  auto b1 = b.AcquireStream("acme");
  ASSERT_TRUE(a1.ok() && b1.ok()) << a1.status() << b1.status();
  EXPECT_EQ(InStore("acme"), 2);
  for (TenantLimits* over : {&a, &b}) {
    auto refused = over->AcquireStream("acme");
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(GetReason(refused.status()), Reason::kTenantLimit);
    EXPECT_EQ(GetErrorMetadata(refused.status(), "limit"), "max_streams");
    EXPECT_EQ(GetErrorMetadata(refused.status(), "max"), "2");
  }
  EXPECT_EQ(a.open_streams("acme"), 1);         // the refusal took nothing here
  EXPECT_TRUE(b.AcquireStream("globex").ok());  // another tenant's own
  {
    auto ended = std::move(*a1);  // the stream ends
  }
  EXPECT_EQ(InStore("acme"), 1);
  auto b2 = b.AcquireStream("acme");
  EXPECT_TRUE(b2.ok()) << b2.status();
}

// A stream limit a reloaded keys file adds where none was set at start
// holds across gateways too (their slots go to the store from then on),
// and one it removes stops counting.
TEST_F(StreamSlotsTest, ALimitSetWhileRunningHoldsAcrossGateways) {
  TenantLimits a(Options(0), store_a_.get());
  TenantLimits b(Options(0), store_b_.get());
  {
    auto before = a.AcquireStream("acme");  // unlimited: counted here only
    ASSERT_TRUE(before.ok());
    EXPECT_EQ(InStore("acme"), 0);
  }
  for (TenantLimits* limits : {&a, &b}) {
    limits->SetOverrides({{"acme", TenantLimitOverride{std::nullopt, 1}}});
  }
  EXPECT_EQ(a.For("acme").max_streams, 1);
  EXPECT_EQ(a.For("globex").max_streams, 0);
  auto b1 = b.AcquireStream("acme");
  ASSERT_TRUE(b1.ok()) << b1.status();
  EXPECT_EQ(InStore("acme"), 1);
  auto refused = a.AcquireStream("acme");  // by the store: none open here
  EXPECT_EQ(GetReason(refused.status()), Reason::kTenantLimit);
  EXPECT_EQ(a.open_streams("acme"), 0);
  EXPECT_TRUE(a.AcquireStream("globex").ok());
  for (TenantLimits* limits : {&a, &b}) limits->SetOverrides({});
  auto again = a.AcquireStream("acme");
  EXPECT_TRUE(again.ok()) << again.status();
}

// A refusal for the tenant's stream limit `max` (not a store error).
void ExpectStreamLimit(const absl::StatusOr<TenantLimits::StreamSlot>& r,
                       const std::string& max) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted)
      << r.status();
  EXPECT_EQ(GetReason(r.status()), Reason::kTenantLimit);
  EXPECT_EQ(GetErrorMetadata(r.status(), "limit"), "max_streams");
  EXPECT_EQ(GetErrorMetadata(r.status(), "max"), max);
}

// Renewed while open, a slot outlives its ttl; the slot of a gateway that
// died (taken in the store, never renewed nor released) frees itself.
TEST_F(StreamSlotsTest, OpenStreamsAreRenewedAndADeadGatewaysExpire) {
  // Renewed every 4/3 s: a renewal may run 2.6 s late before the slot
  // expires.
  TenantLimits a(Options(2, absl::Seconds(4)), store_a_.get());
  auto held = a.AcquireStream("acme");
  ASSERT_TRUE(held.ok()) << held.status();
  absl::StatusOr<bool> dead =
      store_b_->AcquireTenantSlot("acme", "dead:0", 2, absl::Seconds(1));
  ASSERT_TRUE(dead.ok() && *dead);
  ExpectStreamLimit(a.AcquireStream("acme"), "2");
  absl::SleepFor(absl::Seconds(5));  // past both ttls
  EXPECT_EQ(InStore("acme"), 1);     // renewed; the dead one gone
  auto next = a.AcquireStream("acme");
  EXPECT_TRUE(next.ok()) << next.status();
}

// Polls `done` every 50 ms for up to `limit`; whether it came true.
bool Eventually(const std::function<bool()>& done,
                absl::Duration limit = absl::Seconds(20)) {
  const absl::Time end = absl::Now() + limit;
  while (!done()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return true;
}

// With Redis unreachable a stream is admitted on the gateway's own count;
// once Redis is back the renewals register its slot.
TEST_F(StreamSlotsTest, AnUnreachableStoreAdmitsOnTheLocalCount) {
  TenantLimits a(Options(1, absl::Seconds(3)), store_a_.get());
  redis_->Kill();
  auto held = a.AcquireStream("acme");
  ASSERT_TRUE(held.ok()) << held.status();
  ExpectStreamLimit(a.AcquireStream("acme"), "1");  // the local count holds
  ASSERT_TRUE(redis_->Restart().ok());
  EXPECT_TRUE(Eventually([&] { return InStore("acme") == 1; }));
  TenantLimits b(Options(1, absl::Seconds(3)), store_b_.get());
  ExpectStreamLimit(b.AcquireStream("acme"), "1");
}

// A store whose slot calls fail while `down`, or whose renewals wait at a
// latch while `hold_renewals`; it counts the calls that reach it.
class FlakySlots : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  absl::StatusOr<bool> AcquireTenantSlot(const std::string& t,
                                         const std::string& slot, int max,
                                         absl::Duration ttl) override {
    ++acquires;
    if (down) return absl::UnavailableError("down");
    return s_->AcquireTenantSlot(t, slot, max, ttl);
  }
  absl::Status RenewTenantSlots(const std::string& t,
                                const std::vector<std::string>& slots,
                                absl::Duration ttl) override {
    if (!renewing.HasBeenNotified()) renewing.Notify();
    if (hold_renewals) renewed.WaitForNotification();
    if (down) return absl::UnavailableError("down");
    absl::Status done = s_->RenewTenantSlots(t, slots, ttl);
    if (!renew_done.HasBeenNotified()) renew_done.Notify();
    return done;
  }
  absl::Status ReleaseTenantSlot(const std::string& t,
                                 const std::string& slot) override {
    ++releases;
    if (hold_releases)
      released.WaitForNotificationWithTimeout(absl::Seconds(30));
    if (down) return absl::UnavailableError("down");
    return s_->ReleaseTenantSlot(t, slot);
  }
  absl::Status Ping() override {
    if (down) return absl::UnavailableError("down");
    return s_->Ping();
  }
  std::atomic<bool> down{false};
  std::atomic<bool> hold_renewals{false};
  std::atomic<bool> hold_releases{false};  // hung, until `released`
  std::atomic<int> acquires{0}, releases{0};
  absl::Notification renewing, renewed, renew_done, released;
};

// After a slot call fails, streams open and end without asking the store
// (a hung store would cost each of them its timeout) until a renewal finds
// it answering; their slots are then added, and the ended ones removed.
TEST_F(StreamSlotsTest, AFailedCallStopsAskingTheStoreUntilItAnswers) {
  FlakySlots store(store_a_.get());
  TenantLimits a(Options(5, absl::Seconds(3)), &store);
  store.down = true;
  ASSERT_TRUE(FlushLogLines(absl::Seconds(30)));  // no earlier test's line
  ::testing::internal::CaptureStderr();
  auto s1 = a.AcquireStream("acme");
  auto s2 = a.AcquireStream("acme");
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(store.acquires.load(), 1);
  { auto ended = std::move(*s2); }
  EXPECT_EQ(store.releases.load(), 0);
  store.down = false;
  EXPECT_TRUE(Eventually([&] { return InStore("acme") == 1; }));
  // Answering again: the next stream asks it.
  EXPECT_TRUE(Eventually([&] {
    auto s3 = a.AcquireStream("acme");
    return store.acquires.load() > 1;
  }));
  // Each change is said once on stderr.
  EXPECT_TRUE(FlushLogLines(absl::Seconds(30)));
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("stream limits count per process"), std::string::npos)
      << said;
  EXPECT_NE(said.find("stream limits hold across processes"), std::string::npos)
      << said;
  EXPECT_EQ(said.find("count per process"), said.rfind("count per process"))
      << said;
}

// A slot released while a renewal of it is under way, which may add it
// back after the release removed it, is removed again.
TEST_F(StreamSlotsTest, ASlotReleasedDuringItsRenewalDoesNotStay) {
  FlakySlots store(store_a_.get());
  store.hold_renewals = true;
  // Renewed every 3 s; added back, it would stay 9 s.
  TenantLimits a(Options(5, absl::Seconds(9)), &store);
  {
    auto s1 = a.AcquireStream("acme");
    ASSERT_TRUE(s1.ok());
    store.renewing.WaitForNotification();  // the renewal has its slot
    auto ended = std::move(*s1);
  }
  EXPECT_EQ(InStore("acme"), 0);  // released
  store.renewed.Notify();         // the renewal adds it back...
  store.renew_done.WaitForNotification();
  EXPECT_TRUE(Eventually([&] { return InStore("acme") == 0; },
                         absl::Seconds(6)));  // ...and it goes again
}

// Stopping: every slot held goes from the store at once; streams then
// count here only.
TEST_F(StreamSlotsTest, ReleaseStoreSlotsFreesTheSlotsOfAStoppingGateway) {
  FlakySlots store(store_a_.get());
  TenantLimits a(Options(5, absl::Seconds(3)), &store);  // renewed every 1 s
  auto s1 = a.AcquireStream("acme");
  auto s2 = a.AcquireStream("globex");
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(InStore("acme") + InStore("globex"), 2);
  a.ReleaseStoreSlots();
  EXPECT_EQ(InStore("acme") + InStore("globex"), 0);
  absl::SleepFor(absl::Milliseconds(1500));  // no renewal adds them back
  EXPECT_EQ(InStore("acme") + InStore("globex"), 0);
  const int asked = store.acquires.load();
  auto s3 = a.AcquireStream("acme");
  EXPECT_TRUE(s3.ok());
  EXPECT_EQ(store.acquires.load(), asked);
}

// A stream that ends after the gateway began to stop, but before the
// renewer's stopping pass took the slots held, is removed by that pass
// too: here the renewer is still removing a slot of its last renewal
// when the gateway stops (so ReleaseStoreSlots gives up after its second).
TEST_F(StreamSlotsTest, AStreamEndedAsTheGatewayStopsLeavesNoSlot) {
  FlakySlots store(store_a_.get());
  store.hold_renewals = true;
  // Renewed every 3 s: the test is over before any slot could expire.
  TenantLimits a(Options(5, absl::Seconds(9)), &store);
  auto s1 = a.AcquireStream("acme");
  auto s2 = a.AcquireStream("acme");
  ASSERT_TRUE(s1.ok() && s2.ok());
  store.renewing.WaitForNotification();
  { auto ended = std::move(*s1); }  // removed from the store at once
  ASSERT_EQ(store.releases.load(), 1);
  store.hold_releases = true;
  store.renewed.Notify();  // the renewal adds s1 back and removes it again
  ASSERT_TRUE(Eventually([&] { return store.releases.load() == 2; }));
  a.ReleaseStoreSlots();  // the renewer hangs in that removal
  { auto ended = std::move(*s2); }
  store.released.Notify();
  EXPECT_TRUE(
      Eventually([&] { return InStore("acme") == 0; }, absl::Seconds(5)));
}

// An embedded store counts no slots: each process counts its own streams.
TEST(TenantLimitsTest, StreamsAreCountedInProcessOverAnEmbeddedStore) {
  auto memory = NewMemoryStateStore({});
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_FALSE((*memory)->CountsTenantSlots());
  EXPECT_EQ((*memory)
                ->AcquireTenantSlot("acme", "s", 1, absl::Seconds(1))
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
  TenantLimitsOptions o;
  o.defaults.max_streams = 1;
  TenantLimits a(o, memory->get());
  TenantLimits b(o, memory->get());
  auto a1 = a.AcquireStream("acme");
  auto b1 = b.AcquireStream("acme");
  EXPECT_TRUE(a1.ok() && b1.ok());
  ExpectStreamLimit(a.AcquireStream("acme"), "1");
}

// A stopping gateway's slot removal does not wait out a hung store: its
// shutdown interrupts the store next.
TEST_F(StreamSlotsTest, ReleaseStoreSlotsDoesNotWaitOutAHungStore) {
  FlakySlots store(store_a_.get());
  TenantLimits a(Options(5), &store);
  auto s1 = a.AcquireStream("acme");
  ASSERT_TRUE(s1.ok());
  store.hold_releases = true;
  const absl::Time start = absl::Now();
  a.ReleaseStoreSlots();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  store.released.Notify();  // the interrupt, in a gateway
}

}  // namespace
}  // namespace statestream
