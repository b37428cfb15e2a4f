// SPDX-License-Identifier: Apache-2.0
// The GPT-NeoX-20B byte-level BPE tokenizer (RWKV-4 Pile / Raven), read from
// a Hugging Face tokenizer.json. Pipeline (../shared/testdata/README.md):
//   1. added tokens that are not normalized (<|endoftext|>, <|padding|>)
//      split the raw text, leftmost-longest;
//   2. each piece is normalized to NFC (ICU);
//   3. normalized added tokens (the 2..24-space runs) split it again,
//      longest match at each position;
//   4. the GPT-2 pattern splits the rest into pre-tokens (a hand-written
//      scanner over Unicode categories, no regex engine);
//   5. each pre-token's UTF-8 bytes are merged by BPE rank.
// Input that is not valid UTF-8 is read with one U+FFFD per maximal invalid
// subpart (as Rust's from_utf8_lossy), since the reference takes text.
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <algorithm>
#include <array>
#include <bit>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <system_error>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"
#include "worker/engine/tokenizer.h"

namespace statestream::engine {
namespace {

absl::Status BadFile(absl::string_view what) {
  return InvalidArgumentError(Reason::kInvalidModelFile,
                              absl::StrCat("tokenizer.json: ", what));
}

// The GPT-2 byte-level alphabet: byte -> code point.
std::array<uint32_t, 256> ByteAlphabet() {
  std::array<uint32_t, 256> a{};
  uint32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) ||
                           (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    a[b] = printable ? b : next++;
  }
  return a;
}

// Code points of valid-or-repaired UTF-8, as UTF-16.
std::u16string ToUtf16(absl::string_view bytes) {
  const std::string valid =
      IsValidUtf8(bytes) ? std::string(bytes) : DecodeUtf8Lossy(bytes);
  std::u16string out(valid.size() + 1, u'\0');
  int32_t len = 0;
  UErrorCode err = U_ZERO_ERROR;
  u_strFromUTF8WithSub(reinterpret_cast<UChar*>(out.data()),
                       static_cast<int32_t>(out.size()), &len, valid.data(),
                       static_cast<int32_t>(valid.size()), 0xFFFD, nullptr,
                       &err);
  out.resize(U_SUCCESS(err) ? len : 0);
  return out;
}

std::string ToUtf8(std::u16string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    UChar32 c;
    U16_NEXT(s.data(), i, s.size(), c);
    AppendUtf8(static_cast<uint32_t>(c), &out);
  }
  return out;
}

enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass Classify(UChar32 c) {
  if (u_isUWhiteSpace(c)) return CharClass::kSpace;
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return CharClass::kLetter;
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      return CharClass::kNumber;
    default:
      return CharClass::kOther;
  }
}

// Splits `s` (one piece between added tokens) with
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// calling f(begin, end) in UTF-16 units for each pre-token.
template <typename F>
void PreTokenize(std::u16string_view s, F f) {
  std::vector<UChar32> cps;
  std::vector<size_t> offs;  // UTF-16 offset of each code point, plus end
  for (size_t i = 0; i < s.size();) {
    offs.push_back(i);
    UChar32 c;
    U16_NEXT(s.data(), i, s.size(), c);
    cps.push_back(c);
  }
  offs.push_back(s.size());
  std::vector<CharClass> cls(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) cls[i] = Classify(cps[i]);
  const size_t n = cps.size();
  size_t i = 0;
  while (i < n) {
    size_t end = i;
    // 1. Contractions (lowercase only).
    if (cps[i] == '\'' && i + 1 < n) {
      const UChar32 a = cps[i + 1];
      const UChar32 b = i + 2 < n ? cps[i + 2] : 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        end = i + 2;
      } else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') ||
                 (a == 'l' && b == 'l')) {
        end = i + 3;
      }
    }
    // 2. An optional space, then a run of one class.
    if (end == i) {
      const size_t j = cps[i] == ' ' && i + 1 < n ? i + 1 : i;
      if (cls[j] != CharClass::kSpace) {
        end = j;
        while (end < n && cls[end] == cls[j]) ++end;
      }
    }
    // 3./4. Whitespace: all of a run at the end; otherwise the run minus
    // its last character when that leaves one; otherwise one character.
    if (end == i) {
      size_t k = i;
      while (k < n && cls[k] == CharClass::kSpace) ++k;
      end = (k == n || k - i < 2) ? k : k - 1;
    }
    f(offs[i], offs[end]);
    i = end;
  }
}

