// SPDX-License-Identifier: Apache-2.0
// PyTorch zip checkpoints: finds `<top>/data.pkl`, runs it through the pickle
// VM, and checks every tensor it describes against its storage entry
// `<top>/data/<key>` before making a view of it.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/weight_file_internal.h"

namespace statestream::engine::internal {
namespace {

// Checks `t` against its storage bytes and returns the view. Every element
// addressed, offset + sum((size_i - 1) * stride_i), must lie inside the
// storage, and the tensor may not have more elements than its storage (a
// broadcast view of a small storage would make readers allocate far more
// than the file holds).
absl::StatusOr<TensorView> CheckTensor(const PickledTensor& t,
                                       absl::string_view storage) {
  const std::string where = absl::StrCat("tensor ", Quoted(t.name));
  const int64_t elem = static_cast<int64_t>(DTypeSize(t.dtype));
  int64_t storage_bytes;
  if (MulOverflows(t.storage_numel, elem, &storage_bytes) ||
      static_cast<uint64_t>(storage_bytes) > storage.size()) {
    return BadFile(absl::StrCat(where, ": storage ", Quoted(t.storage_key),
                                " holds ", storage.size(), " bytes, less than ",
                                t.storage_numel, " elements of ",
                                DTypeName(t.dtype)));
  }
  if (t.shape.size() > kMaxRank || t.shape.size() != t.strides.size()) {
    return BadFile(absl::StrCat(where, ": bad rank"));
  }
  int64_t numel = 1;
  int64_t last = t.offset;  // index of the last addressable element
  for (size_t d = 0; d < t.shape.size(); ++d) {
    if (t.shape[d] < 0 || t.strides[d] < 0) {
      return BadFile(absl::StrCat(where, ": negative size or stride"));
    }
    int64_t span;
    if (MulOverflows(numel, t.shape[d], &numel) ||
        (t.shape[d] > 0 && (MulOverflows(t.shape[d] - 1, t.strides[d], &span) ||
                            AddOverflows(last, span, &last)))) {
      return BadFile(absl::StrCat(where, ": size overflows"));
    }
  }
  if (t.offset < 0 || t.offset > t.storage_numel) {
    return BadFile(absl::StrCat(where, ": storage offset ", t.offset,
                                " outside its storage of ", t.storage_numel,
                                " elements"));
  }
  if (numel > t.storage_numel) {
    return BadFile(absl::StrCat(where, ": ", numel,
                                " elements but its storage holds only ",
                                t.storage_numel));
  }
  if (numel > 0 && last >= t.storage_numel) {
    return BadFile(absl::StrCat(where, ": offset ", t.offset, " and strides ",
                                "reach element ", last, " of a storage of ",
                                t.storage_numel));
  }
  TensorView v;
  v.dtype = t.dtype;
  v.shape = t.shape;
  v.strides = t.strides;
  v.data = reinterpret_cast<const std::byte*>(storage.data()) +
           static_cast<size_t>(t.offset) * static_cast<size_t>(elem);
  return v;
}

}  // namespace

absl::StatusOr<TensorMap> ParsePth(absl::string_view file) {
  SS_ASSIGN_OR_RETURN(std::vector<ZipEntry> entries, ReadZip(file));

  const ZipEntry* pkl = nullptr;
  for (const ZipEntry& e : entries) {
    if (e.name == "data.pkl" || absl::EndsWith(e.name, "/data.pkl")) {
      if (pkl != nullptr) {
        return BadFile("pth: more than one data.pkl in the archive");
      }
      pkl = &e;
    }
  }
  if (pkl == nullptr) return BadFile("pth: no data.pkl in the archive");
  const std::string top =
      pkl->name.substr(0, pkl->name.size() - std::string("data.pkl").size());

  absl::flat_hash_map<absl::string_view, absl::string_view> storages;
  const std::string data_prefix = top + "data/";
  for (const ZipEntry& e : entries) {
    if (e.name == top + "byteorder" && e.data != "little") {
      return BadFile("pth: only little-endian checkpoints are supported");
    }
    if (!absl::StartsWith(e.name, data_prefix)) continue;
    absl::string_view key =
        absl::string_view(e.name).substr(data_prefix.size());
    if (!storages.emplace(key, e.data).second) {
      return BadFile(absl::StrCat("pth: storage ", Quoted(key),
                                  " appears twice in the archive"));
    }
  }

  SS_ASSIGN_OR_RETURN(std::vector<PickledTensor> tensors,
                      ParseTorchPickle(pkl->data));
  TensorMap out;
  for (const PickledTensor& t : tensors) {
    auto it = storages.find(t.storage_key);
    if (it == storages.end()) {
      return BadFile(absl::StrCat("tensor ", Quoted(t.name), ": storage entry ",
                                  Quoted(data_prefix + t.storage_key),
                                  " is missing"));
    }
    SS_ASSIGN_OR_RETURN(TensorView v, CheckTensor(t, it->second));
    out[t.name] = std::move(v);
  }
  return out;
}

}  // namespace statestream::engine::internal
