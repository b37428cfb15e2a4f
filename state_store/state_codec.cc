// SPDX-License-Identifier: Apache-2.0
#include "state_store/state_codec.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/status.h"

namespace statestream {
namespace {

constexpr char kMagic[8] = {'S', 'S', 'S', 'T', 'A', 'T', 'E', '1'};

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutBytes(std::string* out, absl::string_view b) {
  PutU32(out, static_cast<uint32_t>(b.size()));
  out->append(b.data(), b.size());
}

absl::Status Corrupt(absl::string_view what) {
  return DataLossError(Reason::kStateCorrupt,
                       absl::StrCat("state is corrupt: ", what));
}

// Bounds-checked little-endian reader.
class Reader {
 public:
  explicit Reader(absl::string_view b) : b_(b) {}
  bool U32(uint32_t* v) {
    if (b_.size() < 4) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i) *v |= uint32_t(uint8_t(b_[i])) << (8 * i);
    b_.remove_prefix(4);
    return true;
  }
  bool U64(uint64_t* v) {
    if (b_.size() < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v |= uint64_t(uint8_t(b_[i])) << (8 * i);
    b_.remove_prefix(8);
    return true;
  }
  bool Bytes(std::string* s) {
    uint32_t n;
    if (!U32(&n) || n > kMaxStateFieldBytes || b_.size() < n) return false;
    s->assign(b_.data(), n);
    b_.remove_prefix(n);
    return true;
  }
  bool Raw(void* dst, size_t n) {
    if (b_.size() < n) return false;
    std::memcpy(dst, b_.data(), n);
    b_.remove_prefix(n);
    return true;
  }
  size_t left() const { return b_.size(); }

 private:
  absl::string_view b_;
};

}  // namespace

namespace {

constexpr char kMagicV2[8] = {'S', 'S', 'S', 'T', 'A', 'T', 'E', '2'};
constexpr uint32_t kMaxChunkBytes = 1u << 26;
// The header's five strings at their bound, and its fixed fields.
constexpr uint64_t kMaxHeaderBytes = 5 * uint64_t{kMaxStateFieldBytes} + 4096;

absl::StatusOr<StateSnapshot> DecodeV1(absl::string_view bytes) {
  const absl::string_view body = bytes.substr(0, bytes.size() - 4);
  Reader crc_reader(bytes.substr(bytes.size() - 4));
  uint32_t want_crc;
  crc_reader.U32(&want_crc);
  if (Crc32c(0, body.data(), body.size()) != want_crc) {
    return Corrupt("checksum mismatch");
  }
  Reader r(body.substr(sizeof(kMagic)));
  StateSnapshot s;
  uint64_t n;
  if (!r.Bytes(&s.model_fingerprint) || !r.U64(&s.position) ||
      !r.Bytes(&s.tokenizer_tail) || !r.Bytes(&s.sampler_state) || !r.U64(&n)) {
    return Corrupt("truncated header");
  }
  if (n != r.left() / sizeof(float) || r.left() % sizeof(float) != 0) {
    return Corrupt(absl::StrCat("header says ", n, " floats but ", r.left(),
                                " bytes follow"));
  }
  s.state.resize(n);
  if (n) r.Raw(s.state.data(), n * sizeof(float));
  return s;
}

uint64_t ChunkCount(uint64_t payload, uint32_t chunk) {
  return (payload + chunk - 1) / chunk;
}

}  // namespace

absl::Status CheckEncodable(const StateSnapshot& s) {
  for (const auto& [name, field] :
       {std::pair<const char*, const std::string*>{"model_fingerprint",
                                                   &s.model_fingerprint},
        {"architecture", &s.architecture},
        {"tokenizer_tail", &s.tokenizer_tail},
        {"sampler_state", &s.sampler_state},
        {"parent_session_id", &s.parent_session_id}}) {
    if (field->size() > kMaxStateFieldBytes) {
      return InvalidArgumentError(
          Reason::kMessageTooLarge,
          absl::StrCat("the state's ", name, " is ", field->size(),
                       " bytes; a state holds at most ", kMaxStateFieldBytes,
                       " bytes in one field"));
    }
  }
  if (s.state.size() > kMaxStateFloats ||
      s.last_hidden.size() > kMaxStateFloats) {
    return InvalidArgumentError(
        Reason::kMessageTooLarge,
        absl::StrCat("the state holds ", s.state.size() + s.last_hidden.size(),
                     " floats; at most ", kMaxStateFloats, " each part"));
  }
  // What DecodeState refuses is never written: a state that was written
  // always decodes (docs/state-format.md).
  if (s.dtype != StateDtype::kF32) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        absl::StrCat("the state's dtype ", static_cast<uint32_t>(s.dtype),
                     " is not one this format holds (f32)"));
  }
  if (!s.last_hidden.empty() && s.n_embd != 0 &&
      s.last_hidden.size() != s.n_embd) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        absl::StrCat("the state's last_hidden holds ", s.last_hidden.size(),
                     " floats, not n_embd = ", s.n_embd));
  }
  return absl::OkStatus();
}

