// SPDX-License-Identifier: Apache-2.0
// The GPT-NeoX-20B tokenizer against a plain re-implementation of what
// HF `tokenizers` does with 20B_tokenizer.json, on text the golden cases do
// not have. The reference is written the slow, obvious way: NFC of the
// whole text, added tokens found leftmost-longest, the GPT-2 pre-token
// pattern run by ICU's regex engine (the tokenizer has its own hand-written
// scanner), the byte-to-character map, and the GPT-2 merge loop (merge every
// occurrence of the lowest-ranked pair, repeat). It is checked against the
// 70 golden cases first, pre-tokens included.
#include <unicode/unorm2.h>
#include <unicode/uregex.h>
#include <unicode/ustring.h>

#include <climits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
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

std::u16string ToUtf16(const std::string& utf8) {
  UErrorCode status = U_ZERO_ERROR;
  int32_t n = 0;
  u_strFromUTF8(nullptr, 0, &n, utf8.data(), utf8.size(), &status);
  std::u16string out(n, u'\0');
  status = U_ZERO_ERROR;
  u_strFromUTF8(out.data(), n, nullptr, utf8.data(), utf8.size(), &status);
  EXPECT_TRUE(U_SUCCESS(status)) << u_errorName(status);
  return out;
}

std::string ToUtf8(const char16_t* s, int32_t len) {
  UErrorCode status = U_ZERO_ERROR;
  int32_t n = 0;
  u_strToUTF8(nullptr, 0, &n, s, len, &status);
  std::string out(n, '\0');
  status = U_ZERO_ERROR;
  u_strToUTF8(out.data(), n, nullptr, s, len, &status);
  EXPECT_TRUE(U_SUCCESS(status)) << u_errorName(status);
  return out;
}

// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for
// themselves, the other 68 bytes for U+0100 onwards, in byte order.
std::vector<std::string> ByteToCharacter() {
  std::vector<std::string> map(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const char16_t c = static_cast<char16_t>(printable ? b : next++);
    map[b] = ToUtf8(&c, 1);
  }
  return map;
}

class ReferenceNeox {
 public:
  explicit ReferenceNeox(const nlohmann::json& file)
      : bytes_(ByteToCharacter()) {
    for (const auto& [token, id] : file["model"]["vocab"].items()) {
      vocab_[token] = id.get<int32_t>();
    }
    int rank = 0;
    for (const auto& merge : file["model"]["merges"]) {
      const std::string m = merge.get<std::string>();
      const size_t space = m.find(' ');
      ranks_[{m.substr(0, space), m.substr(space + 1)}] = rank++;
    }
    for (const auto& added : file["added_tokens"]) {
      added_.emplace_back(added["content"].get<std::string>(),
                          added["id"].get<int32_t>());
    }
    // `tokenizers`' ByteLevel pattern, with \s spelled as Unicode's
    // White_Space property.
    const std::u16string pattern = ToUtf16(
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+"
        "| ?[^\\p{White_Space}\\p{L}\\p{N}]+"
        "|\\p{White_Space}+(?!\\P{White_Space})|\\p{White_Space}+");
    UParseError error;
    UErrorCode status = U_ZERO_ERROR;
    regex_ = uregex_open(pattern.data(), pattern.size(), 0, &error, &status);
    EXPECT_TRUE(U_SUCCESS(status)) << u_errorName(status);
  }
  ~ReferenceNeox() { uregex_close(regex_); }

  // NFC of valid UTF-8.
  static std::string Nfc(const std::string& text) {
    UErrorCode status = U_ZERO_ERROR;
    const UNormalizer2* nfc = unorm2_getNFCInstance(&status);
    const std::u16string in = ToUtf16(text);
    std::u16string out(in.size() * 3 + 1, u'\0');
    const int32_t n = unorm2_normalize(nfc, in.data(), in.size(), out.data(),
                                       out.size(), &status);
    EXPECT_TRUE(U_SUCCESS(status)) << u_errorName(status);
    return ToUtf8(out.data(), n);
  }

  std::vector<std::string> PreTokens(const std::string& segment) {
    const std::u16string text = ToUtf16(segment);
    UErrorCode status = U_ZERO_ERROR;
    uregex_setText(regex_, text.data(), text.size(), &status);
    std::vector<std::string> out;
    int32_t covered = 0;
    while (uregex_findNext(regex_, &status)) {
      const int32_t begin = uregex_start(regex_, 0, &status);
      const int32_t end = uregex_end(regex_, 0, &status);
      EXPECT_EQ(begin, covered) << "the pattern skipped text";
      out.push_back(ToUtf8(text.data() + begin, end - begin));
      covered = end;
    }
    EXPECT_TRUE(U_SUCCESS(status)) << u_errorName(status);
    EXPECT_EQ(covered, static_cast<int32_t>(text.size()));
    return out;
  }

