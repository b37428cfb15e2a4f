// SPDX-License-Identifier: Apache-2.0
// The `statestream` command line: help, usage errors and exit codes.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cli_run.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

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

// `session export` to a terminal is refused before any call: the state is
// binary. (Run under script(1), which gives it a terminal.)
TEST(CliTest, ExportRefusesToWriteBinaryToATerminal) {
  if (access("/usr/bin/script", X_OK) != 0) {
    GTEST_SKIP() << "no script(1) to give the command a terminal";
  }
  auto r = e2e::Run(
      {"/usr/bin/script", "-qec",
       std::string(STATESTREAM_BIN) + " session export s1 --target=127.0.0.1:1",
       "/dev/null"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 2) << r->out << r->err;
  EXPECT_THAT(r->out, HasSubstr("give --output FILE or redirect stdout"));
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
  // A shared file's flags a verb refuses are not listed for it; string
  // defaults are escaped onto one line.
  e2e::RunResult chat = Statestream({"chat", "--help"});
  EXPECT_THAT(chat.out, Not(HasSubstr("  --commit (default")));
  EXPECT_THAT(chat.out, Not(HasSubstr("  --prompt (default")));
  EXPECT_THAT(chat.out, HasSubstr(R"(--stop (default ""))"));
  EXPECT_THAT(chat.out, HasSubstr("--temperature"));
  EXPECT_THAT(chat.out,
              HasSubstr(R"(--assistant-prefix (default "\n\nAssistant:"))"));
  EXPECT_THAT(Statestream({"generate", "--help"}).out,
              HasSubstr("  --commit (default"));
  EXPECT_THAT(Statestream({"models", "--help"}).out,
              Not(HasSubstr("  --session (default")));
  EXPECT_THAT(Statestream({"session", "--help"}).out,
              Not(HasSubstr("  --session (default")));
}

TEST(CliTest, UnknownFlagIsAUsageError) {
  e2e::RunResult r = Statestream({"serve", "--no-such-flag"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown flag --no-such-flag"));
  EXPECT_THAT(r.err, HasSubstr("statestream serve --help"));
}

// A refused command line reads the same whichever verb refused it and
// whatever found it (the flag parser, a server role's checks, a client
// verb's): one error line, then where the usage is.
TEST(CliTest, EveryUsageErrorHasOneForm) {
  const std::vector<std::vector<std::string>> cases = {
      {"generate", "--top-k=abc"},                // the flag parser
      {"generate", "--session=s", "--top-k=-1"},  // a client verb
      {"session", "create", "--labels=foo"},
      {"serve", "extra"},  // a server role
      {"gateway", "--max-calls=0"},
      {"worker", "--listen=127.0.0.1:0"},  // no --redis
  };
  for (const std::vector<std::string>& args : cases) {
    e2e::RunResult r = Statestream(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << " " << args[1] << ": " << r.err;
    EXPECT_THAT(r.err, ::testing::StartsWith("error: ")) << r.err;
    EXPECT_THAT(r.err, HasSubstr("[INVALID_ARGUMENT]\nRun 'statestream " +
                                 args[0] + " --help' for usage.\n"))
        << r.err;
    EXPECT_EQ(r.out, "");
  }
}

TEST(CliTest, FlagOfAnotherCommandIsAUsageError) {
  e2e::RunResult r = Statestream({"gateway", "--data-dir=/tmp/x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--data-dir is not a flag of"));
  // A worker sits behind gateways: API keys are theirs (or serve's).
  r = Statestream({"worker", "--api-keys=/tmp/keys"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--api-keys is not a flag of"));
  // --dtype (bench engine, model random) and --tokens (model eval,
  // detokenize, score, bench) used to parse for serve and do nothing.
  for (const char* flag : {"--dtype=bf16", "--tokens=1,2"}) {
    r = Statestream({"serve", flag});
    EXPECT_EQ(r.exit_code, 2) << flag;
    EXPECT_THAT(r.err, HasSubstr("is not a flag of")) << flag;
  }
  r = Statestream({"tokenize", "--vocab=bytes", "--tokens=1"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST(CliTest, BadFlagValuesAreUsageErrors) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"serve", "--max-receive-message-bytes=lots"},
           {"serve", "--shutdown-grace", "soon"},
           {"serve", "--listen"},
           {"worker", "--listen", "no-port-here"},
           {"gateway", "--listen=[::1:80"},
           {"serve", "unexpected-argument"},
           {"serve", "--listen=127.0.0.1:0", "--health-listen=no-port"},
           {"serve", "--listen=127.0.0.1:0", "--max-receive-message-bytes=-1"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--max-send-message-bytes=0"},
           // Below the ~6 MB a Score response reaches.
           {"serve", "--listen=127.0.0.1:0",
            "--max-send-message-bytes=4194304"},
           {"serve", "--listen=127.0.0.1:0", "--api-keys=/nonexistent/keys"},
           {"serve", "--listen=127.0.0.1:0", "--tenant-max-streams=-1"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--api-keys=/nonexistent/keys"},
           // Counts and intervals of 0 that made every call fail or a loop
           // spin (used to start and burn a core).
           {"serve", "--listen=127.0.0.1:0", "--readiness-interval=0"},
           {"serve", "--listen=127.0.0.1:0", "--checkpoint-tokens=0"},
           {"serve", "--listen=127.0.0.1:0", "--checkpoint-interval=0"},
           {"serve", "--listen=127.0.0.1:0", "--max-tasks=0"},
           {"serve", "--listen=127.0.0.1:0", "--max-queued-tokens=-5"},
           {"serve", "--listen=127.0.0.1:0", "--residency-bytes=0"},
           {"serve", "--listen=127.0.0.1:0", "--generate-checkpoint-tokens=-1"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--lease-ttl=0"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--heartbeat-interval=-1s"},
           // Sub-millisecond ones passed: Redis TTLs of a millisecond,
           // renewals and pings back to back.
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--lease-ttl=1ns"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--heartbeat-interval=1us"},
           {"serve", "--listen=127.0.0.1:0", "--readiness-interval=1ns"},
           {"serve", "--listen=127.0.0.1:0", "--checkpoint-interval=1us"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--upstream-stall-timeout=0"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--client-stall-timeout=0"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--append-idle-probe=0"},
           {"serve", "--listen=127.0.0.1:0", "--client-stall-timeout=-1s"},
           // A worker's clients are gateways: it does not take the flag.
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--client-stall-timeout=60s"},
           {"gateway", "--redis=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--redis-command-timeout=0"},
           {"gateway", "--redis=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--tenant-stream-ttl=500ms"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--redis-command-timeout=-1s"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--redis-fence-retention=30m"},
           {"serve", "--listen=127.0.0.1:0", "--tls-reload-interval=500ms"},
           {"serve", "--listen=127.0.0.1:0", "--tls-reload-interval=25h"},
           // Refused with no secrets file given too.
           {"serve", "--listen=127.0.0.1:0", "--secrets-reload-interval=500ms"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--secrets-reload-interval=-1s"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--secrets-reload-interval=25h"},
           {"serve", "--listen=127.0.0.1:0", "--api-keys=/dev/zero"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--worker-id=a b"},
           // A header value gRPC refuses aborted the gateway at its first
           // forwarded call.
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--gateway-id=passerelle-\xc3\xa9"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--gateway-id=a b"},
           {"serve", "--listen=127.0.0.1:0", "--max-connection-age=500ms"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--advertise=no-port"},
           // An IPv6 address without its port, bracketed at the wrong colon.
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--advertise=fd00::5"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--advertise=10.0.0.5:0"},
           // Found up front, not after the models load (exit 1, late).
           {"serve", "--listen=127.0.0.1:0", "--metrics-listen=9090"},
           {"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:1",
            "--model=m.pth", "--metrics-listen=host:port"},
           {"gateway", "--workers=127.0.0.1:1", "--listen=127.0.0.1:0",
            "--metrics-listen=:9090"},
           // Dialled at 443, or at 99999 mod 65536: every call failed.
           {"gateway", "--listen=127.0.0.1:0", "--workers=127.0.0.1"},
           {"gateway", "--listen=127.0.0.1:0", "--workers=127.0.0.1:99999"},
           {"gateway", "--listen=127.0.0.1:0",
            "--workers=127.0.0.1:1,fd00::5:7700"},
           {"session", "list", "--target=127.0.0.1:1", "--timeout=0"}}) {
    e2e::RunResult r = Statestream(args);
    EXPECT_EQ(r.exit_code, 2) << args.back();
    EXPECT_NE(r.err, "") << args.back();
    EXPECT_EQ(r.out, "") << args.back();
  }
}

// Nothing listening at --target: the transport's UNAVAILABLE (no reason)
// comes with a hint at what to check. A server's own errors carry a
// reason and get none (CliClientTest).
TEST(CliTest, NoServerAtTheTargetGetsAHint) {
  e2e::RunResult r = Statestream(
      {"session", "list", "--target=127.0.0.1:1", "--max-attempts=1"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("127.0.0.1:1"));
  EXPECT_THAT(r.err, HasSubstr("hint: no statestream server answered at the "
                               "--target address"));
  EXPECT_EQ(r.out, "");
}

// Durations that cannot mean anything are refused by name, not taken as
// "now" or "never".
TEST(CliTest, NegativeDurationsAreUsageErrors) {
  const std::string gateway_flags[] = {"gateway", "--workers=127.0.0.1:1",
                                       "--listen=127.0.0.1:0"};
  struct Case {
    std::vector<std::string> args;
    std::string error;
  };
  const std::vector<Case> cases = {
      {{"serve", "--listen=127.0.0.1:0", "--shutdown-grace=-1s"},
       "--shutdown-grace must be 0 or more"},
      {{"gateway", "--shutdown-grace=-5s"}, "--shutdown-grace must be 0 or"},
      {{"serve", "--listen=127.0.0.1:0", "--request-id-window=-1h"},
       "--request-id-window must be positive"},
      {{"gateway", "--request-id-window=0"},
       "--request-id-window must be positive"},
      {{"gateway", "--suspect-for=-1s"}, "--suspect-for must be 0 or more"},
      // A malformed address is a typo, not an outage to wait out.
      {{"gateway", "--redis=notahost"}, "--redis notahost: want HOST:PORT"},
      {{"gateway", "--redis=h:99999"}, "--redis h:99999: want HOST:PORT"},
      {{"worker", "--listen=127.0.0.1:0", "--redis=127.0.0.1:6379,:1",
        "--model=/dev/null"},
       "--redis :1: want HOST:PORT"},
  };
  for (Case c : cases) {
    if (c.args[0] == "gateway") {
      c.args.insert(c.args.begin() + 1, std::begin(gateway_flags) + 1,
                    std::end(gateway_flags));
    }
    e2e::RunResult r = Statestream(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args.back();
    EXPECT_THAT(r.err, HasSubstr(c.error)) << c.args.back();
    EXPECT_EQ(r.out, "") << c.args.back();
  }
  e2e::RunResult r =
      Statestream({"models", "--target=127.0.0.1:1", "--session=s"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("models takes no --session"));
}

// Bad usage of the client verbs (and of `model`, `detokenize`) is a usage
// error, marked as such (never found by matching the message): exit 2,
// before anything connects, so no server runs here. Failures of a command
// that ran exit 1.
TEST(CliTest, ClientVerbsExitTwoOnBadUsage) {
  const std::string dir = ::testing::TempDir();
  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string error;
  };
  const std::vector<Case> cases = {
      {{"session"}, 2, "usage: statestream session create|get"},
      {{"session", "get"}, 2, "usage: statestream session get ID"},
      {{"session", "frob", "x"}, 2, "unknown verb `session frob`"},
      {{"session", "create", "a", "b"}, 2, "usage: statestream session create"},
      {{"session", "list", "extra"}, 2, "usage: statestream session list"},
      {{"session", "rollback", "x"}, 2, "session rollback ID VERSION"},
      {{"session", "rollback", "x", "notanumber"},
       2,
       "not a version number: notanumber"},
      {{"session", "fork", "x@v2"}, 2, "not a version number: v2"},
      {{"session", "update", "x"}, 2, "needs --labels and/or --ttl"},
      {{"session", "update", "x", "--ttl=-1s"},
       2,
       "--ttl must be between 1s and 365 days"},
      // Sent as 0 s (refused by the server, exit 1) before.
      {{"session", "update", "x", "--ttl=500ms"},
       2,
       "--ttl must be between 1s and 365 days"},
      {{"session", "create", "x", "--ttl=9000h"},
       2,
       "--ttl must be between 1s and 365 days"},
      // A duration without a unit, or in days: the form is named.
      {{"session", "create", "x", "--ttl=5"},
       2,
       "bad value \"5\" for flag --ttl: Illegal value"},
      {{"session", "create", "x", "--ttl=10d"},
       2,
       "(a duration such as 500ms, 30s, 15m or 24h; hours are the largest "
       "unit)"},
      // Header values gRPC refuses aborted the command (SIGABRT).
      {{"session", "list", "--api-key=k\r"},
       2,
       "--api-key may hold only printable ASCII"},
      {{"session", "list", "--tenant=caf\xc3\xa9"},
       2,
       "--tenant may hold only printable ASCII"},
      // A `string` field that is not UTF-8: the server cannot parse the
      // request and answers UNIMPLEMENTED with no message.
      {{"session", "get", "caf\xe9"}, 2, "is not valid UTF-8"},
      {{"session", "fork", "x", "caf\xe9"}, 2, "is not valid UTF-8"},
      {{"session", "create", "x", "--labels=k=\xff"},
       2,
       "--labels is not valid UTF-8"},
      {{"generate", "--session=caf\xe9"}, 2, "--session is not valid UTF-8"},
      {{"generate", "--session=s", "--stop=\xc3"},
       2,
       "--stop is not valid UTF-8"},
      {{"chat", "--session=s", "--turn-end=\xff"},
       2,
       "--turn-end is not valid UTF-8"},
      {{"chat", "--session=caf\xe9"}, 2, "--session is not valid UTF-8"},
      // uint32 on the wire: -1 was sent as 4294967295.
      {{"score", "--session=s", "--tokens=1,-1"},
       2,
       "--tokens: -1 is not a token id"},
      {{"score", "--session=s", "--tokens= "}, 2, "--tokens: no token ids"},
      {{"session", "create", "--labels==v"}, 2, "--labels: expected k=v"},
      {{"session", "get", "x", "--max-attempts", "0"},
       2,
       "--max-attempts must be at least 1"},
      // Either spelling of a flag's name.
      {{"session", "get", "x", "--max_attempts=0"},
       2,
       "--max-attempts must be at least 1"},
      {{"session", "get", "x", "--max-backoff=-1s"},
       2,
       "--max-backoff must not be negative"},
      {{"session", "get", "x", "--target="}, 2, "--target is empty"},
      // A host alone went to gRPC's default port, retried for ~9 s.
      {{"session", "get", "x", "--target=127.0.0.1"},
       2,
       "want HOST:PORT (no port given)"},
      // gRPC dialled 99999 as 34463, "abc" as port 0, -5 as 65531.
      {{"session", "get", "x", "--target=127.0.0.1:99999"},
       2,
       "--target 127.0.0.1:99999: the port must be a number in 1-65535"},
      {{"session", "get", "x", "--target=localhost:abc"},
       2,
       "the port must be a number in 1-65535"},
      {{"session", "get", "x", "--target=127.0.0.1:-5"},
       2,
       "the port must be a number in 1-65535"},
      {{"session", "list", "--target=127.0.0.1:1,[::1]:0"},
       2,
       "--target [::1]:0: the port must be a number in 1-65535"},
      // gRPC took these as an IPv6 address alone, at port 443.
      {{"session", "get", "x", "--target=fe80::1:50051"},
       2,
       "write an IPv6 address as [ADDRESS]:PORT"},
      {{"session", "get", "x", "--target=::1"},
       2,
       "write an IPv6 address as [ADDRESS]:PORT"},
      {{"session", "get", "x", "--target=dns:///localhost:99999"},
       2,
       "the port must be a number in 1-65535"},
      {{"session", "get", "x", "--target=dns:localhost:0"},
       2,
       "the port must be a number in 1-65535"},
      // gRPC dialled these at 443.
      {{"session", "get", "x", "--target=dns:localhost"},
       2,
       "want dns:HOST:PORT (no port given)"},
      {{"session", "get", "x", "--target=dns:///localhost"},
       2,
       "want dns:HOST:PORT (no port given)"},
      {{"session", "get", "x", "--target=dns://8.8.8.8/localhost"},
       2,
       "want dns:HOST:PORT (no port given)"},
      // Sent, and refused by the server (exit 1), before.
      {{"generate", "--session=s", "--stop=a,,b"},
       2,
       "each stop string must be 1-256 bytes"},
      {{"generate", "--session=s", "--stop=" + std::string(257, 'x')},
       2,
       "each stop string must be 1-256 bytes (one has 257)"},
      {{"generate", "--session=s", "--stop=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q"},
       2,
       "--stop: at most 16 stop strings (got 17)"},
      {{"chat", "--session=s", "--stop=" + std::string(300, 'x')},
       2,
       "each stop string must be 1-256 bytes (one has 300)"},
      // The turn end is a stop string too: every turn was refused.
      {{"chat", "--session=s", "--turn-end=" + std::string(257, 'x')},
       2,
       "--turn-end: at most 256 bytes"},
      {{"chat", "--session=s", "--stop=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p"},
       2,
       "at most 15 stop strings besides --turn-end"},
      // Sent as invalid UTF-8 in a proto string (a libprotobuf error).
      {{"models", "\xff"}, 2, "is not valid UTF-8"},
      {{"session", "list", "--model-id=\xff"}, 2, "is not valid UTF-8"},
      // a@1@2 was forked as a@1.
      {{"session", "fork", "a@1@2"}, 2, "is not ID or ID@VERSION"},
      // Not one of the values dropped without a word.
      {{"session", "create", "--labels=a=1,a=2"},
       2,
       "--labels: the key \"a\" is given twice"},
      {{"feed"}, 2, "feed takes one FILE argument"},
      {{"feed", "in.txt"}, 2, "--session ID is required"},
      {{"feed", "--session=s", "--progress=maybe", "in.txt"},
       2,
       "--progress must be auto, always or never"},
      {{"feed", "--session=s", "--max-attempts=0", "/dev/null"},
       2,
       "--max-attempts must be at least 1"},
      {{"generate"}, 2, "--session ID is required"},
      // Numbers outside what the flag means: refused, never clamped or
      // taken as "unset".
      {{"feed", "--session=s", "--chunk-bytes=0", "/dev/null"},
       2,
       "--chunk-bytes must be in [1, 1048576] (got 0)"},
      {{"feed", "--session=s", "--chunk-bytes=-5", "/dev/null"},
       2,
       "--chunk-bytes must be in [1, 1048576]"},
      {{"feed", "--session=s", "--chunk-bytes=2000000", "/dev/null"},
       2,
       "--chunk-bytes must be in [1, 1048576]"},
      {{"feed", "--session=s", "--start-offset=-2", "/dev/null"},
       2,
       "--start-offset must be an input_offset, or -1"},
      {{"generate", "--session=s", "--sample-seed=-2"},
       2,
       "--sample-seed must be 0 or more, or -1"},
      {{"detokenize", "--vocab=bytes"}, 2, "detokenize needs --tokens"},
      {{"generate", "--session=s", "--max-attempts=0"},
       2,
       "--max-attempts must be at least 1"},
      {{"score", "--session=s", "--tokens=1,x"},
       2,
       "--tokens: 'x' is not a 32-bit integer"},
      {{"models", "--max-attempts=0"}, 2, "--max-attempts must be at least 1"},
      {{"generate", "--session=s", "extra"},
       2,
       "generate takes no arguments: the session is --session ID"},
      {{"chat", "extra"}, 2, "chat takes no arguments"},
      {{"score", "--session=s"}, 2, "score takes one TEXT argument"},
      {{"score", "--session=s", "--tokens=1", "text"},
       2,
       "give TEXT or --tokens, not both"},
      {{"tokenize", "a", "b"}, 2, "tokenize takes one TEXT argument"},
      {{"tokenize", "text"}, 2, "--vocab is required"},
      {{"detokenize", "--vocab=bytes", "--tokens=1", "x"},
       2,
       "detokenize takes ids from --tokens"},
      {{"detokenize", "--vocab=bytes", "--tokens=1,x"},
       2,
       "--tokens: 'x' is not a 32-bit integer"},
      {{"model", "eval", "--model=/nonexistent.pth", "--tokens", "1,x"},
       2,
       "--tokens: 'x' is not a 32-bit integer"},
      {{"model", "eval", "--tokens=1"}, 2, "--model is required"},
      {{"model", "eval", "--model=/nonexistent.pth", "--tokens=1",
        "--threads=-1"},
       2,
       "--threads must be in [0, 1024]"},
      // The command ran and failed: exit 1.
      {{"session", "import", "/nonexistent/x.state"},
       1,
       "cannot read /nonexistent/x.state"},
      {{"session", "import", dir}, 1, "cannot read " + dir},
      {{"feed", "--session=s", dir}, 1, "cannot read " + dir},
      {{"model", "eval", "--model=/nonexistent.pth", "--tokens=1"},
       1,
       "/nonexistent.pth"},
  };
  for (const Case& c : cases) {
    std::string what;
    for (const std::string& a : c.args) what += a + " ";
    e2e::RunResult r = Statestream(c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << what << r.err;
    EXPECT_THAT(r.err, HasSubstr("error: ")) << what;
    EXPECT_THAT(r.err, HasSubstr(c.error)) << what;
    EXPECT_EQ(r.out, "") << what;
  }
}

// Flags and arguments a verb would take and then ignore are usage errors
// (exit 2), found before anything connects or loads: generate's --prompt
// and --commit for chat (shared flag file; chat's prompt is each stdin
// line and every turn commits), arguments after `model VERB`, --precision
// for bench (its weights' precision is --dtype), a label without '='.
TEST(CliTest, IgnoredFlagsAndArgumentsAreUsageErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string error;
  };
  const std::vector<Case> cases = {
      {{"chat", "--prompt=hi"}, "chat takes no --prompt"},
      {{"chat", "--prompt="}, "chat takes no --prompt"},
      {{"chat", "--session=s", "--commit"}, "chat takes no --commit"},
      {{"chat", "--nocommit"}, "chat takes no --commit"},
      {{"model", "info", "--model=/nonexistent.pth", "extra"},
       "model info takes no arguments"},
      {{"model", "eval", "--model=/nonexistent.pth", "--tokens=1", "x"},
       "model eval takes no arguments"},
      {{"model", "random", "--out=/nonexistent/m.pth", "--vocab=256", "x"},
       "model random takes no arguments"},
      {{"bench", "engine", "--model=/nonexistent.pth", "--precision=bf16"},
       "bench engine takes no --precision"},
      {{"bench", "engine", "--model=/nonexistent.pth", "--dtype=int8",
        "--precision=as-stored"},
       "with --dtype"},
      {{"bench", "engine", "--model=/nonexistent.pth", "--tokens=100001"},
       "--tokens for --mode decode must be at most 100000"},
      {{"session", "create", "--labels=foo"},
       "--labels: expected k=v,k2=v2, got \"foo\""},
      {{"session", "create", "x", "--labels=a=1,foo"},
       "--labels: expected k=v"},
      {{"session", "list", "--labels=foo"}, "--labels: expected k=v"},
      // Session verbs read only their own flags.
      {{"session", "get", "x", "--ttl=1h"}, "session get takes no --ttl"},
      // The id is an argument: --session is refused, not ignored.
      {{"session", "create", "--session=s"},
       "session create takes the id as an argument, not --session: "
       "statestream session create [ID]"},
      {{"session", "get", "s1", "--session=s2"},
       "session get takes the id as an argument, not --session"},
      {{"session", "get", "--session=s2"},
       "session get takes the id as an argument, not --session: "
       "statestream session get ID"},
      {{"session", "create", "x", "--version=3"},
       "session create takes no --version"},
      {{"session", "list", "--output=f"}, "session list takes no --output"},
      {{"session", "delete", "x", "--labels=a=b"},
       "session delete takes no --labels"},
      {{"session", "export", "x", "--model-id=m"},
       "session export takes no --model-id"},
      {{"session", "rollback", "x", "2", "--ttl=1h"},
       "session rollback takes no --ttl"},
      {{"session", "fork", "x@1", "--version=2"},
       "as ID@VERSION or --version, not both"},
  };
  for (const Case& c : cases) {
    std::string what;
    for (const std::string& a : c.args) what += a + " ";
    e2e::RunResult r = Statestream(c.args);
    EXPECT_EQ(r.exit_code, 2) << what << r.err;
    EXPECT_THAT(r.err, HasSubstr("error: ")) << what;
    EXPECT_THAT(r.err, HasSubstr(c.error)) << what;
    EXPECT_EQ(r.out, "") << what;
  }
}

// --max-tokens and --top-k are uint32 on the wire: a negative value used
// to wrap to ~4e9 and reach the server. --temperature and --top-p outside
// the API's bounds, and a rollback to version 0, used to reach it too (a
// connection, its retries, then INVALID_ARGUMENT with exit 1): these run
// without a server.
TEST(CliTest, SamplingFlagsOutOfRangeAreUsageErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string error;
  };
  const std::vector<Case> cases = {
      {{"generate", "--session=s", "--max-tokens=-1"},
       "--max-tokens must not be negative"},
      {{"generate", "--session=s", "--max-tokens", "-2147483648"},
       "--max-tokens must not be negative"},
      {{"generate", "--session=s", "--top-k=-1"},
       "--top-k must not be negative"},
      {{"chat", "--session=s", "--max-tokens=-5"},
       "--max-tokens must not be negative"},
      {{"chat", "--top-k=-3"}, "--top-k must not be negative"},
      {{"generate", "--session=s", "--temperature=-1"},
       "--temperature must be from 0 to 100 (got -1"},
      {{"generate", "--session=s", "--temperature=nan"},
       "--temperature must be from 0 to 100"},
      {{"chat", "--temperature=inf"}, "--temperature must be from 0 to 100"},
      {{"generate", "--session=s", "--temperature=101"},
       "--temperature must be from 0 to 100 (got 101"},
      {{"session", "rollback", "s", "0"}, "VERSION is 1 or more"},
      {{"generate", "--session=s", "--top-p=0"},
       "--top-p must be in (0, 1] (got 0"},
      {{"generate", "--session=s", "--top-p=1.5"}, "--top-p must be in"},
      {{"chat", "--top-p=-0.1"}, "--top-p must be in"},
  };
  for (const Case& c : cases) {
    std::string what;
    for (const std::string& a : c.args) what += a + " ";
    e2e::RunResult r = Statestream(c.args);
    EXPECT_EQ(r.exit_code, 2) << what << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.error)) << what;
    EXPECT_EQ(r.out, "") << what;
  }
}

// --json prints the proto3 JSON mapping, whose bytes fields (a chunk's
// text_utf8) are base64: the help says so.
TEST(CliTest, GenerateHelpSaysJsonTextIsBase64) {
  for (const char* verb : {"generate", "chat"}) {
    e2e::RunResult r = Statestream({verb, "--help"});
    EXPECT_EQ(r.exit_code, 0) << verb;
    EXPECT_THAT(r.out, HasSubstr("text_utf8")) << verb;
    EXPECT_THAT(r.out, HasSubstr("base64")) << verb;
  }
}

// A vocab path that is a directory says so (the tokenizer loaders read an
// empty vocabulary from it and used to report a missing byte token).
TEST(CliTest, VocabDirectoryIsNamedAsOne) {
  const std::string dir = ::testing::TempDir();
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"tokenize", "--vocab=" + dir, "hi"},
        std::vector<std::string>{"detokenize", "--vocab=" + dir,
                                 "--tokens=1"}}) {
    e2e::RunResult r = Statestream(args);
    EXPECT_EQ(r.exit_code, 1) << args[0] << r.err;
    EXPECT_THAT(r.err, HasSubstr("is a directory")) << args[0];
    EXPECT_THAT(r.err, Not(HasSubstr("single-byte token"))) << args[0];
    EXPECT_EQ(r.out, "") << args[0];
  }
  // serve and worker load --vocab for a model that is not byte-level.
  const std::string model = ::testing::TempDir() + "/cli_test_vocab_" +
                            std::to_string(getpid()) + ".safetensors";
  e2e::RunResult made =
      Statestream({"model", "random", "--layers=1", "--embd=64",
                   "--head-size=32", "--vocab=512", "--out=" + model});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  e2e::RunResult r =
      Statestream({"serve", "--listen=127.0.0.1:0", "--model=" + model,
                   "--vocab=" + dir, "--device=cpu"});
  std::remove(model.c_str());
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("is a directory"));
  EXPECT_THAT(r.err, Not(HasSubstr("single-byte token")));
}

// Output that does not reach stdout (/dev/full) fails the local verbs too
// (the client verbs: cli_client_test.cc).
TEST(CliTest, TokenizeToAFullDiskFails) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no /dev/full here";
  for (const std::string& command :
       {std::string(" tokenize --vocab=bytes hello"),
        std::string(" detokenize --vocab=bytes --tokens=104,105,106")}) {
    auto r = e2e::Run({"/bin/sh", "-c",
                       std::string(STATESTREAM_BIN) + command + " >/dev/full"});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->exit_code, 1) << command << r->err;
    EXPECT_THAT(r->err, HasSubstr("cannot write to stdout")) << command;
  }
}

