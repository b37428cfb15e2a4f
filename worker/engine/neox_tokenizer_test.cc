// SPDX-License-Identifier: Apache-2.0
// The GPT-NeoX-20B tokenizer against neox-tokenizer.golden.json (ids from
// the HF `tokenizers` library), decoding, and streaming == whole encoding.
#include <openssl/evp.h>

#include <algorithm>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/utf8.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/tokenizer.h"
#include "worker/engine/tokenizer_test_util.h"

namespace statestream::engine {
namespace {

using testing_util::FromHex;
using testing_util::kTestdata;
using testing_util::ReadFile;
using testing_util::ToHex;

// Feeds `text` in the given chunk sizes through EncodeStream.
std::vector<int32_t> Stream(const Tokenizer& tok, const std::string& text,
                            const std::vector<size_t>& sizes) {
  std::vector<int32_t> ids;
  std::string tail;
  size_t at = 0;
  for (size_t i = 0; at < text.size() || i == 0; ++i) {
    const size_t n = std::min(sizes[i % sizes.size()], text.size() - at);
    const bool last = at + n == text.size();
    StreamEncodeResult r = tok.EncodeStream(tail, text.substr(at, n), last);
    ids.insert(ids.end(), r.tokens.begin(), r.tokens.end());
    tail = r.tail;
    at += n;
    if (last) break;
  }
  EXPECT_TRUE(tail.empty());
  return ids;
}

// Streams `text` in chunks of `chunk` bytes, the last one flushed: the ids,
// and in *longest the longest tail held between chunks.
std::vector<int32_t> StreamTrackingTail(const Tokenizer& tok,
                                        const std::string& text, size_t chunk,
                                        size_t* longest) {
  std::vector<int32_t> ids;
  std::string tail;
  *longest = 0;
  for (size_t at = 0; at < text.size(); at += chunk) {
    StreamEncodeResult r = tok.EncodeStream(tail, text.substr(at, chunk),
                                            at + chunk >= text.size());
    ids.insert(ids.end(), r.tokens.begin(), r.tokens.end());
    tail = r.tail;
    *longest = std::max(*longest, tail.size());
  }
  return ids;
}

class NeoxTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string golden;
    if (!ReadFile(kTestdata + "/neox-tokenizer.golden.json", &golden)) return;
    golden_ = new nlohmann::json(nlohmann::json::parse(golden));
    auto tok = LoadNeoxTokenizer(kTestdata + "/20B_tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
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
  static Tokenizer* tokenizer_;
  static nlohmann::json* golden_;
};

Tokenizer* NeoxTokenizerTest::tokenizer_ = nullptr;
nlohmann::json* NeoxTokenizerTest::golden_ = nullptr;

TEST_F(NeoxTokenizerTest, VocabularyMatchesTheFile) {
  const Tokenizer& tok = *tokenizer_;
  const nlohmann::json& checks = (*golden_)["vocab_checks"];
  EXPECT_EQ(tok.vocab_size(),
            (*golden_)["vocab_size_including_added_tokens"].get<int>());
  EXPECT_EQ(tok.end_of_text_id(), 0);
  EXPECT_EQ(tok.name(), "neox_bpe");
  // Special tokens decode to nothing; the digest uses their text.
  std::string stream;
  size_t total = 0;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    std::string b(tok.TokenBytes(id));
    if (id == 0) b = "<|endoftext|>";
    if (id == 1) b = "<|padding|>";
    const uint32_t v[2] = {static_cast<uint32_t>(id),
                           static_cast<uint32_t>(b.size())};
    stream.append(reinterpret_cast<const char*>(v), 8);
    stream += b;
    total += b.size();
  }
  EXPECT_EQ(total, checks["token_bytes_total"].get<size_t>());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  ASSERT_EQ(EVP_Digest(stream.data(), stream.size(), digest, &digest_len,
                       EVP_sha256(), nullptr),
            1);
  EXPECT_EQ(
      ToHex(absl::string_view(reinterpret_cast<char*>(digest), digest_len)),
      checks["digest_sha256"].get<std::string>());
  EXPECT_TRUE(tok.TokenBytes(0).empty());
  EXPECT_TRUE(tok.TokenBytes(1).empty());
  EXPECT_EQ(tok.TokenBytes(50254), std::string(24, ' '));
}

TEST_F(NeoxTokenizerTest, EncodeMatchesReferenceIds) {
  int n = 0;
  for (const auto& c : (*golden_)["encode_cases"]) {
    const std::string text = FromHex(c["utf8_hex"].get<std::string>());
    const std::vector<int32_t> want = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->Encode(text), want) << c["name"];
    ++n;
  }
  EXPECT_EQ(n, 70);
}

