// SPDX-License-Identifier: Apache-2.0
// Tokenizers against the golden vectors in ../shared/testdata
// (world-tokenizer.golden.json, computed by the official TRIE_TOKENIZER),
// plus the streaming contract and the UTF-8 helpers.
#include "worker/engine/tokenizer.h"

#include <openssl/evp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/tokenizer_test_util.h"

namespace statestream::engine {
namespace {

using ::testing::HasSubstr;

using testing_util::FromHex;
using testing_util::kTestdata;
using testing_util::ReadFile;
using testing_util::ToHex;

// Loads the official vocab and golden file once for the whole suite.
class WorldTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string golden;
    if (!ReadFile(kTestdata + "/world-tokenizer.golden.json", &golden)) return;
    golden_ = new nlohmann::json(nlohmann::json::parse(golden));
    const auto start = std::chrono::steady_clock::now();
    auto tok = LoadWorldTokenizer(kTestdata + "/rwkv_vocab_v20230424.txt");
    ASSERT_TRUE(tok.ok()) << tok.status();
    std::printf("World vocab load: %.1f ms\n",
                std::chrono::duration<double, std::milli>(
                    std::chrono::steady_clock::now() - start)
                    .count());
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete golden_;
    tokenizer_ = nullptr;
    golden_ = nullptr;
  }
  void SetUp() override {
    if (tokenizer_ == nullptr) {
      if (std::getenv("CI") != nullptr) FAIL() << "no testdata under CI";
      GTEST_SKIP() << "no testdata at " << kTestdata;
    }
  }

  // Feeds `chunks` through EncodeStream, checking the tail bound.
  static std::vector<int32_t> StreamEncode(
      const std::vector<absl::string_view>& chunks) {
    std::vector<int32_t> ids;
    std::string tail;
    for (size_t i = 0; i < chunks.size(); ++i) {
      StreamEncodeResult r = tokenizer_->EncodeStream(
          tail, chunks[i], /*flush=*/i + 1 == chunks.size());
      EXPECT_LT(r.tail.size(), tokenizer_->max_token_bytes());
      ids.insert(ids.end(), r.tokens.begin(), r.tokens.end());
      tail = std::move(r.tail);
    }
    EXPECT_TRUE(tail.empty());
    return ids;
  }

  static Tokenizer* tokenizer_;
  static nlohmann::json* golden_;
};
Tokenizer* WorldTokenizerTest::tokenizer_ = nullptr;
nlohmann::json* WorldTokenizerTest::golden_ = nullptr;

TEST_F(WorldTokenizerTest, Properties) {
  EXPECT_EQ(tokenizer_->name(), "rwkv_world");
  EXPECT_EQ(tokenizer_->vocab_size(), 65536);
  EXPECT_EQ(tokenizer_->vocab_size(),
            (*golden_)["vocab_size_including_token0"].get<int>());
  EXPECT_EQ(tokenizer_->max_token_bytes(), 128u);
  EXPECT_EQ(tokenizer_->end_of_text_id(), 0);
  EXPECT_THAT(tokenizer_->fingerprint(), HasSubstr("rwkv_world:"));
}

TEST_F(WorldTokenizerTest, VocabChecks) {
  const nlohmann::json& checks = (*golden_)["vocab_checks"];
  int entries = 0, min_id = -1, max_id = -1;
  size_t total = 0;
  std::string stream;  // u32le(id) || u32le(len) || bytes, ascending ids
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    const absl::string_view b = tokenizer_->TokenBytes(id);
    if (b.empty()) continue;
    ++entries;
    if (min_id < 0) min_id = id;
    max_id = id;
    total += b.size();
    for (uint32_t v :
         {static_cast<uint32_t>(id), static_cast<uint32_t>(b.size())}) {
      for (int k = 0; k < 4; ++k)
        stream.push_back(static_cast<char>(v >> 8 * k));
    }
    stream.append(b.data(), b.size());
  }
  EXPECT_EQ(entries, checks["n_entries"].get<int>());
  EXPECT_EQ(min_id, checks["min_id"].get<int>());
  EXPECT_EQ(max_id, checks["max_id"].get<int>());
  EXPECT_EQ(total, checks["total_token_bytes"].get<size_t>());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  ASSERT_EQ(EVP_Digest(stream.data(), stream.size(), digest, &digest_len,
                       EVP_sha256(), nullptr),
            1);
  EXPECT_EQ(
      ToHex(absl::string_view(reinterpret_cast<char*>(digest), digest_len)),
      checks["digest_sha256"].get<std::string>());
}