EncodedStateParts EncodeStateParts(const StateSnapshot& s) {
  // fp32 little-endian; this code targets little-endian hosts only.
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__);
  std::string header;
  PutBytes(&header, s.model_fingerprint);
  PutBytes(&header, s.architecture);
  PutU32(&header, s.n_layer);
  PutU32(&header, s.n_embd);
  PutU32(&header, s.n_head);
  PutU32(&header, s.head_size);
  PutU32(&header, static_cast<uint32_t>(s.dtype));
  PutU64(&header, s.position);
  PutU64(&header, s.input_offset);
  PutBytes(&header, s.tokenizer_tail);
  PutBytes(&header, s.sampler_state);
  PutBytes(&header, s.parent_session_id);
  PutU64(&header, s.parent_version);
  PutU64(&header, s.state.size());
  PutU64(&header, s.last_hidden.size());
  PutU32(&header, kStateChunkBytes);

  EncodedStateParts out;
  out.prefix.reserve(12 + header.size());
  out.prefix.append(kMagicV2, sizeof(kMagicV2));
  PutU32(&out.prefix, static_cast<uint32_t>(header.size()));
  out.prefix += header;
  out.state = absl::string_view(reinterpret_cast<const char*>(s.state.data()),
                                s.state.size() * sizeof(float));
  out.last_hidden =
      absl::string_view(reinterpret_cast<const char*>(s.last_hidden.data()),
                        s.last_hidden.size() * sizeof(float));
  // Payload chunk CRCs; a chunk may straddle state and last_hidden.
  const uint64_t payload = out.state.size() + out.last_hidden.size();
  const uint64_t chunks = ChunkCount(payload, kStateChunkBytes);
  out.suffix.reserve(4 * chunks + 4);
  for (uint64_t c = 0; c < chunks; ++c) {
    const uint64_t at = c * kStateChunkBytes;
    const uint64_t end = std::min<uint64_t>(at + kStateChunkBytes, payload);
    uint32_t crc = 0;
    if (at < out.state.size()) {
      const uint64_t stop = std::min<uint64_t>(end, out.state.size());
      crc = Crc32c(crc, out.state.data() + at, stop - at);
    }
    if (end > out.state.size()) {
      const uint64_t from = std::max<uint64_t>(at, out.state.size());
      crc = Crc32c(crc, out.last_hidden.data() + (from - out.state.size()),
                   end - from);
    }
    PutU32(&out.suffix, crc);
  }
  // The trailer covers everything but the payload, which the chunk CRCs
  // cover: one pass over the payload in all.
  uint32_t crc = Crc32c(0, out.prefix.data(), out.prefix.size());
  crc = Crc32c(crc, out.suffix.data(), 4 * chunks);
  PutU32(&out.suffix, crc);
  return out;
}

uint32_t EncodedStateParts::crc() const { return EncodedStateCrc(suffix); }

std::string EncodeState(const StateSnapshot& s) {
  const EncodedStateParts parts = EncodeStateParts(s);
  std::string out;
  out.reserve(parts.size());
  for (absl::string_view p :
       {absl::string_view(parts.prefix), parts.state, parts.last_hidden,
        absl::string_view(parts.suffix)}) {
    out.append(p.data(), p.size());
  }
  return out;
}

uint32_t EncodedStateCrc(absl::string_view bytes) {
  if (bytes.size() < 4) return 0;
  uint32_t v = 0;
  Reader(bytes.substr(bytes.size() - 4)).U32(&v);
  return v;
}

