// SPDX-License-Identifier: Apache-2.0
#include "worker/generation_record.h"

#include <algorithm>
#include <cstring>

#include "common/status.h"
#include "common/utf8.h"

namespace statestream::worker {
namespace {

constexpr char kMagic[] = "SSGEN1\n";
constexpr size_t kMagicLen = sizeof(kMagic) - 1;
// The request id of the record carrying the UTF-8 carry: no client request
// id can take it (they are [A-Za-z0-9._:-]).
constexpr char kCarryId[] = "\x01utf8-carry";
// A carry known to be the tail's (no bytes): readers that predate it keep
// it as an in-progress record no request id matches, like kCarryId.
constexpr char kCarryKnownId[] = "\x01utf8-known";
// The history base (EncodeSamplerSideData) as one more record, kept by
// workers that predate it as an in-progress record, like kCarryId.
constexpr char kHistoryBaseId[] = "\x01history-base";

template <typename T>
void Put(T v, std::string* out) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out->append(buf, sizeof(T));
}

void PutStr16(const std::string& s, std::string* out) {
  Put<uint16_t>(static_cast<uint16_t>(s.size()), out);
  out->append(s.data(), s.size());
}

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  template <typename T>
  bool Get(T* v) {
    if (s_.size() - at_ < sizeof(T)) return false;
    std::memcpy(v, s_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return true;
  }
  bool Bytes(size_t n, std::string* out) {
    if (s_.size() - at_ < n) return false;
    out->assign(s_.data() + at_, n);
    at_ += n;
    return true;
  }
  bool Str16(std::string* out) {
    uint16_t n;
    return Get(&n) && Bytes(n, out);
  }
  size_t left() const { return s_.size() - at_; }

 private:
  const std::string& s_;
  size_t at_ = kMagicLen;
};

void PutRecord(const GenerationRecord& r, std::string* out) {
  PutStr16(r.request_id, out);
  Put<uint64_t>(r.digest, out);
  Put<int64_t>(absl::ToUnixMillis(r.committed_at), out);
  Put<uint8_t>(r.finish, out);
  Put<int32_t>(r.stop_token, out);
  PutStr16(r.stop_string, out);
  Put<uint32_t>(r.input_tokens, out);
  Put<uint32_t>(static_cast<uint32_t>(r.tokens.size()), out);
  for (int32_t t : r.tokens) Put<int32_t>(t, out);
}

absl::Status Corrupt(const char* what) {
  return DataLossError(Reason::kStateCorrupt,
                       std::string("generation records: ") + what);
}

}  // namespace

std::string EncodeSamplerSideData(const std::string& sampler,
                                  const std::deque<GenerationRecord>& records,
                                  const Utf8Carry& carry,
                                  uint64_t history_base) {
  const bool with_carry = !carry.bytes.empty() || carry.known;
  const bool with_base = history_base > 0;
  if (records.empty() && !with_carry && !with_base) return sampler;
  std::string out(kMagic, kMagicLen);
  Put<uint32_t>(static_cast<uint32_t>(sampler.size()), &out);
  out += sampler;
  Put<uint32_t>(static_cast<uint32_t>(records.size() + (with_carry ? 1 : 0) +
                                      (with_base ? 1 : 0)),
                &out);
  for (const GenerationRecord& r : records) PutRecord(r, &out);
  if (with_carry) {
    // The carry as one more record, which workers that predate it keep as
    // an in-progress generation no request id matches (and drop with the
    // next input, like the carry itself).
    GenerationRecord c;
    c.request_id = carry.bytes.empty() ? kCarryKnownId : kCarryId;
    c.digest = carry.input_offset;
    c.committed_at = absl::UnixEpoch();
    c.finish = kGenerationInProgress;
    for (unsigned char b : carry.bytes) c.tokens.push_back(b);
    PutRecord(c, &out);
  }
  if (with_base) {
    GenerationRecord b;
    b.request_id = kHistoryBaseId;
    b.digest = history_base;
    b.committed_at = absl::UnixEpoch();
    b.finish = kGenerationInProgress;
    PutRecord(b, &out);
  }
  return out;
}

