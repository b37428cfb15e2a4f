// SPDX-License-Identifier: Apache-2.0
// The client verbs of the `statestream` command (session, feed, generate,
// chat, score) against a real `statestream serve`, including the feed
// progress bar: shown on a terminal (run under script(1), which gives it a
// pty), absent when stderr is a pipe. A repeated page token and the API
// key from the environment: cli_client_edges_test.cc.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/testing/scratch_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class CliClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto p = e2e::Subprocess::Start(
        {STATESTREAM_BIN, "serve", "--listen=127.0.0.1:0"});
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = p->release();
    auto line = server_->ReadStdoutLine(absl::Seconds(60));
    ASSERT_TRUE(line.ok()) << line.status();
    std::smatch m;
    ASSERT_TRUE(
        std::regex_match(*line, m, std::regex(R"(listening on (\S+))")));
    target_ = new std::string(m[1].str());
    // Every file the tests write goes under one private directory.
    scratch_ = new testing::ScratchDir("ss-cli-client");
  }
  static void TearDownTestSuite() {
    delete server_;  // SIGKILL + reap
    server_ = nullptr;
    delete target_;
    delete scratch_;  // and everything in it
    scratch_ = nullptr;
  }

  // statestream VERB ARGS... --target=<server>
  static e2e::RunResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), STATESTREAM_BIN);
    args.push_back("--target=" + *target_);
    auto r = e2e::Run(args, absl::Seconds(120));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : e2e::RunResult{};
  }
  // A shell command line (for stdin and for script(1)).
  static e2e::RunResult Shell(const std::string& command) {
    auto r = e2e::Run({"/bin/sh", "-c", command}, absl::Seconds(120));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : e2e::RunResult{};
  }
  static std::string Bin() { return STATESTREAM_BIN; }

  static std::string TempFile(const std::string& name,
                              const std::string& contents) {
    const std::string path = scratch_->File(name);
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  static inline e2e::Subprocess* server_ = nullptr;
  static inline std::string* target_ = nullptr;
  static inline testing::ScratchDir* scratch_ = nullptr;
};

