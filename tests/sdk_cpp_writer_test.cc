// SPDX-License-Identifier: Apache-2.0
// The C++ SDK's AppendWriter against a real `statestream serve`: retries at
// a start offset, the window, text checked as the server would before any
// of it is sent, options that cannot work, a closed writer.
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "statestream/client.h"
#include "tests/sdk_cpp_fixture.h"

namespace statestream {
namespace {

using sdk_test::SdkTest;

// A retry of AppendText after a failure, at the offset the text began at:
// the session already has it, so it is acknowledged as a duplicate instead
// of applied twice (a writer used to start at the offset GetSession read).
TEST_F(SdkTest, AnAppendRetriedAtItsStartOffsetAppliesOnce) {
  client::Session s = Create("retry");
  client::AppendOptions at_zero;
  at_zero.start_offset = 0;
  auto first = s.AppendText("hello", at_zero);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->input_offset(), 5u);
  auto again = s.AppendText("hello", at_zero);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->input_offset(), 5u);
  auto info = s.Get();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->input_offset(), 5u);
  // A session short of start_offset: a gap, nothing applied.
  client::AppendOptions ahead;
  ahead.start_offset = 100;
  absl::Status gap = s.AppendText("x", ahead).status();
  EXPECT_EQ(gap.code(), absl::StatusCode::kFailedPrecondition) << gap;
  EXPECT_EQ(GetReason(gap), Reason::kPositionMismatch) << gap;
}

// A window over kMaxAppendWindow is clamped: the server stops reading a
// writer that leaves 64 acks unread, and a writer with thousands of
// requests in flight before it read an ack blocked on flow control for
// good (the deadline ends such a call instead of hanging the test).
TEST_F(SdkTest, AWindowOver64IsClamped) {
  client::Session s = Create("wide");
  client::AppendOptions options;
  options.window = 5000;
  options.call.deadline = absl::Now() + absl::Seconds(60);
  auto writer = s.OpenAppend(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (int i = 0; i < 3000; ++i) {
    ASSERT_TRUE((*writer)->WriteTokens({65}).ok()) << i;
  }
  auto done = (*writer)->Close();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->committed_input_offset(), 3000u);
}

// Text is checked as the server would check it before any of it is sent:
// text the server refused after earlier requests of the same Write (or
// AppendText's flush) were applied left the session holding part of it,
// half a character included, which then failed every later text append.
TEST_F(SdkTest, TextIsCheckedWholeBeforeAnyOfItIsSent) {
  client::Session s = Create("utf8");
  auto offset = [&] { return s.Get().value().input_offset(); };
  // AppendText ending inside a character: refused, nothing applied.
  absl::Status st = s.AppendText("abc\xE2\x82").status();
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  EXPECT_EQ(GetErrorMetadata(st, "input_offset"), "3") << st;
  EXPECT_EQ(offset(), 0u);
  // A bad byte past the first request of a long Write: refused whole, and
  // the writer stays usable.
  client::AppendOptions small;
  small.max_chunk_bytes = 1000;
  auto writer = s.OpenAppend(small);
  ASSERT_TRUE(writer.ok()) << writer.status();
  std::string text(5000, 'x');
  text[4000] = '\xFF';
  st = (*writer)->Write(text);
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  EXPECT_EQ(GetErrorMetadata(st, "input_offset"), "4000") << st;
  EXPECT_EQ((*writer)->offset(), 0u);
  // A character split across writes is fine; a flush inside one is
  // refused until its rest is written.
  ASSERT_TRUE((*writer)->Write("ok \xE2").ok());
  st = (*writer)->Flush();
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  EXPECT_EQ(GetErrorMetadata(st, "input_offset"), "3") << st;
  st = (*writer)->Write("x");  // does not continue the open character
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  ASSERT_TRUE((*writer)->Write("\x82\xAC").ok());
  ASSERT_TRUE((*writer)->Flush().ok());
  auto done = (*writer)->Close();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->committed_input_offset(), 6u);  // "ok €"
  // A new writer may start with the rest of a character the session
  // holds (it cannot know it), over several writes: the server checks
  // those bytes.
  writer = s.OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("\xE2").ok());
  ASSERT_TRUE((*writer)->Close().ok());
  writer = s.OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("\x82").ok());
  ASSERT_TRUE((*writer)->Write("\xAC!").ok());
  ASSERT_TRUE((*writer)->Close().ok());
  // Tokens flush the text before them: not inside a character.
  writer = s.OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("a\xE2").ok());
  st = (*writer)->WriteTokens({65});
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  EXPECT_EQ(GetErrorMetadata(st, "input_offset"), "11") << st;
  ASSERT_TRUE((*writer)->Write("\x82\xAC").ok());
  ASSERT_TRUE((*writer)->WriteTokens({65}).ok());
  done = (*writer)->Close();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->committed_input_offset(), 15u);
}

// Options no writer or client can run with are refused before any call
// (a window or max_chunk_bytes of 0 was a request per byte; a timeout of 0
// failed every attempt at once; max_attempts 0 became 1).
TEST_F(SdkTest, OptionsThatCannotWorkAreRefused) {
  client::Session s = Create("options");
  for (auto [window, chunk] : std::vector<std::pair<int, size_t>>{
           {0, 1000}, {-3, 1000}, {32, 0}, {32, static_cast<size_t>(-5)}}) {
    client::AppendOptions options;
    options.window = window;
    options.max_chunk_bytes = chunk;
    EXPECT_EQ(s.OpenAppend(options).status().code(),
              absl::StatusCode::kInvalidArgument)
        << window << " " << chunk;
    EXPECT_EQ(s.AppendText("x", options).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(s.Get().value().input_offset(), 0u);
  auto with = [&](auto edit) {
    client::ClientOptions options;
    options.targets = {server_->address()};
    edit(options);
    return client::Client::Create(options).status().code();
  };
  using client::ClientOptions;
  EXPECT_EQ(with([](ClientOptions& o) { o.max_attempts = 0; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) { o.timeout = absl::ZeroDuration(); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) { o.timeout = -absl::Seconds(1); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) {
              o.initial_backoff = -absl::Milliseconds(1);
            }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) {
              o.initial_backoff = absl::InfiniteDuration();
            }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) {
              o.timeout = absl::InfiniteDuration();
              o.initial_backoff = absl::ZeroDuration();
              o.max_backoff = absl::InfiniteDuration();  // no cap
            }),
            absl::StatusCode::kOk);
  // TLS material without tls: ignored on a plaintext channel, the api_key
  // in the clear.
  EXPECT_EQ(with([](ClientOptions& o) { o.tls_root_certs_pem = "x"; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) { o.tls_cert_chain_pem = "x"; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) { o.tls_private_key_pem = "x"; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](ClientOptions& o) { o.tls_server_name = "gw"; }),
            absl::StatusCode::kInvalidArgument);
}

// A closed writer refuses every write, one with nothing to send too (an
// empty write used to succeed after Close).
TEST_F(SdkTest, AClosedWriterRefusesEmptyWrites) {
  client::Session s = Create("closed-writer");
  auto writer = s.OpenAppend();
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("abc").ok());
  ASSERT_TRUE((*writer)->Close().ok());
  EXPECT_EQ((*writer)->Write("").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*writer)->WriteTokens({}).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace statestream