// Every tricky literal parses to its bytes, both in the official file and on
// its own in a minimal vocabulary (256 single bytes plus the literal).
TEST_F(WorldTokenizerTest, TrickyLiterals) {
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    absl::StrAppend(&vocab, b + 1, " b'\\x", absl::Hex(b, absl::kZeroPad2),
                    "' 1\n");
  }
  std::vector<std::pair<int32_t, std::string>> expected;
  for (const auto& t : (*golden_)["vocab_checks"]["tricky_literals"]) {
    const int32_t id = t["id"].get<int32_t>();
    const std::string bytes = FromHex(t["bytes_hex"].get<std::string>());
    EXPECT_EQ(ToHex(tokenizer_->TokenBytes(id)), ToHex(bytes)) << "id " << id;
    if (id > 256) {
      absl::StrAppend(&vocab, id, " ", t["literal"].get<std::string>(), " ",
                      bytes.size(), "\n");
      expected.emplace_back(id, bytes);
    }
  }
  ASSERT_GT(expected.size(), 500u);
  auto small = ParseWorldTokenizer(vocab);
  ASSERT_TRUE(small.ok()) << small.status();
  for (const auto& [id, bytes] : expected) {
    EXPECT_EQ(ToHex((*small)->TokenBytes(id)), ToHex(bytes)) << "id " << id;
  }
}

TEST_F(WorldTokenizerTest, EncodeAndDecodeGoldenCases) {
  int n = 0;
  for (const auto& c : (*golden_)["encode_cases"]) {
    const std::string text = FromHex(c["utf8_hex"].get<std::string>());
    const auto want = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->Encode(text), want) << c["name"];
    auto decoded = tokenizer_->Decode(want);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text) << c["name"];
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
    ++n;
  }
  EXPECT_EQ(n, 62);
}

// Streaming with the text split at every position equals Encode(text).
TEST_F(WorldTokenizerTest, StreamEverySplitPoint) {
  for (const auto& c : (*golden_)["encode_cases"]) {
    const std::string text = FromHex(c["utf8_hex"].get<std::string>());
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const absl::string_view v(text);
    for (size_t s = 0; s <= text.size(); ++s) {
      ASSERT_EQ(StreamEncode({v.substr(0, s), v.substr(s)}), want)
          << c["name"] << " split at " << s;
    }
    // One byte at a time (most splits fall inside UTF-8 characters).
    std::vector<absl::string_view> bytes;
    for (size_t i = 0; i < text.size(); ++i) bytes.push_back(v.substr(i, 1));
    bytes.push_back("");
    ASSERT_EQ(StreamEncode(bytes), want) << c["name"] << " byte by byte";
  }
}

TEST_F(WorldTokenizerTest, StreamRandomMultiChunkSplits) {
  std::string all;
  for (const auto& c : (*golden_)["encode_cases"]) {
    all += FromHex(c["utf8_hex"].get<std::string>());
  }
  const std::vector<int32_t> want = tokenizer_->Encode(all);
  std::mt19937_64 rng(42);  // fixed seed: the test is deterministic
  for (int trial = 0; trial < 200; ++trial) {
    const size_t max_chunk = 1 + rng() % (trial < 100 ? 8 : 300);
    std::vector<absl::string_view> chunks;
    size_t pos = 0;
    while (pos < all.size()) {
      const size_t len = std::min(all.size() - pos, rng() % (max_chunk + 1));
      chunks.push_back(absl::string_view(all).substr(pos, len));
      pos += len;
    }
    chunks.push_back("");
    ASSERT_EQ(StreamEncode(chunks), want) << "trial " << trial;
  }
}

