// SPDX-License-Identifier: Apache-2.0
// Random numbers for ids, nonces and jitter. Ids and nonces come from the
// kernel (getrandom) each time, so no two processes repeat one, a forked
// child included; jitter from a per-thread generator seeded with 256 bits
// from the OS, reseeded in a forked child. Not for secrets.
#ifndef STATESTREAM_COMMON_RANDOM_H_
#define STATESTREAM_COMMON_RANDOM_H_

#include <random>
#include <string>

namespace statestream {

// This thread's generator (reseeded after a fork, in the child).
std::mt19937_64& ThreadRng();

// 128 random bits as 32 lowercase hex digits (request ids, version nonces).
std::string RandomHex128();

}  // namespace statestream

#endif  // STATESTREAM_COMMON_RANDOM_H_
