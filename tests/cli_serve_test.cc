// SPDX-License-Identifier: Apache-2.0
// The `statestream` command line: `serve`'s own checks and what it says
// as it starts (data directory, models, devices, precisions).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cli_run.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(CliTest, UnusableDataDirOrModelFails) {
  e2e::RunResult r = Statestream(
      {"serve", "--listen=127.0.0.1:0", "--data-dir=/proc/statestream/x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--data-dir"));
  // A directory this process cannot write (even as root).
  r = Statestream({"serve", "--listen=127.0.0.1:0", "--data-dir=/proc/self"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--data-dir /proc/self is not writable"));
  r = Statestream(
      {"serve", "--listen=127.0.0.1:0", "--model=/nonexistent/model.pth"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("serve: --model /nonexistent/model.pth: cannot "
                               "open: No such file or directory "
                               "[INVALID_MODEL_FILE]"));
  // No regular file (a device that reads forever), and a file that is no
  // model: each refused with the path once and the reason.
  r = Statestream({"serve", "--listen=127.0.0.1:0", "--model=/dev/zero"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("serve: --model /dev/zero: not a regular file "
                               "[INVALID_MODEL_FILE]"));
  const std::string golden =
      std::string(STATESTREAM_SHARED_DIR) + "/testdata/rwkv7-tiny.golden.json";
  r = Statestream({"serve", "--listen=127.0.0.1:0", "--model=" + golden});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("serve: --model " + golden + ": "));
  EXPECT_THAT(r.err, HasSubstr("[INVALID_MODEL_FILE]"));
  EXPECT_EQ(r.err.find(golden), r.err.rfind(golden)) << r.err;
}

// The data directory serve creates, and the database in it, are private
// (they hold every tenant's state) whatever the umask.
TEST(CliTest, ServeCreatesAPrivateDataDir) {
  char tmpl[] = "/tmp/ss-cli-data-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = std::string(tmpl) + "/new/data";
  const mode_t before = umask(022);
  auto server = e2e::StartServer(
      {STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0", "--data-dir=" + dir},
      absl::Seconds(60));
  umask(before);
  ASSERT_TRUE(server.ok()) << server.status();
  for (const std::string& path : {dir, dir + "/sessions.db"}) {
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_mode & 077, 0u) << path;
  }
  server->process.reset();
  std::filesystem::remove_all(tmpl);
}

// One server per --data-dir: a second one on it fails at start, naming
// the first's pid (two would be two workers with no gateway between them,
// taking each other's sessions: a writer's acked input was dropped). The
// lock goes with the process, however it ended: after a SIGKILL the
// directory serves again at once.
TEST(CliTest, ASecondServeOnOneDataDirFails) {
  char tmpl[] = "/tmp/ss-cli-lock-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::vector<std::string> argv = {
      STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0", "--data-dir=" + dir};
  auto first = e2e::StartServer(argv, absl::Seconds(60));
  ASSERT_TRUE(first.ok()) << first.status();
  e2e::RunResult r =
      Statestream({"serve", "--listen=127.0.0.1:0", "--data-dir=" + dir});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err,
              HasSubstr("--data-dir " + dir +
                        " is in use by another statestream serve (pid "));
  EXPECT_THAT(r.out, Not(HasSubstr("listening")));
  first->process->Signal(SIGKILL);
  ASSERT_TRUE(first->process->Wait(absl::Seconds(30)).ok());
  auto again = e2e::StartServer(argv, absl::Seconds(60));
  ASSERT_TRUE(again.ok()) << again.status();
  again->process.reset();
  std::filesystem::remove_all(tmpl);
}

// A feed refused at its first request (more tokens than the worker queues
// in all: MESSAGE_TOO_LARGE) says what the session had committed when feed
// began, not an ack that never came, and that the rerun needs a smaller
// --chunk-bytes: the same rerun would fail the same way. With one, it
// goes through.
TEST(CliTest, AFeedTooLargeForTheWorkerSaysToShrinkItsChunks) {
  auto server =
      e2e::StartServer({STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0",
                        "--max-queued-tokens=1000"},
                       absl::Seconds(60));
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string target = "--target=" + server->address;
  char path[] = "/tmp/ss-cli-feed-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string text(3000, 'a');
  ASSERT_EQ(write(fd, text.data(), text.size()),
            static_cast<ssize_t>(text.size()));
  close(fd);
  ASSERT_EQ(Statestream({"session", "create", "big", target}).exit_code, 0);
  e2e::RunResult r = Statestream({"feed", "--session=big", target, path});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("[MESSAGE_TOO_LARGE]"));
  EXPECT_THAT(r.err, HasSubstr("committed_input_offset was 0 when feed began; "
                               "no ack came"));
  // 3000 bytes were 3000 tokens (a byte-level model) of the 1000 queued.
  EXPECT_THAT(r.err, HasSubstr("rerun with --start-offset=0 and "
                               "--chunk-bytes=1000 or less"));
  r = Statestream({"feed", "--session=big", target, "--start-offset=0",
                   "--chunk-bytes=1000", path});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = Statestream({"session", "get", "big", target});
  EXPECT_THAT(r.out, HasSubstr("committed_input_offset=3000"));
  std::remove(path);
}