TEST_F(NeoxTokenizerTest, DecodeRoundTripsToNfc) {
  for (const auto& c : (*golden_)["encode_cases"]) {
    auto bytes = tokenizer_->Decode(c["ids"].get<std::vector<int32_t>>());
    ASSERT_TRUE(bytes.ok());
    EXPECT_EQ(DecodeUtf8Lossy(*bytes),
              c["decoded_skip_special_tokens"].get<std::string>())
        << c["name"];
  }
}

TEST_F(NeoxTokenizerTest, DecodeCases) {
  int n = 0;
  for (const auto& c : (*golden_)["decode_cases"]) {
    auto bytes = tokenizer_->Decode(c["ids"].get<std::vector<int32_t>>());
    ASSERT_TRUE(bytes.ok());
    EXPECT_EQ(ToHex(*bytes),
              c["bytes_hex_skip_special_tokens"].get<std::string>());
    EXPECT_EQ(DecodeUtf8Lossy(*bytes),
              c["decoded_skip_special_tokens"].get<std::string>());
    ++n;
  }
  EXPECT_EQ(n, 13);
  std::vector<int32_t> bad = {5, 50277};
  auto r = tokenizer_->Decode(bad);
  EXPECT_EQ(GetReason(r.status()), Reason::kInvalidToken);
}

TEST_F(NeoxTokenizerTest, StreamingEqualsWholeEncoding) {
  std::string all;
  for (const auto& c : (*golden_)["encode_cases"]) {
    const std::string text = FromHex(c["utf8_hex"].get<std::string>());
    const std::vector<int32_t> whole = tokenizer_->Encode(text);
    all += text;
    // Every split into two chunks, and byte by byte.
    for (size_t cut = 0; cut <= text.size(); ++cut) {
      std::vector<size_t> sizes = {cut, text.size()};
      ASSERT_EQ(Stream(*tokenizer_, text, sizes), whole)
          << c["name"] << " cut at " << cut;
    }
    EXPECT_EQ(Stream(*tokenizer_, text, {1}), whole) << c["name"];
  }
  const std::vector<int32_t> whole = tokenizer_->Encode(all);
  std::mt19937 rng(3);
  for (int run = 0; run < 20; ++run) {
    std::vector<size_t> sizes;
    for (int i = 0; i < 50; ++i) sizes.push_back(rng() % 40);
    sizes.push_back(1);
    EXPECT_EQ(Stream(*tokenizer_, all, sizes), whole) << "run " << run;
  }
  // The tail holds back only undecided text: after a word and a space,
  // everything before the space is final.
  StreamEncodeResult r = tokenizer_->EncodeStream("", "Hello world foo", false);
  EXPECT_EQ(r.tail, " foo");
  EXPECT_EQ(r.tokens, tokenizer_->Encode("Hello world"));
}