  std::vector<int32_t> Encode(const std::string& text,
                              std::vector<std::string>* pre_tokens = nullptr) {
    const std::string normal = Nfc(text);
    std::vector<int32_t> ids;
    size_t start = 0, at = 0;
    while (at <= normal.size()) {
      // The longest added token starting here, if any.
      const std::pair<std::string, int32_t>* found = nullptr;
      for (const auto& added : added_) {
        if (normal.compare(at, added.first.size(), added.first) == 0 &&
            (found == nullptr || added.first.size() > found->first.size())) {
          found = &added;
        }
      }
      if (found == nullptr && at < normal.size()) {
        ++at;
        continue;
      }
      for (const std::string& piece :
           PreTokens(normal.substr(start, at - start))) {
        if (pre_tokens != nullptr) pre_tokens->push_back(piece);
        for (const std::string& symbol : Merge(piece)) {
          auto id = vocab_.find(symbol);
          EXPECT_NE(id, vocab_.end()) << "no token " << symbol;
          if (id != vocab_.end()) ids.push_back(id->second);
        }
      }
      if (found == nullptr) break;
      if (pre_tokens != nullptr) pre_tokens->push_back(found->first);
      ids.push_back(found->second);
      at += found->first.size();
      start = at;
    }
    return ids;
  }

 private:
  std::vector<std::string> Merge(const std::string& piece) const {
    std::vector<std::string> symbols;
    for (unsigned char b : piece) symbols.push_back(bytes_[b]);
    while (symbols.size() > 1) {
      int best = INT_MAX;
      std::pair<std::string, std::string> pair;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        auto rank = ranks_.find({symbols[i], symbols[i + 1]});
        if (rank != ranks_.end() && rank->second < best) {
          best = rank->second;
          pair = rank->first;
        }
      }
      if (best == INT_MAX) break;
      std::vector<std::string> merged;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == pair.first &&
            symbols[i + 1] == pair.second) {
          merged.push_back(symbols[i] + symbols[i + 1]);
          ++i;
        } else {
          merged.push_back(symbols[i]);
        }
      }
      symbols = std::move(merged);
    }
    return symbols;
  }

  std::vector<std::string> bytes_;
  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
  std::vector<std::pair<std::string, int32_t>> added_;
  URegularExpression* regex_ = nullptr;
};

class NeoxReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string file, golden;
    if (!ReadFile(kTestdata + "/20B_tokenizer.json", &file) ||
        !ReadFile(kTestdata + "/neox-tokenizer.golden.json", &golden)) {
      if (std::getenv("CI") != nullptr) FAIL() << "no testdata under CI";
      GTEST_SKIP() << "no testdata at " << kTestdata;
    }
    golden_ = nlohmann::json::parse(golden);
    reference_ = std::make_unique<ReferenceNeox>(nlohmann::json::parse(file));
    auto tok = LoadNeoxTokenizer(kTestdata + "/20B_tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
  }
  nlohmann::json golden_;
  std::unique_ptr<ReferenceNeox> reference_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(NeoxReferenceTest, ReferenceReproducesTheGoldenCases) {
  int n = 0;
  for (const auto& c : golden_["encode_cases"]) {
    const std::string text = FromHex(c["utf8_hex"].get<std::string>());
    std::vector<std::string> pre_tokens;
    EXPECT_EQ(reference_->Encode(text, &pre_tokens),
              c["ids"].get<std::vector<int32_t>>())
        << c["name"];
    std::vector<std::string> want;  // [text, "bpe" | "special" | ...]
    for (const auto& p : c["pre_tokens"]) want.push_back(p[0]);
    EXPECT_EQ(pre_tokens, want) << c["name"];
    ++n;
  }
  EXPECT_EQ(n, 70);
}