// Random texts rich in long tokens (runs of spaces, '=', newlines, split
// emoji bytes) against a naive greedy encoder and against streaming.
TEST_F(WorldTokenizerTest, MatchesNaiveGreedyOnRandomText) {
  std::unordered_map<std::string, int32_t> by_bytes;
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    const absl::string_view b = tokenizer_->TokenBytes(id);
    if (!b.empty()) by_bytes.emplace(std::string(b), id);
  }
  const std::vector<std::string> pieces = {
      " ",        "  ",   "=",    "\n",           "\t", "a", "the",  " the",
      "\xf0\x9f", "\x98", "\x80", "\xe4\xb8\xad", "-",  "0", "\r\n", "\xff"};
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 150; ++trial) {
    std::string text;
    const int n = 1 + rng() % 200;
    for (int i = 0; i < n; ++i) {
      const std::string& p = pieces[rng() % pieces.size()];
      const int repeat = rng() % 4 == 0 ? 1 + rng() % 40 : 1;
      for (int r = 0; r < repeat; ++r) text += p;
    }
    std::vector<int32_t> naive;
    for (size_t pos = 0; pos < text.size();) {
      for (size_t len =
               std::min(text.size() - pos, tokenizer_->max_token_bytes());
           len > 0; --len) {
        auto it = by_bytes.find(text.substr(pos, len));
        if (it != by_bytes.end()) {
          naive.push_back(it->second);
          pos += len;
          break;
        }
      }
    }
    const std::vector<int32_t> ids = tokenizer_->Encode(text);
    ASSERT_EQ(ids, naive) << "trial " << trial;
    std::vector<absl::string_view> chunks;
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = std::min<size_t>(text.size() - pos, rng() % 20);
      chunks.push_back(absl::string_view(text).substr(pos, len));
      pos += len;
    }
    chunks.push_back("");
    ASSERT_EQ(StreamEncode(chunks), ids) << "trial " << trial;
  }
}

TEST_F(WorldTokenizerTest, StreamTailIsHeldUntilDecided) {
  // "  " could still grow into a longer run of spaces: nothing is final.
  StreamEncodeResult r = tokenizer_->EncodeStream("", "  ", false);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(r.tail, "  ");
  // A following letter decides the run.
  r = tokenizer_->EncodeStream(r.tail, "  x", false);
  EXPECT_EQ(r.tokens, tokenizer_->Encode("    "));
  EXPECT_EQ(r.tail, "x");
  r = tokenizer_->EncodeStream(r.tail, "", true);
  EXPECT_EQ(r.tokens, tokenizer_->Encode("x"));
  EXPECT_TRUE(r.tail.empty());
  // The longest token (128 spaces) keeps a tail of at most 127 bytes.
  r = tokenizer_->EncodeStream("", std::string(127, ' '), false);
  EXPECT_TRUE(r.tokens.empty());
  r = tokenizer_->EncodeStream(r.tail, " ", false);
  EXPECT_EQ(r.tokens.size(), 1u);
  EXPECT_TRUE(r.tail.empty());
}

TEST_F(WorldTokenizerTest, DecodeValidatesIds) {
  auto r = tokenizer_->Decode({98, 65536});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetReason(r.status()), Reason::kInvalidToken);
  EXPECT_THAT(r.status().message(), HasSubstr("index 1"));
  EXPECT_FALSE(tokenizer_->Decode({-1}).ok());
  // End of text and the ids the file leaves unassigned decode to nothing.
  auto ok = tokenizer_->Decode({0, 98, 0, 65535});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, "a");
  EXPECT_TRUE(tokenizer_->TokenBytes(-5).empty());
  EXPECT_TRUE(tokenizer_->TokenBytes(1 << 20).empty());
}

