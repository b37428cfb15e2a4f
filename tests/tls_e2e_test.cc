// SPDX-License-Identifier: Apache-2.0
// TLS, mutual TLS and per-tenant limits against real processes on
// 127.0.0.1. Throwaway certificates (a CA, a server certificate for
// localhost/127.0.0.1, a client certificate, and an unrelated CA) are made
// at test time with the `openssl` command line.
//   * `serve` with --tls-cert/--tls-key: the C++ SDK with the CA works; a
//     plaintext client and a client trusting another CA fail with
//     UNAVAILABLE; bad certificate files are a usage error (exit 2).
//   * gateway -> worker mutual TLS: Append + Generate through a TLS gateway
//     whose workers require client certificates; the worker refuses a
//     plaintext dial, a TLS dial without a client certificate, and a gateway
//     without one.
//   * per-tenant limits at the gateway: the session limit and the
//     concurrent-stream limit end in RESOURCE_EXHAUSTED/TENANT_LIMIT.
// No assertion depends on timing.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/client.h"
#include "tests/cluster_process.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using client::Client;
using client::ClientOptions;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(std::filesystem::temp_directory_path().string(),
                        "/ss-tls-", getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    // EC keys: fast to generate.
    const std::string script = R"(set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=statestream-test-ca
key other-ca.key
openssl req -x509 -new -key other-ca.key -out other-ca.pem -days 2 -subj /CN=other-ca
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for n in server client; do
  key $n.key
  openssl req -new -key $n.key -out $n.csr -subj /CN=$n
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 -extfile $n.ext
  # The same role's renewal, signed by the other CA.
  key ${n}2.key
  openssl req -new -key ${n}2.key -out ${n}2.csr -subj /CN=${n}2
  openssl x509 -req -in ${n}2.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial -out ${n}2.pem -days 2 -extfile $n.ext
done
)";
    auto made = e2e::Run({"/bin/sh", "-c", "cd \"$0\" && " + script, dir_});
    ASSERT_TRUE(made.ok()) << made.status();
    ASSERT_EQ(made->exit_code, 0)
        << "openssl failed (is it installed?): " << made->err;
  }

  void TearDown() override {
    if (HasFailure()) {
      for (auto& p : processes_) ADD_FAILURE() << "process log: " << p->Log();
    }
    processes_.clear();  // SIGKILL + reap
    redis_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::string Path(const std::string& name) const {
    return absl::StrCat(dir_, "/", name);
  }

  // Starts `argv` and returns its address ("" after a test failure).
  std::string Start(std::vector<std::string> argv, const std::string& log) {
    argv.insert(argv.begin(), STATESTREAM_BIN);
    auto p = e2e::ClusterProcess::Start(argv, Path(log), kStartTimeout);
    EXPECT_TRUE(p.ok()) << p.status() << " " << ReadAll(Path(log));
    if (!p.ok()) return "";
    processes_.push_back(*std::move(p));
    return processes_.back()->address();
  }

  // Redis and one worker, "w1", on the tiny model.
  void StartRedisAndWorker() {
    ASSERT_NO_FATAL_FAILURE(StartRedis());
    ASSERT_FALSE(
        Start({"worker", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
               "--model=" + MakeModel(), "--worker-id=w1",
               "--heartbeat-interval=300ms"},
              "worker.log")
            .empty());
  }

  // Redis and one worker, "w1", serving TLS (server.pem, for localhost and
  // 127.0.0.1) to clients holding a certificate signed by ca.pem; its
  // address in `*address`.
  void StartRedisAndWorkerWithTls(std::string* address) {
    ASSERT_NO_FATAL_FAILURE(StartRedis());
    *address =
        Start({"worker", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
               "--model=" + MakeModel(), "--worker-id=w1",
               "--heartbeat-interval=300ms", "--tls-cert=" + Path("server.pem"),
               "--tls-key=" + Path("server.key"),
               "--tls-client-ca=" + Path("ca.pem")},
              "worker.log");
    ASSERT_FALSE(address->empty());
  }

  void StartRedis() {
    auto redis = testing::RedisServer::Start({});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = std::move(*redis);
  }

  // A client of `target`; `ca` empty: plaintext.
  std::unique_ptr<Client> NewClient(const std::string& target,
                                    const std::string& ca,
                                    bool client_cert = false,
                                    const std::string& api_key = "") {
    ClientOptions options;
    options.targets = {target};
    options.api_key = api_key;
    options.max_attempts = 1;  // errors surface at once
    options.timeout = absl::Seconds(30);
    if (!ca.empty()) {
      options.tls = true;
      options.tls_root_certs_pem = ReadAll(Path(ca));
      options.tls_server_name = "localhost";
      if (client_cert) {
        options.tls_cert_chain_pem = ReadAll(Path("client.pem"));
        options.tls_private_key_pem = ReadAll(Path("client.key"));
      }
    }
    auto c = Client::Create(std::move(options));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // Creates a session, appends, generates: the whole path works.
  void ExpectWorks(Client* c) {
    auto created = c->CreateSession({});
    ASSERT_TRUE(created.ok()) << created.status();
    client::Session s = c->OpenSession(created->session_id());
    auto appended = s.AppendText("hello over TLS");
    ASSERT_TRUE(appended.ok()) << appended.status();
    EXPECT_EQ(appended->input_offset(), 14u);
    v1::GenerateRequest g;
    g.set_max_tokens(8);
    g.mutable_sampling()->set_seed(1);
    auto generated = s.GenerateAll(g);
    ASSERT_TRUE(generated.ok()) << generated.status();
    EXPECT_EQ(generated->tokens.size(), 8u);
  }

  // Replaces `to`.pem/.key with copies of `from`.pem/.key, each file by a
  // rename (so a reader sees a whole old or a whole new file).
  void Install(const std::string& from, const std::string& to) {
    for (const char* ext : {".key", ".pem"}) {
      std::filesystem::copy_file(
          Path(from + ext), Path(to + ext + ".new"),
          std::filesystem::copy_options::overwrite_existing);
      std::filesystem::rename(Path(to + ext + ".new"), Path(to + ext));
    }
  }

  // Whether `ok()` holds within a minute (polled): a reread is due every
  // second.
  template <class F>
  static bool Eventually(F ok) {
    const absl::Time deadline = absl::Now() + absl::Minutes(1);
    while (absl::Now() < deadline) {
      if (ok()) return true;
      absl::SleepFor(absl::Milliseconds(200));
    }
    return false;
  }

  std::string MakeModel() {
    absl::Status made =
        e2e::MakeTinyModel(STATESTREAM_BIN, Path("tiny.safetensors"));
    EXPECT_TRUE(made.ok()) << made;
    return Path("tiny.safetensors");
  }

  std::string dir_;
  std::unique_ptr<testing::RedisServer> redis_;
  std::vector<std::unique_ptr<e2e::ClusterProcess>> processes_;
};

TEST_F(TlsTest, ServeWithTls) {
  const std::string address = Start(
      {"serve", "--listen=127.0.0.1:0", "--tls-cert=" + Path("server.pem"),
       "--tls-key=" + Path("server.key")},
      "serve.log");
  ASSERT_FALSE(address.empty());
  EXPECT_NE(processes_[0]->Log().find("UNAUTHENTICATED"), std::string::npos);

  auto tls = NewClient(address, "ca.pem");
  ASSERT_NO_FATAL_FAILURE(ExpectWorks(tls.get()));

  auto plaintext = NewClient(address, "");
  auto refused = plaintext->CreateSession({});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable)
      << refused.status();

  auto wrong_ca = NewClient(address, "other-ca.pem");
  auto untrusted = wrong_ca->CreateSession({});
  EXPECT_EQ(untrusted.status().code(), absl::StatusCode::kUnavailable)
      << untrusted.status();
}

