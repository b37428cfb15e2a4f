// SPDX-License-Identifier: Apache-2.0
#include "common/utf8.h"

namespace statestream {
namespace {

enum class SeqKind { kValid, kInvalid, kTruncated };

struct Seq {
  SeqKind kind;
  size_t length;  // bytes consumed: the character, or the maximal subpart
};

// Classifies the sequence starting at bytes[i] (i < bytes.size()) following
// Unicode Table 3-7 (well-formed byte sequences). For an invalid or truncated
// sequence, `length` is the maximal subpart: the lead byte plus the
// continuation bytes that were still acceptable, at least 1.
Seq NextSequence(absl::string_view bytes, size_t i) {
  const auto b0 = static_cast<uint8_t>(bytes[i]);
  if (b0 < 0x80) return {SeqKind::kValid, 1};
  size_t need;        // continuation bytes after the lead
  uint8_t lo = 0x80;  // allowed range of the first continuation byte
  uint8_t hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return {SeqKind::kInvalid, 1};  // 0x80..0xC1, 0xF5..0xFF
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= bytes.size()) return {SeqKind::kTruncated, k};
    const auto b = static_cast<uint8_t>(bytes[i + k]);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {SeqKind::kInvalid, k};
  }
  return {SeqKind::kValid, need + 1};
}

}  // namespace

bool IsValidUtf8(absl::string_view bytes) {
  return FirstInvalidUtf8Byte(bytes) == bytes.size();
}

size_t FirstInvalidUtf8Byte(absl::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= bytes.size()) {
      uint64_t word = 0;
      for (int k = 0; k < 8; ++k) {
        word |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i + k]))
                << (8 * k);
      }
      if (word & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= bytes.size()) break;
    const Seq s = NextSequence(bytes, i);
    if (s.kind != SeqKind::kValid) return i;
    i += s.length;
  }
  return bytes.size();
}

size_t Utf8CompletePrefixLength(absl::string_view bytes) {
  // Only the last 3 bytes can start a truncated sequence of at most 3 bytes.
  const size_t start = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t i = start; i < bytes.size(); ++i) {
    const Seq s = NextSequence(bytes, i);
    if (s.kind == SeqKind::kTruncated) return i;
  }
  return bytes.size();
}

std::string DecodeUtf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const Seq s = NextSequence(bytes, i);
    if (s.kind == SeqKind::kValid) {
      out.append(bytes.data() + i, s.length);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += s.length;
  }
  return out;
}

bool AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp <= 0x10FFFF) {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    return false;
  }
  return true;
}

size_t LeadingContinuationBytes(absl::string_view text) {
  size_t n = 0;
  while (n < text.size() && n < 3 &&
         (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) {
    ++n;
  }
  return n;
}

}  // namespace statestream