// Text streams out as soon as a pre-token surely ends, not only at
// whitespace: minified JSON, and CJK between its punctuation, keep a tail
// of a few dozen bytes (it was up to 64 KiB, checkpointed with the
// session), and every split still gives the whole text's ids, in scripts
// where classes change inside words (marks are "other"), with decomposed
// and singleton characters that NFC changes, contractions and added
// tokens.
TEST_F(NeoxTokenizerTest, TextStreamsOutWherePreTokensSurelyEnd) {
  std::string json;
  while (json.size() < 20000) {
    absl::StrAppend(&json, "{\"key", json.size(), "\":[12,\"abc\"]}");
  }
  size_t longest = 0;
  EXPECT_EQ(StreamTrackingTail(*tokenizer_, json, 1000, &longest),
            tokenizer_->Encode(json));
  EXPECT_LE(longest, size_t{64});
  std::string cjk;  // "汉字，平假名。カタカナ！" repeated: no whitespace
  while (cjk.size() < 20000) {
    absl::StrAppend(&cjk,
                    "\xe6\xb1\x89\xe5\xad\x97\xef\xbc\x8c\xe5\xb9\xb3"
                    "\xe5\x81\x87\xe5\x90\x8d\xe3\x80\x82\xe3\x82\xab"
                    "\xe3\x82\xbf\xe3\x82\xab\xe3\x83\x8a\xef\xbc\x81");
  }
  EXPECT_EQ(StreamTrackingTail(*tokenizer_, cjk, 1000, &longest),
            tokenizer_->Encode(cjk));
  EXPECT_LE(longest, size_t{64});
  std::string eot;  // special tokens back to back: cut between them
  while (eot.size() < 20000) eot += "<|endoftext|><|padding|>";
  EXPECT_EQ(StreamTrackingTail(*tokenizer_, eot, 1000, &longest),
            tokenizer_->Encode(eot));
  EXPECT_LE(longest, size_t{64});

  const std::vector<std::string> texts = {
      // Devanagari: vowel signs and virama are marks between letters.
      "\xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0\xa4\xa4"
      "\xe0\xa5\x87,\xe0\xa4\xa6\xe0\xa5\x81\xe0\xa4\xa8\xe0\xa4\xbf"
      "\xe0\xa4\xaf\xe0\xa4\xbe"
      "123\xe0\xa5\xa7\xe0\xa5\xa8!",
      // Decomposed Latin and Hangul jamo that NFC composes; U+212B and
      // U+2126 (singletons NFC replaces); U+037E (becomes ';').
      "e\xcc\x81t\xc3\xa9!e\xcc\x81\xcc\xa3x1\xe1\x84\x80\xe1\x85\xa1"
      "\xe1\x86\xa8.\xe2\x84\xab"
      "5\xe2\x84\xa6"
      "a\xcd\xbe;b\xcd\xbe"
      "7",
      // Contractions against other classes; an added token inside a word.
      "it's(they'll)'re1'v9'd'x\"'s'!'ll<|endoftext|>ab<|padding|>12'",
      // Emoji with modifiers and a joiner, fullwidth digits, Arabic marks.
      "a\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd\xe2\x80\x8d\xf0\x9f\x94\xa5"
      "\xef\xbc\x91\xef\xbc\x92x\xd9\x85\xd9\x8e\xd8\xb1\xd9\x92\xd8"
      "\xad\xd9\x8e\xd8\xa8\xd9\x8b\xd8\xa7#9",
      // Bytes that are not UTF-8, and a character split by no chunk.
      "ab\xff\xfe"
      "12\xe2\x82"
      "cd\xe2\x82\xac\xf0\x9f\x98x...",
  };
  for (const std::string& one : texts) {
    std::string text;
    for (int i = 0; i < 4; ++i) text += one;  // longer than the added tokens
    const std::vector<int32_t> whole = tokenizer_->Encode(text);
    for (size_t cut = 0; cut <= text.size(); ++cut) {
      ASSERT_EQ(Stream(*tokenizer_, text, {cut, text.size()}), whole)
          << ToHex(text) << " cut at " << cut;
    }
    for (size_t size : {1, 2, 3, 5}) {
      ASSERT_EQ(Stream(*tokenizer_, text, {size}), whole)
          << ToHex(text) << " in chunks of " << size;
    }
  }
}

