// SPDX-License-Identifier: Apache-2.0
// The `statestream` command line: help, usage errors and exit codes.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

e2e::RunResult Statestream(std::vector<std::string> args) {
  args.insert(args.begin(), STATESTREAM_BIN);
  auto result = e2e::Run(args);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : e2e::RunResult{};
}

TEST(CliTest, HelpListsEveryCommand) {
  for (const char* help : {"--help", "-h", "help"}) {
    e2e::RunResult r = Statestream({help});
    EXPECT_EQ(r.exit_code, 0) << help;
    EXPECT_THAT(r.out, HasSubstr("Usage: statestream <command>"));
    for (const char* command : {"serve", "gateway", "worker"}) {
      EXPECT_THAT(r.out, HasSubstr(std::string("\n  ") + command + " "));
    }
  }
}

TEST(CliTest, NoCommandIsAUsageError) {
  e2e::RunResult r = Statestream({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("Usage: statestream <command>"));
}

TEST(CliTest, UnknownCommandIsAUsageError) {
  e2e::RunResult r = Statestream({"bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown command \"bogus\""));
  EXPECT_THAT(r.err, HasSubstr("statestream --help"));
  EXPECT_EQ(r.out, "");
}

TEST(CliTest, FlagBeforeTheCommandIsAUsageError) {
  e2e::RunResult r = Statestream({"--listen=127.0.0.1:0", "serve"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("flags go after the command"));
}

TEST(CliTest, CommandHelpShowsOnlyItsFlags) {
  for (const char* command : {"serve", "gateway", "worker"}) {
    e2e::RunResult r = Statestream({command, "--help"});
    EXPECT_EQ(r.exit_code, 0) << command;
    EXPECT_THAT(r.out, HasSubstr(std::string("Usage: statestream ") + command));
    EXPECT_THAT(r.out, HasSubstr("--listen"));
    EXPECT_THAT(r.out, HasSubstr("--shutdown-grace"));
    if (std::string(command) == "serve") {
      EXPECT_THAT(r.out, HasSubstr("--data-dir"));
      EXPECT_THAT(r.out, HasSubstr("--model"));
    } else {
      EXPECT_THAT(r.out, Not(HasSubstr("--data-dir")));
    }
  }
  EXPECT_EQ(Statestream({"help", "serve"}).out,
            Statestream({"serve", "--help"}).out);
}

TEST(CliTest, UnknownFlagIsAUsageError) {
  e2e::RunResult r = Statestream({"serve", "--no-such-flag"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown flag --no-such-flag"));
  EXPECT_THAT(r.err, HasSubstr("statestream serve --help"));
}

TEST(CliTest, FlagOfAnotherCommandIsAUsageError) {
  e2e::RunResult r = Statestream({"gateway", "--data-dir=/tmp/x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--data-dir is not a flag of"));
}

TEST(CliTest, BadFlagValuesAreUsageErrors) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"serve", "--max-receive-message-bytes=lots"},
           {"serve", "--shutdown-grace", "soon"},
           {"serve", "--listen"},
           {"worker", "--listen", "no-port-here"},
           {"gateway", "--listen=[::1:80"},
           {"serve", "unexpected-argument"}}) {
    e2e::RunResult r = Statestream(args);
    EXPECT_EQ(r.exit_code, 2) << args.back();
    EXPECT_NE(r.err, "") << args.back();
    EXPECT_EQ(r.out, "") << args.back();
  }
}

TEST(CliTest, UnusableDataDirOrModelFails) {
  e2e::RunResult r = Statestream(
      {"serve", "--listen=127.0.0.1:0", "--data-dir=/proc/statestream/x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--data-dir"));
  r = Statestream(
      {"serve", "--listen=127.0.0.1:0", "--model=/nonexistent/model.pth"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("/nonexistent/model.pth"));
}

TEST(CliTest, Version) {
  e2e::RunResult r = Statestream({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("statestream "));
}

}  // namespace
}  // namespace statestream
