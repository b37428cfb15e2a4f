// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/kernels.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "worker/engine/float16.h"

namespace statestream::engine {

extern const Kernels kKernelsAvx512;
extern const Kernels kKernelsAvx2;
extern const Kernels kKernelsScalar;
// kernels_avx512.cc: SplitBf16Terms on AVX-512 CPUs.
void SplitBf16TermsAvx512(const float* x, int ldx, int row_begin, int row_end,
                          int in, int terms, Bf16Copy copy, float* xs,
                          uint16_t* xb);
// kernels_avx512vnni.cc
void GemmI8Vnni(const int8_t* w, const float* wscale, const int32_t* wsum,
                int in, const uint8_t* xq, const float* xscale, int ldq,
                int rows, float* y, int ldy, int o_begin, int o_end);
// kernels_amx.cc
void GemmBf16Amx(const uint16_t* w, int in, const float* xs, const uint16_t* xb,
                 int terms, int rows, float* y, int ldy, int o_begin,
                 int o_end);
// GemmBf16Amx's choice: tiles from 2 rows when the inputs are a multiple of
// 32, else the AVX-512 FMA kernel.
Bf16Copy Bf16AmxCopy(int rows, int in);
// kernels_avx512bf16.cc, and its choice (the same rule).
void GemmBf16Dp(const uint16_t* w, int in, const float* xs, const uint16_t* xb,
                int terms, int rows, float* y, int ldy, int o_begin, int o_end);
Bf16Copy Bf16DpCopy(int rows, int in);
// GemmI8Amx's choice: tiles from 16 rows, else the VNNI kernel.
bool I8AmxTiles(int rows);
void GemmI8Amx(const int8_t* w, const float* wscale, const int32_t* wsum,
               int in, const uint8_t* xq, const float* xscale, int ldq,
               int rows, float* y, int ldy, int o_begin, int o_end);

namespace {

bool HasAvx512() {
  return __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}
bool HasAvx512Vnni() {
  return HasAvx512() && __builtin_cpu_supports("avx512vnni");
}
// AMX-TILE and AMX-INT8 (CPUID.(7,0):EDX bits 24 and 25), and Linux's
// permission to use the tile data state, which a process must request once
// (arch_prctl ARCH_REQ_XCOMP_PERM; kernel 5.16+).
bool HasAmxInt8() {
  static const bool ok = [] {
    if (!HasAvx512Vnni()) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if ((d & (1u << 24)) == 0 || (d & (1u << 25)) == 0) return false;
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}
// AMX-BF16 as well (CPUID.(7,0):EDX bit 22).
bool HasAmxBf16() {
  unsigned a, b, c, d;
  return HasAmxInt8() && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
         (d & (1u << 22)) != 0;
}
bool HasAvx512Bf16() {
  return HasAvx512Vnni() && __builtin_cpu_supports("avx512bf16");
}
bool HasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace

// Integer rounding and one fp32 subtraction (exact where it matters: a
// denormal term is flushed by the kernels anyway), so every clone gives
// the same bits. No AVX-512 clone: those CPUs run SplitBf16TermsAvx512, and
// the tests comparing the two then run the AVX2 clone that CPUs without
// AVX-512 use.
__attribute__((target_clones("avx2", "default"))) void SplitBf16TermsPortable(
    const float* x, int ldx, int row_begin, int row_end, int in, int terms,
    Bf16Copy copy, float* xs, uint16_t* xb) {
  const int stride = Bf16TermsStride(in);
  for (int t = row_begin; t < row_end; ++t) {
    const float* __restrict row = x + static_cast<int64_t>(t) * ldx;
    if (copy == Bf16Copy::kFp32) {
      float* __restrict hi = xs + static_cast<int64_t>(terms * t) * stride;
      float* __restrict lo = hi + stride;
      for (int i = 0; i < in; ++i) {
        const float hf = BF16ToF32(F32ToBF16(row[i]));
        hi[i] = hf;
        if (terms == 2) lo[i] = BF16ToF32(F32ToBF16(row[i] - hf));
      }
      for (int i = in; i < stride; ++i) hi[i] = 0.0f;
      if (terms == 2) {
        for (int i = in; i < stride; ++i) lo[i] = 0.0f;
      }
      continue;
    }
    // A row's terms sit in the same band, rows terms * t % 16 and the
    // next, 32 values (64 bytes) apart in every tile.
    uint16_t* __restrict band = xb + Bf16TileIndex(terms * t, 0, in);
    for (int b = 0; b < stride; b += 32) {
      uint16_t h[32], l[32];
      const int n = in - b < 32 ? in - b : 32;
      for (int i = 0; i < n; ++i) {
        h[i] = F32ToBF16(row[b + i]);
        l[i] = terms == 2 ? F32ToBF16(row[b + i] - BF16ToF32(h[i])) : 0;
      }
      for (int i = n; i < 32; ++i) h[i] = l[i] = 0;
      for (int term = 0; term < terms; ++term) {
        const uint16_t* v = term == 0 ? h : l;
        uint16_t* __restrict dst = band + int64_t{b} * 16 + 32 * term;
        if (copy == Bf16Copy::kTiles) {
          for (int i = 0; i < 32; ++i) dst[i] = v[i];
        } else {  // x2, x0, x3, x1 (Bf16PairIndex)
          for (int i = 0; i < 32; i += 4) {
            dst[i] = v[i + 2];
            dst[i + 1] = v[i];
            dst[i + 2] = v[i + 3];
            dst[i + 3] = v[i + 1];
          }
        }
      }
    }
  }
}

void SplitBf16Terms(const float* x, int ldx, int row_begin, int row_end, int in,
                    int terms, Bf16Copy copy, float* xs, uint16_t* xb) {
  static const bool avx512 = HasAvx512();
  if (avx512) {
    SplitBf16TermsAvx512(x, ldx, row_begin, row_end, in, terms, copy, xs, xb);
  } else {
    SplitBf16TermsPortable(x, ldx, row_begin, row_end, in, terms, copy, xs, xb);
  }
}

Bf16Copy Bf16Fp32Copy(int, int) { return Bf16Copy::kFp32; }
bool NoI8Tiles(int) { return false; }

uint32_t EnterFlushToZero() {
  const uint32_t old = _mm_getcsr();
  _mm_setcsr(old | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
  return old;
}
void RestoreMxcsr(uint32_t mxcsr) { _mm_setcsr(mxcsr); }

namespace {

template <typename W>
void PackRow(const W* row, int o, int in, W* dst) {
  constexpr int kStep = PanelStep(sizeof(W));
  W* p = dst + PanelOffset(o, 0, in, kStep);
  for (int i = 0; i < in; ++i) {
    p[static_cast<int64_t>(i / kStep) * kStep * kPanelOut + i % kStep] = row[i];
  }
}

}  // namespace

void PackPanelRow(const float* row, int o, int in, float* dst) {
  PackRow(row, o, in, dst);
}
void PackPanelRow(const uint16_t* row, int o, int in, uint16_t* dst) {
  PackRow(row, o, in, dst);
}

// The AVX-512 build with gemm_i8 on vpdpbusd (bit-identical: exact integer
// sums).
const Kernels* Avx512Vnni() {
  static const Kernels k = {"avx512+vnni",
                            kKernelsAvx512.gemm_f32,
                            kKernelsAvx512.gemm_bf16,
                            kKernelsAvx512.gemm_bf16_copy,
                            &GemmI8Vnni,
                            &NoI8Tiles,
                            kKernelsAvx512.wkv7_step};
  return HasAvx512Vnni() ? &k : nullptr;
}

// The same with bf16 products of 2 rows or more on vdpbf16ps (the same
// bits as the FMA builds).
const Kernels* Avx512Bf16() {
  static const Kernels k = {"avx512+bf16",
                            kKernelsAvx512.gemm_f32,
                            &GemmBf16Dp,
                            &Bf16DpCopy,
                            &GemmI8Vnni,
                            &NoI8Tiles,
                            kKernelsAvx512.wkv7_step};
  return HasAvx512Bf16() ? &k : nullptr;
}

// The same with AMX for int8 products of 16 rows or more, and for bf16
// products where the CPU has AMX-BF16 (the same bits as the FMA builds).
const Kernels* Avx512Amx() {
  static const Kernels k = {
      "avx512+amx",
      kKernelsAvx512.gemm_f32,
      HasAmxBf16() ? &GemmBf16Amx : kKernelsAvx512.gemm_bf16,
      HasAmxBf16() ? &Bf16AmxCopy : kKernelsAvx512.gemm_bf16_copy,
      &GemmI8Amx,
      &I8AmxTiles,
      kKernelsAvx512.wkv7_step};
  return HasAmxInt8() ? &k : nullptr;
}

const Kernels* GetKernelsByName(const char* name) {
  if (std::strcmp(name, "avx512") == 0) {
    return HasAvx512() ? &kKernelsAvx512 : nullptr;
  }
  if (std::strcmp(name, "avx2") == 0) {
    return HasAvx2() ? &kKernelsAvx2 : nullptr;
  }
  if (std::strcmp(name, "avx512bf16") == 0 ||
      std::strcmp(name, "avx512+bf16") == 0) {
    return Avx512Bf16();
  }
  if (std::strcmp(name, "avx512vnni") == 0 ||
      std::strcmp(name, "avx512+vnni") == 0) {
    return Avx512Vnni();
  }
  if (std::strcmp(name, "avx512amx") == 0 ||
      std::strcmp(name, "avx512+amx") == 0) {
    return Avx512Amx();
  }
  if (std::strcmp(name, "scalar") == 0) return &kKernelsScalar;
  return nullptr;
}

const Kernels& GetKernels() {
  static const Kernels* best = [] {
    if (const Kernels* amx = Avx512Amx()) return amx;
    if (const Kernels* bf16 = Avx512Bf16()) return bf16;
    if (const Kernels* vnni = Avx512Vnni()) return vnni;
    if (HasAvx512()) return &kKernelsAvx512;
    if (HasAvx2()) return &kKernelsAvx2;
    return &kKernelsScalar;
  }();
  return *best;
}

}  // namespace statestream::engine
