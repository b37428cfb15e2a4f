// SPDX-License-Identifier: Apache-2.0
// The session-state file format ("SSSTATE1"), shared by the state store, the
// export/import API and `statestream model eval --state-in/--state-out`.
// Layout and rationale: docs/state-format.md. Decoding trusts nothing: a
// truncated, corrupt or oversize input is DATA_LOSS / kStateCorrupt, and a
// state of another model is FAILED_PRECONDITION / kModelMismatch.
#ifndef STATESTREAM_STATE_STORE_STATE_CODEC_H_
#define STATESTREAM_STATE_STORE_STATE_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace statestream {

struct StateSnapshot {
  // ModelInfo::fingerprint of the model the state belongs to.
  std::string model_fingerprint;
  // Tokens consumed by the model since the session began.
  uint64_t position = 0;
  // Bytes the streaming tokenizer has not decided yet (see DESIGN.md).
  std::string tokenizer_tail;
  // Serialised sampler state (RNG, penalties); empty when never sampled.
  std::string sampler_state;
  // The recurrent state, fp32, in the model's canonical layout.
  std::vector<float> state;
};

// Upper bound on a field's length when decoding (fingerprint, tail, sampler).
inline constexpr uint32_t kMaxStateFieldBytes = 1 << 20;

std::string EncodeState(const StateSnapshot& snapshot);
absl::StatusOr<StateSnapshot> DecodeState(absl::string_view bytes);

// OK when `snapshot` belongs to a model with this fingerprint and state size.
absl::Status CheckStateMatchesModel(const StateSnapshot& snapshot,
                                    absl::string_view fingerprint,
                                    int64_t state_floats);

}  // namespace statestream

#endif  // STATESTREAM_STATE_STORE_STATE_CODEC_H_
