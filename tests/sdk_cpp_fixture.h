// SPDX-License-Identifier: Apache-2.0
// The C++ SDK tests' fixture: a `statestream serve` process on a
// --data-dir that outlives it (Server), and SdkTest, which starts one and a
// client of it. Servers commit only when asked (--checkpoint-tokens and
// --checkpoint-interval out of reach), so a kill always loses applied
// input the SDK must resend.
#ifndef STATESTREAM_TESTS_SDK_CPP_FIXTURE_H_
#define STATESTREAM_TESTS_SDK_CPP_FIXTURE_H_

#include <grpc/impl/codegen/grpc_types.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "state_store/testing/redis_harness.h"
#include "statestream/client.h"
#include "tests/subprocess.h"

namespace statestream::sdk_test {

using client::Client;
using client::ClientOptions;

constexpr absl::Duration kStartTimeout = absl::Seconds(60);

// Creates session `id` (a failure fails the test) and opens it.
inline client::Session CreateAndOpen(Client& client, const std::string& id) {
  v1::CreateSessionRequest req;
  req.set_session_id(id);
  auto s = client.CreateSession(req);
  EXPECT_TRUE(s.ok()) << s.status();
  return client.OpenSession(id);
}

// Session `s`'s sum of logprobs for `text` (0 when the Score fails, which
// fails the test).
inline double SumLogprob(const client::Session& s, const std::string& text) {
  v1::ScoreRequest req;
  req.set_text_utf8(text);
  auto r = s.Score(req);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->sum_logprob() : 0;
}

// A `statestream serve` process on a --data-dir that outlives it.
class Server {
 public:
  explicit Server(std::string data_dir, std::vector<std::string> flags = {})
      : data_dir_(std::move(data_dir)), flags_(std::move(flags)) {}

