// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for DecodeState: any input must decode or fail with
// STATE_CORRUPT, never crash; what decodes must re-encode and decode equal.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/status.h"
#include "state_store/state_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view in(reinterpret_cast<const char*>(data), size);
  auto s = statestream::DecodeState(in);
  if (!s.ok()) {
    if (statestream::GetReason(s.status()) !=
        statestream::Reason::kStateCorrupt) {
      abort();
    }
    return 0;
  }
  // Compared as encoded bytes: every field, and floats bit for bit (a NaN
  // is never == itself, so comparing float vectors aborted on a correct
  // round trip).
  const std::string blob = statestream::EncodeState(*s);
  auto again = statestream::DecodeState(blob);
  if (!again.ok() || statestream::EncodeState(*again) != blob) abort();
  return 0;
}
