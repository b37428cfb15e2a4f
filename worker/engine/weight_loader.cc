// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/weight_loader.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "worker/engine/float16.h"
#include "worker/engine/kernels.h"

namespace statestream::engine {
namespace {

absl::Status BadFile(absl::string_view msg) {
  return InvalidArgumentError(Reason::kInvalidModelFile, msg);
}

// Tells the kernel that pages of the file mapping just copied out are not
// needed again, so a loaded model does not keep both copies resident.
// MADV_PAGEOUT keeps the contents (file pages are re-read, anonymous ones
// kept) — only a hint, never a change of the data.
void ReleaseRange(const void* data, size_t bytes) {
#ifdef MADV_PAGEOUT
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t b = (begin + page - 1) & ~(page - 1);
  const uintptr_t e = (begin + bytes) & ~(page - 1);
  if (b < e) madvise(reinterpret_cast<void*>(b), e - b, MADV_PAGEOUT);
#else
  (void)data;
  (void)bytes;
#endif
}

void ReleaseSource(const TensorView& t) {
  if (t.contiguous()) {
    ReleaseRange(t.data, static_cast<size_t>(t.numel()) * DTypeSize(t.dtype));
  }
}

// Calls fn(first_row, slice) for slices of ~8 MB of the 2-D tensor `t`'s
// rows, then drops the slice's file pages, so the file and the copy are
// never both resident.
template <typename F>
void ForSlicesReleasing(const TensorView& t, F fn) {
  const int64_t rows = t.shape[0];
  const size_t row_bytes =
      static_cast<size_t>(t.strides[0]) * DTypeSize(t.dtype);
  const int64_t slice =
      std::max<int64_t>(1, (int64_t{8} << 20) / std::max<size_t>(row_bytes, 1));
  for (int64_t r = 0; r < rows; r += slice) {
    TensorView part = t;
    part.shape[0] = std::min(slice, rows - r);
    part.data = t.data + static_cast<size_t>(r) * row_bytes;
    fn(r, part);
    if (t.contiguous()) {
      // Dense rows: shape[1] values each. (strides[0] of a single row is
      // never checked against the file: it spans nothing.)
      ReleaseRange(part.data, static_cast<size_t>(part.shape[0]) *
                                  static_cast<size_t>(t.shape[1]) *
                                  DTypeSize(t.dtype));
    }
  }
}

// Row r of `m` (m.cols values) into its storage `dst`, in m's layout.
template <typename T>
void PutRow(const Matrix& m, const T* row, int r, T* dst) {
  if (m.panels) {
    PackPanelRow(row, r, m.cols, dst);
  } else {
    std::copy_n(row, m.cols, dst + static_cast<int64_t>(r) * m.cols);
  }
}

// Bits of an exponent of all ones: NaN or an infinity.
int64_t CountNonFinite(const float* v, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, v + i, sizeof(bits));
    bad += (bits & 0x7f800000u) == 0x7f800000u;
  }
  return bad;
}

template <typename T>
void ReadAs(const TensorView& t, T* out) {
  if constexpr (sizeof(T) == 4) {
    ReadAsF32(t, out);
  } else {
    ReadAsBF16(t, out);
  }
}

}  // namespace

template <typename T>
T* WeightLoader::Allocate(int64_t n, Matrix* out) {
  out->arena = arena_;
  return static_cast<T*>(arena_->Allocate(static_cast<size_t>(n) * sizeof(T)));
}

template <typename T>
T* WeightLoader::AllocateMatrix(Matrix* out) {
  out->panels = layout_ == MatrixLayout::kPanels;
  const int64_t n =
      out->panels ? PanelPackedElems(out->rows, out->cols, PanelStep(sizeof(T)))
                  : static_cast<int64_t>(out->rows) * out->cols;
  T* dst = Allocate<T>(n, out);
  if (out->panels) std::memset(dst, 0, sizeof(T) * n);
  matrix_weights_[sizeof(T) == 4 ? 0 : 1] +=
      static_cast<int64_t>(out->rows) * out->cols;
  if constexpr (sizeof(T) == 4) {
    out->f32 = dst;
  } else {
    out->bf16 = dst;
    out->bf16_terms = Bf16TermsFor(bf16_activations_);
  }
  return dst;
}

