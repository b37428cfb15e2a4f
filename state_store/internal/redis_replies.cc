// SPDX-License-Identifier: Apache-2.0
// The Redis store's replies and script arguments (redis_store.h).
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/random.h"
#include "state_store/internal/redis_scripts.h"
#include "state_store/internal/redis_store.h"

namespace statestream::store_internal {

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
                        kLuaCountSlots,
                        kLuaUnmarkCreate};
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

uint64_t U64(const Fields& f, const std::string& k) {
  auto it = f.find(k);
  uint64_t v = 0;
  if (it != f.end() && !absl::SimpleAtoi(it->second, &v)) v = 0;
  return v;
}
int64_t I64(const Fields& f, const std::string& k) {
  auto it = f.find(k);
  int64_t v = 0;
  if (it != f.end() && !absl::SimpleAtoi(it->second, &v)) v = 0;
  return v;
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

std::string FenceSalt() { return absl::StrCat(ThreadRng()() & 1023); }

VersionInfo ParseVersion(const Fields& f) {
  VersionInfo v;
  v.version = U64(f, "version");
  v.position = U64(f, "position");
  v.input_offset = U64(f, "input_offset");
  v.tail_bytes = static_cast<uint32_t>(U64(f, "tail_bytes"));
  v.fence = U64(f, "fence");
  v.state_bytes = U64(f, "state_bytes");
  v.chunk_count = static_cast<uint32_t>(U64(f, "chunk_count"));
  v.state_crc32c = static_cast<uint32_t>(U64(f, "crc"));
  v.rolled_back_from = U64(f, "rolled_back_from");
  v.cause = VersionCauseOf(U64(f, "cause"));
  v.request_id = Get(f, "rid");
  const uint64_t d = U64(f, "durability");
  v.durability =
      d >= 1 && d <= 3 ? static_cast<Durability>(d) : Durability::kMemory;
  v.committed_at = absl::FromUnixMillis(I64(f, "committed_ms"));
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
