// SPDX-License-Identifier: Apache-2.0
// The engine's hot loops, compiled once per instruction set (AVX-512, AVX2,
// portable scalar) and chosen at run time by GetKernels().
//
// Determinism contract: every kernel computes each output element with one
// fixed sequence of fp32 operations that depends only on the element's inputs
// — never on how many rows are processed together, where a row sits in a
// batch, how the output range is split over threads, or which instruction set
// runs. fp32/bf16 products are one chain of fused multiply-adds per output in
// input order (see gemm_f32); int8 products are exact integer sums. See
// docs/engine.md and docs/engine-kernels.md.
#ifndef STATESTREAM_WORKER_ENGINE_KERNELS_H_
#define STATESTREAM_WORKER_ENGINE_KERNELS_H_

#include <cstdint>

namespace statestream::engine {

// int8 weight matrices are stored packed in tiles of 16 outputs x 64 inputs
// (1 KiB), the layout of an AMX B tile and of a VNNI row of 16 outputs:
// within a tile, byte (k4 * 64 + n * 4 + j) holds w[16 g + n][64 c + 4 k4 + j]
// for tile (g, c); tiles run over c first (one output group's tiles are
// contiguous), then g. Missing outputs and inputs (the last group, the last
// chunk) are zero. See docs/engine-kernels.md.
inline constexpr int kI8TileOut = 16;
inline constexpr int kI8TileIn = 64;
inline constexpr int kI8TileBytes = kI8TileOut * kI8TileIn;
inline int64_t I8Chunks(int in) { return (in + kI8TileIn - 1) / kI8TileIn; }
inline int64_t I8PackedBytes(int out, int in) {
  return (out + kI8TileOut - 1) / kI8TileOut * I8Chunks(in) * kI8TileBytes;
}
inline int64_t I8PackedOffset(int o, int i, int in) {
  return (o / kI8TileOut * I8Chunks(in) + i / kI8TileIn) * kI8TileBytes +
         (i % kI8TileIn) / 4 * 64 + o % kI8TileOut * 4 + i % 4;
}

// fp32 and bf16 weight matrices are stored packed in panels of 16 outputs
// (kPanelOut) for the products: panel g holds outputs [16g, 16g + 16) for
// every input, one input step after another, where a step is
// PanelStep(sizeof(W)) inputs — 1 for fp32, 2 for bf16 (so one 64-byte
// vector holds 16 outputs x 2 inputs and widens with a shift and a mask).
// Element (n, j) of step s of panel g, at n * step + j within the step,
// is w[16g + n][step * s + j]. Missing outputs (the last panel) and the
// missing input of an odd last bf16 step are zero. One output's weights
// are thus read in input order, and a panel's steps are one contiguous
// stream. See docs/engine-kernels.md.
inline constexpr int kPanelOut = 16;
inline constexpr int PanelStep(int bytes_per_weight) {
  return bytes_per_weight == 2 ? 2 : 1;
}
// Elements of one panel (all its steps) and of a whole packed matrix.
inline int64_t PanelElems(int in, int step) {
  return static_cast<int64_t>((in + step - 1) / step) * step * kPanelOut;
}
inline int64_t PanelPackedElems(int out, int in, int step) {
  return static_cast<int64_t>((out + kPanelOut - 1) / kPanelOut) *
         PanelElems(in, step);
}
inline int64_t PanelOffset(int o, int i, int in, int step) {
  return o / kPanelOut * PanelElems(in, step) +
         static_cast<int64_t>(i / step) * step * kPanelOut +
         o % kPanelOut * step + i % step;
}
// Writes row `o` (`in` values, row-major [out][in] layout's row o) of a
// matrix into its panel-packed copy `dst` (PanelPackedElems elements; the
// padding must be zeroed by the caller).
void PackPanelRow(const float* row, int o, int in, float* dst);
void PackPanelRow(const uint16_t* row, int o, int in, uint16_t* dst);

// bf16 products' activations: each value x as two bf16 terms, hi =
// bf16(x) and lo = bf16(x - hi), rounded to nearest even (16 significant
// bits; a NaN stays a NaN; magnitudes from 0x1.ff8p127 round to infinity,
// as any bf16 rounding does) — or, with one term a row
// (Bf16Activations::kRound), hi alone: the activations rounded to bf16,
// half the arithmetic. Row t of `x` (stride ldx, `in` values) becomes term
// rows 2t (hi) and 2t+1 (lo), or term row t (hi), each
// Bf16TermsStride(in) values, +0 past `in`, in the one copy the product's
// kernel reads (Kernels::gemm_bf16_copy):
enum class Bf16Copy {
  // `xs`, fp32 values for the FMA kernels: term row r at r * stride.
  kFp32,
  // `xb`, bf16 for AMX tiles, in tile order (Bf16TileIndex): bands of 16
  // term rows, each band's blocks of 32 inputs one 16 x 32 tile (1 KiB,
  // its rows 64 bytes apart), so a tile load reads one contiguous KiB (the
  // row-major layout's strided loads ran AMX products 25-60 % slower).
  kTiles,
  // `xb` for vdpbf16ps: the same tiles with each 4 inputs' values in the
  // order x2, x0, x3, x1 (Bf16PairIndex), so that (x0, x2) and (x1, x3) —
  // two steps of the even chain and of the odd one — are each one 32-bit
  // broadcast (kernels_avx512bf16.cc).
  kPairedTiles,
};
// The kernels take Bf16TermsSize(rows, in, terms) elements: AMX reads whole
// tiles, and the term rows past terms * rows may hold anything (they only reach
// sums that are never stored). The same function serves every build (an AVX-512
// loop where the CPU has it, else a portable one with the same bits), so every
// build splits alike. Rows [row_begin, row_end) of the product are split (x, xs
// and xb point at its row 0), so blocks of rows may be split by different
// threads. Only the copy named is written (writing every copy cost a 512-token
// bf16 prefill about a tenth of its time); its pointer must not be null, the
// other may be. `terms` is the terms a row: 2 (hi, lo) or 1 (hi).
inline int Bf16TermsStride(int in) { return (in + 31) / 32 * 32; }
inline int Bf16TermRows(int rows, int terms) {
  return (terms * rows + 31) / 32 * 32;
}
inline int64_t Bf16TermsSize(int rows, int in, int terms) {
  return int64_t{Bf16TermRows(rows, terms)} * Bf16TermsStride(in);
}
// Where term row r's input i sits in xb (kTiles).
inline int64_t Bf16TileIndex(int r, int i, int in) {
  return int64_t{r / 16} * 16 * Bf16TermsStride(in) + int64_t{i / 32} * 512 +
         (r % 16) * 32 + i % 32;
}
// Where term row r's input i sits in xb (kPairedTiles).
inline int64_t Bf16PairIndex(int r, int i, int in) {
  constexpr int kSlot[4] = {1, 3, 0, 2};  // x0, x1, x2, x3
  return Bf16TileIndex(r, i - i % 4 + kSlot[i % 4], in);
}
void SplitBf16Terms(const float* x, int ldx, int row_begin, int row_end, int in,
                    int terms, Bf16Copy copy, float* xs, uint16_t* xb);
// The plain loop SplitBf16Terms runs where the CPU lacks AVX-512 (it has
// an AVX-512 copy), for tests that compare the two.
void SplitBf16TermsPortable(const float* x, int ldx, int row_begin, int row_end,
                            int in, int terms, Bf16Copy copy, float* xs,
                            uint16_t* xb);
// Kernels::gemm_bf16_copy of the FMA builds: always kFp32.
Bf16Copy Bf16Fp32Copy(int rows, int in);
// int8 activations in AMX tile order: bands of 16 rows, each band's blocks
// of 64 inputs one 16 x 64 tile (1 KiB contiguous). Where row t's input i
// sits (ldq a multiple of 64).
inline int64_t I8TileIndex(int t, int i, int ldq) {
  return int64_t{t / 16} * 16 * ldq + int64_t{i / 64} * 1024 + (t % 16) * 64 +
         i % 64;
}
// Kernels::gemm_i8_tiles of the builds without AMX: never.
bool NoI8Tiles(int rows);
// The calling thread's MXCSR with FTZ and DAZ set, for the bf16 kernels
// (returns the previous value for RestoreMxcsr).
uint32_t EnterFlushToZero();
void RestoreMxcsr(uint32_t mxcsr);

struct Kernels {
  // "avx512", "avx512+amx", "avx512+bf16", "avx512+vnni", "avx2" or
  // "scalar".
  const char* name;

