// SPDX-License-Identifier: Apache-2.0
// Read-only access to the tensors of a checkpoint file: PyTorch `.pth` (a zip
// holding a pickled state_dict and raw storages) or `.safetensors`. The file
// is memory-mapped; tensors are views into the mapping, so opening a file
// costs no copy of the weights. Nothing here trusts the file: every offset,
// shape and stride is validated against the mapping, and a bad file is an
// absl::Status with Reason::kInvalidModelFile, never a crash.
#ifndef STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_H_
#define STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace statestream::engine {

enum class DType { kF32, kBF16, kF16 };

absl::string_view DTypeName(DType dtype);  // "F32", "BF16", "F16"
size_t DTypeSize(DType dtype);

// A strided view of one tensor inside a mapped file. `data` points at element
// [0,...,0] (storage offset already applied). Shapes and strides are in
// elements (rank <= 8, all non-negative); the loader guarantees every
// addressable element lies inside the mapping, so readers need no further
// bounds checks. `data` is only as aligned as the file makes it (torch and
// safetensors writers align to 64/8 bytes, but nothing guarantees it): read
// through memcpy or ReadAsF32/ReadAsBF16, not by casting to float*, unless
// you check the alignment first.
struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  const std::byte* data = nullptr;

  int64_t numel() const;
  bool contiguous() const;  // row-major with no gaps
};

// Copies `t` (any dtype, any strides, any alignment of `data`) into `out`,
// row-major, converted to fp32 (exactly: bf16 and f16 widen without loss).
// `out` must hold t.numel() floats. For a view made by WeightFile, numel()
// never exceeds the elements its storage holds, so it is bounded by the
// file's size.
void ReadAsF32(const TensorView& t, float* out);
// Same, rounding to bf16 (round-to-nearest-even) where the source is wider.
void ReadAsBF16(const TensorView& t, uint16_t* out);

// An opened checkpoint. Immutable and thread-safe once opened; views stay
// valid for the lifetime of the WeightFile.
class WeightFile {
 public:
  virtual ~WeightFile() = default;
  WeightFile(const WeightFile&) = delete;
  WeightFile& operator=(const WeightFile&) = delete;

  // Opens `path`, choosing the format from its content (zip magic → .pth,
  // otherwise safetensors). Errors: NOT_FOUND when the file cannot be opened;
  // INVALID_ARGUMENT / kInvalidModelFile when it is not a valid checkpoint.
  static absl::StatusOr<std::unique_ptr<WeightFile>> Open(
      const std::string& path);
  // Parses an in-memory image (used by the fuzz targets and tests). `bytes`
  // must outlive the returned object.
  static absl::StatusOr<std::unique_ptr<WeightFile>> FromBuffer(
      absl::string_view bytes);

  // Tensor names in sorted order.
  virtual std::vector<std::string> Names() const = 0;
  // The tensor called `name`, or nullptr.
  virtual const TensorView* Find(absl::string_view name) const = 0;
  // "pth" or "safetensors".
  virtual absl::string_view format() const = 0;

 protected:
  WeightFile() = default;
};

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_H_