class NeoxTokenizer final : public Tokenizer {
 public:
  absl::Status Init(const nlohmann::json& j);

  absl::string_view name() const override { return "neox_bpe"; }
  std::string fingerprint() const override { return fingerprint_; }
  int vocab_size() const override { return static_cast<int>(bytes_.size()); }
  size_t max_token_bytes() const override { return max_token_bytes_; }
  std::optional<int32_t> end_of_text_id() const override { return eot_; }
  absl::string_view TokenBytes(int32_t id) const override {
    if (id < 0 || id >= vocab_size() || special_[id]) return {};
    return bytes_[id];
  }
  std::vector<int32_t> Encode(absl::string_view bytes) const override;
  StreamEncodeResult EncodeStream(absl::string_view tail,
                                  absl::string_view chunk,
                                  bool flush) const override;

 private:
  struct Added {
    std::u16string text;
    int32_t id;
    std::string utf8;  // text, as it appears in input
  };
  // A stream's tail longer than this is cut anyway (PreTokenCut with
  // exact false), so one run of letters cannot grow it without bound.
  static constexpr size_t kMaxStreamTailBytes = 64 << 10;
  // Past this many tail bytes, EncodeStream scans only when the text
  // reaches the next step of a geometric grid (see there).
  static constexpr size_t kRescanFromBytes = 256;
  // Where to cut `text` (whose first `from` bytes are cut already): the
  // last point before the end where a pre-token surely ends (a change
  // between letters, digits and other characters, see the definition),
  // never inside an added token; `from` if there is none. With `exact`
  // false (a tail too long), where there is none: the last NFC boundary,
  // else the last character boundary.
  size_t PreTokenCut(const std::string& text, size_t from, bool exact) const;
  // Calls f(piece) for the text between matches of `tokens` and out(id)
  // for each match; leftmost, longest at a position.
  template <typename Piece>
  void SplitAdded(std::u16string_view s, const std::vector<Added>& tokens,
                  Piece piece, std::vector<int32_t>* out) const;
  void Bpe(absl::string_view word, std::vector<int32_t>* out) const;
  void EncodeNormalizedPiece(std::u16string_view s,
                             std::vector<int32_t>* out) const;

  std::vector<std::string> bytes_;  // id -> bytes
  std::vector<bool> special_;       // decodes to nothing
  std::array<int32_t, 256> byte_id_;
  // (left id << 32 | right id) -> (rank << 32 | merged id)
  absl::flat_hash_map<uint64_t, uint64_t> merges_;
  std::vector<Added> raw_added_, normalized_added_;
  std::optional<int32_t> eot_;
  size_t max_token_bytes_ = 1;
  bool streamable_ = true;
  // Whether exact cuts may fall where classes change (PreTokenCut).
  bool class_cuts_ = true;
  std::string fingerprint_;
};

template <typename Piece>
void NeoxTokenizer::SplitAdded(std::u16string_view s,
                               const std::vector<Added>& tokens, Piece piece,
                               std::vector<int32_t>* out) const {
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    const Added* best = nullptr;
    for (const Added& a : tokens) {
      if (a.text.size() <= s.size() - i &&
          s.compare(i, a.text.size(), a.text) == 0 &&
          (best == nullptr || a.text.size() > best->text.size())) {
        best = &a;
      }
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    if (i > start) piece(s.substr(start, i - start));
    out->push_back(best->id);
    i += best->text.size();
    start = i;
  }
  if (start < s.size()) piece(s.substr(start));
}