  // y[t*ldy + o] = sum_i w[o][i] * x[t*ldx + i] for t < rows and
  // o in [o_begin, o_end), with `w` panel-packed (above). o_begin is a
  // multiple of 16. Each output's bits depend on nothing but its own row and
  // weights.
  //
  // fp32: each output is one chain of fused multiply-adds in input order
  // starting from +0:
  //   acc = +0; for i in [0, in): acc = fma(w[o][i], x[t][i], acc)
  void (*gemm_f32)(const float* w, int in, const float* x, int ldx, int rows,
                   float* y, int ldy, int o_begin, int o_end);
  // bf16 (upper half of an fp32, widened exactly), with the activations
  // given as their `terms` bf16 terms, two or one (SplitBf16Terms: xs, or xb
  // in the order gemm_bf16_copy names) and the arithmetic of AMX's
  // TDPBF16PS, so that the AMX kernel and every FMA build give the
  // same bits (docs/engine-kernels.md "AMX-BF16"). Per output and term:
  //   c = +0; for each block of 32 inputs (16 pairs; the last may be
  //   shorter; an odd input count ends with a +0 pair partner):
  //     even = +0, odd = +0
  //     for each pair (i, i+1) in order:
  //       even = fma(w[o][i], x_term[i], even)
  //       odd = fma(w[o][i+1], x_term[i+1], odd)
  //     c = c + (even + odd)
  //   y = c(hi) + c(lo), or y = c(hi) with one term a row (`terms` 1)
  // with denormal inputs and results flushed to zero (MXCSR DAZ and FTZ).
  void (*gemm_bf16)(const uint16_t* w, int in, const float* xs,
                    const uint16_t* xb, int terms, int rows, float* y, int ldy,
                    int o_begin, int o_end);
  // Which copy of the terms gemm_bf16 over `rows` rows of `in` inputs
  // reads: xs (kFp32) or xb in tile (AMX) or paired (vdpbf16ps) order. It
  // never reads the other.
  Bf16Copy (*gemm_bf16_copy)(int rows, int in);
  // int8 weights (packed as above) times int8 activations, both exact
  // integers. o_begin and o_end are multiples of 16 or o_end is the matrix's
  // last output. `xq` holds
  // each row's activations quantized to uint8 with zero point 128 (see
  // QuantizeRows in ops.h), rows ldq bytes long (a multiple of 64) — row t's
  // input i at t * ldq + i, or, where gemm_i8_tiles(rows), in AMX tile order
  // at I8TileIndex(t, i, ldq) — `xscale` one scale per row, `wscale` one per
  // output row and `wsum[o]` = sum_i w[o][i]. Rows are padded to ldq and
  // their count to a multiple of 16 with anything (the padded weights are 0
  // and padded rows are never stored), so kernels may read whole tiles. Then
  //   y[t*ldy + o] = float(sum_i w[o][i] * (q[t][i] - 128))
  //                  * xscale[t] * wscale[o]
  // (two fp32 multiplications in that order). The integer sum is exact
  // whatever its order, so every build — VNNI or not — gives the same bits.
  void (*gemm_i8)(const int8_t* w, const float* wscale, const int32_t* wsum,
                  int in, const uint8_t* xq, const float* xscale, int ldq,
                  int rows, float* y, int ldy, int o_begin, int o_end);
  // Whether gemm_i8 over `rows` rows runs on tiles (and reads xq in tile
  // order).
  bool (*gemm_i8_tiles)(int rows);

