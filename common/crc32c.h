// SPDX-License-Identifier: Apache-2.0
// CRC-32C (Castagnoli), as used by iSCSI, ext4 and Google's crc32c library.
// Hand-written because Debian 12 packages no C++ CRC32C library and this
// Abseil predates absl/crc; uses the SSE4.2 instruction when the CPU has it.
#ifndef STATESTREAM_COMMON_CRC32C_H_
#define STATESTREAM_COMMON_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace statestream {

// Extends `crc` (the value returned for the preceding bytes; 0 to start)
// with `n` bytes at `data`. Crc32c(0, "123456789", 9) == 0xE3069283.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

}  // namespace statestream

#endif  // STATESTREAM_COMMON_CRC32C_H_
