// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for DecodeState: any input must decode or fail with
// STATE_CORRUPT, never crash; what decodes must re-encode and decode equal.
#include <cstdint>
#include <cstdlib>

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
  auto again = statestream::DecodeState(statestream::EncodeState(*s));
  if (!again.ok() || again->state != s->state ||
      again->position != s->position || again->last_hidden != s->last_hidden) {
    abort();
  }
  return 0;
}
