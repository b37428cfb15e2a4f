// SPDX-License-Identifier: Apache-2.0
// WeightFile: mapping the file, choosing the reader, and the dtype
// conversions of ReadAsF32/ReadAsBF16.
#include "worker/engine/weight_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <type_traits>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/float16.h"
#include "worker/engine/weight_file_internal.h"

namespace statestream::engine {
namespace internal {

absl::Status BadFile(absl::string_view message) {
  return MakeError(absl::StatusCode::kInvalidArgument,
                   Reason::kInvalidModelFile, message);
}

std::string Quoted(absl::string_view s) {
  constexpr size_t kMax = 200;
  std::string out = absl::StrCat("'", absl::CHexEscape(s.substr(0, kMax)));
  if (s.size() > kMax) out += "...";
  return out + "'";
}

bool MulOverflows(int64_t a, int64_t b, int64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
bool AddOverflows(int64_t a, int64_t b, int64_t* out) {
  return __builtin_add_overflow(a, b, out);
}

}  // namespace internal

namespace {

// A read-only private mapping of a whole file, unmapped on destruction.
class Mapping {
 public:
  Mapping(void* addr, size_t size) : addr_(addr), size_(size) {}
  ~Mapping() { munmap(addr_, size_); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  absl::string_view bytes() const {
    return absl::string_view(static_cast<const char*>(addr_), size_);
  }

 private:
  void* addr_;
  size_t size_;
};

class TensorMapFile : public WeightFile {
 public:
  TensorMapFile(std::unique_ptr<Mapping> mapping, absl::string_view format,
                internal::TensorMap tensors)
      : mapping_(std::move(mapping)),
        format_(format),
        tensors_(std::move(tensors)) {}

  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    names.reserve(tensors_.size());
    for (const auto& [name, view] : tensors_) names.push_back(name);
    return names;
  }
  const TensorView* Find(absl::string_view name) const override {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  absl::string_view format() const override { return format_; }

 private:
  std::unique_ptr<Mapping> mapping_;  // null for FromBuffer
  absl::string_view format_;          // a literal
  internal::TensorMap tensors_;       // views into the mapping
};

// The first bytes of a pre-1.6 torch.save file: PROTO 2, then the magic
// number 0x1950a86a20f9469cfc6c as a LONG1.
constexpr absl::string_view kLegacyTorchMagic(
    "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14);

absl::StatusOr<std::unique_ptr<WeightFile>> Parse(
    absl::string_view bytes, std::unique_ptr<Mapping> mapping) {
  if (bytes.empty()) return internal::BadFile("empty file");
  if (absl::StartsWith(bytes, kLegacyTorchMagic)) {
    return internal::BadFile(
        "legacy (pre-1.6, non-zip) torch.save format is not supported; "
        "re-save it with a newer torch");
  }
  const bool zip = absl::StartsWith(bytes, "PK\x03\x04") ||
                   absl::StartsWith(bytes, "PK\x05\x06") ||
                   absl::StartsWith(bytes, "PK\x06\x06");
  auto tensors =
      zip ? internal::ParsePth(bytes) : internal::ParseSafetensors(bytes);
  if (!tensors.ok()) return tensors.status();
  // Each view is bounded by its storage, but views may share one (a .pth
  // storage, or safetensors ranges that overlap): a small file could name
  // terabytes of tensors, which loading copies. Tied weights share at most
  // about a copy of the file; more is a hostile or broken file.
  int64_t total = 0;
  for (const auto& [name, view] : *tensors) {
    int64_t bytes_of = 0;
    if (internal::MulOverflows(view.numel(),
                               static_cast<int64_t>(DTypeSize(view.dtype)),
                               &bytes_of) ||
        internal::AddOverflows(total, bytes_of, &total) ||
        total > 2 * static_cast<int64_t>(bytes.size())) {
      return internal::BadFile(
          absl::StrCat("the tensors name more than twice the file's ",
                       bytes.size(), " bytes (views sharing storage)"));
    }
  }
  return std::make_unique<TensorMapFile>(
      std::move(mapping), zip ? "pth" : "safetensors", std::move(*tensors));
}

// ---- conversions ------------------------------------------------------------

uint16_t LoadU16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

struct F32Src {
  static constexpr size_t kSize = 4;
  static float ToF32(const std::byte* p) {
    float v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static uint16_t ToBF16(const std::byte* p) { return F32ToBF16(ToF32(p)); }
};
struct BF16Src {
  static constexpr size_t kSize = 2;
  static float ToF32(const std::byte* p) { return BF16ToF32(LoadU16(p)); }
  static uint16_t ToBF16(const std::byte* p) { return LoadU16(p); }
};
struct F16Src {
  static constexpr size_t kSize = 2;
  static float ToF32(const std::byte* p) { return F16ToF32(LoadU16(p)); }
  static uint16_t ToBF16(const std::byte* p) { return F32ToBF16(ToF32(p)); }
};

template <typename Src, typename Dst>
void CopyRow(const std::byte* src, int64_t n, int64_t stride, Dst* out) {
  const size_t step = static_cast<size_t>(stride) * Src::kSize;
  for (int64_t i = 0; i < n; ++i, src += step) {
    if constexpr (sizeof(Dst) == 4) {
      out[i] = Src::ToF32(src);
    } else {
      out[i] = Src::ToBF16(src);
    }
  }
}

// Copies `t` row by row: the innermost dimension is one strided run, the
// outer ones advance like an odometer.
template <typename Src, typename Dst>
void CopyTensor(const TensorView& t, Dst* out) {
  const int64_t numel = t.numel();
  if (numel == 0) return;
  if (t.contiguous()) {
    if (sizeof(Dst) == Src::kSize &&
        (std::is_same_v<Src, F32Src> || std::is_same_v<Src, BF16Src>)) {
      std::memcpy(out, t.data, static_cast<size_t>(numel) * sizeof(Dst));
    } else {
      CopyRow<Src, Dst>(t.data, numel, 1, out);
    }
    return;
  }
  const size_t rank = t.shape.size();  // >= 1: a scalar is contiguous
  const int64_t inner = t.shape[rank - 1];
  const int64_t rows = numel / inner;
  int64_t index[internal::kMaxRank] = {};
  for (int64_t row = 0; row < rows; ++row) {
    int64_t offset = 0;
    for (size_t d = 0; d + 1 < rank; ++d) offset += index[d] * t.strides[d];
    CopyRow<Src, Dst>(t.data + static_cast<size_t>(offset) * Src::kSize, inner,
                      t.strides[rank - 1], out + row * inner);
    for (size_t d = rank - 1; d-- > 0;) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
}

template <typename Dst>
void Copy(const TensorView& t, Dst* out) {
  switch (t.dtype) {
    case DType::kF32:
      return CopyTensor<F32Src>(t, out);
    case DType::kBF16:
      return CopyTensor<BF16Src>(t, out);
    case DType::kF16:
      return CopyTensor<F16Src>(t, out);
  }
}

}  // namespace

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
  }
  return "?";
}

size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool TensorView::contiguous() const {
  int64_t expected = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 0) return true;
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

void ReadAsF32(const TensorView& t, float* out) { Copy(t, out); }
void ReadAsBF16(const TensorView& t, uint16_t* out) { Copy(t, out); }

absl::StatusOr<std::unique_ptr<WeightFile>> WeightFile::FromBuffer(
    absl::string_view bytes) {
  return Parse(bytes, nullptr);
}

absl::StatusOr<std::unique_ptr<WeightFile>> WeightFile::Open(
    const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
  // refused as not a regular file).
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return MakeError(absl::StatusCode::kNotFound, Reason::kInvalidModelFile,
                     absl::StrCat(path, ": cannot open: ", strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return internal::BadFile(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  std::unique_ptr<Mapping> mapping;
  if (size > 0) {
    void* addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      int err = errno;
      close(fd);
      if (err == ENOMEM) {
        return absl::ResourceExhaustedError(absl::StrCat(
            path, ": cannot map ", size, " bytes: ", strerror(err)));
      }
      return internal::BadFile(
          absl::StrCat(path, ": mmap failed: ", strerror(err)));
    }
    mapping = std::make_unique<Mapping>(addr, size);
  }
  close(fd);
  absl::string_view bytes = mapping ? mapping->bytes() : absl::string_view();
  auto file = Parse(bytes, std::move(mapping));
  if (!file.ok()) {
    return MakeError(file.status().code(), Reason::kInvalidModelFile,
                     absl::StrCat(path, ": ", file.status().message()));
  }
  return file;
}

}  // namespace statestream::engine
