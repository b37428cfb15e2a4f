// SPDX-License-Identifier: Apache-2.0
// Tokenizers: bytes <-> token ids. Two implementations: the RWKV World
// tokenizer (greedy longest byte match over rwkv_vocab_v20230424.txt, used by
// RWKV-4 World .. RWKV-7) and a byte-level tokenizer (id = byte value, used by
// the byte-level tiny test models).
//
// Tokenizers work on raw bytes, not text: input need not be valid UTF-8 and
// decoded output may end inside a character (see utf8.h for the helpers that
// hold back incomplete sequences and replace invalid ones).
//
// A Tokenizer is immutable after construction and safe to use from many
// threads at once. Nothing here trusts its input: bad vocab files, bad ids and
// bad tails are errors or are handled as documented, never a crash.
#ifndef STATESTREAM_WORKER_ENGINE_TOKENIZER_H_
#define STATESTREAM_WORKER_ENGINE_TOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace statestream::engine {

// Output of Tokenizer::EncodeStream.
struct StreamEncodeResult {
  std::vector<int32_t> tokens;  // final tokens, in order
  std::string tail;             // undecided bytes; pass to the next call
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Short stable name: "rwkv_world", "bytes".
  virtual absl::string_view name() const = 0;
  // Changes whenever the id <-> bytes mapping changes (name plus a 64-bit
  // digest of the vocabulary). Part of a model fingerprint: a session's
  // pending tail is only meaningful to a tokenizer with the same fingerprint.
  virtual std::string fingerprint() const = 0;
  // Valid ids are [0, vocab_size()). Equals the model's embedding rows.
  virtual int vocab_size() const = 0;
  // The longest token in bytes. The World and byte tokenizers' EncodeStream
  // tail is always shorter; NeoX's can reach its 64 KiB stream cap (below).
  virtual size_t max_token_bytes() const = 0;
  // The end-of-text / document-separator id, if the vocabulary has one
  // (World: 0). It decodes to nothing. World's Encode never produces it;
  // NeoX's does for the text <|endoftext|> (an added token, as in the
  // reference).
  virtual std::optional<int32_t> end_of_text_id() const = 0;

  // The bytes of one token; empty for ids outside [0, vocab_size()), for the
  // end-of-text id, and for ids the vocabulary leaves unassigned. The view
  // lives as long as the Tokenizer.
  virtual absl::string_view TokenBytes(int32_t id) const = 0;

  // Tokens of `bytes`. Never fails: every byte value is encodable.
  virtual std::vector<int32_t> Encode(absl::string_view bytes) const = 0;

  // Streaming form of Encode, a pure function over an explicit tail so the
  // tail can be checkpointed with the session. Tokenizes tail + chunk and
  // returns the tokens that no further bytes can change, plus the undecided
  // remainder. With `flush` everything is tokenized and the tail is empty.
  // Contract: for any split of a text into chunks c1..cn, feeding them in
  // order (each call's tail into the next, flush on the last) yields exactly
  // Encode(c1 + ... + cn), concatenated. The tail is a suffix of tail +
  // chunk (shorter than max_token_bytes() for World and bytes; for NeoX,
  // see LoadNeoxTokenizer); a caller-supplied tail of any
  // length or content is accepted (it is just bytes that came first).
  virtual StreamEncodeResult EncodeStream(absl::string_view tail,
                                          absl::string_view chunk,
                                          bool flush) const = 0;

  // OK if every id is in [0, vocab_size()); otherwise INVALID_ARGUMENT with
  // Reason::kInvalidToken naming the first bad id and its index.
  absl::Status ValidateIds(absl::Span<const int32_t> ids) const;

  // Concatenated raw bytes of `ids` (possibly invalid or incomplete UTF-8).
  // Errors: as ValidateIds. The end-of-text id and unassigned ids contribute
  // nothing.
  virtual absl::StatusOr<std::string> Decode(
      absl::Span<const int32_t> ids) const;

 protected:
  Tokenizer() = default;
};

// OK if every id is in [0, vocab); otherwise INVALID_ARGUMENT with
// Reason::kInvalidToken naming the first bad id and its index
// (Tokenizer::ValidateIds with the tokenizer's vocab_size()).
absl::Status ValidateTokenIds(absl::Span<const int32_t> ids, int vocab);

// The World vocabulary always has this many ids (the model's embedding rows),
// whatever ids the vocab file assigns; the official file assigns 1..65529.
inline constexpr int kWorldVocabSize = 65536;

// Loads a World vocab file (`<id> <python literal> <byte length>` per line).
// Errors: NOT_FOUND if the file cannot be read; INVALID_ARGUMENT with
// Reason::kInvalidModelFile and the line number for malformed content: bad
// literal or escape, length mismatch, id 0 or id >= kWorldVocabSize,
// duplicate id or duplicate bytes, empty token, no single-byte token for
// some byte value.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadWorldTokenizer(
    const std::string& vocab_path);
// Same, from the file's contents in memory.
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseWorldTokenizer(
    absl::string_view vocab_contents);

// Loads the GPT-NeoX-20B byte-level BPE tokenizer (RWKV-4 Pile / Raven) from a
// Hugging Face tokenizer.json (model.vocab, model.merges as "a b" strings or
// pairs, added_tokens). Encoding: special added tokens, NFC, the space-run
// added tokens, the GPT-2 pre-tokenizer, BPE by merge rank; invalid UTF-8
// input is read with U+FFFD substitution. Decoding: the special added
// tokens (<|endoftext|> = end_of_text_id(), <|padding|>) contribute nothing,
// as the RWKV code's decode (skip_special_tokens). EncodeStream keeps as its
// tail the text after the last whitespace character that follows a
// non-whitespace one, so the tail is not bounded by max_token_bytes() for
// long runs without whitespace, or of whitespace (up to a 64 KiB cap, past
// which the cut is inexact: docs/architectures.md). A tail of 256 bytes or more
// is scanned again only when the text reaches the next step of a grid of four
// steps a doubling (meanwhile it holds up to a quarter more than the last scan
// left), so such a run streamed a byte at a time costs a few bytes of scanning
// a byte, not O(tail). Errors: NOT_FOUND if unreadable; INVALID_ARGUMENT /
// kInvalidModelFile for malformed JSON or a merge naming a token missing from
// the vocab.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadNeoxTokenizer(
    const std::string& path);
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseNeoxTokenizer(
    absl::string_view json);
// Picks the tokenizer from the file type: a JSON object (tokenizer.json) is
// the NeoX tokenizer, anything else a World vocab file.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFile(
    const std::string& path);

// The byte-level tokenizer: id = byte value, vocab 256, no end-of-text id
// (id 0 is the byte 0x00), tail always empty. Never fails; StatusOr for a
// uniform factory signature.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteTokenizer();

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_TOKENIZER_H_