TEST_F(WorldTokenizerTest, DecodeInvalidUtf8Cases) {
  int n = 0;
  for (const auto& c : (*golden_)["decode_invalid_utf8_cases"]) {
    auto bytes = tokenizer_->Decode(c["ids"].get<std::vector<int32_t>>());
    ASSERT_TRUE(bytes.ok());
    EXPECT_EQ(ToHex(*bytes), c["bytes_hex"].get<std::string>()) << c["name"];
    EXPECT_EQ(IsValidUtf8(*bytes), c["valid_utf8"].get<bool>()) << c["name"];
    // The official TRIE_TOKENIZER: one U+FFFD for the whole invalid output.
    const std::string official = IsValidUtf8(*bytes) ? *bytes : "\uFFFD";
    EXPECT_EQ(official, c["official_trie_tokenizer_decode"].get<std::string>());
    EXPECT_EQ(DecodeUtf8Lossy(*bytes),
              c["python_decode_errors_replace"].get<std::string>())
        << c["name"];
    ++n;
  }
  EXPECT_EQ(n, 10);
}

TEST_F(WorldTokenizerTest, EncodeThroughput) {
  std::string text;
  for (const auto& c : (*golden_)["encode_cases"]) {
    text += FromHex(c["utf8_hex"].get<std::string>());
  }
  while (text.size() < (4 << 20)) text += text;
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tokenizer_->Encode(text);
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const double mbps = text.size() / s / 1e6;
  std::printf("World Encode: %.1f MB in %.3f s = %.1f MB/s, %.2f bytes/token\n",
              text.size() / 1e6, s, mbps,
              static_cast<double>(text.size()) / ids.size());
  RecordProperty("encode_mb_per_s", static_cast<int>(mbps));
}

struct BadVocab {
  const char* name;
  std::string line;  // appended after the 256 single-byte lines
  const char* message;
};

TEST(WorldVocabParseTest, RejectsMalformedLines) {
  std::string base;
  for (int b = 0; b < 256; ++b) {
    absl::StrAppend(&base, b + 1, " b'\\x", absl::Hex(b, absl::kZeroPad2),
                    "' 1\n");
  }
  const std::vector<BadVocab> cases = {
      {"no fields", "300\n", "line 257"},
      {"bad id", "x1 'ab' 2\n", "bad token id"},
      {"id zero", "0 'ab' 2\n", "outside"},
      {"id too large", "65536 'ab' 2\n", "outside"},
      {"length mismatch", "300 'ab' 3\n", "says 3"},
      {"missing length", "300 'ab'\n", "byte length"},
      {"bad length", "300 'ab' 2x\n", "bad byte length"},
      {"unterminated", "300 'ab 2\n", "unterminated"},
      {"short hex", "300 '\\x4' 1\n", "two hex digits"},
      {"short unicode", "300 '\\u12' 1\n", "hex digits"},
      {"surrogate", "300 '\\ud800' 3\n", "out of range"},
      {"raw prefix", "300 r'ab' 2\n", "prefixes"},
      {"triple quote", "300 '''ab''' 2\n", "triple"},
      {"non-ascii bytes", "300 b'\xc3\xa9' 2\n", "non-ASCII"},
      {"invalid utf8", "300 '\xff' 1\n", "UTF-8"},
      {"duplicate id", "300 'ab' 2\n300 'cd' 2\n", "already defined"},
      {"duplicate bytes", "300 'ab' 2\n301 'ab' 2\n", "same bytes"},
      {"empty token", "300 '' 0\n", "empty token"},
      {"named escape", "300 '\\N{BULLET}' 3\n", "not supported"},
  };
  for (const BadVocab& c : cases) {
    auto r = ParseWorldTokenizer(base + c.line);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(GetReason(r.status()), Reason::kInvalidModelFile) << c.name;
    EXPECT_THAT(r.status().message(), HasSubstr(c.message)) << c.name;
    EXPECT_THAT(r.status().message(), HasSubstr("line 25")) << c.name;
  }
  // A missing single-byte token (the encoder could not encode that byte).
  auto r = ParseWorldTokenizer("1 'a' 1\n");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("single-byte token"));
  EXPECT_FALSE(ParseWorldTokenizer("").ok());
  EXPECT_EQ(LoadWorldTokenizer("/nonexistent/vocab.txt").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(WorldVocabParseTest, PythonEscapesAndSmallVocab) {
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    absl::StrAppend(&vocab, b + 1, " b'\\x", absl::Hex(b, absl::kZeroPad2),
                    "' 1\n");
  }
  // Str \x80 is U+0080 (2 bytes); bytes \x80 is one byte; octal, \a..\v,
  // \U, unknown escapes kept as backslash + char, CRLF line ends.
  vocab += "300 '\\x80' 2\r\n";
  vocab += "301 b'\\x80\\x81' 2\n";
  vocab += "302 '\\101\\0\\7' 3\n";
  vocab += "303 '\\a\\b\\f\\v' 4\n";
  vocab += "304 '\\U0001F600' 4\n";
  vocab += "305 '\\q' 2\n";
  vocab += "306 b'\\u00e9' 6\n";
  vocab += "307 \"it's\" 4\n";
  vocab += "308 u'\xc3\xa9t\xc3\xa9' 5\n";
  vocab += "309 'ab' 2\n\n";
  auto tok = ParseWorldTokenizer(vocab);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.TokenBytes(300), "\xc2\x80");
  EXPECT_EQ(t.TokenBytes(301), "\x80\x81");
  EXPECT_EQ(t.TokenBytes(302), std::string("A\0\a", 3));
  EXPECT_EQ(t.TokenBytes(303), "\a\b\f\v");
  EXPECT_EQ(t.TokenBytes(304), "\xF0\x9F\x98\x80");
  EXPECT_EQ(t.TokenBytes(305), "\\q");
  EXPECT_EQ(t.TokenBytes(306), "\\u00e9");
  EXPECT_EQ(t.TokenBytes(307), "it's");
  EXPECT_EQ(t.TokenBytes(308), "\xc3\xa9t\xc3\xa9");
  EXPECT_EQ(t.max_token_bytes(), 6u);
  EXPECT_EQ(t.Encode("xabc"), (std::vector<int32_t>{'x' + 1, 309, 'c' + 1}));
  EXPECT_EQ(t.Encode("it's"), (std::vector<int32_t>{307}));
  EXPECT_EQ(t.Encode("it'"),
            (std::vector<int32_t>{'i' + 1, 't' + 1, '\'' + 1}));
  // Another vocabulary, another fingerprint.
  auto other = ParseWorldTokenizer(vocab + "310 'abc' 3\n");
  ASSERT_TRUE(other.ok());
  EXPECT_NE(t.fingerprint(), (*other)->fingerprint());
}