template <typename T>
void WeightLoader::CopyMatrix(const TensorView& t, Matrix* out) {
  T* dst = AllocateMatrix<T>(out);
  const int cols = out->cols;
  if (!out->panels) {
    ForSlicesReleasing(t, [&](int64_t r, const TensorView& part) {
      T* rows = dst + r * cols;
      ReadAs(part, rows);
      HashValues(rows, part.numel());
    });
    return;
  }
  // A panel's rows at a time through a small buffer (an 8 MB one showed in
  // the peak RSS); the file's pages are still dropped a slice at a time.
  std::vector<T> buf(static_cast<size_t>(kPanelOut) * cols);
  const size_t row_bytes =
      static_cast<size_t>(t.strides[0]) * DTypeSize(t.dtype);
  ForSlicesReleasing(t, [&](int64_t r, const TensorView& part) {
    for (int64_t i = 0; i < part.shape[0]; i += kPanelOut) {
      TensorView rows = part;
      rows.shape[0] = std::min<int64_t>(kPanelOut, part.shape[0] - i);
      rows.data = part.data + static_cast<size_t>(i) * row_bytes;
      ReadAs(rows, buf.data());
      HashValues(buf.data(), rows.numel());
      for (int64_t j = 0; j < rows.shape[0]; ++j) {
        PutRow(*out, buf.data() + j * cols, static_cast<int>(r + i + j), dst);
      }
    }
  });
}

void WeightLoader::Quantize(int rows, int cols,
                            const std::function<void(int, float*)>& read_row,
                            Matrix* out) {
  out->rows = rows;
  out->cols = cols;
  matrix_weights_[2] += static_cast<int64_t>(rows) * cols;
  const int64_t bytes = I8PackedBytes(rows, cols);
  int8_t* q = Allocate<int8_t>(bytes, out);
  std::memset(q, 0, bytes);  // the packed layout's padding
  out->scale.resize(rows);
  out->wsum.resize(rows);
  std::vector<float> row(cols);
  for (int r = 0; r < rows; ++r) {
    read_row(r, row.data());
    // The scale covers the row's finite weights; an all-zero row keeps
    // scale 0 (and zeros), and so does one whose max |w| is below 127 /
    // FLT_MAX (~3.7e-37), where 1 / scale would overflow and every nonzero
    // weight read back as +-max: the rule of the activations
    // (QuantizeRows). Non-finite weights are counted (the load then fails:
    // CheckFinite) and saturate meanwhile: +-Inf to +-127, NaN to 0
    // (casting a NaN to an integer is undefined).
    float amax = 0;
    nonfinite_ += CountNonFinite(row.data(), cols);
    for (float v : row) {
      if (std::isfinite(v)) amax = std::max(amax, std::fabs(v));
    }
    const float inv_max = amax > 0 ? 127.0f / amax : 0.0f;
    const bool tiny = !std::isfinite(inv_max);
    const float scale = tiny ? 0.0f : amax / 127.0f;
    // 127 / max, as the activations' RowScale: 1 / (max / 127) of a
    // subnormal scale could still overflow.
    const float inv = tiny ? 0.0f : inv_max;
    int32_t sum = 0;
    for (int c = 0; c < cols; ++c) {
      float v = std::isinf(row[c]) ? std::copysign(127.0f, row[c])
                                   : std::nearbyint(row[c] * inv);
      if (std::isnan(v)) v = 0;
      const int8_t b = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
      q[I8PackedOffset(r, c, cols)] = b;
      sum += b;
    }
    out->scale[r] = scale;
    out->wsum[r] = sum;
  }
  out->i8 = q;
}

void Matrix::ReadRow(int r, float* out) const {
  if (i8 != nullptr) {
    for (int i = 0; i < cols; ++i) {
      out[i] = i8[I8PackedOffset(r, i, cols)] * scale[r];
    }
    return;
  }
  const int step = PanelStep(f32 != nullptr ? 4 : 2);
  for (int i = 0; i < cols; ++i) {
    const int64_t at = panels ? PanelOffset(r, i, cols, step)
                              : static_cast<int64_t>(r) * cols + i;
    out[i] = f32 != nullptr ? f32[at] : BF16ToF32(bf16[at]);
  }
}

const void* Matrix::data() const {
  if (i8 != nullptr) return i8;
  if (f32 != nullptr) return f32;
  return bf16;
}

size_t Matrix::bytes() const {
  if (i8 != nullptr) return static_cast<size_t>(I8PackedBytes(rows, cols));
  if (f32 == nullptr && bf16 == nullptr) return 0;
  const size_t size = f32 != nullptr ? sizeof(float) : sizeof(uint16_t);
  const int64_t elems = panels ? PanelPackedElems(rows, cols, PanelStep(size))
                               : static_cast<int64_t>(rows) * cols;
  return size * static_cast<size_t>(elems);
}