// Random text from pieces that stress the cut rule (classes changing
// inside words, marks NFC composes or keeps apart, singletons, the
// apostrophe of contractions, added tokens, bytes that are not UTF-8),
// streamed in random chunks: the whole text's ids every time.
TEST_F(NeoxTokenizerTest, RandomTextStreamsAsItEncodesWhole) {
  const std::vector<std::string> pieces = {
      "a",
      "Z",
      "7",
      "'",
      "'s",
      "'ll",
      "'re",
      "'d",
      " ",
      "  ",
      "\n",
      "\t",
      ".",
      "!",
      "(",
      "\"",
      "<|endoftext|>",
      "<|padding|>",
      "<|",
      "\xcc\x81",  // U+0301, composes with e
      "\xcc\xa3",  // U+0323, reorders before U+0301
      "e",
      "\xc3\xa9",      // é
      "\xe2\x84\xab",  // U+212B (NFC: U+00C5)
      "\xcd\xbe",      // U+037E (NFC: ';')
      "\xe0\xa4\xa8",
      "\xe0\xa5\x87",
      "\xe0\xa5\x8d",  // न े ्
      "\xe1\x84\x80",
      "\xe1\x85\xa1",
      "\xe1\x86\xa8",  // Hangul jamo
      "\xe6\xb1\x89",
      "\xef\xbc\x8c",  // 汉 ，
      "\xef\xbc\x91",  // fullwidth 1
      "\xf0\x9f\x91\x8d",
      "\xf0\x9f\x8f\xbd",
      "\xe2\x80\x8d",  // emoji
      "\xff",
      "\xe2\x82",  // not UTF-8
  };
  std::mt19937 rng(11);
  for (int run = 0; run < 300; ++run) {
    std::string text;
    const int n = 20 + static_cast<int>(rng() % 80);
    for (int i = 0; i < n; ++i) text += pieces[rng() % pieces.size()];
    const std::vector<int32_t> whole = tokenizer_->Encode(text);
    std::vector<size_t> sizes;
    for (int i = 0; i < 20; ++i) sizes.push_back(rng() % 12);
    sizes.push_back(1);
    ASSERT_EQ(Stream(*tokenizer_, text, sizes), whole) << ToHex(text);
    ASSERT_EQ(Stream(*tokenizer_, text, {1}), whole) << ToHex(text);
  }
}

// Text without whitespace (minified JSON, one long word) cannot grow a
// stream's tail without bound: past 64 KiB it is cut where a pre-token
// surely ends (letters, digits, other characters change), so the ids still
// equal the whole text's; a single run of letters is cut anyway and still
// decodes to the input. BPE of a 200 KB word is quick (not quadratic).
TEST_F(NeoxTokenizerTest, TextWithoutWhitespaceKeepsTheTailBounded) {
  std::string json;
  while (json.size() < 300000) {
    absl::StrAppend(&json, "{\"key", json.size(),
                    "\":[12,\"abc\"],\"\u00e9t\u00e9\":null}");
  }
  size_t longest = 0;
  EXPECT_EQ(StreamTrackingTail(*tokenizer_, json, 4096, &longest),
            tokenizer_->Encode(json));
  EXPECT_LE(longest, size_t{64 << 10});

  // Decomposed text (NFD): a combining mark joins the letter before it, and
  // the run after it, into one letter run, so no cut falls between them.
  // (About 15 forced cuts at varying points of the 5-byte period: a cut
  // between U+0301 and "s" would split the run "és", one token whole.)
  std::string nfd;
  while (nfd.size() < 1000000) absl::StrAppend(&nfd, "e\xCC\x81s1");
  EXPECT_EQ(Stream(*tokenizer_, nfd, {4093, 4099, 4111}),
            tokenizer_->Encode(nfd));
  // One letter run once composed: no exact cut exists; cut anyway between
  // starters, the text still decodes to the whole text's.
  std::string run;
  while (run.size() < 200000) absl::StrAppend(&run, "ae\xCC\x81x");
  EXPECT_EQ(*tokenizer_->Decode(Stream(*tokenizer_, run, {4096})),
            *tokenizer_->Decode(tokenizer_->Encode(run)));

  const std::string word(200000, 'a');
  EXPECT_EQ(*tokenizer_->Decode(tokenizer_->Encode(word)), word);
  const std::vector<int32_t> ids =
      StreamTrackingTail(*tokenizer_, word, 8192, &longest);
  EXPECT_LE(longest, size_t{64 << 10} + 8192);
  EXPECT_EQ(*tokenizer_->Decode(ids), word);
}

// A cut forced past the cap lies near the text's end, even where the last
// point that keeps the ids exact (an NFC boundary, a class change) lies
// far back: "ab" and then 70,000 combining marks in one append held back
// all 140 KB but "a", and each such append grew the tail further (a state
// whose tail an import refuses).
TEST_F(NeoxTokenizerTest, AForcedCutKeepsTheTailWithinTheCap) {
  std::string marks;
  for (int i = 0; i < 70000; ++i) marks += "\xCC\x81";  // U+0301
  for (const std::string& text :
       {"ab" + marks, "ab1" + marks, "x y" + marks + "z" + marks}) {
    StreamEncodeResult r = tokenizer_->EncodeStream("", text, false);
    EXPECT_LE(r.tail.size(), size_t{64 << 10}) << text.size();
    StreamEncodeResult rest = tokenizer_->EncodeStream(r.tail, "", true);
    EXPECT_TRUE(rest.tail.empty());
    std::vector<int32_t> ids = r.tokens;
    ids.insert(ids.end(), rest.tokens.begin(), rest.tokens.end());
    EXPECT_EQ(*tokenizer_->Decode(ids),
              *tokenizer_->Decode(tokenizer_->Encode(text)));
  }
}

