// SPDX-License-Identifier: Apache-2.0
// glibc malloc settings for a process that moves multi-megabyte session
// states (hiredis buffers, snapshots). By default glibc serves every block
// of 128 KiB or more with a fresh mmap and unmaps it on free, so each copy
// of a state page-faults its whole size; measured on this project's machines
// that made 1 MB SET/GET about 3x slower (docs/state-store.md).
#ifndef STATESTREAM_COMMON_MALLOC_TUNING_H_
#define STATESTREAM_COMMON_MALLOC_TUNING_H_

namespace statestream {

// Serves blocks up to 128 MiB (a 7B model's 34 MB state and its encoding
// included; 32 MiB where an older glibc refuses more) from the heap and
// keeps up to 256 MiB of freed heap instead of returning it to the kernel. Call
// once, early in main, before threads start. Returns false when the C library
// refused (non-glibc builds: then it does nothing).
bool TuneMallocForLargeBuffers();

}  // namespace statestream

#endif  // STATESTREAM_COMMON_MALLOC_TUNING_H_
