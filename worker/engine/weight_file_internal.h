// SPDX-License-Identifier: Apache-2.0
// Internals of weight_file.h, shared by its readers and their tests. Not part
// of the engine's API: nothing outside worker/engine/ includes this.
//
// Every function here takes an untrusted byte image and returns either a
// fully validated result or an INVALID_ARGUMENT / kInvalidModelFile status.
// None of them throws, CHECKs or reads outside the image.
#ifndef STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_INTERNAL_H_
#define STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_INTERNAL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/weight_file.h"

namespace statestream::engine::internal {

// Tensors by name, sorted; lookups accept absl::string_view.
using TensorMap = std::map<std::string, TensorView, std::less<>>;

// Largest rank accepted from any file.
inline constexpr int kMaxRank = 8;

// INVALID_ARGUMENT with Reason::kInvalidModelFile.
absl::Status BadFile(absl::string_view message);

// `s` for an error message: quoted, C-escaped, cut to 200 bytes (names come
// from untrusted files).
std::string Quoted(absl::string_view s);

// Checked int64 arithmetic: false on overflow (then *out is unspecified).
bool MulOverflows(int64_t a, int64_t b, int64_t* out);
bool AddOverflows(int64_t a, int64_t b, int64_t* out);

// ---- zip (zip_reader.cc) --------------------------------------------------

// One member of a zip archive; `data` views the stored bytes inside the image.
struct ZipEntry {
  std::string name;
  absl::string_view data;
};

// Reads the central directory of `file` (zip or zip64 end record). Every
// entry is checked to be stored (method 0, not encrypted), to have a valid
// local header, and to lie inside `file`. Entry order is the directory's.
absl::StatusOr<std::vector<ZipEntry>> ReadZip(absl::string_view file);

// ---- pickle (pickle_reader.cc) --------------------------------------------

// A tensor as described by data.pkl, not yet checked against its storage.
struct PickledTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::string storage_key;    // entry `<top>/data/<storage_key>`
  int64_t storage_numel = 0;  // elements of `dtype` the storage claims
  int64_t offset = 0;         // in elements
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements; same rank as shape
};

// Limits that keep a hostile pickle from exhausting memory.
struct PickleLimits {
  size_t max_objects = size_t{1} << 21;  // values created by the VM
  size_t max_stack = size_t{1} << 20;    // stack entries
  size_t max_marks = size_t{1} << 16;    // nested MARKs
  size_t max_memo = size_t{1} << 21;     // memo entries
  size_t max_string = size_t{1} << 20;   // bytes in one str/bytes value
  size_t max_items = size_t{1} << 24;    // elements of all containers
};

// Runs `pickle` (a torch state_dict, protocol <= 5 opcodes without buffers)
// on a VM that only knows torch's tensor-rebuilding globals and
// collections.OrderedDict; any other GLOBAL is an error. The top object must
// be a dict (or OrderedDict) of str -> tensor. Checks ranks, signs and
// storage consistency, not storage sizes (ParsePth does that). Names are in
// the pickle's order; a repeated key keeps its last value.
absl::StatusOr<std::vector<PickledTensor>> ParseTorchPickle(
    absl::string_view pickle, const PickleLimits& limits = {});

// ---- formats (pth_reader.cc, safetensors_reader.cc) -----------------------

// A PyTorch zip checkpoint. Views point into `file`.
absl::StatusOr<TensorMap> ParsePth(absl::string_view file);

// Largest safetensors JSON header accepted.
inline constexpr uint64_t kMaxSafetensorsHeader = uint64_t{100} << 20;

// A safetensors file. Views point into `file`.
absl::StatusOr<TensorMap> ParseSafetensors(absl::string_view file);

}  // namespace statestream::engine::internal

#endif  // STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_INTERNAL_H_