// A long tail fed in small chunks is scanned only at steps of a geometric
// grid (holding up to a quarter more than the last scan left), not on every
// call: a byte at a time, a 64 KiB run took ~30 s. Holding back stays
// exact, and text after the run streams out again.
TEST_F(NeoxTokenizerTest, ALongTailFedByteByByteHoldsBackLittle) {
  std::string text;
  for (size_t run : {300, 2000, 5000}) {
    for (size_t i = 0; i < run; ++i) text += static_cast<char>('a' + i % 26);
    text += " and then some words, 12 of them; \"quoted\" too.\n";
  }
  text += "{\"k\":[1,2,\"" + std::string(700, 'x') + "\"]} <|endoftext|> end";
  std::vector<int32_t> ids;
  std::string tail;
  size_t longest = 0;
  for (size_t at = 0; at < text.size(); ++at) {
    StreamEncodeResult r = tokenizer_->EncodeStream(tail, text.substr(at, 1),
                                                    at + 1 == text.size());
    ids.insert(ids.end(), r.tokens.begin(), r.tokens.end());
    tail = std::move(r.tail);
    longest = std::max(longest, tail.size());
  }
  EXPECT_EQ(ids, tokenizer_->Encode(text));
  EXPECT_GT(longest, size_t{5000});
  EXPECT_LE(longest, size_t{5000} * 5 / 4 + 64);
  // After a long run, the words that follow come out before the next run.
  tail.clear();
  const std::string run(1000, 'z');
  StreamEncodeResult r = tokenizer_->EncodeStream("", run, false);
  ASSERT_EQ(r.tail, run);
  tail = r.tail;
  const std::string words = " some words after it and more words after those";
  size_t emitted = 0;
  for (char c : words) {
    r = tokenizer_->EncodeStream(tail, std::string(1, c), false);
    emitted += r.tokens.size();
    tail = std::move(r.tail);
  }
  EXPECT_GT(emitted, 0u);
  EXPECT_LT(tail.size(), size_t{256});
}

// Runs of spaces are added tokens (2 to 24 spaces) here: every position
// inside a long run lies inside some occurrence, and the tail used to hold
// the whole run (a 2 MiB run of spaces, 2 MiB of tail: quadratic work per
// chunk, and a state too large to store). The cut falls between the
// tokens leftmost-longest matching takes, and the ids stay the whole
// text's.
TEST_F(NeoxTokenizerTest, ARunOfSpacesKeepsTheTailBounded) {
  for (const std::string& text :
       {std::string(300000, ' '), "x" + std::string(300001, ' '),
        "a" + std::string(150000, ' ') + "b\n" + std::string(150007, ' ') +
            "c"}) {
    size_t longest = 0;
    EXPECT_EQ(StreamTrackingTail(*tokenizer_, text, 4096, &longest),
              tokenizer_->Encode(text))
        << text.size();
    EXPECT_LE(longest, size_t{64 << 10} + 4096) << text.size();
    EXPECT_EQ(Stream(*tokenizer_, text, {4093, 7, 65537}),
              tokenizer_->Encode(text));
  }
}

TEST_F(NeoxTokenizerTest, InvalidUtf8IsReadWithReplacement) {
  EXPECT_EQ(tokenizer_->Encode("a\xff"), tokenizer_->Encode("a\xEF\xBF\xBD"));
  EXPECT_EQ(Stream(*tokenizer_, "x\xE2\x82 y\xF0\x9F", {1}),
            tokenizer_->Encode("x\xE2\x82 y\xF0\x9F"));
}