// Certificates renewed on disk are used without a restart
// (--tls-reload-interval): a server's new certificate serves new
// handshakes while an open connection keeps its own, and a gateway's new
// client certificate reaches workers that refused the old one.
TEST_F(TlsTest, RenewedCertificatesAreUsedWithoutARestart) {
  Install("server", "live-server");
  const std::string address = Start(
      {"serve", "--listen=127.0.0.1:0", "--tls-cert=" + Path("live-server.pem"),
       "--tls-key=" + Path("live-server.key"), "--tls-reload-interval=1s"},
      "serve.log");
  ASSERT_FALSE(address.empty());
  auto before = NewClient(address, "ca.pem");
  ASSERT_TRUE(before->ListSessions({}).ok());
  Install("server2", "live-server");
  EXPECT_TRUE(Eventually([&] {
    return NewClient(address, "other-ca.pem")->ListSessions({}).ok();
  })) << "the renewed certificate was never served";
  auto old_ca = NewClient(address, "ca.pem");
  EXPECT_EQ(old_ca->ListSessions({}).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(before->ListSessions({}).ok());  // its connection stays open

  // The gateway's client certificate: signed by a CA the worker does not
  // trust, then renewed by one it does.
  std::string worker_address;
  ASSERT_NO_FATAL_FAILURE(StartRedisAndWorkerWithTls(&worker_address));
  Install("client2", "live-client");
  const std::string gateway_address =
      Start({"gateway", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
             "--worker-tls-ca=" + Path("ca.pem"),
             "--worker-tls-cert=" + Path("live-client.pem"),
             "--worker-tls-key=" + Path("live-client.key"),
             "--worker-tls-server-name=localhost", "--tls-reload-interval=1s"},
            "gateway.log");
  ASSERT_FALSE(gateway_address.empty());
  auto via_gateway = NewClient(gateway_address, "");
  EXPECT_EQ(via_gateway->CreateSession({}).status().code(),
            absl::StatusCode::kUnavailable);
  Install("client", "live-client");
  EXPECT_TRUE(Eventually([&] { return via_gateway->CreateSession({}).ok(); }))
      << "the renewed client certificate was never used";
}

// With a wrong --worker-tls-server-name the gateway reaches no worker: the
// name is checked against the worker's certificate, on the files' reread
// path and on the read-once one.
TEST_F(TlsTest, AWorkerCertificateNotForTheServerNameIsRefused) {
  std::string worker_address;
  ASSERT_NO_FATAL_FAILURE(StartRedisAndWorkerWithTls(&worker_address));
  for (const char* reload :
       {"--tls-reload-interval=1m", "--tls-reload-interval=0"}) {
    SCOPED_TRACE(reload);
    const std::string gateway_address = Start(
        {"gateway", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
         "--worker-tls-ca=" + Path("ca.pem"),
         "--worker-tls-cert=" + Path("client.pem"),
         "--worker-tls-key=" + Path("client.key"),
         "--worker-tls-server-name=not-the-worker.example", reload},
        absl::StrCat("gateway-", processes_.size(), ".log"));
    ASSERT_FALSE(gateway_address.empty());
    auto via_gateway = NewClient(gateway_address, "");
    EXPECT_EQ(via_gateway->CreateSession({}).status().code(),
              absl::StatusCode::kUnavailable);
  }
}

TEST_F(TlsTest, BadCertificateFilesAreUsageErrors) {
  const std::vector<std::vector<std::string>> cases = {
      {"--tls-cert=" + Path("missing.pem"), "--tls-key=" + Path("server.key")},
      {"--tls-cert=" + Path("server.csr"), "--tls-key=" + Path("server.key")},
      {"--tls-cert=" + Path("server.pem"), "--tls-key=" + Path("client.key")},
      {"--tls-cert=" + Path("server.pem")},
      {"--tls-client-ca=" + Path("ca.pem")},
  };
  for (const auto& flags : cases) {
    std::vector<std::string> argv = {STATESTREAM_BIN, "serve",
                                     "--listen=127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto run = e2e::Run(argv, absl::Seconds(60));
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ(run->exit_code, 2) << flags[0] << ": " << run->err;
    EXPECT_NE(run->err.find("--tls"), std::string::npos) << run->err;
    EXPECT_EQ(run->out.find("listening on"), std::string::npos);
  }
  auto gateway =
      e2e::Run({STATESTREAM_BIN, "gateway", "--listen=127.0.0.1:0",
                "--workers=127.0.0.1:1", "--worker-tls-ca=" + Path("ca.key")},
               absl::Seconds(60));
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  EXPECT_EQ(gateway->exit_code, 2) << gateway->err;
  EXPECT_NE(gateway->err.find("--worker-tls"), std::string::npos);
}

TEST_F(TlsTest, GatewayToWorkerMutualTls) {
  std::string worker_address;
  ASSERT_NO_FATAL_FAILURE(StartRedisAndWorkerWithTls(&worker_address));
  const std::vector<std::string> server_tls = {
      "--tls-cert=" + Path("server.pem"), "--tls-key=" + Path("server.key")};

  std::vector<std::string> gateway = {"gateway",
                                      "--listen=127.0.0.1:0",
                                      "--redis=" + redis_->address(),
                                      "--worker-tls-ca=" + Path("ca.pem"),
                                      "--worker-tls-cert=" + Path("client.pem"),
                                      "--worker-tls-key=" + Path("client.key"),
                                      "--worker-tls-server-name=localhost"};
  gateway.insert(gateway.end(), server_tls.begin(), server_tls.end());
  const std::string gateway_address = Start(gateway, "gateway.log");
  ASSERT_FALSE(gateway_address.empty());

  auto through_gateway = NewClient(gateway_address, "ca.pem");
  ASSERT_NO_FATAL_FAILURE(ExpectWorks(through_gateway.get()));

  // The worker itself: with a client certificate it answers; plaintext
  // or without a certificate the handshake fails.
  auto with_cert = NewClient(worker_address, "ca.pem", /*client_cert=*/true);
  EXPECT_TRUE(with_cert->ListSessions({}).ok());
  auto plaintext = NewClient(worker_address, "");
  EXPECT_EQ(plaintext->ListSessions({}).status().code(),
            absl::StatusCode::kUnavailable);
  auto no_cert = NewClient(worker_address, "ca.pem");
  EXPECT_EQ(no_cert->ListSessions({}).status().code(),
            absl::StatusCode::kUnavailable);

  // A gateway that trusts the workers but holds no client certificate
  // reaches none of them.
  const std::string certless =
      Start({"gateway", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
             "--worker-tls-ca=" + Path("ca.pem"),
             "--worker-tls-server-name=localhost"},
            "gateway-certless.log");
  ASSERT_FALSE(certless.empty());
  auto via_certless = NewClient(certless, "");
  EXPECT_EQ(via_certless->CreateSession({}).status().code(),
            absl::StatusCode::kUnavailable);
}

// A worker started with --internal-token-file takes calls only from
// gateways that show the same token: a client reaching it directly cannot
// pick a tenant, and neither can a gateway without the token. A malformed
// or missing token file is a usage error.
TEST_F(TlsTest, InternalTokenBetweenGatewayAndWorker) {
  ASSERT_NO_FATAL_FAILURE(StartRedis());
  const std::string model = MakeModel();
  std::ofstream(Path("internal.token")) << "internal-0123456789abcdef\n";
  std::ofstream(Path("short.token")) << "short\n";
  for (const std::string& bad : {Path("short.token"), Path("missing.token")}) {
    auto run = e2e::Run({STATESTREAM_BIN, "worker", "--listen=127.0.0.1:0",
                         "--redis=" + redis_->address(), "--model=" + model,
                         "--worker-id=wb", "--internal-token-file=" + bad},
                        absl::Seconds(60));
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ(run->exit_code, 2) << run->err;
    EXPECT_NE(run->err.find("--internal-token-file"), std::string::npos)
        << run->err;
  }
  const std::string worker_address =
      Start({"worker", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
             "--model=" + model, "--worker-id=w1", "--heartbeat-interval=300ms",
             "--internal-token-file=" + Path("internal.token")},
            "worker.log");
  ASSERT_FALSE(worker_address.empty());
  EXPECT_EQ(processes_.back()->Log().find("UNAUTHENTICATED"),
            std::string::npos);
  const std::string gateway =
      Start({"gateway", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
             "--internal-token-file=" + Path("internal.token")},
            "gateway.log");
  ASSERT_FALSE(gateway.empty());
  auto through_gateway = NewClient(gateway, "");
  ASSERT_NO_FATAL_FAILURE(ExpectWorks(through_gateway.get()));

  auto direct = NewClient(worker_address, "");
  for (absl::Status st : {direct->ListSessions({}).status(),
                          direct->CreateSession({}).status()}) {
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
    EXPECT_EQ(GetReason(st), Reason::kUnauthenticated) << st;
  }
  const std::string tokenless =
      Start({"gateway", "--listen=127.0.0.1:0", "--redis=" + redis_->address()},
            "gateway-tokenless.log");
  ASSERT_FALSE(tokenless.empty());
  // The client's credentials were fine: the gateway says the cluster is
  // misconfigured instead of passing on the worker's UNAUTHENTICATED.
  absl::Status refused = NewClient(tokenless, "")->CreateSession({}).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInternal) << refused;
  EXPECT_NE(refused.message().find("not your API key"), std::string::npos)
      << refused;
}

// The internal token is rotated on disk without restarts
// (--secrets-reload-interval): a worker that drops the gateways' token
// refuses them until the gateways' file names the new one.
TEST_F(TlsTest, InternalTokenRotatesWithoutRestarts) {
  ASSERT_NO_FATAL_FAILURE(StartRedis());
  const std::string model = MakeModel();
  const std::string old_token = "internal-old-0123456789";
  const std::string new_token = "internal-new-0123456789";
  // As a Secret volume updates: a new file renamed over the old.
  auto write = [this](const std::string& name, const std::string& text) {
    std::ofstream(Path(name + ".new")) << text;
    std::filesystem::rename(Path(name + ".new"), Path(name));
  };
  write("worker.token", old_token + "\n");
  write("gateway.token", old_token + "\n");
  ASSERT_FALSE(
      Start({"worker", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
             "--model=" + model, "--worker-id=w1", "--heartbeat-interval=300ms",
             "--internal-token-file=" + Path("worker.token"),
             "--secrets-reload-interval=1s"},
            "worker.log")
          .empty());
  const std::string gateway =
      Start({"gateway", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
             "--internal-token-file=" + Path("gateway.token"),
             "--secrets-reload-interval=1s"},
            "gateway.log");
  ASSERT_FALSE(gateway.empty());
  auto client = NewClient(gateway, "");
  ASSERT_TRUE(client->CreateSession({}).ok());
  auto wait_for = [&](absl::StatusCode code) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    absl::Status st = client->CreateSession({}).status();
    while (st.code() != code && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(100));
      st = client->CreateSession({}).status();
    }
    return st;
  };
  // The worker takes only the new token: the gateway's old one is refused
  // (INTERNAL to the client, whose own credentials were fine).
  write("worker.token", new_token + "\n");
  absl::Status refused = wait_for(absl::StatusCode::kInternal);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInternal) << refused;
  // The gateway sends the new one: served again.
  write("gateway.token", new_token + "\n" + old_token + "\n");
  absl::Status served = wait_for(absl::StatusCode::kOk);
  EXPECT_TRUE(served.ok()) << served;
  const std::string reread =
      "--internal-token-file: " + Path("worker.token") + " reread";
  EXPECT_NE(processes_.front()->Log().find(reread), std::string::npos)
      << processes_.front()->Log();
}