TEST_F(CliClientTest, SessionVerbs) {
  e2e::RunResult r =
      Cli({"session", "create", "cli-s", "--json", "--labels=kind=cli"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("session_id":"cli-s")"));
  EXPECT_THAT(r.out, HasSubstr(R"("version":"1")"));

  r = Cli({"session", "get", "cli-s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cli-s\tmodel="));
  EXPECT_THAT(r.out, HasSubstr("input_offset=0"));

  const std::string file = TempFile("s.txt", "hello from the cli");
  r = Cli({"feed", "--session=cli-s", file});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("fed 18 bytes"));

  r = Cli({"session", "versions", "cli-s", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines =
      absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr(R"("input_offset":"18")"));

  r = Cli({"session", "fork", "cli-s@2", "cli-fork"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("input_offset=18"));
  EXPECT_THAT(r.out, HasSubstr("parent=cli-s@2"));
  // What made each version: the fork's first says its source and request.
  r = Cli({"session", "versions", "cli-fork"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cause=VERSION_CAUSE_FORK source_version=2 "
                               "request_id="));
  r = Cli({"session", "versions", "cli-s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("2\tposition=18 input_offset=18 "
                               "cause=VERSION_CAUSE_APPEND"));

  r = Cli({"session", "list", "--labels=kind=cli"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cli-s\t"));
  // The plain line shows the labels and when the session expires.
  EXPECT_THAT(r.out, HasSubstr(" labels=kind=cli ttl="));
  EXPECT_THAT(r.out, HasSubstr(" expires=20"));
  EXPECT_THAT(r.out, Not(HasSubstr("cli-fork")));

  r = Cli({"session", "rollback", "cli-s", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("input_offset=0"));
  EXPECT_THAT(r.out, HasSubstr("version=3"));

  r = Cli({"session", "delete", "cli-fork", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"session_id\":\"cli-fork\",\"deleted\":true}\n");
  r = Cli({"session", "get", "cli-fork"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("[SESSION_NOT_FOUND]"));
  // A server answered: no connection hint; how to find or make a session.
  EXPECT_THAT(r.err, Not(HasSubstr("no statestream server answered")));
  EXPECT_THAT(r.err, HasSubstr("hint: `statestream session list` shows"));

  r = Cli({"session", "frobnicate"});
  EXPECT_EQ(r.exit_code, 2);

  // A server's INVALID_ARGUMENT is a failure (1), not bad usage (2).
  r = Cli({"session", "create", "bad id!"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("[INVALID_ARGUMENT]"));
  r = Cli({"session", "create", "cli-bad-label", "--labels=bad key!=v"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("[INVALID_ARGUMENT]"));
}

TEST_F(CliClientTest, UpdateExportImport) {
  ASSERT_EQ(Cli({"session", "create", "cli-x", "--labels=a=1"}).exit_code, 0);
  const std::string text = TempFile("x.txt", "state to carry over");
  ASSERT_EQ(Cli({"feed", "--session=cli-x", text}).exit_code, 0);

  e2e::RunResult r = Cli(
      {"session", "update", "cli-x", "--labels=b=2", "--ttl=48h", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("b":"2")"));
  EXPECT_THAT(r.out, Not(HasSubstr(R"("a":"1")")));  // replaced
  EXPECT_THAT(r.out, HasSubstr(R"("ttl":"172800s")"));
  // --labels= (given, empty) clears them; the TTL stays.
  r = Cli({"session", "update", "cli-x", "--labels=", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("labels":{})")) << r.out;
  EXPECT_THAT(r.out, HasSubstr(R"("ttl":"172800s")"));
  r = Cli({"session", "update", "cli-x"});  // nothing to update: bad usage
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("--labels and/or --ttl"));

  const std::string blob = TempFile("x.state", "");
  r = Cli({"session", "export", "cli-x", "--output=" + blob});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("exported cli-x version 2"));
  // --version picks an older one: version 1, before the feed.
  const std::string first = TempFile("x1.state", "");
  r = Cli({"session", "export", "cli-x", "--version=1", "--output=" + first});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("exported cli-x version 1"));
  // --json: the state's header, as JSON, on stdout (the state is a file).
  r = Cli({"session", "export", "cli-x", "--version=1", "--json",
           "--output=" + first});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("session_id":"cli-x")"));
  EXPECT_THAT(r.out, HasSubstr(R"("version":"1")"));
  EXPECT_EQ(r.err, "");
  // The state on stdout: the header goes to stderr, the state stays whole.
  r = Cli({"session", "export", "cli-x", "--version=1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr(R"("session_id":"cli-x")"));
  std::ifstream file(first, std::ios::binary);
  EXPECT_EQ(r.out, std::string(std::istreambuf_iterator<char>(file), {}));
  r = Cli({"session", "import", first, "cli-x-v1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("input_offset=0"));
  std::filesystem::remove(first);
  r = Cli({"session", "import", blob, "cli-x-copy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cli-x-copy\t"));
  EXPECT_THAT(r.out, HasSubstr("input_offset=19"));
  // The copy holds the same state: the same continuation.
  const std::vector<std::string> gen = {"generate", "--max-tokens=6",
                                        "--temperature=0", "--json"};
  auto with = [&](const std::string& id) {
    std::vector<std::string> args = gen;
    args.push_back("--session=" + id);
    // The token ids, whatever the streamed chunking.
    const std::string out = Cli(args).out;
    std::string tokens;
    const std::regex chunk(R"re("tokens":\[([0-9,]*)\])re");
    for (std::sregex_iterator it(out.begin(), out.end(), chunk), end; it != end;
         ++it) {
      tokens += (*it)[1].str() + ",";
    }
    return tokens;
  };
  const std::string original = with("cli-x");
  EXPECT_EQ(std::count(original.begin(), original.end(), ','), 6) << original;
  EXPECT_EQ(original, with("cli-x-copy"));

  r = Cli({"models", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("model_id":"demo-random-bytes")"));
  EXPECT_THAT(r.out, HasSubstr(R"("is_default":true)"));  // the only one
  // One model by id (GetModel); an unknown one is MODEL_NOT_FOUND.
  r = Cli({"models", "demo-random-bytes"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::StartsWith("demo-random-bytes\tarchitecture="));
  EXPECT_THAT(r.out, ::testing::EndsWith(" default=true\n"));
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  r = Cli({"models", "no-such-model"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("MODEL_NOT_FOUND"));
  EXPECT_EQ(Cli({"models", "demo-random-bytes", "extra"}).exit_code, 2);

  // Bad input: not a snapshot; a missing file; an unknown session.
  const std::string junk = TempFile("junk.state", "not a state");
  r = Cli({"session", "import", junk});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("STATE_CORRUPT"));
  r = Cli({"session", "import", "/nonexistent/x.state"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("cannot read /nonexistent/x.state"));
  // A directory: an error, not an abort (an uncaught exception from an
  // istream over it used to end the process with SIGABRT, 134).
  const std::string dir = std::filesystem::temp_directory_path().string();
  r = Cli({"session", "import", dir});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot read " + dir));
  EXPECT_EQ(r.out, "");
  // From stdin, through the same reader.
  r = Shell(absl::StrCat(Bin(), " session import --target=", *target_,
                         " - cli-x-stdin < ", blob));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cli-x-stdin\t"));
  EXPECT_THAT(r.out, HasSubstr("input_offset=19"));
  r = Shell(
      absl::StrCat(Bin(), " session import --target=", *target_, " - < ", dir));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot read stdin"));
  r = Cli({"session", "export", "no-such-session", "--output=" + blob});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("SESSION_NOT_FOUND"));
}

// Every flag a session verb accepts reaches the request (create --ttl, list
// --model-id, fork --version/--labels/--ttl and import --labels/--ttl used
// to be dropped without a word).
TEST_F(CliClientTest, SessionVerbsSendEveryFlagTheyTake) {
  e2e::RunResult r = Cli({"session", "create", "cli-f", "--ttl=2h", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("ttl":"7200s")"));
  // The plain line says the TTL as the server keeps it (it said 1s).
  r = Cli({"session", "create", "cli-h", "--ttl=1500ms"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(" ttl=1.5s "));
  const std::string text = TempFile("f.txt", "two versions");
  ASSERT_EQ(Cli({"feed", "--session=cli-f", text}).exit_code, 0);

  r = Cli({"session", "list", "--model-id=demo-random-bytes"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cli-f\t"));
  r = Cli({"session", "list", "--model-id=no-such-model"});
  EXPECT_THAT(r.out, Not(HasSubstr("cli-f\t"))) << r.err;

  r = Cli({"session", "fork", "cli-f", "cli-f-fork", "--version=1",
           "--labels=from=fork", "--ttl=90m", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("version":"1")"));
  EXPECT_THAT(r.out, HasSubstr(R"("from":"fork")"));
  EXPECT_THAT(r.out, HasSubstr(R"("ttl":"5400s")"));
  // Zeros are printed too (version 1: input_offset 0), for scripts.
  EXPECT_THAT(r.out, HasSubstr(R"("input_offset":"0")"));

  const std::string blob = TempFile("f.state", "");
  ASSERT_EQ(Cli({"session", "export", "cli-f", "--output=" + blob}).exit_code,
            0);
  r = Cli({"session", "import", blob, "cli-f-import", "--labels=from=file",
           "--ttl=3h", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("from":"file")"));
  EXPECT_THAT(r.out, HasSubstr(R"("ttl":"10800s")"));
  EXPECT_THAT(r.out, HasSubstr(R"("input_offset":"12")"));
}

// One state file format: `model eval --state-out` writes what `session
// import` takes, and `session export` what `model eval --state-in` reads
// (the server's demo model is `model random`'s defaults, seed 20240424).
TEST_F(CliClientTest, AStateMovesBetweenModelEvalAndTheServer) {
  // The model verbs take no --target.
  auto local = [](std::vector<std::string> args) {
    args.insert(args.begin(), STATESTREAM_BIN);
    auto r = e2e::Run(args, absl::Seconds(120));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : e2e::RunResult{};
  };
  const std::string model = scratch_->File("demo.safetensors");
  e2e::RunResult r = local(
      {"model", "random", "--vocab=256", "--seed=20240424", "--out", model});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string evaluated = scratch_->File("eval.state");
  r = local({"model", "eval", "--model", model, "--tokens=72,105",
             "--state-out", evaluated});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Cli({"session", "import", evaluated, "cli-from-eval"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("position=2"));
  EXPECT_THAT(r.out, HasSubstr("input_offset=2"));

  // The server goes on from it; its export goes back to model eval, which
  // gives the logits of the three tokens read in one go.
  r = Cli({"feed", "--session=cli-from-eval", TempFile("bang.txt", "!")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string exported = scratch_->File("export.state");
  r = Cli({"session", "export", "cli-from-eval", "--output=" + exported});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  e2e::RunResult resumed = local({"model", "eval", "--model", model,
                                  "--tokens=10", "--state-in", exported});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  e2e::RunResult whole =
      local({"model", "eval", "--model", model, "--tokens=72,105,33,10"});
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  // The same logits, bit for bit (the printed position is relative to
  // --tokens).
  auto logits = [](const std::string& line) {
    return line.substr(std::min(line.size(), line.find("\"logits\"")));
  };
  ASSERT_THAT(whole.out, HasSubstr("\"logits\""));
  EXPECT_EQ(logits(resumed.out), logits(whole.out));
}

// An export that fails part-way keeps the snapshot already at that path
// (it used to truncate the file first). The write is cut short by a file
// size limit, with SIGXFSZ ignored so that write() fails with EFBIG. A
// replaced file keeps its mode, a link stays a link (its target is
// replaced), and /dev/stdout is written in place even when the shell sent
// stdout to a regular file.
TEST_F(CliClientTest, AnExportReplacesTheFileWholeOrNotAtAll) {
  ASSERT_EQ(Cli({"session", "create", "cli-keep"}).exit_code, 0);
  const std::string text = TempFile("keep.txt", "state worth keeping");
  ASSERT_EQ(Cli({"feed", "--session=cli-keep", text}).exit_code, 0);
  const std::filesystem::path dir =
      std::filesystem::path(scratch_->path()) / "export";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(std::filesystem::create_directory(dir));
  const std::string blob = (dir / "keep.state").string();
  const std::string earlier = "an earlier snapshot";
  std::ofstream(blob, std::ios::binary) << earlier;
  std::filesystem::permissions(blob, std::filesystem::perms::owner_read |
                                         std::filesystem::perms::owner_write);
  auto contents = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)),
                       std::istreambuf_iterator<char>());
  };
  // ulimit -f counts 512-byte blocks: 8 KiB, less than the state.
  e2e::RunResult r = Shell(absl::StrCat(
      "trap '' XFSZ; ulimit -f 16; ", Bin(),
      " session export cli-keep --target=", *target_, " --output=", blob));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot write " + blob));
  EXPECT_EQ(contents(blob), earlier);
  // No temporary left beside it.
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"keep.state"});

  // Without the limit it is replaced whole, with its mode.
  r = Cli({"session", "export", "cli-keep", "--output=" + blob});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string state = contents(blob);
  EXPECT_GT(state.size(), 8192u);
  EXPECT_EQ(
      std::filesystem::status(blob).permissions(),
      std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  // Through a link: the link stays, its target is replaced.
  const std::string link = (dir / "latest.state").string();
  std::ofstream(blob, std::ios::binary) << earlier;
  std::filesystem::create_symlink(blob, link);
  r = Cli({"session", "export", "cli-keep", "--output=" + link});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(contents(blob), state);
  // /dev/stdout onto a file the shell opened: through fd 1, at its offset
  // (>> appends).
  const std::string out = (dir / "stdout.state").string();
  r = Shell(absl::StrCat(Bin(), " session export cli-keep --target=", *target_,
                         " --output=/dev/stdout > ", out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(contents(out), state);
  r = Shell(absl::StrCat("printf PREFIX > ", out, "; ", Bin(),
                         " session export cli-keep --target=", *target_,
                         " --output=/dev/stdout >> ", out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(contents(out), "PREFIX" + state);
  // With --json the header goes to stderr when the blob is on stdout by
  // any name (it was appended to the blob under /dev/stdout).
  for (const char* name : {"/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"}) {
    r = Shell(absl::StrCat(Bin(), " session export cli-keep --json --target=",
                           *target_, " --output=", name, " > ", out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(contents(out), state) << name;
    EXPECT_THAT(r.err, HasSubstr("\"version\"")) << name;
  }
  // A new file gets 0666 less the umask.
  const std::string fresh = (dir / "fresh.state").string();
  r = Shell(absl::StrCat("umask 027; ", Bin(),
                         " session export cli-keep --target=", *target_,
                         " --output=", fresh));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(std::filesystem::status(fresh).permissions(),
            std::filesystem::perms::owner_read |
                std::filesystem::perms::owner_write |
                std::filesystem::perms::group_read);
  std::filesystem::remove_all(dir);
}

// A rerun's feed places the input where it read the session: input that
// reaches the session between that read and the stream's first request
// (another writer here; a lost owner's uncommitted input likewise) makes
// the feed fail with POSITION_MISMATCH. It used to open the stream at
// wherever the session had moved to, appending the rest of the file at
// the wrong offset. The feed reads from a FIFO, so it waits in the skip
// (after its read of the session) until the test writes.
TEST_F(CliClientTest, FeedRefusesASessionThatMovedUnderIt) {
  ASSERT_EQ(Cli({"session", "create", "cli-moved"}).exit_code, 0);
  const std::string head = TempFile("moved-head.txt", "0123456789");
  ASSERT_EQ(Cli({"feed", "--session=cli-moved", head}).exit_code, 0);
  const std::string script = absl::StrCat(
      "d=$(mktemp -d -p ", scratch_->path(), "); mkfifo $d/in; ", Bin(),
      " feed --session=cli-moved --start-offset=0 --target=", *target_,
      " $d/in 2> $d/err & f=$!; exec 3> $d/in; ",
      // Until the feed waits on the FIFO: it has read the session.
      // (pipe_read since Linux 5.6, pipe_wait before; elsewhere, 10 s.)
      "i=0; until grep -qE 'pipe_(read|wait)' /proc/$f/wchan 2>/dev/null "
      "|| [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done; ",
      "printf XYZ | ", Bin(), " feed --session=cli-moved --target=", *target_,
      " - > /dev/null; ",
      "printf 0123456789abcdefghij >&3; exec 3>&-; wait $f; echo rc=$?; ",
      "cat $d/err; rm -r $d");
  e2e::RunResult r = Shell(script);
  EXPECT_THAT(r.out, HasSubstr("rc=1")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("[POSITION_MISMATCH]")) << r.out;
  r = Cli({"session", "get", "cli-moved"});
  EXPECT_THAT(r.out, HasSubstr("input_offset=13")) << r.err;
}

TEST_F(CliClientTest, FeedProgressOnlyOnATerminal) {
  ASSERT_EQ(Cli({"session", "create", "cli-feed"}).exit_code, 0);
  const std::string file = TempFile("feed.txt", std::string(200000, 'a'));
  // Piped stderr: no progress bar.
  e2e::RunResult piped =
      Cli({"feed", "--session=cli-feed", "--chunk-bytes=4096", file});
  ASSERT_EQ(piped.exit_code, 0) << piped.err;
  EXPECT_EQ(piped.err, "");
  EXPECT_THAT(piped.out, HasSubstr("fed 200000 bytes (200000 tokens)"));

  // A terminal: script(1) runs the command on a pty.
  const std::string cmd = absl::StrCat(
      Bin(), " feed --session=cli-feed --chunk-bytes=4096 --target=", *target_,
      " ", file);
  e2e::RunResult tty =
      Shell(absl::StrCat("script -qec '", cmd, "' /dev/null </dev/null"));
  ASSERT_EQ(tty.exit_code, 0) << tty.out << tty.err;
  EXPECT_THAT(tty.out, HasSubstr("100%"));
  EXPECT_THAT(tty.out, HasSubstr("tok/s"));
  EXPECT_THAT(tty.out, HasSubstr("\r["));

  // From stdin, with --json.
  e2e::RunResult in = Shell(absl::StrCat("printf 'xyz' | ", Bin(),
                                         " feed --session=cli-feed --json "
                                         "--target=",
                                         *target_, " -"));
  ASSERT_EQ(in.exit_code, 0) << in.err;
  EXPECT_THAT(in.out, HasSubstr(R"("bytes":"3")"));
  EXPECT_THAT(in.out, HasSubstr(R"("input_offset":"400003")"));
}

// A rerun of a feed that stopped part way, with --start-offset, appends
// only what the session does not have: each byte once.
TEST_F(CliClientTest, FeedRerunWithStartOffsetSkipsWhatTheSessionHas) {
  ASSERT_EQ(Cli({"session", "create", "cli-rerun"}).exit_code, 0);
  const std::string text = "0123456789abcdefghij";
  const std::string file = TempFile("rerun.txt", text);
  // The first run got half way.
  e2e::RunResult half = Shell(
      absl::StrCat("printf '0123456789' | ", Bin(),
                   " feed --session=cli-rerun --target=", *target_, " -"));
  ASSERT_EQ(half.exit_code, 0) << half.err;
  e2e::RunResult rerun =
      Cli({"feed", "--session=cli-rerun", "--start-offset=0", "--json", file});
  ASSERT_EQ(rerun.exit_code, 0) << rerun.err;
  EXPECT_THAT(rerun.out, HasSubstr(R"("bytes":"10")"));
  EXPECT_THAT(rerun.out, HasSubstr(R"("skipped":"10")"));
  EXPECT_THAT(rerun.out, HasSubstr(R"("input_offset":"20")"));
  // Again: nothing left to send.
  rerun =
      Cli({"feed", "--session=cli-rerun", "--start-offset=0", "--json", file});
  ASSERT_EQ(rerun.exit_code, 0) << rerun.err;
  EXPECT_THAT(rerun.out, HasSubstr(R"("bytes":"0")"));
  EXPECT_THAT(rerun.out, HasSubstr(R"("input_offset":"20")"));
  // The session is before the offset, or has more than the file: refused.
  e2e::RunResult gap =
      Cli({"feed", "--session=cli-rerun", "--start-offset=25", file});
  EXPECT_EQ(gap.exit_code, 1);
  EXPECT_THAT(gap.err, HasSubstr("[POSITION_MISMATCH]"));
  const std::string shorter = TempFile("short.txt", "0123");
  e2e::RunResult more =
      Cli({"feed", "--session=cli-rerun", "--start-offset=0", shorter});
  EXPECT_EQ(more.exit_code, 1);
  EXPECT_THAT(more.err, HasSubstr("more than the input"));
  e2e::RunResult bad =
      Cli({"feed", "--session=cli-rerun", "--max-attempts=0", file});
  EXPECT_EQ(bad.exit_code, 2);  // bad usage
  EXPECT_THAT(bad.err, HasSubstr("--max-attempts must be at least 1"));
}

// A rerun that resumes inside a character the session holds open (an
// earlier writer split the text there) reports the input's own fault when
// the rest does not complete it: its end, or a byte that cannot continue
// it. It flushed the open character first, which the server refuses, and
// every rerun failed on that flush instead, with the same advice.
TEST_F(CliClientTest, FeedRerunInsideAnOpenCharacterReportsTheInput) {
  ASSERT_EQ(Cli({"session", "create", "cli-open-char"}).exit_code, 0);
  auto channel =
      grpc::CreateChannel(*target_, grpc::InsecureChannelCredentials());
  auto streams = v1::Streams::NewStub(channel);
  grpc::ClientContext ctx;
  auto call = streams->Append(&ctx);
  v1::AppendRequest req;
  req.set_session_id("cli-open-char");
  req.set_request_id("open-char-1");
  req.set_text_utf8("ab\xE2\x82");  // committed with a character open
  req.set_checkpoint(true);
  ASSERT_TRUE(call->Write(req));
  v1::AppendResponse ack;
  ASSERT_TRUE(call->Read(&ack));
  EXPECT_EQ(ack.input_offset(), 4u);
  call->WritesDone();
  ASSERT_TRUE(call->Finish().ok());
  struct Case {
    std::string input;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"ab\xE2\x82", "the input ends inside a UTF-8 character at byte 2"},
      {"ab\xE2\x82zz", "the input is not valid UTF-8 at byte 2"},
  };
  for (const Case& c : cases) {
    const std::string file = TempFile("open-char.txt", c.input);
    e2e::RunResult r =
        Cli({"feed", "--session=cli-open-char", "--start-offset=0", file});
    EXPECT_EQ(r.exit_code, 1) << c.says;
    EXPECT_THAT(r.err, HasSubstr(c.says));
    EXPECT_THAT(r.err, HasSubstr("[INVALID_UTF8]"));
    EXPECT_THAT(r.err, Not(HasSubstr("at a flush"))) << c.says;
  }
  // Completed, the character and what follows go in.
  const std::string file = TempFile("open-char.txt", "ab\xE2\x82\xAC!");
  e2e::RunResult r = Cli(
      {"feed", "--session=cli-open-char", "--start-offset=0", "--json", file});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("bytes":"2")"));
  EXPECT_THAT(r.out, HasSubstr(R"("input_offset":"6")"));
}

// An input that cannot be read is an error, never the end of the input:
// nothing is committed, no "fed N bytes", exit 1.
TEST_F(CliClientTest, FeedFailsOnAnUnreadableInput) {
  ASSERT_EQ(Cli({"session", "create", "cli-unreadable"}).exit_code, 0);
  const std::string dir = std::filesystem::temp_directory_path().string();
  e2e::RunResult r = Cli({"feed", "--session=cli-unreadable", dir});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot read " + dir));
  EXPECT_THAT(r.out, Not(HasSubstr("fed ")));
  // A directory on stdin too.
  r = Shell(absl::StrCat(Bin(), " feed --session=cli-unreadable --target=",
                         *target_, " - < ", dir));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot read stdin"));
  EXPECT_THAT(r.out, Not(HasSubstr("fed ")));
  // A file that opens but fails to read (EIO: /proc/self/mem at offset 0
  // is not mapped), found once the append call is open.
  const int fd = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  char byte;
  const bool mem_fails = fd >= 0 && ::read(fd, &byte, 1) < 0;
  if (fd >= 0) ::close(fd);
  if (mem_fails) {
    r = Cli({"feed", "--session=cli-unreadable", "/proc/self/mem"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr("cannot read /proc/self/mem after 0 bytes"));
    EXPECT_THAT(r.err, HasSubstr("--start-offset=0"));
    EXPECT_THAT(r.out, Not(HasSubstr("fed ")));
  }
  // Nothing was appended or committed.
  r = Cli({"session", "get", "cli-unreadable"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("input_offset=0 "));
  EXPECT_THAT(r.out, HasSubstr("version=1 "));
}

// Output that does not reach stdout (a full disk: /dev/full) fails the
// command instead of leaving a truncated state blob behind exit 0.
TEST_F(CliClientTest, ExportToAFullDiskFails) {
  if (!std::filesystem::exists("/dev/full")) {
    GTEST_SKIP() << "no /dev/full here";
  }
  ASSERT_EQ(Cli({"session", "create", "cli-full"}).exit_code, 0);
  const std::string text = TempFile("full.txt", "some state to export");
  ASSERT_EQ(Cli({"feed", "--session=cli-full", text}).exit_code, 0);
  e2e::RunResult r = Shell(absl::StrCat(
      Bin(), " session export cli-full --target=", *target_, " > /dev/full"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot write to stdout"));
  EXPECT_THAT(r.err, Not(HasSubstr("exported ")));
  r = Cli({"session", "export", "cli-full", "--output=/dev/full"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot write /dev/full"));
  EXPECT_THAT(r.err, Not(HasSubstr("exported ")));
  // Any verb's output.
  r = Shell(absl::StrCat(Bin(), " session list --json --target=", *target_,
                         " > /dev/full"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot write to stdout"));
  // Still exported fine to a file.
  const std::string blob = TempFile("full.state", "");
  r = Cli({"session", "export", "cli-full", "--output=" + blob});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(std::filesystem::file_size(blob), 0u);
}

// Every verb that prints, not only session and feed: generate, chat,
// score and models (text and --json) exit 1 when their output does not
// reach stdout, instead of 0 with the output lost.
TEST_F(CliClientTest, EveryVerbFailsOnAFullDisk) {
  if (!std::filesystem::exists("/dev/full")) {
    GTEST_SKIP() << "no /dev/full here";
  }
  ASSERT_EQ(Cli({"session", "create", "cli-full-verbs"}).exit_code, 0);
  const std::string text = TempFile("full-verbs.txt", "Once upon a time");
  ASSERT_EQ(Cli({"feed", "--session=cli-full-verbs", text}).exit_code, 0);
  const std::string target = " --target=" + *target_;
  const std::vector<std::string> commands = {
      "generate --session=cli-full-verbs --max-tokens=4 --temperature=0",
      "generate --session=cli-full-verbs --max-tokens=4 --json",
      "score --session=cli-full-verbs abc",
      "score --session=cli-full-verbs --json abc",
      "models",
      "models --json",
      // chat reads its turns from stdin; a single turn, then end of input.
      "chat --session=cli-full-verbs --max-tokens=4",
      "chat --session=cli-full-verbs --max-tokens=4 --json",
  };
  for (const std::string& command : commands) {
    const std::string line = absl::StrCat("printf 'hi\\n' | ", Bin(), " ",
                                          command, target, " > /dev/full");
    e2e::RunResult r = Shell(line);
    EXPECT_EQ(r.exit_code, 1) << command << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("cannot write to stdout")) << command;
    // The same command with somewhere to write succeeds.
    r = Shell(absl::StrCat("printf 'hi\\n' | ", Bin(), " ", command, target,
                           " > /dev/null"));
    EXPECT_EQ(r.exit_code, 0) << command << ": " << r.err;
  }
}

// --labels splits each entry at its first '=' only: the value keeps the
// rest; an entry without '=' is bad usage, not a label with no value.
TEST_F(CliClientTest, LabelValuesKeepTheirEqualsSigns) {
  e2e::RunResult r =
      Cli({"session", "create", "cli-labels", "--json", "--labels=k=v=w,n=1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("k":"v=w")"));
  EXPECT_THAT(r.out, HasSubstr(R"("n":"1")"));
  r = Cli({"session", "list", "--labels=k=v=w"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cli-labels\t"));
  r = Cli({"session", "list", "--labels=k=v"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, Not(HasSubstr("cli-labels\t")));

  r = Cli({"session", "create", "cli-labels-bad", "--labels=foo"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("--labels: expected k=v"));
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(Cli({"session", "get", "cli-labels-bad"}).exit_code, 1);
  r = Cli({"session", "update", "cli-labels", "--labels=a=1,foo"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(Cli({"session", "get", "cli-labels", "--json"}).out,
              HasSubstr(R"("k":"v=w")"));
}

// On a terminal, chat prompts with "> " and streams each reply; every
// turn is committed to the session. script(1) gives it a pty; the piped
// line is typed into it, then end of input ends the chat.
TEST_F(CliClientTest, ChatOnATerminal) {
  ASSERT_EQ(Cli({"session", "create", "cli-chat-tty"}).exit_code, 0);
  const std::string cmd = absl::StrCat(
      Bin(), " chat --session=cli-chat-tty --max-tokens=4 --target=", *target_);
  e2e::RunResult tty = Shell(absl::StrCat(
      "printf 'hi\\n' | timeout 60 script -qec '", cmd, "' /dev/null"));
  ASSERT_EQ(tty.exit_code, 0) << tty.out << tty.err;
  EXPECT_THAT(tty.out, HasSubstr("> "));
  // Piped (not a terminal): no prompt.
  e2e::RunResult piped = Shell(absl::StrCat(
      "printf 'hi\\n' | ", Bin(),
      " chat --session=cli-chat-tty --max-tokens=4 --target=", *target_));
  ASSERT_EQ(piped.exit_code, 0) << piped.err;
  EXPECT_THAT(piped.out, Not(HasSubstr("> ")));
  // Both turns committed "User: hi\n\nAssistant:" (20 bytes) and more.
  std::smatch m;
  const std::string got = Cli({"session", "get", "cli-chat-tty", "--json"}).out;
  ASSERT_TRUE(
      std::regex_search(got, m, std::regex(R"re("input_offset":"(\d+)")re")))
      << got;
  EXPECT_GE(std::stoi(m[1].str()), 2 * 20);
}

TEST_F(CliClientTest, GenerateScoreAndChat) {
  ASSERT_EQ(Cli({"session", "create", "cli-gen"}).exit_code, 0);
  e2e::RunResult r = Cli({"generate", "--session=cli-gen", "--prompt=Once",
                          "--max-tokens=8", "--temperature=0", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out,
              HasSubstr(R"("finish_reason":"FINISH_REASON_MAX_TOKENS")"));
  // The first chunk says where the generation started, as the proto has it.
  EXPECT_THAT(r.out.substr(0, r.out.find('\n')),
              HasSubstr(R"("start_input_offset":"0")"));
  EXPECT_EQ(r.out.find("start_input_offset", r.out.find('\n')),
            std::string::npos)
      << r.out;
  // A side branch by default.
  EXPECT_THAT(Cli({"session", "get", "cli-gen"}).out,
              HasSubstr("input_offset=0"));

  r = Cli({"generate", "--session=cli-gen", "--prompt=Once", "--max-tokens=8",
           "--commit"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("committed"));
  EXPECT_THAT(Cli({"session", "get", "cli-gen"}).out,
              HasSubstr("input_offset=12"));

  r = Cli({"score", "--session=cli-gen", "abc"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("sum_logprob"));
  r = Cli({"score", "--session=cli-gen", "--tokens=97,98", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(R"("sum_logprob")"));

  // Two chat turns: each commits `User: LINE\n\nAssistant:` + the reply
  // (+ the turn end unless the reply stopped at it).
  r = Shell(absl::StrCat(
      "printf 'hi\\nagain\\n' | ", Bin(),
      " chat --session=cli-gen --max-tokens=4 --target=", *target_, " --json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n') >= 2, true);
  EXPECT_THAT(r.out, HasSubstr(R"("committed":true)"));
  e2e::RunResult after = Cli({"session", "get", "cli-gen", "--json"});
  // 12 + two turns of "User: " + line + "\n\nAssistant:" (20 and 23
  // bytes), each followed by a reply of at most 4 tokens and "\n\n".
  std::smatch m;
  ASSERT_TRUE(std::regex_search(after.out, m,
                                std::regex(R"re("input_offset":"(\d+)")re")))
      << after.out;
  const int offset = std::stoi(m[1].str());
  EXPECT_GE(offset, 12 + 20 + 23);
  EXPECT_LE(offset, 12 + 20 + 4 + 2 + 23 + 4 + 2);
  // The last turn's done line reports the session after the whole turn,
  // its closing "\n\n" included (it lagged one commit behind).
  const std::string last_done = r.out.substr(r.out.rfind("{\"finish_reason"));
  ASSERT_TRUE(std::regex_search(last_done, m,
                                std::regex(R"re("input_offset":"(\d+)")re")))
      << r.out;
  EXPECT_EQ(std::stoi(m[1].str()), offset) << r.out;
  std::smatch version;
  ASSERT_TRUE(std::regex_search(after.out, version,
                                std::regex(R"re("version":"(\d+)")re")));
  EXPECT_THAT(last_done, HasSubstr(absl::StrCat(R"("version":")",
                                                version[1].str(), "\"")));
}

// The sampling flags reach the server: --top-k=1 is greedy at any
// temperature, --sample-seed repeats a sampled run exactly, --stop ends
// the output at a stop string.
TEST_F(CliClientTest, GenerateSamplingFlags) {
  ASSERT_EQ(Cli({"session", "create", "cli-flags"}).exit_code, 0);
  auto generate = [&](std::vector<std::string> flags) {
    std::vector<std::string> args = {"generate", "--session=cli-flags",
                                     "--prompt=Once upon", "--max-tokens=16"};
    args.insert(args.end(), flags.begin(), flags.end());
    e2e::RunResult r = Cli(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  const std::string greedy = generate({"--temperature=0"});
  EXPECT_EQ(generate({"--temperature=1.5", "--top-k=1", "--sample-seed=9"}),
            greedy);
  const std::string five = generate({"--temperature=1", "--sample-seed=5"});
  EXPECT_EQ(generate({"--temperature=1", "--sample-seed=5"}), five);
  EXPECT_NE(generate({"--temperature=1", "--sample-seed=6"}), five);
  // A printable character of the greedy output (the demo model's output
  // is fixed) as the stop string.
  const size_t at = greedy.find_first_of(
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
  ASSERT_NE(at, std::string::npos) << greedy;
  const std::string stop(1, greedy[at]);
  const std::string stopped =
      generate({"--temperature=0", "--stop=" + stop, "--json"});
  EXPECT_THAT(stopped,
              HasSubstr(R"("finish_reason":"FINISH_REASON_STOP_STRING")"));
  EXPECT_THAT(stopped, HasSubstr(absl::StrCat(R"("stop_string":")", stop)));

  // Piped, the text is exactly what was generated: the chunks of the same
  // (greedy) generation, without the line break a terminal gets.
  const std::string json = generate({"--temperature=0", "--json"});
  std::string chunks;
  const std::regex text(R"re("text_utf8":"([^"]*)")re");
  for (std::sregex_iterator it(json.begin(), json.end(), text), end; it != end;
       ++it) {
    std::string bytes;
    ASSERT_TRUE(absl::Base64Unescape((*it)[1].str(), &bytes)) << json;
    chunks += bytes;
  }
  EXPECT_EQ(greedy, chunks) << json;
  EXPECT_EQ(greedy.size(), 16u);
}

}  // namespace
}  // namespace statestream
