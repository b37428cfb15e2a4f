// SPDX-License-Identifier: Apache-2.0
#include "services/secret_file_reloader.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "common/testing/scratch_dir.h"
#include "gtest/gtest.h"
#include "services/tenants.h"

namespace statestream {
namespace {

constexpr char kOld[] = "old-key-0123456789abcdef";
constexpr char kNew[] = "new-key-0123456789abcdef";

class SecretFileReloaderTest : public ::testing::Test {
 protected:
  // Replaced the way a Kubernetes Secret volume does: a new file renamed
  // over the old, so a reader sees one or the other whole.
  void Write(const std::string& text) {
    const std::string staged = path_ + ".new";
    std::ofstream(staged, std::ios::binary | std::ios::trunc) << text;
    ASSERT_EQ(std::rename(staged.c_str(), path_.c_str()), 0);
  }
  static absl::StatusOr<std::string> As(const TenantAuth& auth,
                                        const std::string& key) {
    return auth.Authenticate("Bearer " + key, std::nullopt);
  }
  // Rereads `path_` only when Check() is called (no settling wait unless
  // given), `loaded` being what the secrets in use were made from.
  SecretFileOptions Options(const std::string& loaded,
                            absl::Duration interval = absl::ZeroDuration(),
                            absl::Duration settle = absl::ZeroDuration()) {
    SecretFileOptions options;
    options.path = path_;
    options.flag = "--api-keys";
    options.interval = interval;
    options.loaded_digest = Sha256Of(loaded);
    options.settle = settle;
    options.who = "test";
    return options;
  }