  // One RWKV-7 state step for one head of size n, in place on s[n][n]
  // (s[i][j]: i = value channel, j = key channel):
  //   s[i][j] = s[i][j]*w[j] + (sum_m s[i][m]*neg_kk[m]) * kka[j] + v[i]*k[j]
  // then y[i] = sum_j s[i][j]*r[j] with the updated state. `next`, when
  // not null, is the state this thread steps next (n * n floats; only
  // prefetched, for writing, as s is walked: a hint that never changes a
  // result). Pass it only for a state no other thread is writing.
  void (*wkv7_step)(float* s, int n, const float* r, const float* w,
                    const float* k, const float* v, const float* neg_kk,
                    const float* kka, float* y, const float* next);
};

// The best kernels this CPU supports (decided once, thread-safe).
const Kernels& GetKernels();
// Specific builds, for tests that compare them; nullptr when the CPU lacks
// the instruction set. GetKernels()'s AVX-512 build does gemm_i8 on AMX
// tiles from 16 rows where the CPU has AMX-INT8 ("avx512+amx"; and
// gemm_bf16 from 2 rows where it has AMX-BF16), else on vpdpbusd where it
// has AVX512_VNNI ("avx512+vnni", and with gemm_bf16 from 2 rows on
// vdpbf16ps where it also has AVX512_BF16: "avx512+bf16") — bit-identical
// to the others (exact integer sums; gemm_bf16's defined arithmetic);
// "avx512amx", "avx512bf16" and "avx512vnni" ask for them.
const Kernels* GetKernelsByName(const char* name);
// The names GetKernelsByName knows, for messages.
inline constexpr char kKernelBuildNames[] =
    "avx512amx, avx512bf16, avx512vnni, avx512, avx2, scalar";

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_KERNELS_H_