TEST(CliTest, BadModelListsAndDevicesAreUsageErrors) {
  struct Case {
    std::vector<std::string> flags;
    std::string error;
  };
  const std::vector<Case> cases = {
      {{"--model=a.pth,,b.pth"}, "--model: entry 2 of 3 is empty"},
      {{"--model=a.pth,"}, "--model: entry 2 of 2 is empty"},
      {{"--model=x/m.pth,y/m.safetensors"}, "two models have the id \"m\""},
      {{"--model=a=x.pth,a=y.pth"}, "two models have the id \"a\""},
      {{"--model==x.pth"}, "has no id"},
      {{"--model=a=x.pth,b="}, "\"b=\" has no path"},
      {{"--model=a.pth,b.pth", "--vocab=v.txt"},
       "--vocab: 1 entry for 2 models"},
      {{"--model=a.pth", "--vocab=,v.txt"}, "--vocab: 2 entries for 1 model"},
      // tokenize's "bytes" was read as a file name ("cannot read bytes").
      {{"--model=a.pth", "--vocab=bytes"},
       "--vocab: \"bytes\" is for tokenize and detokenize"},
      {{"--model=a.pth", "--device=gpu"}, "--device must be cpu, cuda or auto"},
      {{"--model=a.pth", "--precision=int4"},
       "--precision must be as-stored, f32 (or fp32), bf16 or int8"},
      {{"--model=a.pth", "--threads=-1"}, "--threads must be in [0, 1024]"},
  };
  for (const char* role : {"serve", "worker"}) {
    for (const Case& c : cases) {
      std::vector<std::string> args = {role, "--listen=127.0.0.1:0"};
      if (std::string(role) == "worker") args.push_back("--redis=127.0.0.1:1");
      args.insert(args.end(), c.flags.begin(), c.flags.end());
      e2e::RunResult r = Statestream(args);
      EXPECT_EQ(r.exit_code, 2) << role << " " << c.flags[0];
      EXPECT_THAT(r.err, HasSubstr(c.error)) << role << " " << c.flags[0];
      EXPECT_EQ(r.out, "") << role << " " << c.flags[0];
    }
  }
  e2e::RunResult r = Statestream({"serve", "--vocab=v.txt"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--vocab: needs --model"));
  r = Statestream({"worker", "--redis=127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--model is required"));
}

TEST(CliTest, OneModelUnderTwoIdsFails) {
  const std::string model = ::testing::TempDir() + "/cli_test_" +
                            std::to_string(getpid()) + ".safetensors";
  e2e::RunResult made =
      Statestream({"model", "random", "--layers=1", "--embd=64",
                   "--head-size=32", "--vocab=256", "--out=" + model});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  e2e::RunResult r =
      Statestream({"serve", "--listen=127.0.0.1:0",
                   "--model=a=" + model + ",b=" + model, "--device=cpu"});
  std::remove(model.c_str());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("is the same model"));
}

// Starts `serve` with `flags`; returns its exit code after SIGTERM once it
// listens, or its exit code if it never does. `err` gets its stderr; with
// `models`, the models it lists (`statestream models --json`) before the
// SIGTERM.
int ServeAndStop(const std::vector<std::string>& flags, std::string* err,
                 std::string* models = nullptr) {
  std::vector<std::string> argv = {STATESTREAM_BIN, "serve",
                                   "--listen=127.0.0.1:0"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto process = e2e::Subprocess::Start(argv);
  EXPECT_TRUE(process.ok()) << process.status();
  if (!process.ok()) return -1;
  auto line = (*process)->ReadStdoutLine(absl::Seconds(60));
  if (line.ok() && absl::StartsWith(*line, "listening on ")) {
    if (models != nullptr) {
      const std::string target(absl::StripPrefix(*line, "listening on "));
      e2e::RunResult r =
          Statestream({"models", "--json", "--target=" + target});
      EXPECT_EQ(r.exit_code, 0) << r.err;
      *models = r.out;
    }
    (*process)->Signal(SIGTERM);
  }
  auto code = (*process)->Wait(absl::Seconds(30));
  *err = (*process)->stderr_text();
  return code.value_or(-1);
}

TEST(CliTest, DeviceCpuServesAndSaysSo) {
  std::string err;
  EXPECT_EQ(ServeAndStop({"--device=cpu"}, &err), 0) << err;
  EXPECT_THAT(err, HasSubstr("statestream serve: device cpu (--device cpu)"));
  // auto says which it chose, and why.
  EXPECT_EQ(ServeAndStop({}, &err), 0) << err;
  EXPECT_THAT(err, HasSubstr("(--device auto: "));
}

// --precision and --bf16-activations apply to every served model, are
// logged with it and listed by ListModels (weights_dtype,
// bf16_activations).
TEST(CliTest, ServesInt8AndBf16Weights) {
  const std::string model = ::testing::TempDir() + "/cli_test_weights_" +
                            std::to_string(getpid()) + ".safetensors";
  e2e::RunResult made = Statestream(
      {"model", "random", "--layers=1", "--embd=64", "--head-size=32",
       "--vocab=256", "--dtype=bf16", "--out=" + model});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const std::vector<std::string> common = {"--model=" + model, "--device=cpu",
                                           "--threads=1"};
  auto serve = [&](std::vector<std::string> flags, std::string* err,
                   std::string* models) {
    flags.insert(flags.end(), common.begin(), common.end());
    EXPECT_EQ(ServeAndStop(flags, err, models), 0) << *err;
  };
  std::string err, models;
  serve({"--precision=int8"}, &err, &models);
  EXPECT_THAT(err, HasSubstr("int8 weights"));
  EXPECT_THAT(models, HasSubstr(R"("weights_dtype":"int8")"));
  EXPECT_THAT(models, HasSubstr(R"("bf16_activations":"")"));
  serve({}, &err, &models);  // kept bf16, two terms by default
  EXPECT_THAT(err, Not(HasSubstr("bf16 activations")));
  EXPECT_THAT(models, HasSubstr(R"("weights_dtype":"bf16")"));
  EXPECT_THAT(models, HasSubstr(R"("bf16_activations":"split")"));
  serve({"--bf16-activations=round"}, &err, &models);
  EXPECT_THAT(err, HasSubstr("bf16 activations round"));
  EXPECT_THAT(models, HasSubstr(R"("bf16_activations":"round")"));
  serve({"--precision=f32"}, &err, &models);
  EXPECT_THAT(models, HasSubstr(R"("weights_dtype":"fp32")"));
  EXPECT_THAT(models, HasSubstr(R"("bf16_activations":"")"));
  // A bad value is a usage error before anything is served.
  EXPECT_EQ(ServeAndStop({"--model=" + model, "--bf16-activations=half"}, &err),
            2)
      << err;
  EXPECT_THAT(err, HasSubstr("--bf16-activations must be split or round"));
  std::remove(model.c_str());
}

TEST(CliTest, DeviceCudaWithoutAGpuIsAUsageError) {
  std::string err;
  const int code = ServeAndStop({"--device=cuda"}, &err);
  if (code == 0 && absl::StrContains(err, "device cuda (--device cuda)")) {
    GTEST_SKIP() << "this machine has a usable CUDA device";
  }
  EXPECT_EQ(code, 2) << err;
  EXPECT_THAT(err, HasSubstr("--device cuda: no CUDA device"));
}

}  // namespace
}  // namespace statestream