WeightLoader::WeightLoader(std::shared_ptr<const WeightFile> file,
                           WeightPrecision precision, MatrixLayout layout)
    : file_(std::move(file)),
      precision_(precision),
      layout_(layout),
      hash_(XXH3_createState()) {
  XXH3_128bits_reset(hash_);
}

WeightLoader::~WeightLoader() { XXH3_freeState(hash_); }

void WeightLoader::Describe(ModelInfo* info) const {
  static constexpr const char* kNames[3] = {"fp32", "bf16", "int8"};
  int most = 0;
  for (int i = 1; i < 3; ++i) {
    if (matrix_weights_[i] > matrix_weights_[most]) most = i;
  }
  info->weights_dtype = kNames[most];
  info->bf16_activations = matrix_weights_[1] == 0                ? ""
                           : Bf16TermsFor(bf16_activations_) == 1 ? "round"
                                                                  : "split";
}

bool WeightLoader::Has(absl::string_view name) const {
  return file_->Find(name) != nullptr;
}

absl::StatusOr<std::vector<int64_t>> WeightLoader::Shape(
    absl::string_view name) const {
  const TensorView* t = file_->Find(name);
  if (t == nullptr) return BadFile(absl::StrCat("missing tensor ", name));
  return t->shape;
}

absl::StatusOr<const TensorView*> WeightLoader::Get(
    absl::string_view name, std::vector<int64_t> shape) const {
  const TensorView* t = file_->Find(name);
  if (t == nullptr) return BadFile(absl::StrCat("missing tensor ", name));
  if (!shape.empty() && t->shape != shape) {
    return BadFile(absl::StrCat("tensor ", name, " has shape [",
                                absl::StrJoin(t->shape, ","), "], expected [",
                                absl::StrJoin(shape, ","), "]"));
  }
  return t;
}

void WeightLoader::HashHeader(absl::string_view name,
                              const std::vector<int64_t>& shape) {
  XXH3_128bits_update(hash_, name.data(), name.size());
  for (int64_t d : shape) XXH3_128bits_update(hash_, &d, sizeof(d));
}

void WeightLoader::HashValues(const float* v, int64_t n) {
  nonfinite_ += CountNonFinite(v, n);
  XXH3_128bits_update(hash_, v, sizeof(float) * n);
}

void WeightLoader::HashValues(const uint16_t* v, int64_t n) {
  float buf[4096];
  for (int64_t i = 0; i < n; i += 4096) {
    const int64_t m = n - i < 4096 ? n - i : 4096;
    for (int64_t j = 0; j < m; ++j) buf[j] = BF16ToF32(v[i + j]);
    nonfinite_ += CountNonFinite(buf, m);
    XXH3_128bits_update(hash_, buf, sizeof(float) * m);
  }
}

absl::Status WeightLoader::CheckFinite(absl::string_view name) {
  const int64_t bad = nonfinite_;
  nonfinite_ = 0;
  if (bad == 0) return absl::OkStatus();
  return BadFile(
      absl::StrCat("tensor ", name, " holds ", bad,
                   " NaN or infinite values (a corrupt checkpoint)"));
}

void WeightLoader::HashInt8(absl::string_view name,
                            const std::vector<int64_t>& shape,
                            const Matrix& m) {
  // The quantized values and their scales: an int8 model has its own
  // fingerprint, so states of the fp32 model are never mistaken for its.
  static constexpr char kTag[] = "int8-per-row";
  XXH3_128bits_update(hash_, name.data(), name.size());
  XXH3_128bits_update(hash_, kTag, sizeof(kTag));
  for (int64_t d : shape) XXH3_128bits_update(hash_, &d, sizeof(d));
  XXH3_128bits_update(hash_, m.i8, I8PackedBytes(m.rows, m.cols));
  XXH3_128bits_update(hash_, m.scale.data(), sizeof(float) * m.scale.size());
}

absl::Status WeightLoader::Vector(absl::string_view name, int64_t numel,
                                  std::vector<float>* out) {
  SS_ASSIGN_OR_RETURN(const TensorView* t, Get(name, {}));
  if (t->numel() != numel) {
    return BadFile(absl::StrCat("tensor ", name, " has ", t->numel(),
                                " elements, expected ", numel));
  }
  out->resize(numel);
  ReadAsF32(*t, out->data());
  ReleaseSource(*t);
  params_ += numel;
  HashHeader(name, {numel});
  HashValues(out->data(), numel);
  return CheckFinite(name);
}

