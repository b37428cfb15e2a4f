// SPDX-License-Identifier: Apache-2.0
// Server-generated session ids, shared by the worker (which creates the
// sessions) and the gateway (which must recognise a retried create).
#ifndef STATESTREAM_COMMON_SESSION_IDS_H_
#define STATESTREAM_COMMON_SESSION_IDS_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace statestream {

// The 32 characters of generated ids: digits and lower-case letters
// without i, l, o and u (Crockford's base32, lower case).
inline constexpr char kSessionIdAlphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
// Length of a generated id (130 bits).
inline constexpr int kGeneratedSessionIdLength = 26;

// FNV-1a 64 of `s`, continuing from `h`; start from kFnvBasis.
inline constexpr uint64_t kFnvBasis = 14695981039346656037ull;
uint64_t Fnv1a(uint64_t h, absl::string_view s);

// The id of a session created with a server-generated id under
// `request_id`: the same on every worker and gateway, so a retry that fails
// over to another worker meets the session the first attempt created.
// Two 64-bit FNV-1a hashes of the tenant and the request id, 5 bits a
// character. Stable across releases: a retry may span an upgrade.
std::string DerivedSessionId(absl::string_view tenant,
                             absl::string_view request_id);

}  // namespace statestream

#endif  // STATESTREAM_COMMON_SESSION_IDS_H_