void NeoxTokenizer::Bpe(absl::string_view word,
                        std::vector<int32_t>* out) const {
  // The reference merges, while any adjacent pair has a merge, the pair of
  // lowest rank, leftmost first. Rescanning the word for it after every
  // merge is quadratic (a 1 MiB run of letters is one word): here the
  // candidates wait in a heap ordered by (rank, position), the symbols form
  // a linked list, and a popped candidate whose symbols changed since is
  // skipped. Each merge pushes at most two, so O(n log n), same result.
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1: none
  };
  // Reused across calls (no allocation per word on the hot path).
  thread_local std::vector<Symbol> sym;
  sym.clear();
  for (char ch : word) {
    const int32_t id = byte_id_[static_cast<uint8_t>(ch)];
    if (id < 0) continue;  // not reached: Init requires every byte's token
    const int32_t at = static_cast<int32_t>(sym.size());
    sym.push_back({id, at - 1, -1});
    if (at > 0) sym[at - 1].next = at;
  }
  struct Candidate {
    uint32_t rank;
    int32_t left;               // position of the left symbol
    int32_t left_id, right_id;  // what the pair was when pushed
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  thread_local std::vector<Candidate> heap;
  heap.clear();
  auto consider = [&](int32_t left) {
    if (left < 0 || sym[left].next < 0) return;
    const int32_t right = sym[left].next;
    auto it = merges_.find(static_cast<uint64_t>(sym[left].id) << 32 |
                           static_cast<uint32_t>(sym[right].id));
    if (it == merges_.end()) return;
    heap.push_back({static_cast<uint32_t>(it->second >> 32), left, sym[left].id,
                    sym[right].id,
                    static_cast<int32_t>(it->second & 0xFFFFFFFFu)});
    std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) {
    consider(i);
  }
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& l = sym[c.left];
    if (l.id != c.left_id || l.next < 0 || sym[l.next].id != c.right_id) {
      continue;  // stale: a merge changed the pair since
    }
    const int32_t right = l.next;
    l.id = c.merged;
    l.next = sym[right].next;
    if (l.next >= 0) sym[l.next].prev = c.left;
    sym[right].id = -1;  // merged away: its candidates are stale
    consider(l.prev);
    consider(c.left);
  }
  for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
    out->push_back(sym[i].id);
  }
  // A huge word's buffers are not kept for the life of the thread.
  constexpr size_t kKeep = 1 << 16;
  if (sym.capacity() > kKeep) std::vector<Symbol>().swap(sym);
  if (heap.capacity() > kKeep) std::vector<Candidate>().swap(heap);
}

void NeoxTokenizer::EncodeNormalizedPiece(std::u16string_view s,
                                          std::vector<int32_t>* out) const {
  PreTokenize(
      s, [&](size_t b, size_t e) { Bpe(ToUtf8(s.substr(b, e - b)), out); });
}

std::vector<int32_t> NeoxTokenizer::Encode(absl::string_view bytes) const {
  std::vector<int32_t> out;
  const std::u16string text = ToUtf16(bytes);
  const UNormalizer2* nfc = nullptr;
  UErrorCode err = U_ZERO_ERROR;
  nfc = unorm2_getNFCInstance(&err);
  SplitAdded(
      text, raw_added_,
      [&](std::u16string_view piece) {
        std::u16string norm(piece.size() * 3 + 8, u'\0');
        UErrorCode e = U_ZERO_ERROR;
        int32_t len =
            unorm2_normalize(nfc, reinterpret_cast<const UChar*>(piece.data()),
                             static_cast<int32_t>(piece.size()),
                             reinterpret_cast<UChar*>(norm.data()),
                             static_cast<int32_t>(norm.size()), &e);
        if (e == U_BUFFER_OVERFLOW_ERROR) {
          norm.assign(len, u'\0');
          e = U_ZERO_ERROR;
          len = unorm2_normalize(
              nfc, reinterpret_cast<const UChar*>(piece.data()),
              static_cast<int32_t>(piece.size()),
              reinterpret_cast<UChar*>(norm.data()), len, &e);
        }
        if (U_FAILURE(e)) {
          norm.assign(piece);  // not reached: ICU data is built in
        } else {
          norm.resize(len);
        }
        SplitAdded(
            norm, normalized_added_,
            [&](std::u16string_view p) { EncodeNormalizedPiece(p, &out); },
            &out);
      },
      &out);
  return out;
}

