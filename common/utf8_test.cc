// SPDX-License-Identifier: Apache-2.0
#include "common/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace statestream {
namespace {

TEST(Utf8Test, Validity) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii text longer than eight bytes"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80"));
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
  EXPECT_TRUE(IsValidUtf8(std::string("\0", 1)));
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\xaf"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("abcdefgh\x80"));
  EXPECT_FALSE(IsValidUtf8("\xe4\xb8"));  // truncated
}

TEST(Utf8Test, FirstInvalidByte) {
  EXPECT_EQ(FirstInvalidUtf8Byte(""), 0u);
  EXPECT_EQ(FirstInvalidUtf8Byte("abc"), 3u);
  EXPECT_EQ(FirstInvalidUtf8Byte("ab\xff"
                                 "c"),
            2u);
  EXPECT_EQ(FirstInvalidUtf8Byte("abcdefghij\x80"), 10u);  // past the fast path
  EXPECT_EQ(FirstInvalidUtf8Byte("\xc3\xa9\xc0\xaf"), 2u);      // overlong
  EXPECT_EQ(FirstInvalidUtf8Byte("\xe4\xb8\xad\xe4\xb8"), 3u);  // truncated
}

TEST(Utf8Test, CompletePrefixLength) {
  EXPECT_EQ(Utf8CompletePrefixLength(""), 0u);
  EXPECT_EQ(Utf8CompletePrefixLength("abc"), 3u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xf0\x9f\x98"), 2u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xf0\x9f"), 2u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xf0"), 2u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xf0\x9f\x98\x80"), 6u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xff"), 3u);      // never valid
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xe0\x80"), 4u);  // overlong
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xe0\xa4 x"), 6u);
  EXPECT_EQ(Utf8CompletePrefixLength("\xe0\xa4\xf0"), 2u);
  EXPECT_EQ(Utf8CompletePrefixLength("\xe4\xb8\xad\xe4"), 3u);
  // Streaming decode: holding back the incomplete suffix and emitting the
  // rest reproduces the whole text for any chunking.
  const std::string text = "h\xc3\xa9llo \xe4\xb8\xad\xf0\x9f\x98\x80!";
  for (size_t s = 0; s <= text.size(); ++s) {
    std::string pending = text.substr(0, s), out;
    size_t n = Utf8CompletePrefixLength(pending);
    out += pending.substr(0, n);
    pending = pending.substr(n) + text.substr(s);
    n = Utf8CompletePrefixLength(pending);
    out += pending.substr(0, n);
    EXPECT_EQ(out, text);
    EXPECT_EQ(n, pending.size());
  }
}

TEST(Utf8Test, LossyDecode) {
  EXPECT_EQ(DecodeUtf8Lossy("abc"), "abc");
  EXPECT_EQ(DecodeUtf8Lossy("\xf0\x9f\x98"), "\uFFFD");
  EXPECT_EQ(DecodeUtf8Lossy("\xf0\x9f\x98"
                            "a"),
            "\uFFFD"
            "a");
  EXPECT_EQ(DecodeUtf8Lossy("\xc0\xaf"), "\uFFFD\uFFFD");
  EXPECT_EQ(DecodeUtf8Lossy("\xf4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(DecodeUtf8Lossy("\xe4\xb8\xad"), "\xe4\xb8\xad");
  std::string out;
  EXPECT_TRUE(AppendUtf8(0x10FFFF, &out));
  EXPECT_FALSE(AppendUtf8(0xD800, &out));
  EXPECT_FALSE(AppendUtf8(0x110000, &out));
  EXPECT_EQ(out, "\xf4\x8f\xbf\xbf");
}

TEST(Utf8Test, LeadingContinuationBytes) {
  EXPECT_EQ(LeadingContinuationBytes(""), 0u);
  EXPECT_EQ(LeadingContinuationBytes("abc"), 0u);
  EXPECT_EQ(LeadingContinuationBytes("\x82\xac!"), 2u);
  // At most three: no character has more continuation bytes.
  EXPECT_EQ(LeadingContinuationBytes("\x80\x80\x80\x80"), 3u);
  EXPECT_EQ(LeadingContinuationBytes("\xe2\x82\xac"), 0u);  // a lead byte
}

}  // namespace
}  // namespace statestream
