// SPDX-License-Identifier: Apache-2.0
// UTF-8 helpers for text crossing the service edge and for streaming token
// output. "Valid" means RFC 3629 / Unicode well-formed: no overlong forms, no
// surrogates (U+D800..U+DFFF), nothing above U+10FFFF. All functions are pure,
// thread-safe, and accept arbitrary bytes.
#ifndef STATESTREAM_COMMON_UTF8_H_
#define STATESTREAM_COMMON_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace statestream {

// True when `bytes` is well-formed UTF-8 (the empty string is).
bool IsValidUtf8(absl::string_view bytes);

// Where the first ill-formed (or, at the end, truncated) sequence of
// `bytes` starts; bytes.size() when there is none.
//   "ab\xFFc" -> 2    "ab\xE2\x82" -> 2    "abc" -> 3
size_t FirstInvalidUtf8Byte(absl::string_view bytes);

// Length of the longest prefix of `bytes` that can be emitted now: everything
// except a trailing sequence that is an incomplete but so-far valid UTF-8
// character (at most 3 bytes), which a streaming decoder holds back until
// more bytes arrive. Invalid bytes are never held back (they cannot become
// valid), so the prefix may itself be invalid UTF-8; pass it through
// DecodeUtf8Lossy if the consumer needs valid text.
//   "ab\xF0\x9F\x98" -> 2    "ab\xFF" -> 3    "ab\xE0\xA4 x" -> 6
size_t Utf8CompletePrefixLength(absl::string_view bytes);

// The continuation bytes (at most 3) `text` starts with: the rest of a
// character that text before it left open. A server that does not know
// that earlier text (a session reloaded with an empty tokenizer tail) or a
// client that never saw it (a writer's first text) accepts them once.
size_t LeadingContinuationBytes(absl::string_view text);

// `bytes` with every maximal invalid subpart replaced by one U+FFFD, the
// Unicode "substitution of maximal subparts" practice shared by Python's
// bytes.decode("utf-8", errors="replace"), WHATWG TextDecoder and Rust's
// String::from_utf8_lossy. A truncated sequence at the end is one U+FFFD.
std::string DecodeUtf8Lossy(absl::string_view bytes);

// Appends the UTF-8 encoding of `code_point` to `out`. Returns false (and
// appends nothing) for surrogates and values above U+10FFFF.
bool AppendUtf8(uint32_t code_point, std::string* out);

}  // namespace statestream

#endif  // STATESTREAM_COMMON_UTF8_H_