  // Starts on `port` (0: a free one below the ephemeral range, which
  // KillAndRestart can take again). Returns "host:port".
  std::string Start(int port = 0) {
    const bool pick = port == 0;
    for (int attempt = 1;; ++attempt) {
      if (pick) port = testing::StablePort();
      std::vector<std::string> argv = {
          STATESTREAM_BIN,
          "serve",
          absl::StrCat("--listen=127.0.0.1:", port),
          "--data-dir=" + data_dir_,
          "--checkpoint-tokens=100000000",
          "--checkpoint-interval=10000h"};
      argv.insert(argv.end(), flags_.begin(), flags_.end());
      auto p = e2e::Subprocess::Start(argv);
      if (!p.ok()) {
        ADD_FAILURE() << p.status();
        return "";
      }
      process_ = std::move(*p);
      auto line = process_->ReadStdoutLine(kStartTimeout);
      std::smatch m;
      const std::string text = line.ok() ? *line : "";
      if (std::regex_match(text, m,
                           std::regex(R"(listening on (\S+):(\d+))"))) {
        port_ = std::stoi(m[2].str());
        return address();
      }
      // A picked port taken before serve bound it (by a test running in
      // parallel): pick another.
      process_->Wait(absl::Seconds(30)).IgnoreError();
      if (pick && attempt < 5 &&
          absl::StrContains(process_->stderr_text(), "cannot listen")) {
        continue;
      }
      ADD_FAILURE() << "no listening line: " << text << " (" << line.status()
                    << ")\n"
                    << process_->stderr_text();
      return "";
    }
  }
  // SIGKILL, then a new process on the same port and data directory.
  void KillAndRestart() {
    Kill();
    Start(port_);
  }
  void Kill() {
    process_->Signal(SIGKILL);
    process_->Wait(absl::Seconds(30)).IgnoreError();
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  std::string data_dir_;
  std::vector<std::string> flags_;
  int port_ = 0;
  std::unique_ptr<e2e::Subprocess> process_;  // killed by its destructor
};

class SdkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat(
               "ss-sdk-test-", getpid(), "-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    StartServer({});
  }
  // (Re)starts the server with `flags` and a client of it.
  void StartServer(std::vector<std::string> flags) {
    client_.reset();
    server_.reset();
    std::filesystem::create_directories(dir_ / "data");
    server_ =
        std::make_unique<Server>((dir_ / "data").string(), std::move(flags));
    const std::string address = server_->Start();
    ASSERT_FALSE(address.empty());
    ClientOptions options;
    options.targets = {address};
    options.max_attempts = 40;  // covers a server restart
    options.max_backoff = absl::Milliseconds(500);
    // A fixed 64 KiB window: a long Generate cannot finish ahead of the
    // reader.
    options.channel_args = {{GRPC_ARG_HTTP2_BDP_PROBE, 0}};
    auto c = Client::Create(options);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Generates `req` on a new session `id`, kills the server after the
  // first chunk, appends to the session, then reads the resumed stream to
  // its end: how it ended.
  absl::Status ResumedAfterTheSessionMoved(const std::string& id,
                                           const v1::GenerateRequest& req) {
    client::Session s = Create(id);
    absl::Status appended = s.AppendText("Once upon a time").status();
    if (!appended.ok()) return appended;
    auto stream = s.Generate(req);
    if (!stream.ok()) return stream.status();
    client::GenerateChunk chunk;
    if (!(*stream)->Next(&chunk)) return (*stream)->status();
    server_->KillAndRestart();
    appended = s.AppendText(" there was a change").status();
    if (!appended.ok()) return appended;
    while ((*stream)->Next(&chunk)) {
    }
    return (*stream)->status();
  }

  client::Session Create(const std::string& id) {
    return CreateAndOpen(*client_, id);
  }

  static std::string Text(size_t n) {
    std::string text;
    for (size_t i = 0; text.size() < n; ++i) {
      absl::StrAppend(&text, "line ", i, ": the state streams on, ",
                      "\xE2\x82\xAC", i * 7919 % 1000, "\n");
    }
    return text;
  }

  // A server with a random World-vocabulary model: its tokenizer holds a
  // word's bytes back until the word ends (the built-in demo model is
  // byte-level and holds nothing back).
  void StartWorldServer() {
    const std::string model = (dir_ / "world.safetensors").string();
    auto made =
        e2e::Run({STATESTREAM_BIN, "model", "random", "--layers=1", "--embd=64",
                  "--vocab=65536", "--dtype=bf16", "--out=" + model});
    ASSERT_TRUE(made.ok() && made->exit_code == 0)
        << (made.ok() ? made->err : made.status().ToString());
    const char* shared = std::getenv("STATESTREAM_SHARED_DIR");
    ASSERT_NO_FATAL_FAILURE(StartServer(
        {"--model=" + model,
         absl::StrCat(
             "--vocab=", shared != nullptr ? shared : STATESTREAM_SHARED_DIR,
             "/testdata/rwkv_vocab_v20230424.txt")}));
  }

  double ScoreOf(const client::Session& s) {
    return SumLogprob(s, "and then it continued.");
  }

  // `a` and `b` hold the same state: their exported blobs are the same
  // bytes (and, through the model, they score a continuation alike). For
  // sessions that are not forks and never generated: a blob also names a
  // fork's parent and holds generation records (docs/state-format.md).
  void ExpectSameState(const client::Session& a, const client::Session& b) {
    auto x = a.Export();
    auto y = b.Export();
    ASSERT_TRUE(x.ok()) << x.status();
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_EQ(x->header.position(), y->header.position());
    EXPECT_EQ(x->header.input_offset(), y->header.input_offset());
    EXPECT_TRUE(x->blob == y->blob) << "the states differ";
    EXPECT_EQ(ScoreOf(a), ScoreOf(b));
  }

  std::filesystem::path dir_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<Client> client_;
};

}  // namespace statestream::sdk_test

#endif  // STATESTREAM_TESTS_SDK_CPP_FIXTURE_H_
