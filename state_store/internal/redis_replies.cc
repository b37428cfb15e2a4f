// SPDX-License-Identifier: Apache-2.0
// The Redis store's replies and script arguments (redis_store.h).
#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/random.h"
#include "common/status.h"
#include "state_store/internal/redis_scripts.h"
#include "state_store/internal/redis_store.h"

namespace statestream::store_internal {

bool AllHaveWaitaof(const std::vector<std::string>& info_server) {
  if (info_server.empty()) return false;
  for (const std::string& text : info_server) {
    const size_t at = text.find("redis_version:");
    if (at == std::string::npos) return false;
    const size_t begin = at + std::strlen("redis_version:");
    const std::vector<std::string> v = absl::StrSplit(
        text.substr(begin, text.find_first_of("\r\n", begin) - begin), '.');
    int major = 0, minor = 0;
    if (v.size() < 2 || !absl::SimpleAtoi(v[0], &major) ||
        !absl::SimpleAtoi(v[1], &minor) ||
        !(major > 7 || (major == 7 && minor >= 2))) {
      return false;
    }
  }
  return true;
}

std::string ScriptSource(Script s) {
  const char* body[] = {kLuaCreate,
                        kLuaCommit,
                        kLuaRead,
                        kLuaVersions,
                        kLuaUpdate,
                        kLuaDelete,
                        kLuaAcquire,
                        kLuaRenew,
                        kLuaRelease,
                        kLuaRegisterWorker,
                        kLuaUnregisterWorker,
                        kLuaListWorkers,
                        kLuaRecordDurability,
                        kLuaAwaitDurability,
                        kLuaReserveInIndex,
                        kLuaAcquireSlot,
                        kLuaRenewSlots,
                        kLuaCountSlots};
  static_assert(sizeof(body) / sizeof(body[0]) == kScriptCount);
  const bool slots = s == kAcquireSlot || s == kRenewSlots || s == kCountSlots;
  return absl::StrCat(kLuaPrelude, slots ? kLuaSlotsPrelude : "", body[s]);
}

std::string Str(const redisReply* r) {
  if (r == nullptr) return "";
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
      r->type == REDIS_REPLY_ERROR) {
    return std::string(r->str, r->len);
  }
  if (r->type == REDIS_REPLY_INTEGER) return absl::StrCat(r->integer);
  return "";
}

Fields Pairs(const redisReply* r) {
  Fields f;
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY) return f;
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    f[Str(r->element[i])] = Str(r->element[i + 1]);
  }
  return f;
}

namespace {

template <typename T>
absl::StatusOr<T> Number(const Fields& f, const std::string& k,
                         absl::string_view where) {
  auto it = f.find(k);
  T v = 0;
  if (it == f.end() || absl::SimpleAtoi(it->second, &v)) return v;
  return DataLossError(Reason::kStateCorrupt,
                       absl::StrCat("state is corrupt: ", where, " records ", k,
                                    " '", it->second.substr(0, 40), "'"));
}

}  // namespace

absl::StatusOr<uint64_t> U64(const Fields& f, const std::string& k,
                             absl::string_view where) {
  return Number<uint64_t>(f, k, where);
}
absl::StatusOr<int64_t> I64(const Fields& f, const std::string& k,
                            absl::string_view where) {
  return Number<int64_t>(f, k, where);
}
std::string Get(const Fields& f, const std::string& k) {
  auto it = f.find(k);
  return it == f.end() ? "" : it->second;
}

int64_t Ms(absl::Duration d) { return absl::ToInt64Milliseconds(d); }
int64_t TtlMs(absl::Duration ttl) {
  return ttl == absl::InfiniteDuration() ? -1 : std::max<int64_t>(1, Ms(ttl));
}

std::string NewNonce() { return RandomHex128(); }

Command PendingChunkWrite(absl::string_view key, absl::string_view chunk,
                          absl::string_view pending_ms) {
  return {"SET", key, chunk, "PX", pending_ms, "NX"};
}