StreamEncodeResult NeoxTokenizer::EncodeStream(absl::string_view tail,
                                               absl::string_view chunk,
                                               bool flush) const {
  StreamEncodeResult r;
  std::string text = absl::StrCat(tail, chunk);
  if (flush) {
    r.tokens = Encode(text);
    return r;
  }
  // The scan below reads all of tail + chunk, so a long tail fed in small
  // chunks (one run without whitespace, a byte at a time) made it
  // quadratic: 30 s for 64 KiB. Holding text back is always exact (the
  // cut only comes later), so past kRescanFromBytes the scan runs only
  // when the text reaches the next step of a grid of four steps a doubling
  // (or passes the cap): each byte costs a few bytes of scanning in all,
  // and the tail holds up to a quarter more than the last scan left.
  auto step = [](size_t n) {
    const int width = std::bit_width(n);  // n >= kRescanFromBytes
    return (width << 2) | ((n >> (width - 3)) & 3);
  };
  if (tail.size() >= kRescanFromBytes && text.size() <= kMaxStreamTailBytes &&
      step(text.size()) == step(tail.size())) {
    r.tail = std::move(text);
    return r;
  }
  // Nothing before a whitespace character that follows a non-whitespace
  // one can change with more input (see docs/architectures.md): cut at the
  // last such position, then at the last point after it where a pre-token
  // surely ends, and keep the rest as the tail.
  size_t cut = 0;
  if (streamable_) {
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2* nfc = unorm2_getNFCInstance(&err);
    bool prev_space = true;
    for (size_t i = 0; i < text.size();) {
      const size_t at = i;
      UChar32 c;
      U8_NEXT(text.data(), i, text.size(), c);
      const bool space = c >= 0 && u_isUWhiteSpace(c);
      if (space && !prev_space && unorm2_hasBoundaryBefore(nfc, c)) cut = at;
      prev_space = space;
    }
  }
  cut = PreTokenCut(text, cut, /*exact=*/true);
  if (text.size() - cut > kMaxStreamTailBytes) {
    cut = PreTokenCut(text, cut, /*exact=*/false);
  }
  r.tokens = Encode(absl::string_view(text).substr(0, cut));
  r.tail = text.substr(cut);
  return r;
}