absl::Status DecodeSamplerSideData(const std::string& value,
                                   std::string* sampler,
                                   std::deque<GenerationRecord>* records,
                                   Utf8Carry* carry, uint64_t* history_base) {
  records->clear();
  if (carry != nullptr) *carry = Utf8Carry();
  if (history_base != nullptr) *history_base = 0;
  if (value.compare(0, kMagicLen, kMagic) != 0) {
    *sampler = value;
    return absl::OkStatus();
  }
  Reader in(value);
  uint32_t n = 0;
  if (!in.Get(&n) || !in.Bytes(n, sampler)) return Corrupt("sampler state");
  uint32_t count = 0;
  if (!in.Get(&count) || count > 1 << 16) return Corrupt("count");
  for (uint32_t i = 0; i < count; ++i) {
    GenerationRecord r;
    int64_t ms = 0;
    uint32_t tokens = 0;
    if (!in.Str16(&r.request_id) || !in.Get(&r.digest) || !in.Get(&ms) ||
        !in.Get(&r.finish) || !in.Get(&r.stop_token) ||
        !in.Str16(&r.stop_string) || !in.Get(&r.input_tokens) ||
        !in.Get(&tokens) || in.left() / 4 < tokens) {
      return Corrupt("truncated record");
    }
    r.committed_at = absl::FromUnixMillis(ms);
    r.tokens.resize(tokens);
    for (int32_t& t : r.tokens) in.Get(&t);
    if (r.request_id == kCarryId) {
      if (r.tokens.empty() || r.tokens.size() > 3)
        return Corrupt("utf-8 carry");
      Utf8Carry c;
      c.input_offset = r.digest;
      for (int32_t t : r.tokens) {
        if (t < 0x80 || t > 0xFF) return Corrupt("utf-8 carry");
        c.bytes.push_back(static_cast<char>(t));
      }
      // The start of a character more bytes can complete, as the worker
      // only ever writes: any other bytes (a crafted import) would make
      // every later append of valid text INVALID_UTF8.
      if (Utf8CompletePrefixLength(c.bytes) != 0) {
        return Corrupt("utf-8 carry");
      }
      c.known = true;
      if (carry != nullptr) *carry = std::move(c);
      continue;
    }
    if (r.request_id == kHistoryBaseId) {
      if (!r.tokens.empty()) return Corrupt("history base");
      if (history_base != nullptr) *history_base = r.digest;
      continue;
    }
    if (r.request_id == kCarryKnownId) {
      if (!r.tokens.empty()) return Corrupt("utf-8 carry");
      if (carry != nullptr) *carry = Utf8Carry{"", r.digest, true};
      continue;
    }
    records->push_back(std::move(r));
  }
  if (in.left() != 0) return Corrupt("trailing bytes");
  return absl::OkStatus();
}

absl::Status CheckGenerationRecords(
    const std::string& sampler, const std::deque<GenerationRecord>& records) {
  for (const GenerationRecord& r : records) {
    if (r.finish > kLastFinish && r.finish != kGenerationInProgress) {
      return Corrupt("record finish");
    }
    if (!IsValidUtf8(r.stop_string)) return Corrupt("record stop string");
    if (r.finish == kGenerationInProgress && sampler.empty()) {
      return Corrupt("in-progress record without a sampler state");
    }
  }
  return absl::OkStatus();
}

void AddGenerationRecord(GenerationRecord record, int max_records,
                         int64_t max_tokens, absl::Duration window,
                         absl::Time now,
                         std::deque<GenerationRecord>* records) {
  records->push_back(std::move(record));
  int64_t tokens = 0;
  for (const GenerationRecord& r : *records) tokens += r.tokens.size();
  while (records->size() > 1 &&
         (records->size() > static_cast<size_t>(std::max(max_records, 1)) ||
          tokens > max_tokens ||
          now - records->front().committed_at > window)) {
    tokens -= records->front().tokens.size();
    records->pop_front();
  }
}

void DropInProgressRecords(std::deque<GenerationRecord>* records) {
  records->erase(std::remove_if(records->begin(), records->end(),
                                [](const GenerationRecord& r) {
                                  return r.finish == kGenerationInProgress;
                                }),
                 records->end());
}

const GenerationRecord* FindGenerationRecord(
    const std::deque<GenerationRecord>& records, const std::string& request_id,
    absl::Duration window, absl::Time now) {
  for (auto it = records.rbegin(); it != records.rend(); ++it) {
    if (it->request_id == request_id && now - it->committed_at <= window) {
      return &*it;
    }
  }
  return nullptr;
}

}  // namespace statestream::worker
