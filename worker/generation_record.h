// SPDX-License-Identifier: Apache-2.0
// What a session remembers of its recent committed generations, so that a
// retried committing Generate (same request id) replays the recorded output
// instead of sampling again. The records travel with the session's state:
// they are side data of the snapshot's `sampler_state` field, so they are
// committed atomically with the generation they describe and survive
// eviction, restarts and failover to another worker.
//
// Side-data format (little-endian): "SSGEN1\n", u32 sampler bytes, the
// sampler state (engine::SamplerState::Serialize), u32 record count, then
// per record: u16 + request id, u64 content digest, i64 commit time (unix
// ms), u8 finish (kGenerationInProgress for a periodic checkpoint), i32
// stop token, u16 + stop string, u32 input tokens, u32 n + n i32 output
// tokens. A value without the magic is a bare sampler state (sessions that
// never committed a generation).
//
// The text's UTF-8 carry (the incomplete character at the end of the input)
// travels as one more record when the tokenizer tail cannot give it back (a
// tokenizer that already emitted the character's first bytes as tokens):
// request id "\x01utf8-carry" (no client id can take it), digest = the
// input_offset it belongs to, finish in progress, tokens = its 1-3 bytes.
// Workers that predate it read it as an in-progress record no request
// matches and drop it with the next input; a reader uses it only at that
// input_offset.
#ifndef STATESTREAM_WORKER_GENERATION_RECORD_H_
#define STATESTREAM_WORKER_GENERATION_RECORD_H_

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace statestream::worker {

// `finish` of a generation checkpointed while it was still running (every
// N tokens / T seconds): `tokens` is its output so far, and the state and
// sampler state committed with the record are those right after it, so a
// retry replays `tokens` and continues from there. Such a record is only
// valid in the version it was committed with: whatever changes the session
// next drops it (DropInProgressRecords).
inline constexpr uint8_t kGenerationInProgress = 0xFF;
// The last finished `finish` (GenerateOutcome::Finish::kCancelled).
inline constexpr uint8_t kLastFinish = 3;

struct GenerationRecord {
  std::string request_id;
  uint64_t digest = 0;  // of the request's content
  absl::Time committed_at;
  uint8_t finish = 0;  // GenerateOutcome::Finish, or kGenerationInProgress
  int32_t stop_token = 0;
  std::string stop_string;
  uint32_t input_tokens = 0;
  std::vector<int32_t> tokens;  // the output
};

// The bytes of a UTF-8 character the input so far left open, as of
// `input_offset`. `known` without bytes records that the carry is what the
// tokenizer tail gives back (often none): snapshots that predate the record
// say nothing, and their reader cannot tell an open character from none.
struct Utf8Carry {
  std::string bytes;
  uint64_t input_offset = 0;
  bool known = false;  // set by the decoder for either record
};

// `history_base`: the input offset where the session's input history last
// restarted (a rollback or an import: input below it is another history's,
// so no request below it is a resend of its own), 0 for none.
// `sampler` alone when `records` are empty, the carry is not known and
// the base is 0.
std::string EncodeSamplerSideData(const std::string& sampler,
                                  const std::deque<GenerationRecord>& records,
                                  const Utf8Carry& carry = {},
                                  uint64_t history_base = 0);
// DATA_LOSS / STATE_CORRUPT for a malformed value. `carry` (optional) is
// empty unless the value holds one; `history_base` (optional) 0 unless it
// holds one.
absl::Status DecodeSamplerSideData(const std::string& value,
                                   std::string* sampler,
                                   std::deque<GenerationRecord>* records,
                                   Utf8Carry* carry = nullptr,
                                   uint64_t* history_base = nullptr);
// For an import: DATA_LOSS / STATE_CORRUPT for records no worker writes,
// as a replay answers with them: a finish outside GenerateOutcome::Finish
// and kGenerationInProgress, a stop string that is not UTF-8 (a proto
// string: a client could not parse its replay), an in-progress record
// without the sampler state it continues with. (Not when a stored state is
// loaded: a newer release's finish must not make a session unloadable
// during a rollout.)
absl::Status CheckGenerationRecords(
    const std::string& sampler, const std::deque<GenerationRecord>& records);

// Appends `record`, then drops the oldest records until at most
// `max_records` remain, their output is at most `max_tokens` tokens in all
// (the newest is always kept), and none is older than `window` at `now`.
void AddGenerationRecord(GenerationRecord record, int max_records,
                         int64_t max_tokens, absl::Duration window,
                         absl::Time now, std::deque<GenerationRecord>* records);

// Removes every kGenerationInProgress record.
void DropInProgressRecords(std::deque<GenerationRecord>* records);

// The newest record of `request_id` committed within `window` of `now`, or
// nullptr.
const GenerationRecord* FindGenerationRecord(
    const std::deque<GenerationRecord>& records, const std::string& request_id,
    absl::Duration window, absl::Time now);

}  // namespace statestream::worker

#endif  // STATESTREAM_WORKER_GENERATION_RECORD_H_