absl::Status WeightLoader::Mat(absl::string_view name, int rows, int cols,
                               Matrix* out) {
  SS_ASSIGN_OR_RETURN(const TensorView* t, Get(name, {rows, cols}));
  out->rows = rows;
  out->cols = cols;
  const int64_t n = static_cast<int64_t>(rows) * cols;
  if (precision_ == WeightPrecision::kInt8) {
    // The int8 kernels' int32 sums are exact up to 65536 inputs.
    if (cols > 65536) {
      return InvalidArgumentError(
          Reason::kInvalidArgument,
          absl::StrCat("int8 weights: ", name, " has ", cols,
                       " inputs per row, more than 65536"));
    }
    TensorView rt;
    rt.dtype = t->dtype;
    rt.shape = {cols};
    rt.strides = {t->strides[1]};
    const size_t row_bytes =
        static_cast<size_t>(t->strides[0]) * DTypeSize(t->dtype);
    Quantize(
        rows, cols,
        [&](int r, float* row) {
          rt.data = t->data + static_cast<size_t>(r) * row_bytes;
          ReadAsF32(rt, row);
        },
        out);
    ReleaseSource(*t);
    params_ += n;
    HashInt8(name, {rows, cols}, *out);
    return CheckFinite(name);
  }
  const bool want_bf16 =
      precision_ == WeightPrecision::kBF16 ||
      (precision_ == WeightPrecision::kAsStored && t->dtype == DType::kBF16);
  // A copy in the arena, never a view of the file: see weight_arena.h.
  HashHeader(name, {rows, cols});
  if (want_bf16) {
    CopyMatrix<uint16_t>(*t, out);
  } else {
    CopyMatrix<float>(*t, out);
  }
  params_ += n;
  return CheckFinite(name);
}

absl::Status WeightLoader::MatT(absl::string_view name, int rows, int cols,
                                Matrix* out) {
  SS_ASSIGN_OR_RETURN(const TensorView* t, Get(name, {rows, cols}));
  const int64_t n = static_cast<int64_t>(rows) * cols;
  std::vector<float> tmp(n);
  ReadAsF32(*t, tmp.data());
  // Copied out whole: the file's pages are not needed again (the LoRA
  // factors and vectors of a 0.4B fp32 model kept ~65 MiB of them).
  ReleaseSource(*t);
  if (precision_ == WeightPrecision::kInt8) {
    // Rows of the transpose are the columns of the stored tensor.
    Quantize(
        cols, rows,
        [&](int r, float* row) {
          for (int c = 0; c < rows; ++c) {
            row[c] = tmp[static_cast<int64_t>(c) * cols + r];
          }
        },
        out);
    params_ += n;
    HashInt8(name, {rows, cols}, *out);
    return CheckFinite(name);
  }
  out->rows = cols;
  out->cols = rows;
  // Row c of the copy: column c of tmp, as T.
  auto transpose = [&](auto* dst, auto convert) {
    using T = std::remove_pointer_t<decltype(dst)>;
    std::vector<T> row(rows);
    for (int c = 0; c < cols; ++c) {
      for (int r = 0; r < rows; ++r) {
        row[r] = convert(tmp[static_cast<int64_t>(r) * cols + c]);
      }
      PutRow(*out, row.data(), c, dst);
    }
  };
  if (t->dtype == DType::kBF16 && (precision_ == WeightPrecision::kBF16 ||
                                   precision_ == WeightPrecision::kAsStored)) {
    // bf16 in the file stays bf16 (exact; its products are gemm_bf16's,
    // within float tolerance of an fp32 copy's) at half the bytes a decode
    // step reads.
    transpose(AllocateMatrix<uint16_t>(out),
              [](float v) { return F32ToBF16(v); });
  } else {
    transpose(AllocateMatrix<float>(out), [](float v) { return v; });
  }
  params_ += n;
  HashHeader(name, {rows, cols});
  HashValues(tmp.data(), n);
  return CheckFinite(name);
}

void WeightLoader::Adopt(const std::vector<float>& row_major, int rows,
                         int cols, Matrix* out) {
  out->rows = rows;
  out->cols = cols;
  float* dst = AllocateMatrix<float>(out);
  for (int r = 0; r < rows; ++r) {
    PutRow(*out, row_major.data() + static_cast<int64_t>(r) * cols, r, dst);
  }
}

std::string WeightLoader::Digest() const {
  XXH128_hash_t h = XXH3_128bits_digest(hash_);
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : c.digest) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

}  // namespace statestream::engine