  testing::ScratchDir dir_{"ss-secrets"};
  const std::string path_ = dir_.File("keys.txt");
};

TEST_F(SecretFileReloaderTest, AddedAndRevokedKeysTakeEffectInEveryCopy) {
  const std::string first = std::string(kOld) + " acme max_streams=2\n";
  Write(first);
  auto auth = TenantAuth::FromFile(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  const TenantAuth services_copy = *auth;  // what a service holds
  TenantLimitsOptions options;
  options.tenants = auth->limits();
  auto limits = std::make_shared<TenantLimits>(options, nullptr);
  EXPECT_EQ(limits->For("acme").max_streams, 2);
  SecretFileReloader reloader(Options(first),
                              ApplyApiKeys(path_, *auth, limits));

  EXPECT_TRUE(reloader.Check().ok());  // unchanged
  Write(std::string(kNew) + " globex max_sessions=5\n" + kOld + " acme\n");
  ASSERT_TRUE(reloader.Check().ok());
  EXPECT_EQ(*As(services_copy, kNew), "globex");
  EXPECT_EQ(*As(services_copy, kOld), "acme");
  EXPECT_EQ(limits->For("globex").max_sessions, 5);
  EXPECT_EQ(limits->For("acme").max_streams, 0);  // the file dropped it

  Write(std::string(kNew) + " globex\n");  // kOld revoked
  ASSERT_TRUE(reloader.Check().ok());
  EXPECT_EQ(GetReason(As(services_copy, kOld).status()),
            Reason::kUnauthenticated);
  EXPECT_EQ(*As(services_copy, kNew), "globex");
  EXPECT_EQ(services_copy.key_count(), 1u);
}

TEST_F(SecretFileReloaderTest, ABadOrMissingFileKeepsTheKeysInUse) {
  const std::string first = std::string(kOld) + " acme\n";
  Write(first);
  auto auth = TenantAuth::FromFile(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  SecretFileReloader reloader(Options(first),
                              ApplyApiKeys(path_, *auth, nullptr));
  // Malformed, no keys at all (an emptied file is not "no
  // authentication"), a tenant with two limits, a duplicate token.
  for (const std::string& bad :
       {std::string(kNew) + " acme\nshort acme\n", std::string("# none\n\n"),
        std::string(""),
        std::string(kNew) + " acme max_streams=1\n" + kOld +
            " acme max_streams=2\n",
        std::string(kNew) + " acme\n" + kNew + " globex\n"}) {
    Write(bad);
    absl::Status refused = reloader.Check();
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(refused.message(), "in use stays"))
        << refused;
    // Never a token in the message.
    EXPECT_FALSE(absl::StrContains(refused.message(), "0123456789abcdef"))
        << refused;
    EXPECT_EQ(*As(*auth, kOld), "acme") << bad;
    EXPECT_FALSE(As(*auth, kNew).ok()) << bad;
    // Said once: the same content again is the same answer.
    EXPECT_EQ(reloader.Check(), refused);
  }
  std::remove(path_.c_str());
  EXPECT_EQ(reloader.Check().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*As(*auth, kOld), "acme");
  // A FIFO (or a link to /dev/zero) in its place would hang the reread or
  // fill memory: refused at once.
  ASSERT_EQ(mkfifo(path_.c_str(), 0600), 0);
  EXPECT_EQ(reloader.Check().code(), absl::StatusCode::kNotFound);
  std::remove(path_.c_str());
  ASSERT_EQ(symlink("/dev/zero", path_.c_str()), 0);
  EXPECT_EQ(reloader.Check().code(), absl::StatusCode::kNotFound);
  std::remove(path_.c_str());
  EXPECT_EQ(*As(*auth, kOld), "acme");
  // Fixed: applied.
  Write(std::string(kNew) + " acme\n");
  EXPECT_TRUE(reloader.Check().ok());
  EXPECT_EQ(*As(*auth, kNew), "acme");
  EXPECT_FALSE(As(*auth, kOld).ok());
}

TEST_F(SecretFileReloaderTest, TheFileIsRereadEveryInterval) {
  const std::string first = std::string(kOld) + " acme\n";
  Write(first);
  auto auth = TenantAuth::FromFile(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  {
    SecretFileReloader reloader(
        Options(first, absl::Milliseconds(20), absl::Milliseconds(10)),
        ApplyApiKeys(path_, *auth, nullptr));
    Write(std::string(kNew) + " acme\n");
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!As(*auth, kNew).ok() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_TRUE(As(*auth, kNew).ok());
    EXPECT_FALSE(As(*auth, kOld).ok());
  }
  // Stopped with it.
  Write(std::string(kOld) + " acme\n");
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(As(*auth, kOld).ok());
}

// A file caught changing is not applied: a half-written line could name
// another tenant ("acme-prod" cut to "acme"). It is once it holds still.
TEST_F(SecretFileReloaderTest, AFileThatChangesWhileReadIsNotApplied) {
  const std::string first = std::string(kOld) + " acme\n";
  Write(first);
  auto auth = TenantAuth::FromFile(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  // What the reads find: the new file half-written (its second line cut
  // at "acme"), then whole, then whole again.
  const std::string whole =
      std::string(kOld) + " acme\n" + kNew + " acme-prod\n";
  std::vector<std::string> reads = {whole.substr(0, whole.size() - 6), whole,
                                    whole, whole};
  size_t next = 0;
  SecretFileOptions options =
      Options(first, absl::ZeroDuration(), absl::Milliseconds(1));
  options.read = [&](const std::string&) -> absl::StatusOr<std::string> {
    return reads.at(next++);
  };
  SecretFileReloader reloader(std::move(options),
                              ApplyApiKeys(path_, *auth, nullptr));
  const absl::Status caught = reloader.Check();
  EXPECT_EQ(caught.code(), absl::StatusCode::kUnavailable) << caught;
  EXPECT_FALSE(As(*auth, kNew).ok());
  ASSERT_TRUE(reloader.Check().ok());
  EXPECT_EQ(next, 4u);
  EXPECT_EQ(*As(*auth, kNew), "acme-prod");
}

// What the process needs of a keys file holds for a reread one too.
TEST_F(SecretFileReloaderTest, AFileTheProcessCannotServeIsRefused) {
  const std::string first = std::string(kOld) + " acme\n";
  Write(first);
  auto auth = TenantAuth::FromFile(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  auto validate = [](const TenantAuth& newer) {
    TenantLimitsOptions limits;
    limits.tenants = newer.limits();
    return limits.LimitsSessions()
               ? absl::InvalidArgumentError("session limits need --redis")
               : absl::OkStatus();
  };
  SecretFileReloader reloader(Options(first),
                              ApplyApiKeys(path_, *auth, nullptr, validate));
  Write(std::string(kNew) + " acme max_sessions=3\n");
  const absl::Status refused = reloader.Check();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "--redis")) << refused;
  EXPECT_FALSE(As(*auth, kNew).ok());
  Write(std::string(kNew) + " acme max_streams=3\n");
  EXPECT_TRUE(reloader.Check().ok());
  EXPECT_TRUE(As(*auth, kNew).ok());
}

// The internal token file is reread the same way: a worker takes a token
// added there, a gateway sends the one now first, and one removed there is
// refused; a file with no token changes nothing.
TEST_F(SecretFileReloaderTest, InternalTokensRotateWithoutARestart) {
  const std::string first = std::string(kOld) + "\n";
  Write(first);
  auto token = InternalToken::FromFile(path_);
  ASSERT_TRUE(token.ok()) << token.status();
  const InternalToken worker_copy = *token;
  SecretFileOptions options = Options(first);
  options.flag = "--internal-token-file";
  SecretFileReloader reloader(std::move(options),
                              ApplyInternalToken(path_, *token));
  EXPECT_FALSE(worker_copy.Check(kNew).ok());
  Write(std::string(kOld) + "\n" + kNew + "\n");  // the new one second
  ASSERT_TRUE(reloader.Check().ok());
  EXPECT_TRUE(worker_copy.Check(kNew).ok());
  EXPECT_EQ(worker_copy.value(), kOld);           // still sent
  Write(std::string(kNew) + "\n" + kOld + "\n");  // then first
  ASSERT_TRUE(reloader.Check().ok());
  EXPECT_EQ(worker_copy.value(), kNew);
  Write(std::string(kNew) + "\n");  // then the old one goes
  ASSERT_TRUE(reloader.Check().ok());
  EXPECT_EQ(GetReason(worker_copy.Check(kOld)), Reason::kUnauthenticated);
  EXPECT_EQ(worker_copy.count(), 1u);
  Write("# emptied\n");
  EXPECT_EQ(reloader.Check().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(worker_copy.Check(kNew).ok());
  EXPECT_TRUE(worker_copy.configured());
}

// /metrics tells whether each file's current version is in use, and how
// many versions were applied and refused.
TEST_F(SecretFileReloaderTest, MetricsSayWhetherTheFileIsInUse) {
  const std::string first = std::string(kOld) + " acme\n";
  Write(first);
  auto auth = TenantAuth::FromFile(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  auto reloader = std::make_shared<SecretFileReloader>(
      Options(first), ApplyApiKeys(path_, *auth, nullptr));
  SecretFileMetrics metrics;
  metrics.Add(reloader);
  metrics.Add(nullptr);  // a file read once: nothing
  auto has = [&metrics](const std::string& line) {
    const std::string text = metrics.Render();
    return absl::StrContains(text, "\n" + line + "\n") ||
           absl::StartsWith(text, line + "\n");
  };
  EXPECT_TRUE(has("statestream_secrets_file_current{flag=\"api-keys\"} 1"));
  EXPECT_TRUE(has("# TYPE statestream_secrets_reloads_total counter"));
  Write("malformed\n");
  EXPECT_FALSE(reloader->Check().ok());
  EXPECT_TRUE(has("statestream_secrets_file_current{flag=\"api-keys\"} 0"));
  EXPECT_TRUE(
      has("statestream_secrets_reloads_total{flag=\"api-keys\","
          "result=\"refused\"} 1"));
  Write(std::string(kNew) + " acme\n");
  EXPECT_TRUE(reloader->Check().ok());
  EXPECT_TRUE(has("statestream_secrets_file_current{flag=\"api-keys\"} 1"));
  EXPECT_TRUE(
      has("statestream_secrets_reloads_total{flag=\"api-keys\","
          "result=\"applied\"} 1"));
  // Unreadable for a while, then back as it was: in use again, not one
  // more version applied.
  std::remove(path_.c_str());
  EXPECT_FALSE(reloader->Check().ok());
  EXPECT_TRUE(has("statestream_secrets_file_current{flag=\"api-keys\"} 0"));
  Write(std::string(kNew) + " acme\n");
  EXPECT_TRUE(reloader->Check().ok());
  EXPECT_TRUE(has("statestream_secrets_file_current{flag=\"api-keys\"} 1"));
  EXPECT_TRUE(
      has("statestream_secrets_reloads_total{flag=\"api-keys\","
          "result=\"applied\"} 1"));
  reloader.reset();
  EXPECT_EQ(metrics.Render(), "");
}

// What a long call keeps of its credentials is the token's digest, not
// the token; it authenticates as the token did.
TEST(TenantAuthReplaceTest, KeptCredentialsHoldTheTokensDigestOnly) {
  TenantAuth auth(std::map<std::string, std::string>{{kOld, "acme"}});
  const Credentials kept =
      Credentials::Of("bEaReR " + std::string(kOld), std::nullopt);
  ASSERT_EQ(kept.key, Credentials::Key::kDigest);
  EXPECT_EQ(std::string(kept.digest.begin(), kept.digest.end()),
            Sha256Of(kOld));
  auto named = auth.Authenticate(kept);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(*named, "acme");
  for (const Credentials& bad :
       {Credentials::Of(std::string(kOld), std::nullopt),
        Credentials::Of(std::nullopt, std::nullopt),
        Credentials::Of("Bearer " + std::string(kNew), std::nullopt),
        Credentials::Of("Bearer " + std::string(kOld), "acme")}) {
    uint64_t seen = 0;
    EXPECT_EQ(GetReason(auth.Recheck(bad, "acme", &seen)),
              Reason::kUnauthenticated);
  }
}

// A long call rechecks its credentials: nothing to do while no Replace
// happened; refused once its key is gone or names another tenant.
TEST(TenantAuthReplaceTest, ARecheckRefusesARevokedOrMovedKey) {
  const Credentials bearer =
      Credentials::Of("Bearer " + std::string(kOld), std::nullopt);
  TenantAuth auth(std::map<std::string, std::string>{{kOld, "acme"}});
  uint64_t seen = auth.generation();
  EXPECT_NE(seen, 0u);
  EXPECT_TRUE(auth.Recheck(bearer, "acme", &seen).ok());
  // Another tenant than the one the call authenticated as (checked since
  // the generation given is not the current one).
  uint64_t other = 0;
  EXPECT_EQ(GetReason(auth.Recheck(bearer, "globex", &other)),
            Reason::kUnauthenticated);
  // Kept, under another set: still fine.
  ASSERT_TRUE(auth.Replace(TenantAuth(std::map<std::string, std::string>{
                               {kOld, "acme"}, {kNew, "globex"}}))
                  .ok());
  EXPECT_TRUE(auth.Recheck(bearer, "acme", &seen).ok());
  // Moved to another tenant, then revoked.
  ASSERT_TRUE(auth.Replace(TenantAuth(std::map<std::string, std::string>{
                               {kOld, "globex"}}))
                  .ok());
  const absl::Status moved = auth.Recheck(bearer, "acme", &seen);
  EXPECT_EQ(moved.code(), absl::StatusCode::kUnauthenticated) << moved;
  EXPECT_TRUE(absl::StrContains(moved.message(), "revoked")) << moved;
  EXPECT_FALSE(absl::StrContains(moved.message(), kOld)) << moved;
  ASSERT_TRUE(auth.Replace(TenantAuth(std::map<std::string, std::string>{
                               {kNew, "acme"}}))
                  .ok());
  EXPECT_EQ(GetReason(auth.Recheck(bearer, "acme", &seen)),
            Reason::kUnauthenticated);
  // Development mode has nothing to revoke.
  TenantAuth development;
  uint64_t dev = 0;
  EXPECT_TRUE(
      development.Recheck(Credentials::Of(std::nullopt, "acme"), "acme", &dev)
          .ok());
}

TEST(TenantAuthReplaceTest, AuthenticationIsNeverTurnedOnOrOff) {
  TenantAuth keyed(std::map<std::string, std::string>{{kOld, "acme"}});
  TenantAuth development;
  EXPECT_EQ(keyed.Replace(development).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(development.Replace(keyed).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(development.development_mode());
  EXPECT_EQ(*keyed.Authenticate("Bearer " + std::string(kOld), std::nullopt),
            "acme");
}

}  // namespace
}  // namespace statestream