TEST(ByteTokenizerTest, IdIsByteValue) {
  auto tok = MakeByteTokenizer();
  ASSERT_TRUE(tok.ok());
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.name(), "bytes");
  EXPECT_EQ(t.vocab_size(), 256);
  EXPECT_EQ(t.end_of_text_id(), std::nullopt);
  const std::string text("a\0\xff\xf0\x9f", 5);
  const std::vector<int32_t> ids = {97, 0, 255, 240, 159};
  EXPECT_EQ(t.Encode(text), ids);
  auto decoded = t.Decode(ids);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, text);
  StreamEncodeResult r = t.EncodeStream("", text, false);
  EXPECT_EQ(r.tokens, ids);
  EXPECT_TRUE(r.tail.empty());
  EXPECT_EQ(GetReason(t.Decode({256}).status()), Reason::kInvalidToken);
  EXPECT_TRUE(t.TokenBytes(300).empty());
}

// The trained third_party model's golden tokens are the UTF-8 bytes of its
// sentence, so the byte tokenizer reproduces them.
TEST(ByteTokenizerTest, MatchesThirdPartyGoldenTokens) {
  std::string json;
  if (!ReadFile(kTestdata + "/third_party/tiny-rwkv-7v0-834K.golden.json",
                &json)) {
    if (std::getenv("CI") != nullptr) FAIL() << "no testdata under CI";
    GTEST_SKIP() << "no testdata";
  }
  const auto tokens =
      nlohmann::json::parse(json)["tokens"].get<std::vector<int32_t>>();
  auto tok = MakeByteTokenizer();
  ASSERT_TRUE(tok.ok());
  auto text = (*tok)->Decode(tokens);
  ASSERT_TRUE(text.ok());
  EXPECT_TRUE(IsValidUtf8(*text));
  EXPECT_THAT(*text, HasSubstr("Once upon a time"));
  EXPECT_EQ((*tok)->Encode(*text), tokens);
}

}  // namespace
}  // namespace statestream::engine
