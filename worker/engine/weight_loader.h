// SPDX-License-Identifier: Apache-2.0
// Turns checkpoint tensors into the engine's in-memory weights: validates
// names and shapes, converts precision, copies matrices onto huge pages
// (WeightArena) dropping the file's pages as it goes, counts parameters
// and computes the weights digest of the model fingerprint. Shared by all
// architectures.
// Internal to the engine.
#ifndef STATESTREAM_WORKER_ENGINE_WEIGHT_LOADER_H_
#define STATESTREAM_WORKER_ENGINE_WEIGHT_LOADER_H_

#include <xxhash.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/model.h"
#include "worker/engine/weight_arena.h"
#include "worker/engine/weight_file.h"

namespace statestream::engine {

// The activation terms a row that products with bf16 weights take
// (Kernels::gemm_bf16): one with kRound, else two.
inline int Bf16TermsFor(Bf16Activations a) {
  return a == Bf16Activations::kRound ? 1 : 2;
}

// A [rows = out][cols = in] matrix (a Linear weight), fp32, bf16 or int8,
// in the loader's WeightArena (huge pages; `arena` keeps it alive) or in the
// matrix's own *_storage vectors. Exactly one of f32/bf16/i8 is set. fp32
// and bf16 are row-major, or packed in panels of 16 outputs when `panels`
// (the CPU kernels' layout, kernels.h). int8 rows are symmetric per output
// row: w[r][c] = i8[r][c] * scale[r] with i8 in [-127, 127] and scale =
// max_c |w[r][c]| / 127, packed in tiles (kernels.h); they multiply
// int8-quantized activations (Kernels::gemm_i8).
struct Matrix {
  int rows = 0;
  int cols = 0;
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  const int8_t* i8 = nullptr;
  bool panels = false;  // f32/bf16 packed for Kernels::gemm_f32/gemm_bf16
  // bf16 only: the activation terms a row its products take
  // (Bf16TermsFor).
  int bf16_terms = 2;
  std::vector<float> f32_storage;
  std::vector<uint16_t> bf16_storage;
  std::vector<int8_t> i8_storage;
  std::vector<float> scale;   // int8 only: one per row
  std::vector<int32_t> wsum;  // int8 only: sum of each row's int8 values
  std::shared_ptr<const WeightArena> arena;  // owns f32/bf16/i8 if set

  // Copies row `r` as fp32 into out[cols].
  void ReadRow(int r, float* out) const;
  // The values a product reads (i8, f32 or bf16, whichever is set) and
  // their size with the layout's padding; int8's per-row scale and wsum (4
  // bytes a row each) are apart and not counted.
  const void* data() const;
  size_t bytes() const;
};

// How fp32/bf16 matrices are laid out: packed for the CPU kernels, or
// row-major as in the file (the CUDA backend's cuBLAS layout).
enum class MatrixLayout { kPanels, kRowMajor };

class WeightLoader {
 public:
  WeightLoader(std::shared_ptr<const WeightFile> file,
               WeightPrecision precision,
               MatrixLayout layout = MatrixLayout::kPanels);
  ~WeightLoader();
  WeightLoader(const WeightLoader&) = delete;
  WeightLoader& operator=(const WeightLoader&) = delete;

  bool Has(absl::string_view name) const;
  // The shape of `name`, or an error naming the missing tensor.
  absl::StatusOr<std::vector<int64_t>> Shape(absl::string_view name) const;

  // A tensor of exactly `numel` elements (any shape, e.g. [1,1,C] or [H,N]),
  // as fp32.
  absl::Status Vector(absl::string_view name, int64_t numel,
                      std::vector<float>* out);
  // A 2-D [rows][cols] tensor used as stored (a Linear weight [out][in]),
  // in the configured precision.
  absl::Status Mat(absl::string_view name, int rows, int cols, Matrix* out);
  // A 2-D [rows][cols] tensor applied as `x @ M` (LoRA factors): stored
  // transposed as [cols][rows] so it runs through the same kernels; fp32,
  // or int8 when the precision is int8.
  absl::Status MatT(absl::string_view name, int rows, int cols, Matrix* out);

  // A matrix the caller assembled from a tensor it loaded (row-major
  // [rows][cols] fp32, e.g. one slice of a 3-D tensor), copied into the
  // arena in this loader's layout. Counted and hashed with its source
  // tensor.
  void Adopt(const std::vector<float>& row_major, int rows, int cols,
             Matrix* out);

  // How the bf16 matrices loaded from now on take their activations
  // (Matrix::bf16_terms): one term with kRound, else two.
  void set_bf16_activations(Bf16Activations a) { bf16_activations_ = a; }

  // Sets info->weights_dtype from the matrices loaded so far (the type most
  // of their weights are held in) and, where any is bf16,
  // info->bf16_activations ("round" with kRound, else "split").
  void Describe(ModelInfo* info) const;

  int64_t params() const { return params_; }
  // Hex XXH3-128 of every tensor loaded so far (name, shape, fp32 values as
  // the engine will use them), in load order.
  std::string Digest() const;

 private:
  absl::StatusOr<const TensorView*> Get(absl::string_view name,
                                        std::vector<int64_t> shape) const;
  void HashHeader(absl::string_view name, const std::vector<int64_t>& shape);
  // Values as fp32, so a model has one fingerprint whether its exact values
  // come from a bf16 or an fp32 file (the kernels widen bf16 exactly, so
  // the products are the same too).
  void HashValues(const float* v, int64_t n);
  void HashValues(const uint16_t* v, int64_t n);
  // Every weight read (hashed or quantized) must be finite: a NaN or an
  // infinity makes every output NaN (fp32) or silently another model
  // (int8 saturates them), so the file is refused, naming the tensor.
  absl::Status CheckFinite(absl::string_view name);
  // Room in the arena for `out`'s rows x cols values of T (fp32 or bf16)
  // in the configured layout, set as out->f32 or out->bf16, with
  // out->panels set and the panels' padding zeroed.
  template <typename T>
  T* AllocateMatrix(Matrix* out);
  // Copies the 2-D tensor `t` into `out` (rows and cols set) as T in the
  // configured layout, hashing its values, a slice of rows at a time,
  // dropping each slice's file pages once copied.
  template <typename T>
  void CopyMatrix(const TensorView& t, Matrix* out);
  void HashInt8(absl::string_view name, const std::vector<int64_t>& shape,
                const Matrix& m);
  // Fills `out` (rows x cols, int8) from `read_row(r, float[cols])`, a row
  // at a time so no full fp32 copy is ever held.
  void Quantize(int rows, int cols,
                const std::function<void(int, float*)>& read_row, Matrix* out);
  // `n` elements of T in the arena, owned by `out` from now on.
  template <typename T>
  T* Allocate(int64_t n, Matrix* out);

  std::shared_ptr<const WeightFile> file_;
  WeightPrecision precision_;
  MatrixLayout layout_;
  Bf16Activations bf16_activations_ = Bf16Activations::kDefault;
  int64_t params_ = 0;
  // NaN and infinite weights read since the last CheckFinite.
  int64_t nonfinite_ = 0;
  // Matrix weights loaded as fp32, bf16 and int8.
  int64_t matrix_weights_[3] = {0, 0, 0};
  XXH3_state_t* hash_;
  std::shared_ptr<WeightArena> arena_ = std::make_shared<WeightArena>();
};

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_WEIGHT_LOADER_H_