TEST_F(TlsTest, TenantLimits) {
  ASSERT_NO_FATAL_FAILURE(StartRedisAndWorker());
  const std::string key_a = "key-a-0123456789abcdef";
  const std::string key_b = "key-b-0123456789abcdef";
  {
    std::ofstream keys(Path("keys.txt"));
    keys << "# token tenant [limits]\n"
         << key_a << " tenant-a max_sessions=2 max_streams=1\n"
         << key_b << " tenant-b\n";
  }
  const std::string gateway =
      Start({"gateway", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
             "--api-keys=" + Path("keys.txt"), "--tenant-max-streams=4",
             "--tenant-max-sessions=5"},
            "gateway.log");
  ASSERT_FALSE(gateway.empty());
  auto a = NewClient(gateway, "", false, key_a);
  auto b = NewClient(gateway, "", false, key_b);

  // Sessions: two for tenant-a, the third is refused; tenant-b is not
  // affected; deleting one makes room again.
  auto s1 = a->CreateSession({});
  auto s2 = a->CreateSession({});
  ASSERT_TRUE(s1.ok() && s2.ok()) << s1.status() << s2.status();
  auto s3 = a->CreateSession({});
  EXPECT_EQ(s3.status().code(), absl::StatusCode::kResourceExhausted)
      << s3.status();
  EXPECT_EQ(GetReason(s3.status()), Reason::kTenantLimit);
  EXPECT_EQ(GetErrorMetadata(s3.status(), "limit"), "max_sessions");
  EXPECT_EQ(GetErrorMetadata(s3.status(), "max"), "2");
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b->CreateSession({}).ok());
  ASSERT_TRUE(a->OpenSession(s2->session_id()).Delete().ok());
  auto s4 = a->CreateSession({});
  ASSERT_TRUE(s4.ok()) << s4.status();

  // Streams: tenant-a may have one open (its file limit overrides the
  // flag); a second Append or a Generate is refused while it is open.
  auto writer = a->OpenSession(s1->session_id()).OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("open stream").ok());
  ASSERT_TRUE((*writer)->Sync().ok());  // acked: the gateway holds the slot
  auto second = a->OpenSession(s4->session_id()).AppendText("refused");
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted)
      << second.status();
  EXPECT_EQ(GetReason(second.status()), Reason::kTenantLimit);
  EXPECT_EQ(GetErrorMetadata(second.status(), "limit"), "max_streams");
  v1::GenerateRequest g;
  g.set_max_tokens(4);
  auto generated = a->OpenSession(s4->session_id()).GenerateAll(g);
  EXPECT_EQ(GetReason(generated.status()), Reason::kTenantLimit)
      << generated.status();
  // An export is a stream too (it holds a gateway thread while its client
  // reads).
  auto exported = a->OpenSession(s4->session_id()).Export();
  EXPECT_EQ(GetReason(exported.status()), Reason::kTenantLimit)
      << exported.status();
  // A Score runs the model as a Generate does: it takes a slot too.
  v1::ScoreRequest score;
  score.set_text_utf8(" more");
  auto refused_score = a->OpenSession(s1->session_id()).Score(score);
  EXPECT_EQ(GetReason(refused_score.status()), Reason::kTenantLimit)
      << refused_score.status();
  // Another tenant streams meanwhile.
  auto b_session = b->CreateSession({});
  ASSERT_TRUE(b_session.ok());
  EXPECT_TRUE(b->OpenSession(b_session->session_id()).AppendText("b").ok());

  // Closing the stream frees the slot before the client sees the call end:
  // the next stream is admitted at once.
  ASSERT_TRUE((*writer)->Close().ok());
  writer->reset();
  auto now = a->OpenSession(s4->session_id()).AppendText("now");
  EXPECT_TRUE(now.ok()) << now.status();
  EXPECT_TRUE(a->OpenSession(s4->session_id()).Export().ok());
  for (int i = 0; i < 2; ++i) {  // each frees its slot as it answers
    auto scored = a->OpenSession(s4->session_id()).Score(score);
    EXPECT_TRUE(scored.ok()) << scored.status();
  }

  // tenant-b has no limit of its own: --tenant-max-sessions holds (it has
  // four sessions, a fifth fits, a sixth does not).
  EXPECT_TRUE(b->CreateSession({}).ok());
  auto over = b->CreateSession({});
  EXPECT_EQ(GetReason(over.status()), Reason::kTenantLimit) << over.status();
  EXPECT_EQ(GetErrorMetadata(over.status(), "max"), "5");
}