// The client's TLS flags are checked before anything connects (gRPC would
// take an empty root PEM for the system's roots and drop a certificate
// without its key): files that do not read, are empty or hold no PEM,
// --tls-cert without --tls-key or the reverse, and --tls-* without --tls
// are usage errors.
TEST(CliTest, ClientTlsFlagsAreCheckedBeforeConnecting) {
  const std::string base =
      ::testing::TempDir() + "/cli_test_tls_" + std::to_string(getpid()) + "_";
  const std::string empty = base + "empty.pem";
  const std::string junk = base + "junk.pem";
  std::ofstream(empty, std::ios::binary).flush();
  std::ofstream(junk, std::ios::binary) << "not a certificate\n";
  const std::string dir = ::testing::TempDir();
  struct Case {
    std::vector<std::string> flags;
    std::string error;
  };
  const std::vector<Case> cases = {
      {{"--tls", "--tls-ca=/nonexistent/ca.pem"},
       "--tls-ca: cannot read /nonexistent/ca.pem"},
      {{"--tls", "--tls-ca=" + empty}, "--tls-ca: " + empty + " is empty"},
      {{"--tls", "--tls-ca=" + dir}, "--tls-ca: cannot read " + dir},
      {{"--tls", "--tls-ca=" + junk}, "no PEM certificate"},
      {{"--tls", "--tls-cert=" + junk}, "--tls-cert needs --tls-key"},
      {{"--tls", "--tls-key=" + junk}, "--tls-key needs --tls-cert"},
      {{"--tls", "--tls-cert=" + junk, "--tls-key=" + empty},
       "--tls-key: " + empty + " is empty"},
      {{"--tls", "--tls-cert=" + junk, "--tls-key=" + junk},
       "no PEM certificate"},
      {{"--tls-server-name=localhost"}, "--tls-server-name needs --tls"},
      {{"--tls-ca=" + junk}, "--tls-ca needs --tls"},
      {{"--tls-cert=" + junk, "--tls-key=" + junk},
       "--tls-cert, --tls-key need --tls"},
  };
  for (const std::vector<std::string>& verb :
       {std::vector<std::string>{"session", "list"},
        std::vector<std::string>{"models"}}) {
    for (const Case& c : cases) {
      std::vector<std::string> args = verb;
      args.insert(args.end(), c.flags.begin(), c.flags.end());
      e2e::RunResult r = Statestream(args);
      EXPECT_EQ(r.exit_code, 2) << verb[0] << " " << c.flags.back() << r.err;
      EXPECT_THAT(r.err, HasSubstr(c.error))
          << verb[0] << " " << c.flags.back();
      EXPECT_EQ(r.out, "") << verb[0] << " " << c.flags.back();
    }
  }
  std::remove(empty.c_str());
  std::remove(junk.c_str());
}

TEST(CliTest, Version) {
  e2e::RunResult r = Statestream({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("statestream "));
}

}  // namespace
}  // namespace statestream
