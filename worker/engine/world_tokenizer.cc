// SPDX-License-Identifier: Apache-2.0
// The RWKV World tokenizer: greedy longest match over bytes, as the official
// TRIE_TOKENIZER (ChatRWKV rwkv_pip_package/src/rwkv/rwkv_tokenizer.py).
//
// The vocabulary is a byte trie flattened in breadth-first order: the
// children of a node are consecutive nodes sorted by label byte, so a node
// is (first child, child count, token id) and a child is found by scanning
// or bisecting a few label bytes. The first two levels are dense tables
// (every byte is a token, so level 1 is `1 + byte`; level 2 is a 64 Ki
// table), which covers most of the work for typical text.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/utf8.h"
#include "worker/engine/tokenizer.h"

namespace statestream::engine {
namespace {

absl::Status VocabError(size_t line_no, absl::string_view msg) {
  return InvalidArgumentError(
      Reason::kInvalidModelFile,
      absl::StrCat("World vocab line ", line_no, ": ", msg));
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The value of a one-character escape (\n, \', ...), or -1.
int64_t SimpleEscape(char e) {
  static constexpr char kFrom[] = "\\'\"abfnrtv";
  static constexpr char kTo[] = "\\'\"\a\b\f\n\r\t\v";
  const char* hit = std::strchr(kFrom, e);
  return e != '\0' && hit != nullptr ? kTo[hit - kFrom] : -1;
}

// Parses `n` hex digits at s[*pos]; advances *pos. -1 if malformed.
int64_t ParseHex(absl::string_view s, size_t* pos, int n) {
  if (*pos + n > s.size()) return -1;
  int64_t v = 0;
  for (int k = 0; k < n; ++k) {
    const int h = HexValue(s[*pos + k]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  *pos += n;
  return v;
}

// Parses the Python string or bytes literal starting at line[*pos] (escapes
// as Python 3 defines them) into `out`; advances *pos past the closing
// quote. Returns an error message, or "" on success.
std::string ParsePythonLiteral(absl::string_view line, size_t* pos,
                               std::string* out) {
  size_t p = *pos;
  bool is_bytes = false;
  if (p < line.size() && (line[p] == 'b' || line[p] == 'B')) {
    is_bytes = true;
    ++p;
  } else if (p < line.size() && (line[p] == 'u' || line[p] == 'U')) {
    ++p;
  }
  if (p >= line.size() || (line[p] != '\'' && line[p] != '"')) {
    return "expected a quoted Python str or bytes literal (raw, formatted "
           "and other prefixes are not supported)";
  }
  const char quote = line[p++];
  if (p + 1 < line.size() && line[p] == quote && line[p + 1] == quote) {
    return "triple-quoted literals are not supported";
  }
  // Appends a code point (str) or a byte (bytes); false if out of range.
  auto append_value = [&](int64_t v) {
    if (is_bytes) {
      if (v > 0xFF) return false;
      out->push_back(static_cast<char>(v));
      return true;
    }
    return AppendUtf8(static_cast<uint32_t>(v), out);
  };
  while (true) {
    if (p >= line.size()) return "unterminated literal";
    const char c = line[p];
    if (c == quote) {
      ++p;
      break;
    }
    if (c != '\\') {
      if (is_bytes && static_cast<uint8_t>(c) >= 0x80) {
        return "non-ASCII character in a bytes literal";
      }
      out->push_back(c);
      ++p;
      continue;
    }
    if (++p >= line.size()) return "unterminated literal";
    const char e = line[p++];
    int64_t v = SimpleEscape(e);
    switch (e) {
      case 'x':
        v = ParseHex(line, &p, 2);
        if (v < 0) return "\\x needs two hex digits";
        break;
      case 'u':
      case 'U':
      case 'N':
        if (is_bytes) break;  // not an escape in bytes: kept literally
        if (e == 'N') return "\\N{...} escapes are not supported";
        v = ParseHex(line, &p, e == 'u' ? 4 : 8);
        if (v < 0) {
          return absl::StrCat("\\", std::string(1, e), " needs ",
                              e == 'u' ? 4 : 8, " hex digits");
        }
        break;
      default:
        if (e >= '0' && e <= '7') {
          v = e - '0';
          for (int k = 0;
               k < 2 && p < line.size() && line[p] >= '0' && line[p] <= '7';
               ++k) {
            v = v * 8 + (line[p++] - '0');
          }
        }
        break;
    }
    if (v < 0) {
      // Python keeps an unrecognised escape as backslash + character.
      out->push_back('\\');
      --p;
      continue;
    }
    if (!append_value(v)) {
      return absl::StrCat("escape value ", v, " is out of range for a ",
                          is_bytes ? "bytes" : "str", " literal");
    }
  }
  *pos = p;
  return "";
}

// Parses a decimal number of at most 9 digits spanning all of `s`.
int64_t ParseDecimal(absl::string_view s) {
  if (s.empty() || s.size() > 9) return -1;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// Parses `<id> <literal> <length>`.
absl::Status ParseLine(absl::string_view line, size_t line_no, int32_t* id,
                       std::string* bytes) {
  const size_t space = line.find(' ');
  if (space == absl::string_view::npos) {
    return VocabError(line_no, "expected `<id> <literal> <byte length>`");
  }
  const int64_t parsed_id = ParseDecimal(line.substr(0, space));
  if (parsed_id < 0) return VocabError(line_no, "bad token id");
  if (parsed_id == 0 || parsed_id >= kWorldVocabSize) {
    return VocabError(line_no,
                      absl::StrCat("token id ", parsed_id, " outside [1, ",
                                   kWorldVocabSize, ")"));
  }
  size_t pos = space + 1;
  bytes->clear();
  const std::string err = ParsePythonLiteral(line, &pos, bytes);
  if (!err.empty()) return VocabError(line_no, err);
  if (pos >= line.size() || line[pos] != ' ') {
    return VocabError(line_no, "expected ` <byte length>` after the literal");
  }
  const int64_t len = ParseDecimal(line.substr(pos + 1));
  if (len < 0) return VocabError(line_no, "bad byte length");
  if (static_cast<size_t>(len) != bytes->size()) {
    return VocabError(line_no, absl::StrCat("literal is ", bytes->size(),
                                            " bytes but the line says ", len));
  }
  if (bytes->empty()) return VocabError(line_no, "empty token");
  *id = static_cast<int32_t>(parsed_id);
  return absl::OkStatus();
}

class WorldTokenizer final : public Tokenizer {
 public:
  // `by_id[i]` is the token's bytes (empty: unassigned), `line_of[i]` the
  // line that defined it. Builds the trie; fails on duplicate bytes or a
  // missing single-byte token.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(
      const std::vector<std::string>& by_id,
      const std::vector<size_t>& line_of);

  absl::string_view name() const override { return "rwkv_world"; }
  std::string fingerprint() const override { return fingerprint_; }
  int vocab_size() const override { return kWorldVocabSize; }
  size_t max_token_bytes() const override { return max_token_bytes_; }
  std::optional<int32_t> end_of_text_id() const override { return 0; }

  absl::string_view TokenBytes(int32_t id) const override {
    if (id < 0 || id >= kWorldVocabSize) return {};
    return absl::string_view(blob_).substr(offset_[id],
                                           offset_[id + 1] - offset_[id]);
  }

  std::vector<int32_t> Encode(absl::string_view bytes) const override {
    std::vector<int32_t> ids;
    ids.reserve(bytes.size() / 3 + 1);
    size_t pos = 0;
    while (pos < bytes.size()) {
      const Match m = LongestMatch(bytes, pos);
      ids.push_back(m.id);
      pos += m.length;
    }
    return ids;
  }

  StreamEncodeResult EncodeStream(absl::string_view tail,
                                  absl::string_view chunk,
                                  bool flush) const override {
    std::string joined;
    absl::string_view bytes = chunk;
    if (!tail.empty()) {
      joined.reserve(tail.size() + chunk.size());
      joined.append(tail.data(), tail.size());
      joined.append(chunk.data(), chunk.size());
      bytes = joined;
    }
    StreamEncodeResult result;
    result.tokens.reserve(bytes.size() / 3 + 1);
    size_t pos = 0;
    while (pos < bytes.size()) {
      const Match m = LongestMatch(bytes, pos);
      // The walk reached the end of the bytes inside the trie: a longer
      // token may still match once more bytes arrive.
      if (m.open && !flush) break;
      result.tokens.push_back(m.id);
      pos += m.length;
    }
    result.tail.assign(bytes.data() + pos, bytes.size() - pos);
    return result;
  }

 private:
  struct Match {
    size_t length;  // bytes of the longest token starting at pos, >= 1
    int32_t id;
    bool open;  // the walk ran out of bytes at a node that has children
  };

  // Child of `node` labelled `byte`, or -1.
  int32_t Child(int32_t node, uint8_t byte) const {
    const uint32_t begin = child_begin_[node];
    const uint32_t count = child_count_[node];
    const uint8_t* labels = label_.data() + begin;
    if (count <= 8) {
      for (uint32_t k = 0; k < count; ++k) {
        if (labels[k] == byte) return static_cast<int32_t>(begin + k);
        if (labels[k] > byte) return -1;
      }
      return -1;
    }
    const uint8_t* it = std::lower_bound(labels, labels + count, byte);
    if (it == labels + count || *it != byte) return -1;
    return static_cast<int32_t>(begin + (it - labels));
  }

  Match LongestMatch(absl::string_view bytes, size_t pos) const {
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    const size_t end = bytes.size();
    int32_t node = 1 + data[pos];  // level 1: every byte is a token
    Match m{1, token_[node], false};
    size_t i = pos + 1;
    if (i < end) {  // level 2 from the dense table
      node = level2_[(data[pos] << 8) | data[i]];
      if (node < 0) return m;
      ++i;
      if (token_[node] >= 0) m = {i - pos, token_[node], false};
    }
    while (true) {
      if (i == end) {
        m.open = child_count_[node] > 0;
        return m;
      }
      node = Child(node, data[i]);
      if (node < 0) return m;
      ++i;
      if (token_[node] >= 0) m = {i - pos, token_[node], false};
    }
  }

  std::string blob_;              // all token bytes, by id
  std::vector<uint32_t> offset_;  // id -> [offset_[id], offset_[id + 1])
  size_t max_token_bytes_ = 0;
  std::string fingerprint_;
  // Trie nodes, breadth-first; node 0 is the root.
  std::vector<int32_t> token_;         // token id ending here, or -1
  std::vector<uint32_t> child_begin_;  // index of the first child
  std::vector<uint16_t> child_count_;  // number of children (<= 256)
  std::vector<uint8_t> label_;         // byte on the edge into this node
  std::vector<int32_t> level2_;        // (b0 << 8 | b1) -> node, or -1
};

absl::StatusOr<std::unique_ptr<Tokenizer>> WorldTokenizer::Build(
    const std::vector<std::string>& by_id, const std::vector<size_t>& line_of) {
  // A pointer-free build trie with unsorted children, flattened below.
  struct BuildNode {
    int32_t token = -1;
    std::vector<std::pair<uint8_t, int32_t>> children;
  };
  std::vector<BuildNode> nodes(1);
  std::vector<int32_t> root_child(256, -1);
  auto tok = std::unique_ptr<WorldTokenizer>(new WorldTokenizer());
  tok->offset_.assign(kWorldVocabSize + 1, 0);
  uint64_t digest = 0xcbf29ce484222325ULL;  // FNV-1a 64
  auto mix = [&digest](const void* p, size_t n) {
    for (size_t k = 0; k < n; ++k) {
      digest ^= static_cast<const uint8_t*>(p)[k];
      digest *= 0x100000001b3ULL;
    }
  };
  for (int32_t id = 0; id < kWorldVocabSize; ++id) {
    const std::string& b = by_id[id];
    tok->offset_[id] = static_cast<uint32_t>(tok->blob_.size());
    if (b.empty()) continue;
    tok->blob_.append(b);
    tok->max_token_bytes_ = std::max(tok->max_token_bytes_, b.size());
    const uint8_t id_le[4] = {
        static_cast<uint8_t>(id), static_cast<uint8_t>(id >> 8),
        static_cast<uint8_t>(id >> 16), static_cast<uint8_t>(id >> 24)};
    const uint32_t n = static_cast<uint32_t>(b.size());
    const uint8_t len_le[4] = {
        static_cast<uint8_t>(n), static_cast<uint8_t>(n >> 8),
        static_cast<uint8_t>(n >> 16), static_cast<uint8_t>(n >> 24)};
    mix(id_le, 4);
    mix(len_le, 4);
    mix(b.data(), b.size());

    int32_t node = 0;
    for (size_t k = 0; k < b.size(); ++k) {
      const auto byte = static_cast<uint8_t>(b[k]);
      int32_t next = -1;
      if (node == 0) {
        next = root_child[byte];
      } else {
        for (const auto& [label, child] : nodes[node].children) {
          if (label == byte) next = child;
        }
      }
      if (next < 0) {
        next = static_cast<int32_t>(nodes.size());
        nodes.emplace_back();
        nodes[node].children.emplace_back(byte, next);
        if (node == 0) root_child[byte] = next;
      }
      node = next;
    }
    if (nodes[node].token >= 0) {
      return VocabError(line_of[id], absl::StrCat("token ", id,
                                                  " has the same bytes as "
                                                  "token ",
                                                  nodes[node].token));
    }
    nodes[node].token = id;
  }
  tok->offset_[kWorldVocabSize] = static_cast<uint32_t>(tok->blob_.size());
  for (int b = 0; b < 256; ++b) {
    if (root_child[b] < 0 || nodes[root_child[b]].token < 0) {
      return InvalidArgumentError(
          Reason::kInvalidModelFile,
          absl::StrCat("World vocab has no single-byte token for byte 0x",
                       absl::Hex(b, absl::kZeroPad2)));
    }
  }
  tok->fingerprint_ = absl::StrCat("rwkv_world:", absl::Hex(digest));

  // Flatten breadth-first: new index of each build node, children sorted.
  const size_t n = nodes.size();
  tok->token_.resize(n);
  tok->child_begin_.resize(n);
  tok->child_count_.resize(n);
  tok->label_.resize(n);
  std::vector<int32_t> order = {0};  // build index of each new index
  order.reserve(n);
  tok->label_[0] = 0;
  for (size_t idx = 0; idx < order.size(); ++idx) {
    BuildNode& bn = nodes[order[idx]];
    std::sort(bn.children.begin(), bn.children.end());
    tok->token_[idx] = bn.token;
    tok->child_begin_[idx] = static_cast<uint32_t>(order.size());
    tok->child_count_[idx] = static_cast<uint16_t>(bn.children.size());
    for (const auto& [label, child] : bn.children) {
      tok->label_[order.size()] = label;
      order.push_back(child);
    }
  }
  tok->level2_.assign(1 << 16, -1);
  for (int b0 = 0; b0 < 256; ++b0) {
    const int32_t n1 = 1 + b0;  // all 256 bytes exist, sorted
    for (uint32_t k = 0; k < tok->child_count_[n1]; ++k) {
      const uint32_t n2 = tok->child_begin_[n1] + k;
      tok->level2_[(b0 << 8) | tok->label_[n2]] = static_cast<int32_t>(n2);
    }
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseWorldTokenizer(
    absl::string_view contents) {
  std::vector<std::string> by_id(kWorldVocabSize);
  std::vector<size_t> line_of(kWorldVocabSize, 0);
  size_t line_no = 0;
  size_t start = 0;
  std::string bytes;
  while (start < contents.size()) {
    size_t end = contents.find('\n', start);
    if (end == absl::string_view::npos) end = contents.size();
    absl::string_view line = contents.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if (!IsValidUtf8(line)) return VocabError(line_no, "not valid UTF-8");
    int32_t id = 0;
    SS_RETURN_IF_ERROR(ParseLine(line, line_no, &id, &bytes));
    if (!by_id[id].empty()) {
      return VocabError(
          line_no, absl::StrCat("token id ", id, " already defined on line ",
                                line_of[id]));
    }
    by_id[id] = bytes;
    line_of[id] = line_no;
  }
  return WorldTokenizer::Build(by_id, line_of);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadWorldTokenizer(
    const std::string& vocab_path) {
  std::ifstream in(vocab_path, std::ios::binary);
  if (!in) {
    return MakeError(absl::StatusCode::kNotFound, Reason::kInvalidModelFile,
                     absl::StrCat("cannot open World vocab ", vocab_path));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    return MakeError(absl::StatusCode::kNotFound, Reason::kInvalidModelFile,
                     absl::StrCat("cannot read World vocab ", vocab_path));
  }
  return ParseWorldTokenizer(contents.str());
}

}  // namespace statestream::engine
