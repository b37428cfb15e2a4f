// SPDX-License-Identifier: Apache-2.0
// Random numbers for ids, nonces and jitter: a per-thread generator seeded
// with 256 bits from the OS. (One 32-bit random_device word would give each
// thread one of only 2^32 sequences, so two processes could repeat each
// other's ids.) Not for secrets.
#ifndef STATESTREAM_COMMON_RANDOM_H_
#define STATESTREAM_COMMON_RANDOM_H_

#include <random>
#include <string>

namespace statestream {

// This thread's generator.
std::mt19937_64& ThreadRng();

// 128 random bits as 32 lowercase hex digits (request ids, version nonces).
std::string RandomHex128();

}  // namespace statestream

#endif  // STATESTREAM_COMMON_RANDOM_H_