size_t NeoxTokenizer::PreTokenCut(const std::string& text, size_t from,
                                  bool exact) const {
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* nfc = unorm2_getNFCInstance(&err);
  // No added token Encode takes may span the cut. It lies at least the
  // longest one before the end, so a match that starts before it is
  // decided (no longer one could start there), and it is not inside a match
  // of SplitAdded's leftmost-longest scan of each list from `from` (a
  // boundary). Marking every occurrence instead left no cut in a run of
  // spaces (added tokens of 2 to 24 spaces overlap at every position).
  size_t longest = 1;
  for (const auto* list : {&raw_added_, &normalized_added_}) {
    for (const Added& a : *list) longest = std::max(longest, a.utf8.size());
  }
  if (text.size() < from + longest + 1) return from;
  const size_t limit = text.size() - longest;
  // The characters from `from` (up to one past `limit`), decoded once.
  struct Char {
    size_t at;
    UChar32 c;  // negative: not valid UTF-8 (read as U+FFFD)
  };
  std::vector<Char> chars;
  for (size_t i = from; i < text.size();) {
    const size_t at = i;
    UChar32 c;
    U8_NEXT(text.data(), i, text.size(), c);
    chars.push_back({at, c});
    if (at > limit) break;
  }
  // A character that is an NFC segment of its own, and NFC already: it
  // stays itself, so its class is the one Encode sees.
  auto alone = [&](size_t k) {
    if (k + 1 >= chars.size()) return false;
    const UChar32 c = chars[k].c, next = chars[k + 1].c;
    if (c < 0 || next < 0 || !unorm2_hasBoundaryBefore(nfc, c) ||
        !unorm2_hasBoundaryBefore(nfc, next)) {
      return false;
    }
    UChar buf[2];
    int32_t len = 0;
    U16_APPEND_UNSAFE(buf, len, c);
    UErrorCode e = U_ZERO_ERROR;
    return unorm2_isNormalized(nfc, buf, len, &e) && U_SUCCESS(e);
  };
  // Points up to `limit` where a pre-token surely ends: between two
  // characters that normalize alone and are of different classes, neither
  // whitespace, the first not the apostrophe of a contraction. (In "e"
  // U+0301 "x" the mark joins the "e" and "éx" is one letter run; a mark
  // that stays alone is "other", as the regex has it.) Each pre-token of the
  // regex ends where its class changes.
  std::vector<size_t> sure;
  for (size_t k = 1; k + 1 < chars.size() && (class_cuts_ || !exact); ++k) {
    if (chars[k].at > limit) break;
    const UChar32 prev = chars[k - 1].c, c = chars[k].c;
    if (prev < 0 || c < 0 || prev == '\'') continue;
    const CharClass a = Classify(prev), b = Classify(c);
    if (a != b && a != CharClass::kSpace && b != CharClass::kSpace &&
        alone(k - 1) && alone(k)) {
      sure.push_back(chars[k].at);
    }
  }
  if (exact && sure.empty() && raw_added_.empty()) return from;
  std::vector<bool> inside(text.size() + 1, false);  // within an added token
  std::array<bool, 256> starts{};  // first bytes of added tokens
  for (const auto* list : {&raw_added_, &normalized_added_}) {
    for (const Added& a : *list) starts[static_cast<uint8_t>(a.utf8[0])] = true;
  }
  // Leftmost-longest matches of `list` in [begin, end), as SplitAdded
  // takes them, marked inside; their spans appended to *spans if given.
  auto scan = [&](const std::vector<Added>& list, size_t begin, size_t end,
                  std::vector<std::pair<size_t, size_t>>* spans) {
    for (size_t i = begin; i < end;) {
      if (!starts[static_cast<uint8_t>(text[i])]) {
        ++i;
        continue;
      }
      size_t match = 0;
      for (const Added& a : list) {
        if (a.utf8.size() > match && a.utf8.size() <= end - i &&
            text.compare(i, a.utf8.size(), a.utf8) == 0) {
          match = a.utf8.size();
        }
      }
      if (match == 0) {
        ++i;
        continue;
      }
      for (size_t k = i + 1; k < i + match; ++k) inside[k] = true;
      if (spans != nullptr) spans->emplace_back(i, i + match);
      i += match;
    }
  };
  // The raw tokens over the text, then the normalized ones in each piece
  // between raw matches, as Encode matches them.
  std::vector<std::pair<size_t, size_t>> raw;
  scan(raw_added_, from, text.size(), &raw);
  size_t piece = from;
  for (const auto& [begin, end] : raw) {
    scan(normalized_added_, piece, begin, nullptr);
    piece = end;
  }
  scan(normalized_added_, piece, text.size(), nullptr);
  // The end of a raw added token that is decided (it starts by `limit`)
  // is a cut too: Encode splits there and normalizes each side apart. (A
  // stream of "<|endoftext|>" would otherwise rescan its whole tail.)
  size_t cut = from;
  for (const auto& [begin, end] : raw) {
    if (begin <= limit) cut = end;
  }
  for (auto it = sure.rbegin(); it != sure.rend(); ++it) {
    if (!inside[*it]) {
      cut = std::max(cut, *it);
      break;
    }
  }
  if (exact) return cut;
  // Inexact, the cut must leave the tail within the cap: the last sure
  // point or NFC boundary may lie far back ("ab" and then 70,000 combining
  // marks: "b" starts the last segment), and holding nearly the whole text
  // back would grow the tail by every chunk, past what an import accepts.
  auto near_end = [&](size_t at) {
    return text.size() - at <= kMaxStreamTailBytes;
  };
  if (cut > from && near_end(cut)) return cut;
  // Fallbacks, where no such point exists: the last NFC boundary, else the
  // last character boundary at all (text of combining marks only).
  size_t nfc_safe = from, any = from;
  for (const Char& ch : chars) {
    if (ch.at > limit) break;
    if (ch.at == from || inside[ch.at]) continue;
    any = ch.at;
    if (ch.c >= 0 && unorm2_hasBoundaryBefore(nfc, ch.c)) nfc_safe = ch.at;
  }
  if (nfc_safe > from && near_end(nfc_safe)) return nfc_safe;
  return std::max(any, cut);
}

