// SPDX-License-Identifier: Apache-2.0
// safetensors: u64 LE header length N, N bytes of JSON, then the data buffer.
// The JSON is parsed with nlohmann::json's non-throwing parser and every
// field's type is checked before it is read. Before that, a scan of the
// text bounds what the parsed tree can cost (CheckHeaderShape).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/engine/weight_file_internal.h"

namespace statestream::engine::internal {
namespace {

using Json = nlohmann::json;

// Reads a JSON integer in [0, 2^62] (larger values cannot describe a file).
bool GetCount(const Json& j, int64_t* out) {
  if (!j.is_number_unsigned()) return false;
  uint64_t v = j.get<uint64_t>();
  if (v > (uint64_t{1} << 62)) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

absl::StatusOr<DType> ParseDType(const Json& j, const std::string& where) {
  if (!j.is_string()) return BadFile(absl::StrCat(where, ": dtype missing"));
  const std::string& s = j.get_ref<const std::string&>();
  if (s == "F32") return DType::kF32;
  if (s == "BF16") return DType::kBF16;
  if (s == "F16") return DType::kF16;
  return BadFile(absl::StrCat(where, ": unsupported dtype ", Quoted(s),
                              " (supported: F32, BF16, F16)"));
}

absl::StatusOr<TensorView> ParseTensor(const std::string& name,
                                       const Json& info,
                                       absl::string_view data) {
  const std::string where = absl::StrCat("safetensors: tensor ", Quoted(name));
  if (!info.is_object()) return BadFile(absl::StrCat(where, ": not an object"));
  auto dtype_it = info.find("dtype");
  auto shape_it = info.find("shape");
  auto offsets_it = info.find("data_offsets");
  if (dtype_it == info.end() || shape_it == info.end() ||
      offsets_it == info.end()) {
    return BadFile(
        absl::StrCat(where, ": needs dtype, shape and data_offsets"));
  }
  TensorView v;
  auto dtype = ParseDType(*dtype_it, where);
  if (!dtype.ok()) return dtype.status();
  v.dtype = *dtype;

  if (!shape_it->is_array() || shape_it->size() > kMaxRank) {
    return BadFile(
        absl::StrCat(where, ": shape is not an array of rank <= ", kMaxRank));
  }
  int64_t numel = 1;
  for (const Json& d : *shape_it) {
    int64_t n;
    if (!GetCount(d, &n) || MulOverflows(numel, n, &numel)) {
      return BadFile(absl::StrCat(where, ": bad shape"));
    }
    v.shape.push_back(n);
  }
  // Row-major strides, as torch computes them (a size-0 dim counts as 1).
  v.strides.assign(v.shape.size(), 1);
  for (size_t d = v.shape.size(); d-- > 1;) {
    if (MulOverflows(v.strides[d], std::max<int64_t>(v.shape[d], 1),
                     &v.strides[d - 1])) {
      return BadFile(absl::StrCat(where, ": bad shape"));
    }
  }

  int64_t begin, end, bytes;
  if (!offsets_it->is_array() || offsets_it->size() != 2 ||
      !GetCount((*offsets_it)[0], &begin) ||
      !GetCount((*offsets_it)[1], &end) || begin > end) {
    return BadFile(absl::StrCat(where, ": bad data_offsets"));
  }
  if (MulOverflows(numel, static_cast<int64_t>(DTypeSize(v.dtype)), &bytes) ||
      end - begin != bytes) {
    return BadFile(absl::StrCat(where, ": data_offsets span ", end - begin,
                                " bytes, shape and dtype need ", bytes));
  }
  if (static_cast<uint64_t>(end) > data.size()) {
    return BadFile(absl::StrCat(where, ": data_offsets end ", end,
                                " past the data buffer of ", data.size(),
                                " bytes"));
  }
  v.data = reinterpret_cast<const std::byte*>(data.data()) + begin;
  return v;
}

// Limits on a header's shape that every real file is far inside.
constexpr int kMaxHeaderDepth = 3;     // {"t": {"shape": [..]}}
constexpr int kMaxArrayElements = 64;  // shape (rank) and data_offsets
// Object members plus array elements: ~8 a tensor (its object, three
// members, a shape and two offsets), so 2^20 is ~130,000 tensors.
constexpr size_t kMaxHeaderValues = 1 << 20;

// The parsed tree costs ~50-80 bytes a value: 100 MiB of `[` or of `{},`
// would take gigabytes before any field is looked at. A real header is
// objects three deep whose arrays are a shape and two offsets, so a
// deeper nesting, a longer array or more values is refused first, from
// the text alone (outside strings): the tree stays under ~100 MB.
absl::Status CheckHeaderShape(absl::string_view header) {
  char open[kMaxHeaderDepth];
  int elements[kMaxHeaderDepth];
  int depth = 0;
  size_t values = 0;
  auto too_many = [] {
    return BadFile(absl::StrCat("safetensors: header has more than ",
                                kMaxHeaderValues, " values"));
  };
  bool in_string = false, escaped = false;
  for (char c : header) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '{':
      case '[':
        if (depth == kMaxHeaderDepth) {
          return BadFile(absl::StrCat("safetensors: header nested deeper than ",
                                      kMaxHeaderDepth, " levels"));
        }
        open[depth] = c;
        elements[depth] = 1;
        ++depth;
        // An array's first element (a `[]` counts one: a bound suffices).
        if (c == '[' && ++values > kMaxHeaderValues) return too_many();
        break;
      case '}':
      case ']':
        if (depth > 0) --depth;  // a mismatch is the parser's to report
        break;
      case ',':
        if (depth > 0 && open[depth - 1] == '[') {
          if (++elements[depth - 1] > kMaxArrayElements) {
            return BadFile(
                absl::StrCat("safetensors: header array longer than ",
                             kMaxArrayElements, " elements"));
          }
          if (++values > kMaxHeaderValues) return too_many();
        }
        break;
      case ':':
        if (++values > kMaxHeaderValues) return too_many();
        break;
      default:
        break;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorMap> ParseHeader(absl::string_view header,
                                      absl::string_view data) {
  if (absl::Status shape = CheckHeaderShape(header); !shape.ok()) {
    return shape;
  }
  // A key twice in one object (two entries for one tensor) is refused:
  // the parser would keep the last, another reader the first.
  std::vector<absl::flat_hash_set<std::string>> keys;
  std::string duplicate;
  auto note_keys = [&](int /*depth*/, Json::parse_event_t event, Json& j) {
    if (event == Json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == Json::parse_event_t::key && !keys.empty() &&
               !keys.back().insert(j.get<std::string>()).second &&
               duplicate.empty()) {
      duplicate = j.get<std::string>();
    }
    return true;
  };
  Json root = Json::parse(header.begin(), header.end(), note_keys,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) return BadFile("safetensors: header is not JSON");
  if (!duplicate.empty()) {
    return BadFile(absl::StrCat("safetensors: key '", duplicate,
                                "' appears twice in one object"));
  }
  if (!root.is_object()) {
    return BadFile("safetensors: header is not a JSON object");
  }
  TensorMap out;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    auto v = ParseTensor(it.key(), it.value(), data);
    if (!v.ok()) return v.status();
    out[it.key()] = std::move(*v);
  }
  return out;
}

}  // namespace

absl::StatusOr<TensorMap> ParseSafetensors(absl::string_view file) {
  if (file.size() < 8) return BadFile("safetensors: file shorter than 8 bytes");
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) {
    n = (n << 8) | static_cast<uint8_t>(file[static_cast<size_t>(k)]);
  }
  if (n > file.size() - 8) {
    return BadFile(absl::StrCat("safetensors: header length ", n,
                                " exceeds the file (", file.size(), " bytes)"));
  }
  if (n > kMaxSafetensorsHeader) {
    return BadFile(absl::StrCat("safetensors: header length ", n,
                                " exceeds the limit of ",
                                kMaxSafetensorsHeader));
  }
  absl::string_view header = file.substr(8, static_cast<size_t>(n));
  absl::string_view data = file.substr(8 + static_cast<size_t>(n));
  // The parser is non-throwing and every access is type-checked; this only
  // keeps an allocation failure inside the JSON library from escaping.
  try {
    return ParseHeader(header, data);
  } catch (const std::exception& e) {
    return BadFile(absl::StrCat("safetensors: header rejected: ", e.what()));
  }
}

}  // namespace statestream::engine::internal