// Two gateways with the same session limit and creates racing through
// both: the store holds the limit (each worker passes the gateway's limit
// with the create, and the store reserves atomically), so the tenant ends
// with exactly that many sessions, the other creates TENANT_LIMIT.
TEST_F(TlsTest, ASessionLimitHoldsAcrossGatewaysUnderConcurrentCreates) {
  ASSERT_NO_FATAL_FAILURE(StartRedis());
  const std::string model = MakeModel();
  for (const char* id : {"w1", "w2"}) {
    ASSERT_FALSE(
        Start({"worker", "--listen=127.0.0.1:0", "--redis=" + redis_->address(),
               "--model=" + model, std::string("--worker-id=") + id,
               "--heartbeat-interval=300ms"},
              absl::StrCat("worker-", id, ".log"))
            .empty());
  }
  std::vector<std::string> gateways;
  for (const char* name : {"g1", "g2"}) {
    gateways.push_back(
        Start({"gateway", "--listen=127.0.0.1:0",
               "--redis=" + redis_->address(), "--tenant-max-sessions=3"},
              absl::StrCat("gateway-", name, ".log")));
    ASSERT_FALSE(gateways.back().empty());
  }
  std::atomic<int> created{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      auto client = NewClient(gateways[t % 2], "");
      auto s = client->CreateSession({});
      if (s.ok()) {
        ++created;
      } else if (GetReason(s.status()) == Reason::kTenantLimit) {
        ++refused;
      } else {
        ADD_FAILURE() << s.status();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(created.load(), 3);
  EXPECT_EQ(refused.load(), 9);
  auto listed = NewClient(gateways[0], "")->ListSessions({});
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->sessions_size(), 3);
}

// Two gateways with one stream limit: the slots are counted in Redis, so
// the tenant has at most that many streams open across both; a stream that
// ends frees its slot for the other gateway at once, and the streams of a
// gateway killed with them open free theirs --tenant-stream-ttl later.
TEST_F(TlsTest, AStreamLimitHoldsAcrossGateways) {
  ASSERT_NO_FATAL_FAILURE(StartRedisAndWorker());
  std::vector<std::string> gateways;
  for (const char* name : {"g1", "g2"}) {
    gateways.push_back(
        Start({"gateway", "--listen=127.0.0.1:0",
               "--redis=" + redis_->address(), "--tenant-max-streams=2",
               "--tenant-stream-ttl=6s", std::string("--gateway-id=") + name},
              absl::StrCat("gateway-", name, ".log")));
    ASSERT_FALSE(gateways.back().empty());
  }
  e2e::ClusterProcess* g2 = processes_.back().get();
  auto c1 = NewClient(gateways[0], "");
  auto c2 = NewClient(gateways[1], "");
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    auto s = c1->CreateSession({});
    ASSERT_TRUE(s.ok()) << s.status();
    ids.push_back(s->session_id());
  }
  auto open = [](Client* c, const std::string& id) {
    auto writer = c->OpenSession(id).OpenAppend();
    EXPECT_TRUE(writer.ok()) << writer.status();
    if (!writer.ok()) return std::unique_ptr<client::AppendWriter>();
    EXPECT_TRUE((*writer)->Write("open").ok());
    absl::Status synced = (*writer)->Sync();  // acked: the slot is held
    EXPECT_TRUE(synced.ok()) << synced;
    return *std::move(writer);
  };
  auto refused = [](Client* c, const std::string& id) {
    absl::Status st = c->OpenSession(id).AppendText("x").status();
    EXPECT_EQ(GetReason(st), Reason::kTenantLimit) << st;
    EXPECT_EQ(GetErrorMetadata(st, "limit"), "max_streams") << st;
  };
  auto w1 = open(c1.get(), ids[0]);
  auto w2 = open(c2.get(), ids[1]);
  ASSERT_TRUE(w1 != nullptr && w2 != nullptr);
  refused(c1.get(), ids[2]);  // each gateway holds one: two in all
  refused(c2.get(), ids[2]);

  ASSERT_TRUE(w1->Close().ok());  // frees its slot before the call ends
  w1.reset();
  auto w3 = open(c2.get(), ids[2]);
  ASSERT_TRUE(w3 != nullptr);
  refused(c1.get(), ids[3]);

  // g2 dies holding two streams; their slots expire after 6 s.
  g2->Kill();
  w2.reset();
  w3.reset();
  absl::Status admitted;
  for (int i = 0; i < 150; ++i) {  // up to 30 s
    admitted = c1->OpenSession(ids[3]).AppendText("after").status();
    if (GetReason(admitted) != Reason::kTenantLimit) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(admitted.ok()) << admitted;
}

}  // namespace
}  // namespace statestream