absl::Status NeoxTokenizer::Init(const nlohmann::json& j) {
  const nlohmann::json* model = j.contains("model") ? &j["model"] : nullptr;
  if (model == nullptr || !model->is_object() ||
      model->value("type", "") != "BPE" || !model->contains("vocab") ||
      !(*model)["vocab"].is_object() || !model->contains("merges") ||
      !(*model)["merges"].is_array()) {
    return BadFile("no BPE model with vocab and merges");
  }
  // What Encode implements: NFC, then GPT-2's byte-level pre-tokenizer
  // with its regex and no prefix space. A file that asks for anything else
  // would load and encode differently from Hugging Face's tokenizers.
  const auto field = [&j](const char* name) -> const nlohmann::json* {
    auto it = j.find(name);
    return it != j.end() && it->is_object() ? &*it : nullptr;
  };
  const nlohmann::json* normalizer = field("normalizer");
  if (normalizer == nullptr ||
      normalizer->value("type", nlohmann::json()) != "NFC") {
    return BadFile("only the NFC normalizer is supported");
  }
  const nlohmann::json* pre = field("pre_tokenizer");
  if (pre == nullptr || pre->value("type", nlohmann::json()) != "ByteLevel" ||
      pre->value("add_prefix_space", nlohmann::json(true)) != false ||
      pre->value("use_regex", nlohmann::json(true)) != true) {
    return BadFile(
        "only the ByteLevel pre-tokenizer with add_prefix_space false and "
        "use_regex true is supported");
  }
  std::array<uint32_t, 256> alphabet = ByteAlphabet();
  absl::flat_hash_map<uint32_t, uint8_t> to_byte;
  for (int b = 0; b < 256; ++b) to_byte[alphabet[b]] = b;
  // Token string (byte-level alphabet) -> bytes; other characters stand for
  // their own UTF-8 bytes.
  auto to_bytes = [&](const std::string& s) {
    std::string out;
    const std::u16string u = ToUtf16(s);
    for (size_t i = 0; i < u.size();) {
      UChar32 c;
      U16_NEXT(u.data(), i, u.size(), c);
      auto it = to_byte.find(static_cast<uint32_t>(c));
      if (it != to_byte.end()) {
        out.push_back(static_cast<char>(it->second));
      } else {
        AppendUtf8(static_cast<uint32_t>(c), &out);
      }
    }
    return out;
  };
  constexpr int64_t kMaxVocab = 1 << 22;
  absl::flat_hash_map<std::string, int32_t> vocab;  // alphabet string -> id
  std::vector<bool> assigned;
  auto assign = [&](int64_t id, std::string bytes) -> absl::Status {
    if (id < 0 || id >= kMaxVocab) {
      return BadFile(absl::StrCat("token id ", id, " out of range"));
    }
    if (static_cast<size_t>(id) >= bytes_.size()) {
      bytes_.resize(id + 1);
      special_.resize(id + 1, false);
      assigned.resize(id + 1, false);
    }
    // One id, one token: two would encode as one and decode as the other
    // (an added token may repeat its vocabulary entry, the same bytes).
    if (assigned[id] && bytes_[id] != bytes) {
      return BadFile(
          absl::StrCat("token id ", id, " is given to two different tokens"));
    }
    assigned[id] = true;
    max_token_bytes_ = std::max(max_token_bytes_, bytes.size());
    bytes_[id] = std::move(bytes);
    return absl::OkStatus();
  };
  {
    // Ids index a table: a few tokens at huge ids would allocate it whole
    // (4M entries, ~130 MB) for nothing. Real vocabularies are dense.
    int64_t count = 0, max_id = -1;
    auto see = [&](const nlohmann::json& id) {
      if (!id.is_number_integer()) return;
      ++count;
      max_id = std::max(max_id, id.get<int64_t>());
    };
    for (const auto& item : (*model)["vocab"].items()) see(item.value());
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const auto& a : j["added_tokens"]) {
        if (a.is_object() && a.contains("id")) see(a["id"]);
      }
    }
    if (max_id >= 2 * count + 1024 && max_id < kMaxVocab) {
      return BadFile(absl::StrCat("token ids are sparse: id ", max_id,
                                  " among ", count, " tokens"));
    }
  }
  for (const auto& [s, id] : (*model)["vocab"].items()) {
    if (!id.is_number_integer()) return BadFile("vocab id is not an integer");
    SS_RETURN_IF_ERROR(assign(id.get<int64_t>(), to_bytes(s)));
    vocab[s] = id.get<int32_t>();
  }
  for (int b = 0; b < 256; ++b) {
    std::string s;
    AppendUtf8(alphabet[b], &s);
    auto it = vocab.find(s);
    byte_id_[b] = it == vocab.end() ? -1 : it->second;
    // Every byte valid UTF-8 can hold needs its token, or text would lose
    // it silently (0xC0, 0xC1 and 0xF5-0xFF never occur).
    const bool in_utf8 = b < 0xC0 || (b >= 0xC2 && b <= 0xF4);
    if (byte_id_[b] < 0 && in_utf8) {
      return BadFile(absl::StrCat("the vocabulary has no token for byte 0x",
                                  absl::Hex(b, absl::kZeroPad2)));
    }
  }
  uint64_t rank = 0;
  for (const auto& m : (*model)["merges"]) {
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) return BadFile("merge without a space");
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() &&
               m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return BadFile("bad merge entry");
    }
    auto l = vocab.find(left), r = vocab.find(right),
         lr = vocab.find(left + right);
    if (l == vocab.end() || r == vocab.end() || lr == vocab.end()) {
      return BadFile(absl::StrCat("merge ", left, " ", right,
                                  " uses a token missing from the vocab"));
    }
    merges_.try_emplace(static_cast<uint64_t>(l->second) << 32 |
                            static_cast<uint32_t>(r->second),
                        rank << 32 | static_cast<uint32_t>(lr->second));
    ++rank;
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        return BadFile("bad added token");
      }
      if ((a.contains("special") && !a["special"].is_boolean()) ||
          (a.contains("normalized") && !a["normalized"].is_boolean())) {
        return BadFile("added token: special and normalized are booleans");
      }
      // Hugging Face's added-token options that change what matches
      // (eating whitespace beside it, matching whole words only): Encode
      // does not implement them, so a file that sets one is refused rather
      // than encoded otherwise than Hugging Face would.
      for (const char* option : {"lstrip", "rstrip", "single_word"}) {
        if (a.contains(option) && a[option] != false) {
          return BadFile(absl::StrCat("added token ", a["content"].dump(), ": ",
                                      option, " is not supported"));
        }
      }
      const std::string content = a["content"].get<std::string>();
      const int64_t wide_id = a["id"].get<int64_t>();
      if (content.empty()) return BadFile("empty added token");
      SS_RETURN_IF_ERROR(assign(wide_id, content));  // checks the range
      const int32_t id = static_cast<int32_t>(wide_id);
      const bool special = a.value("special", false);
      special_[id] = special;
      if (content == "<|endoftext|>") eot_ = id;
      Added added{ToUtf16(content), id, content};
      // Streaming cuts before whitespace: safe while no added token mixes
      // whitespace with other characters.
      size_t spaces = 0;
      for (char16_t c : added.text) spaces += u_isUWhiteSpace(c) ? 1 : 0;
      if (spaces != 0 && spaces != added.text.size()) streamable_ = false;
      // PreTokenCut finds normalized added tokens in the text before NFC:
      // one of letters or digits might match only once normalized ("e"
      // U+0301 "a1" for "éa1"), across a cut between classes.
      if (spaces != added.text.size() && a.value("normalized", true)) {
        class_cuts_ = false;
      }
      (a.value("normalized", true) ? normalized_added_ : raw_added_)
          .push_back(std::move(added));
    }
  }
  if (bytes_.empty()) return BadFile("empty vocabulary");
  uint64_t digest = 0xcbf29ce484222325ULL;  // FNV-1a 64
  auto mix = [&digest](const void* p, size_t n) {
    for (size_t k = 0; k < n; ++k) {
      digest ^= static_cast<const uint8_t*>(p)[k];
      digest *= 0x100000001b3ULL;
    }
  };
  for (size_t id = 0; id < bytes_.size(); ++id) {
    const uint32_t len = static_cast<uint32_t>(bytes_[id].size());
    mix(&len, 4);
    mix(bytes_[id].data(), len);
  }
  mix(&rank, sizeof(rank));
  for (const auto& m : (*model)["merges"]) {
    const std::string s = m.dump();
    mix(s.data(), s.size());
  }
  fingerprint_ = absl::StrCat("neox_bpe:", absl::Hex(digest));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseNeoxTokenizer(
    absl::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return BadFile("not a JSON object");
  }
  auto tok = std::make_unique<NeoxTokenizer>();
  // Init checks the types it reads; a JSON exception it missed (a field of
  // an unexpected type) is still a bad file, never a crash.
  absl::Status init;
  try {
    init = tok->Init(j);
  } catch (const nlohmann::json::exception& e) {
    init = BadFile(absl::StrCat("unexpected JSON: ", e.what()));
  }
  SS_RETURN_IF_ERROR(init);
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadNeoxTokenizer(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFoundError(Reason::kInvalidModelFile,
                         absl::StrCat("cannot read ", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseNeoxTokenizer(ss.str());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFile(
    const std::string& path) {
  // An ifstream opens a directory without complaint and reads nothing:
  // the error would name what that empty vocabulary lacks.
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return NotFoundError(
        Reason::kInvalidModelFile,
        absl::StrCat(
            path, " is a directory, not a vocab file (e.g. ",
            (std::filesystem::path(path) / "rwkv_vocab_v20230424.txt").string(),
            ")"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFoundError(Reason::kInvalidModelFile,
                         absl::StrCat("cannot read ", path));
  }
  char c = 0;
  while (in.get(c) && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
  }
  if (c == '{') return LoadNeoxTokenizer(path);
  return LoadWorldTokenizer(path);
}

}  // namespace statestream::engine