// Characters of every general category the pattern and NFC distinguish:
// letters of many scripts, digits and other numbers (Nd, Nl, No), marks
// (which are neither letters nor numbers), every kind of white space,
// controls, symbols, punctuation, emoji and their joiners, NFC singletons
// and compositions, contractions and the added tokens.
std::vector<std::string> Pieces() {
  return {
      "a",
      "Z",
      "q",
      "7",
      "0",
      "'",
      "'s",
      "'S",
      "'ll",
      "'re",
      "'ve",
      "'m",
      "'d",
      "'t",
      "'x",
      " ",
      "  ",
      "   ",
      "\n",
      "\r\n",
      "\t",
      "\v",
      "\f",
      "\xc2\x85",      // U+0085 NEL
      "\xc2\xa0",      // U+00A0 no-break space
      "\xe2\x80\x83",  // U+2003 em space
      "\xe2\x80\xa8",  // U+2028 line separator
      "\xe3\x80\x80",  // U+3000 ideographic space
      "\xe2\x80\x8b",  // U+200B zero width space (not White_Space)
      "\x1c",
      "\x01",
      "\x7f",
      ".",
      ",",
      "!",
      "?",
      "(",
      ")",
      "\"",
      "#",
      "$",
      "%",
      "-",
      "_",
      "<",
      ">",
      "|",
      "<|endoftext|>",
      "<|padding|>",
      "<|",
      "|>",
      "endoftext",
      "\xcc\x81",  // U+0301 combining acute
      "\xcc\xa3",  // U+0323 combining dot below
      "e",
      "E",
      "\xc3\xa9",      // é
      "\xe2\x84\xab",  // U+212B Angstrom (NFC: U+00C5)
      "\xe2\x84\xa6",  // U+2126 Ohm (NFC: U+03A9)
      "\xcd\xbe",      // U+037E (NFC: ';')
      "\xef\xac\x81",  // U+FB01 ligature fi (NFC keeps it)
      "\xc2\xb2",      // U+00B2 superscript two (No)
      "\xe2\x85\xab",  // U+216B Roman numeral twelve (Nl)
      "\xd9\xa3",      // U+0663 Arabic-Indic three (Nd)
      "\xef\xbc\x91",  // U+FF11 fullwidth one
      "\xd0\x96",
      "\xd0\xb6",  // Ж ж
      "\xce\xa9",
      "\xce\xbb",  // Ω λ
      "\xd8\xb3",
      "\xd9\x84",  // Arabic letters
      "\xe0\xa4\xa8",
      "\xe0\xa5\x87",
      "\xe0\xa5\x8d",  // Devanagari, marks
      "\xe0\xb8\x81",
      "\xe0\xb8\xb1",  // Thai, a mark
      "\xe1\x84\x80",
      "\xe1\x85\xa1",
      "\xe1\x86\xa8",  // Hangul jamo
      "\xea\xb0\x80",  // 가
      "\xe6\xb1\x89",
      "\xe5\xad\x97",  // 汉 字
      "\xe3\x81\x82",
      "\xe3\x82\xa2",  // あ ア
      "\xef\xbc\x8c",
      "\xe3\x80\x82",  // ， 。
      "\xe2\x82\xac",
      "\xc2\xa9",
      "\xe2\x88\x91",      // € © ∑
      "\xf0\x9d\x90\x80",  // U+1D400 math A (L)
      "\xf0\xa0\x80\x80",  // U+20000 CJK ext B
      "\xf0\x9f\x91\x8d",
      "\xf0\x9f\x8f\xbd",  // 👍 skin tone
      "\xe2\x80\x8d",
      "\xef\xb8\x8f",  // ZWJ, VS16
      "\xf0\x9f\x87\xba",
      "\xf0\x9f\x87\xb8",  // regional indicators
      "\xc2\xad",          // soft hyphen
  };
}

// Random text from those pieces: the tokenizer's ids are the reference's.
TEST_F(NeoxReferenceTest, RandomTextEncodesAsTheReferenceDoes) {
  const std::vector<std::string> pieces = Pieces();
  std::mt19937 rng(23);
  for (int run = 0; run < 400; ++run) {
    std::string text;
    const int n = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) text += pieces[rng() % pieces.size()];
    ASSERT_EQ(tokenizer_->Encode(text), reference_->Encode(text))
        << ToHex(text);
  }
}

// Runs of one class, where the pattern's look-ahead and the added tokens'
// longest match decide: white space of every kind before and after words,
// long runs of spaces (the added tokens cover 2-24), digits and symbols.
TEST_F(NeoxReferenceTest, RunsEncodeAsTheReferenceDoes) {
  const std::vector<std::string> runs = {
      " ", "\t", "\n", "\xc2\xa0", "\xe3\x80\x80",
      "1", "!",  "a",  "\xcc\x81", "'"};
  std::mt19937 rng(29);
  for (int run = 0; run < 300; ++run) {
    std::string text;
    const int n = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < n; ++i) {
      const std::string& r = runs[rng() % runs.size()];
      for (int k = 1 + static_cast<int>(rng() % 30); k > 0; --k) text += r;
    }
    ASSERT_EQ(tokenizer_->Encode(text), reference_->Encode(text))
        << ToHex(text);
  }
}

}  // namespace
}  // namespace statestream::engine