TEST(NeoxTokenizerFileTest, PicksTokenizerByFileType) {
  std::string probe;
  if (!ReadFile(kTestdata + "/20B_tokenizer.json", &probe)) {
    if (std::getenv("CI") != nullptr) FAIL() << "no testdata under CI";
    GTEST_SKIP() << "no testdata";
  }
  auto neox = LoadTokenizerFile(kTestdata + "/20B_tokenizer.json");
  ASSERT_TRUE(neox.ok()) << neox.status();
  EXPECT_EQ((*neox)->name(), "neox_bpe");
  auto world = LoadTokenizerFile(kTestdata + "/rwkv_vocab_v20230424.txt");
  ASSERT_TRUE(world.ok()) << world.status();
  EXPECT_EQ((*world)->name(), "rwkv_world");
  EXPECT_FALSE(LoadTokenizerFile("/nonexistent/tokenizer.json").ok());
}

// A minimal valid tokenizer.json: a token for every byte (GPT-2's
// byte-to-symbol alphabet, token id = byte) but `drop_byte`, "ab" and its
// merge, `extra_vocab` as 257, and the `added` tokens (a JSON array).
std::string MinimalTokenizerJson(const std::string& extra_vocab,
                                 const std::string& added, int drop_byte) {
  nlohmann::json vocab = nlohmann::json::object();
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    std::string symbol;
    AppendUtf8(printable ? b : next++, &symbol);
    if (b != drop_byte) vocab[symbol] = b;
  }
  vocab["ab"] = 256;
  if (!extra_vocab.empty()) vocab[extra_vocab] = 257;
  return absl::StrCat(
      "{\"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": "
      "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}, "
      "\"model\": {\"type\": \"BPE\", \"vocab\": ",
      vocab.dump(), ", \"merges\": [[\"a\", \"b\"]]}",
      added.empty() ? "" : ", \"added_tokens\": ", added, "}");
}