Command PendingChunkRenewal(absl::string_view key,
                            absl::string_view pending_ms) {
  return {"PEXPIRE", key, pending_ms, "GT"};
}

std::vector<Command> CreateMark(absl::string_view marks,
                                absl::string_view nonce,
                                absl::string_view ttl_ms) {
  return {{"SADD", marks, nonce}, {"PEXPIRE", marks, ttl_ms}};
}

Command CreateUnmark(absl::string_view marks, absl::string_view nonce) {
  return {"SREM", marks, nonce};  // the set goes with its last member
}

std::string FenceSalt() { return absl::StrCat(ThreadRng()() & 1023); }

absl::StatusOr<VersionInfo> ParseVersion(const Fields& f) {
  VersionInfo v;
  // Named by the version it claims (the hash's own key is not at hand).
  const std::string where =
      absl::StrCat("version ", Get(f, "version").substr(0, 40));
  SS_ASSIGN_OR_RETURN(v.version, U64(f, "version", where));
  SS_ASSIGN_OR_RETURN(v.position, U64(f, "position", where));
  SS_ASSIGN_OR_RETURN(v.input_offset, U64(f, "input_offset", where));
  SS_ASSIGN_OR_RETURN(v.fence, U64(f, "fence", where));
  SS_ASSIGN_OR_RETURN(v.state_bytes, U64(f, "state_bytes", where));
  SS_ASSIGN_OR_RETURN(v.rolled_back_from, U64(f, "rolled_back_from", where));
  uint32_t* const narrow[] = {&v.tail_bytes, &v.chunk_count, &v.state_crc32c};
  const char* const narrow_keys[] = {"tail_bytes", "chunk_count", "crc"};
  for (int i = 0; i < 3; ++i) {
    SS_ASSIGN_OR_RETURN(const uint64_t n, U64(f, narrow_keys[i], where));
    if (n > std::numeric_limits<uint32_t>::max()) {
      return DataLossError(Reason::kStateCorrupt,
                           absl::StrCat("state is corrupt: ", where,
                                        " records ", narrow_keys[i], " ", n));
    }
    *narrow[i] = static_cast<uint32_t>(n);
  }
  SS_ASSIGN_OR_RETURN(const uint64_t cause, U64(f, "cause", where));
  v.cause = VersionCauseOf(cause);
  v.request_id = Get(f, "rid");
  SS_ASSIGN_OR_RETURN(const uint64_t d, U64(f, "durability", where));
  v.durability = RecordedDurability(
      static_cast<int64_t>(std::min<uint64_t>(d, INT64_MAX)));
  SS_ASSIGN_OR_RETURN(const int64_t committed, I64(f, "committed_ms", where));
  v.committed_at = absl::FromUnixMillis(committed);
  return v;
}

std::vector<std::string> VersionFields(const VersionInfo& v,
                                       const std::string& nonce) {
  std::vector<std::string> out = {
      "version",
      absl::StrCat(v.version),
      "position",
      absl::StrCat(v.position),
      "input_offset",
      absl::StrCat(v.input_offset),
      "tail_bytes",
      absl::StrCat(v.tail_bytes),
      "state_bytes",
      absl::StrCat(v.state_bytes),
      "chunk_count",
      absl::StrCat(v.chunk_count),
      "crc",
      absl::StrCat(v.state_crc32c),
      "rolled_back_from",
      absl::StrCat(v.rolled_back_from),
      "cause",
      absl::StrCat(static_cast<int>(v.cause)),
      "rid",
      v.request_id,
      "durability",
      absl::StrCat(static_cast<int>(v.durability)),
      "committed_ms",
      absl::StrCat(absl::ToUnixMillis(v.committed_at)),
      "nonce",
      nonce};
  if (v.fence != 0) {
    out.push_back("fence");
    out.push_back(absl::StrCat(v.fence));
  }
  return out;
}

}  // namespace statestream::store_internal