absl::StatusOr<StateSnapshot> DecodeState(absl::string_view bytes) {
  if (bytes.size() >= sizeof(kMagic) + 4 &&
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0) {
    return DecodeV1(bytes);
  }
  if (bytes.size() < sizeof(kMagicV2) + 8 ||
      std::memcmp(bytes.data(), kMagicV2, sizeof(kMagicV2)) != 0) {
    return Corrupt("not a statestream state (bad magic)");
  }
  uint32_t header_len;
  Reader(bytes.substr(8)).U32(&header_len);
  if (header_len > kMaxHeaderBytes || bytes.size() - 16 < header_len) {
    return Corrupt("header length out of range");
  }
  const size_t payload_at = 12 + header_len;
  Reader r(bytes.substr(12, header_len));
  StateSnapshot s;
  uint32_t dtype, chunk_bytes;
  uint64_t n_state, n_hidden;
  if (!r.Bytes(&s.model_fingerprint) || !r.Bytes(&s.architecture) ||
      !r.U32(&s.n_layer) || !r.U32(&s.n_embd) || !r.U32(&s.n_head) ||
      !r.U32(&s.head_size) || !r.U32(&dtype) || !r.U64(&s.position) ||
      !r.U64(&s.input_offset) || !r.Bytes(&s.tokenizer_tail) ||
      !r.Bytes(&s.sampler_state) || !r.Bytes(&s.parent_session_id) ||
      !r.U64(&s.parent_version) || !r.U64(&n_state) || !r.U64(&n_hidden) ||
      !r.U32(&chunk_bytes)) {
    return Corrupt("truncated header");
  }
  if (r.left() != 0) return Corrupt("header has trailing bytes");
  if (dtype != static_cast<uint32_t>(StateDtype::kF32)) {
    return Corrupt(absl::StrCat("unknown dtype ", dtype));
  }
  if (n_state > kMaxStateFloats || n_hidden > kMaxStateFloats ||
      chunk_bytes == 0 || chunk_bytes > kMaxChunkBytes) {
    return Corrupt("sizes out of range");
  }
  if (n_hidden != 0 && s.n_embd != 0 && n_hidden != s.n_embd) {
    return Corrupt("last_hidden is not n_embd long");
  }
  const uint64_t payload = (n_state + n_hidden) * sizeof(float);
  const uint64_t chunks = ChunkCount(payload, chunk_bytes);
  const uint64_t rest = bytes.size() - payload_at;
  if (rest != payload + 4 * chunks + 4) {
    return Corrupt(absl::StrCat("header says ", payload, " payload bytes and ",
                                chunks, " chunks but ", rest, " bytes follow"));
  }
  const char* table = bytes.data() + payload_at + payload;
  uint32_t crc = Crc32c(0, bytes.data(), payload_at);
  crc = Crc32c(crc, table, 4 * chunks);
  if (crc != EncodedStateCrc(bytes)) {
    return Corrupt("header checksum mismatch");
  }
  const char* p = bytes.data() + payload_at;
  Reader crcs(absl::string_view(table, 4 * chunks));
  for (uint64_t c = 0; c < chunks; ++c) {
    const uint64_t at = c * chunk_bytes;
    const uint64_t n = std::min<uint64_t>(chunk_bytes, payload - at);
    uint32_t want = 0;
    crcs.U32(&want);
    if (Crc32c(0, p + at, n) != want) {
      return Corrupt(absl::StrCat("checksum mismatch in payload chunk ", c));
    }
  }
  s.dtype = StateDtype::kF32;
  s.state.resize(n_state);
  if (n_state) std::memcpy(s.state.data(), p, n_state * sizeof(float));
  s.last_hidden.resize(n_hidden);
  if (n_hidden) {
    std::memcpy(s.last_hidden.data(), p + n_state * sizeof(float),
                n_hidden * sizeof(float));
  }
  return s;
}

absl::Status CheckStateMatchesModel(const StateSnapshot& s,
                                    absl::string_view fingerprint,
                                    int64_t state_floats) {
  if (s.model_fingerprint != fingerprint ||
      static_cast<int64_t>(s.state.size()) != state_floats) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
        absl::StrCat("state belongs to model ", s.model_fingerprint, " (",
                     s.state.size(), " floats), not ", fingerprint, " (",
                     state_floats, " floats)"),
        {{"expected_fingerprint", std::string(fingerprint)},
         {"actual_fingerprint", s.model_fingerprint}});
  }
  return absl::OkStatus();
}

}  // namespace statestream
