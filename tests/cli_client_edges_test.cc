// SPDX-License-Identifier: Apache-2.0
// The client verbs of the `statestream` command at the edges of a server's
// answers and of its credentials: a listing whose server repeats its page
// token (a fake server of the test's own), the API key from the
// environment (a real `statestream serve --api-keys`). The rest:
// cli_client_test.cc.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/testing/scratch_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/sdk_cpp_fake_server.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using ::testing::HasSubstr;

// A server whose every ListSessions page names itself as the next: `session
// list` stops after the second page with INTERNAL [INTERNAL] (as the SDKs'
// listings do) instead of listing forever.
class RepeatedPageToken final : public v1::Sessions::Service {
 public:
  grpc::Status ListSessions(grpc::ServerContext*,
                            const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* out) override {
    calls_.fetch_add(1);
    out->add_sessions()->set_session_id(
        request->page_token().empty() ? "first" : "again");
    out->set_next_page_token("same");
    return grpc::Status::OK;
  }
  int calls() const { return calls_.load(); }

 private:
  std::atomic<int> calls_{0};
};

TEST(CliFakeServerTest, SessionListStopsAtARepeatedPageToken) {
  RepeatedPageToken service;
  std::string address;
  std::unique_ptr<grpc::Server> server = sdk_test::Listen(&service, &address);
  ASSERT_NE(server, nullptr);
  auto r = e2e::Run({STATESTREAM_BIN, "session", "list", "--target=" + address},
                    absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->out, HasSubstr("first"));
  EXPECT_THAT(r->err, HasSubstr("repeated its page token [INTERNAL]"));
  EXPECT_EQ(service.calls(), 2);
  server->Shutdown();
}

// The API key can come from STATESTREAM_API_KEY, which other users cannot
// read in the process list as they can a flag; --api-key, when given, wins.
TEST(CliApiKeyTest, TheApiKeyCanComeFromTheEnvironment) {
  testing::ScratchDir dir("ss-cli-api-key");
  const std::string keys = dir.File("keys.txt");
  const std::string key = "env-key-0123456789abcdef";
  std::ofstream(keys) << key << " tenant-a\n";
  auto server = e2e::StartServer(
      {STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0", "--api-keys=" + keys},
      absl::Seconds(60));
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string target = "--target=" + server->address;
  auto run = [&](std::vector<std::string> args, e2e::EnvChanges env) {
    args.insert(args.begin(), STATESTREAM_BIN);
    args.push_back(target);
    auto r = e2e::Run(args, absl::Seconds(60), env);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : e2e::RunResult{};
  };
  e2e::RunResult r =
      run({"session", "create", "from-env"}, {{"STATESTREAM_API_KEY", key}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run({"session", "list"}, {{"STATESTREAM_API_KEY", std::nullopt}});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED"));
  r = run({"session", "get", "from-env", "--api-key=" + key},
          {{"STATESTREAM_API_KEY", "wrong-key"}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("from-env"));
  r = run({"session", "list"}, {{"STATESTREAM_API_KEY", "k\r"}});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err,
              HasSubstr("STATESTREAM_API_KEY may hold only printable ASCII"));
}

}  // namespace
}  // namespace statestream
