// SPDX-License-Identifier: Apache-2.0
#include "state_store/state_codec.h"

#include <cstring>

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

std::string EncodeState(const StateSnapshot& s) {
  std::string out(kMagic, sizeof(kMagic));
  PutBytes(&out, s.model_fingerprint);
  PutU64(&out, s.position);
  PutBytes(&out, s.tokenizer_tail);
  PutBytes(&out, s.sampler_state);
  PutU64(&out, s.state.size());
  // fp32 little-endian; this code targets little-endian hosts only.
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__);
  out.append(reinterpret_cast<const char*>(s.state.data()),
             s.state.size() * sizeof(float));
  PutU32(&out, Crc32c(0, out.data(), out.size()));
  return out;
}

absl::StatusOr<StateSnapshot> DecodeState(absl::string_view bytes) {
  if (bytes.size() < sizeof(kMagic) + 4 ||
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return Corrupt("not a statestream state (bad magic)");
  }
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
  r.Raw(s.state.data(), n * sizeof(float));
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
                     state_floats, " floats)"));
  }
  return absl::OkStatus();
}

}  // namespace statestream