TEST(NeoxTokenizerFileTest, MalformedFilesAreErrors) {
  const auto file = MinimalTokenizerJson;
  // With the settings Encode implements, so the model's own checks answer.
  const std::string settings =
      R"("normalizer": {"type": "NFC"}, "pre_tokenizer": )"
      R"({"type": "ByteLevel", "add_prefix_space": false}, )";
  for (const std::string& bad : std::vector<std::string>{
           "", "{", "[]", R"({"model": {}})",
           "{" + settings +
               R"("model": {"type": "BPE", "vocab": {"a": 0}, )"
               R"("merges": ["a b"]}})",
           "{" + settings +
               R"("model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})",
           "{" + settings +
               R"("model": {"type": "BPE", "vocab": {}, "merges": []}})"}) {
    auto t = ParseNeoxTokenizer(bad);
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(GetReason(t.status()), Reason::kInvalidModelFile) << bad;
    // Refused for what the case is about, not for the settings.
    EXPECT_EQ(t.status().message().find("is supported"), std::string::npos)
        << t.status();
  }
  auto t = ParseNeoxTokenizer(file("", "", -1));
  ASSERT_TRUE(t.ok()) << t.status();
  // The options present but off, as in Hugging Face's own files: fine.
  ASSERT_TRUE(ParseNeoxTokenizer(
                  file("",
                       R"([{"id": 300, "content": "<x>", "lstrip": false, )"
                       R"("rstrip": false, "single_word": false}])",
                       -1))
                  .ok());
  EXPECT_EQ((*t)->Encode("abab"), (std::vector<int32_t>{256, 256}));
  EXPECT_EQ((*t)->Encode("a\nc"), (std::vector<int32_t>{'a', '\n', 'c'}));
  // Settings Encode does not implement: refused, never encoded otherwise
  // than Hugging Face would.
  const std::string good = file("", "", -1);
  const std::string nfc = R"("normalizer": {"type": "NFC"})";
  const std::string byte_level =
      R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false})";
  for (const auto& [from, to] :
       std::vector<std::pair<std::string, std::string>>{
           {nfc, R"("normalizer": null)"},
           {nfc, R"("normalizer": {"type": "NFKC"})"},
           {nfc, R"("no_normalizer": {})"},
           {byte_level, R"("pre_tokenizer": {"type": "ByteLevel"})"},
           {byte_level,
            R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": )"
            R"(false, "use_regex": false})"},
           {byte_level, R"("pre_tokenizer": {"type": "Whitespace"})"}}) {
    std::string changed = good;
    ASSERT_NE(changed.find(from), std::string::npos) << from;
    changed.replace(changed.find(from), from.size(), to);
    auto r = ParseNeoxTokenizer(changed);
    ASSERT_FALSE(r.ok()) << to;
    EXPECT_EQ(GetReason(r.status()), Reason::kInvalidModelFile) << r.status();
  }
  // A byte valid UTF-8 can hold has no token: text would lose it.
  // Fields of the wrong type, ids past 32 bits: errors, never a crash or
  // a wrapped id.
  for (const std::string& bad :
       {file("", "", 'c'),
        file("", R"([{"id": 300, "content": "<x>", "special": "yes"}])", -1),
        file("", R"([{"id": 4294967296, "content": "<x>"}])", -1),
        // Options Encode does not implement (would match otherwise).
        file("", R"([{"id": 300, "content": "<x>", "lstrip": true}])", -1),
        file("", R"([{"id": 300, "content": "<x>", "rstrip": true}])", -1),
        file("", R"([{"id": 300, "content": "<x>", "single_word": true}])", -1),
        file("", R"([{"id": 300, "content": "<x>", "lstrip": "no"}])", -1),
        std::string(R"({"model": {"type": 1, "vocab": {}, "merges": []}})")}) {
    auto r = ParseNeoxTokenizer(bad);
    ASSERT_FALSE(r.ok()) << bad.substr(0, 200);
    EXPECT_EQ(GetReason(r.status()), Reason::kInvalidModelFile) << r.status();
  }
  // One id given to two tokens (two vocabulary entries, or an added token
  // over an entry of other bytes) would encode as one and decode as the
  // other: refused. An added token repeating its entry is fine.
  std::string twice = file("cd", "", -1);
  const std::string cd = R"("cd":257)";
  ASSERT_NE(twice.find(cd), std::string::npos);
  twice.replace(twice.find(cd), cd.size(), R"("cd":256)");
  for (const std::string& bad :
       {twice, file("", R"([{"id": 256, "content": "<x>"}])", -1)}) {
    auto r = ParseNeoxTokenizer(bad);
    ASSERT_FALSE(r.ok()) << bad.substr(0, 200);
    EXPECT_EQ(GetReason(r.status()), Reason::kInvalidModelFile) << r.status();
    EXPECT_NE(r.status().message().find("given to two different tokens"),
              std::string::npos)
        << r.status();
  }
  EXPECT_TRUE(
      ParseNeoxTokenizer(file("", R"([{"id": 256, "content": "ab"}])", -1))
          .ok());
  // A token at a huge id among a few hundred: refused before a table of
  // millions of entries is allocated for it; a dense one past the end is
  // fine.
  auto sparse = ParseNeoxTokenizer(
      file("", R"([{"id": 4000000, "content": "<x>"}])", -1));
  EXPECT_EQ(GetReason(sparse.status()), Reason::kInvalidModelFile)
      << sparse.status();
  EXPECT_NE(sparse.status().message().find("sparse"), std::string::npos)
      << sparse.status();
  EXPECT_TRUE(
      ParseNeoxTokenizer(file("", R"([{"id": 1000, "content": "<x>"}])", -1))
          .ok());
}

// A normalized added token of letters and digits matches only in the NFC
// text ("e" U+0301 "a1" is "éa1" once normalized): streaming cuts no text
// between classes, where that token might span the cut.
TEST(NeoxTokenizerFileTest, ANormalizedAddedTokenOfLettersStreamsWhole) {
  auto t = ParseNeoxTokenizer(MinimalTokenizerJson(
      "", R"([{"id": 300, "content": "\u00e9a1", "normalized": true}])", -1));
  ASSERT_TRUE(t.ok()) << t.status();
  std::string text;
  for (int i = 0; i < 6; ++i)
    text +=
        "xe\xcc\x81"
        "a1.z9";
  const std::vector<int32_t> whole = (*t)->Encode(text);
  ASSERT_EQ(std::count(whole.begin(), whole.end(), 300), 6);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    ASSERT_EQ(Stream(**t, text, {cut, text.size()}), whole) << cut;
  }
  EXPECT_EQ(Stream(**t, text, {1}), whole);
}

}  // namespace
}  // namespace statestream::engine
