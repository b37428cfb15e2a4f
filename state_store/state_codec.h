// SPDX-License-Identifier: Apache-2.0
// The session-state file format ("SSSTATE2"; "SSSTATE1" files still decode),
// shared by the state store, the export/import API and `statestream model
// eval --state-in/--state-out`. Layout and rationale: docs/state-format.md.
// Decoding trusts nothing: a truncated, corrupt or oversize input is
// DATA_LOSS / kStateCorrupt, and a state of another model is
// FAILED_PRECONDITION / kModelMismatch. Functions are thread-compatible.
#ifndef STATESTREAM_STATE_STORE_STATE_CODEC_H_
#define STATESTREAM_STATE_STORE_STATE_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace statestream {

// Element type of the stored state. Only fp32 exists today.
enum class StateDtype : uint32_t { kF32 = 0 };

struct StateSnapshot {
  // ModelInfo::fingerprint of the model the state belongs to.
  std::string model_fingerprint;
  // Informational copy of the model's shape (the fingerprint already implies
  // it): architecture name ("x070"), n_layer, n_embd, n_head, head_size.
  // 0 / "" when unknown (e.g. an SSSTATE1 file).
  std::string architecture;
  uint32_t n_layer = 0, n_embd = 0, n_head = 0, head_size = 0;
  StateDtype dtype = StateDtype::kF32;
  // Tokens consumed by the model since the session began.
  uint64_t position = 0;
  // Input units accepted (API's input_offset: one per text byte and per
  // token); includes the bytes of tokenizer_tail.
  uint64_t input_offset = 0;
  // Where a fork came from ("" / 0 when not a fork).
  std::string parent_session_id;
  uint64_t parent_version = 0;
  // Bytes the streaming tokenizer has not decided yet (see DESIGN.md).
  std::string tokenizer_tail;
  // Serialised sampler state (RNG, penalties); empty when never sampled.
  std::string sampler_state;
  // The recurrent state, fp32, in the model's canonical layout.
  std::vector<float> state;
  // Optional: the residual stream after the last layer for the last consumed
  // token (length n_embd), so a resumed session can produce next-token
  // logits without re-running a token. Empty when absent.
  std::vector<float> last_hidden;
};

// Upper bound on a string field's length (fingerprint, tail, sampler, ...),
// and on the floats of the state (2^32 = 16 GiB). Far above what the
// worker writes (a tokenizer tail stays near 64 KiB, the sampler and
// generation records under 1 MiB). The stores refuse to write a snapshot
// past them (CheckEncodable), so what they hold always decodes.
inline constexpr uint32_t kMaxStateFieldBytes = 16 << 20;
inline constexpr uint64_t kMaxStateFloats = uint64_t{1} << 32;

// INVALID_ARGUMENT / MESSAGE_TOO_LARGE when a field of `s` is past those
// bounds (DecodeState would refuse its encoding); every store checks it
// before a create or commit writes anything.
absl::Status CheckEncodable(const StateSnapshot& s);
// The payload (state + last_hidden) carries one CRC-32C per this many bytes.
inline constexpr uint32_t kStateChunkBytes = 1 << 20;

// Encodes in the current format (SSSTATE2).
std::string EncodeState(const StateSnapshot& snapshot);

// The same encoding in four consecutive parts, the payload referenced rather
// than copied: prefix + state + last_hidden + suffix == EncodeState(s). For
// stores that write the parts out directly (a 34 MB state then costs no
// 34 MB copy). `state` and `last_hidden` point into the snapshot, which
// must outlive this value.
struct EncodedStateParts {
  std::string prefix;  // magic, header length, header
  absl::string_view state, last_hidden;
  std::string suffix;  // payload chunk CRCs, trailing CRC
  size_t size() const {
    return prefix.size() + state.size() + last_hidden.size() + suffix.size();
  }
  // The trailing CRC-32C (EncodedStateCrc of the whole).
  uint32_t crc() const;
};
EncodedStateParts EncodeStateParts(const StateSnapshot& snapshot);
// Decodes SSSTATE2 and SSSTATE1, verifying every checksum and length.
absl::StatusOr<StateSnapshot> DecodeState(absl::string_view bytes);
// The trailing CRC-32C of an encoded snapshot (its last 4 bytes), 0 if too
// short. Cheap: reads no payload.
uint32_t EncodedStateCrc(absl::string_view bytes);

// OK when `snapshot` belongs to a model with this fingerprint and state size.
absl::Status CheckStateMatchesModel(const StateSnapshot& snapshot,
                                    absl::string_view fingerprint,
                                    int64_t state_floats);

}  // namespace statestream

#endif  // STATESTREAM_STATE_STORE_STATE_CODEC_H_
