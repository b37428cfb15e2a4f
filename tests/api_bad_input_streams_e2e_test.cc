// SPDX-License-Identifier: Apache-2.0
// Bad input to the Streams rpcs (Generate, Score, Append): out-of-range
// tokens, invalid UTF-8, oversize requests, unknown sessions; a typed
// error, nothing applied (tests/api_bad_input_fixture.h).
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/api_bad_input_fixture.h"

namespace statestream {
namespace {

TEST_F(ApiBadInputE2eTest, Generate) {
  ASSERT_TRUE(CreateWithText("gen", "hello").ok());  // versions 1, 2
  auto session = Get("gen");
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t vocab = VocabOf(session->model_id());
  ASSERT_GT(vocab, 0u) << session->model_id();
  // Committing, so that anything applied would show.
  v1::GenerateRequest base;
  base.set_session_id("gen");
  base.set_request_id("gen-1");
  base.set_max_tokens(4);
  base.set_commit(true);
  base.mutable_sampling()->set_seed(7);
  auto gen = [this, base](std::function<void(v1::GenerateRequest*)> edit) {
    return std::function<absl::Status()>([this, base, edit] {
      v1::GenerateRequest g = base;
      edit(&g);
      return GenerateStatus(g);
    });
  };
  // Control: the base request is valid (as a side branch: no change).
  const absl::Status ok = gen([](auto* g) { g->set_commit(false); })();
  ASSERT_TRUE(ok.ok()) << ok;
  const std::vector<Case> cases = {
      {"unknown session",
       gen([](auto* g) { g->set_session_id("gen-missing"); }),
       WantNoSession("gen-missing")},
      {"prompt_text_utf8 'ok\\xff'",
       gen([](auto* g) { g->set_prompt_text_utf8("ok\xff"); }),
       WantField("prompt_text_utf8", Reason::kInvalidUtf8)},
      {"logit_bias on vocab_size + 44", gen([vocab](auto* g) {
         (*g->mutable_sampling()->mutable_logit_bias())[vocab + 44] = 1;
       }),
       WantField("sampling.logit_bias", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab + 44)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      {"max_tokens over the limit",
       gen([](auto* g) { g->set_max_tokens(kMaxGenerateTokens + 1); }),
       WantTooLarge("max_tokens", absl::StrCat(kMaxGenerateTokens))},
      {"17 stop_strings", gen([](auto* g) {
         for (int i = 0; i < 17; ++i) g->add_stop_strings(absl::StrCat(i));
       }),
       WantTooLarge("stop_strings", "16")},
      // A limit, as the count: it was INVALID_ARGUMENT without `limit`.
      {"a stop string of 257 bytes",
       gen([](auto* g) { g->add_stop_strings(std::string(257, 'a')); }),
       WantTooLarge("stop_strings", "256")},
      {"an empty stop string", gen([](auto* g) { g->add_stop_strings(""); }),
       WantField("stop_strings")},
      {"temperature -1",
       gen([](auto* g) { g->mutable_sampling()->set_temperature(-1); }),
       WantField("sampling.temperature")},
      {"top_logprobs 21", gen([](auto* g) {
         g->set_logprobs(true);
         g->set_top_logprobs(21);
       }),
       WantField("top_logprobs")},
      // Alternatives of log-probabilities not asked for were dropped.
      {"top_logprobs without logprobs",
       gen([](auto* g) { g->set_top_logprobs(2); }), WantField("top_logprobs")},
      {"prompt_tokens id = vocab_size",
       gen([vocab](auto* g) { g->mutable_prompt_tokens()->add_ids(vocab); }),
       WantField("prompt_tokens.ids", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      {"stop_tokens id = vocab_size",
       gen([vocab](auto* g) { g->add_stop_tokens(vocab); }),
       WantField("stop_tokens", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)}})},
      {"prompt_text_utf8 over the limit", gen([](auto* g) {
         g->set_prompt_text_utf8(std::string(kMaxTextBytes + 1, 'a'));
       }),
       WantTooLarge("prompt_text_utf8", absl::StrCat(kMaxTextBytes))},
      {"durability 9 on a side branch", gen([](auto* g) {
         g->set_commit(false);
         g->set_durability(static_cast<v1::Durability>(9));
       }),
       WantField("durability")},
  };
  for (const Case& c : cases) {
    ExpectCase(c);
    ExpectAt("gen", session->version(), session->input_offset());
  }
}

TEST_F(ApiBadInputE2eTest, Score) {
  ASSERT_TRUE(CreateWithText("score", "hello").ok());  // versions 1, 2
  auto session = Get("score");
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t vocab = VocabOf(session->model_id());
  ASSERT_GT(vocab, 0u) << session->model_id();
  v1::ScoreRequest base;
  base.set_session_id("score");
  base.set_text_utf8("x");
  auto score = Editor(streams_.get(), &v1::Streams::Stub::Score, base);
  const absl::Status ok = score([](auto*) {})();
  ASSERT_TRUE(ok.ok()) << ok;  // control
  ExpectCases({
      {"unknown session",
       score([](auto* r) { r->set_session_id("score-missing"); }),
       WantNoSession("score-missing")},
      {"text_utf8 '\\xff'", score([](auto* r) { r->set_text_utf8("\xff"); }),
       WantField("text_utf8", Reason::kInvalidUtf8)},
      {"token id = vocab_size",
       score([vocab](auto* r) { r->mutable_tokens()->add_ids(vocab); }),
       WantField("tokens.ids", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      // NOTE: the proto's Score errors list FAILED_PRECONDITION/
      // INVALID_ARGUMENT (nothing consumed yet) but nothing for a missing
      // continuation ("Required"); the code (ScoreReactor) answers
      // INVALID_ARGUMENT/INVALID_ARGUMENT, field continuation.
      {"no continuation", score([](auto* r) { r->clear_continuation(); }),
       WantField("continuation")},
      {"version 99", score([](auto* r) { r->set_version(99); }),
       WantNoVersion("99")},
      // Checked only against the applied state; with a version it was
      // silently ignored.
      {"expected_input_offset with a version", score([](auto* r) {
         r->set_version(1);
         r->set_expected_input_offset(0);
       }),
       WantField("expected_input_offset")},
  });
}

TEST_F(ApiBadInputE2eTest, Append) {
  ASSERT_TRUE(CreateWithText("app", "").ok());
  auto session = Get("app");
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t vocab = VocabOf(session->model_id());
  ASSERT_GT(vocab, 0u) << session->model_id();
  v1::AppendRequest bad_token;
  bad_token.set_session_id("app");
  bad_token.mutable_tokens()->add_ids(65);
  bad_token.mutable_tokens()->add_ids(vocab);
  v1::AppendRequest too_many;
  too_many.set_session_id("app");
  too_many.set_expected_input_offset(2);
  for (int i = 0; i <= kMaxAppendTokens; ++i) {
    too_many.mutable_tokens()->add_ids(97);
  }
  ExpectCases({
      {"token id = vocab_size", [&] { return Append({bad_token}).status; },
       WantField("tokens.ids", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      {"text 'ok\\xff'",
       [&] { return Append({Text("app", 0, "ok\xFF")}).status; },
       WantField("text_utf8", Reason::kInvalidUtf8, {{"input_offset", "2"}})},
      {"text incomplete at a flush",
       [&] { return Append({Text("app", 0, "caf\xC3", true)}).status; },
       WantField("text_utf8", Reason::kInvalidUtf8, {{"input_offset", "3"}})},
      {"text over the limit",
       [&] {
         return Append({Text("app", 0, std::string(kMaxTextBytes + 1, 'a'))})
             .status;
       },
       WantTooLarge("text_utf8", absl::StrCat(kMaxTextBytes))},
      {"a gap: expected_input_offset 5 at 0",
       [&] { return Append({Text("app", 5, "x")}).status; },
       WantKey(absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
               "actual_input_offset", "0")},
  });
  ExpectAt("app", session->version(), 0);  // none of them applied
  ExpectCases({
      // The first request is applied and acked; the second fails the call.
      {"second request names another session",
       [&] {
         AppendResult r =
             Append({Text("app", 0, "ab"), Text("app-other", 2, "cd")});
         EXPECT_EQ(r.acks.size(), 1u) << r.status;
         return r.status;
       },
       WantField("session_id")},
      {"first request without session_id",
       [&] { return Append({Text("", 2, "cd")}).status; },
       WantField("session_id")},
      {"262145 tokens in one request",
       [&] { return Append({too_many}).status; },
       WantTooLarge("tokens.ids", absl::StrCat(kMaxAppendTokens))},
      // A message gRPC cannot parse ends the call UNIMPLEMENTED, as a
      // unary call's request; it used to read as the client's half-close,
      // the call ending OK without the requests after it.
      {"second request with a request_id that is not UTF-8",
       [&] {
         v1::AppendRequest garbled = Text("app", 4, "ef");
         garbled.set_request_id("\xFF");
         AppendResult r =
             Append({Text("app", 2, "cd"), garbled, Text("app", 4, "gh")});
         EXPECT_EQ(r.acks.size(), 1u) << r.status;
         return r.status;
       },
       {absl::StatusCode::kUnimplemented, Reason::kUnspecified, "", {}}},
  });
  // The acked requests only; those before the message that did not parse
  // committed, as at a half-close (and as a gateway does).
  auto s = Get("app");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_offset(), 4u);
  EXPECT_EQ(s->committed_input_offset(), 4u);
}

}  // namespace
}  // namespace statestream
