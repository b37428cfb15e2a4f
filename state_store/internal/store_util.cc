// SPDX-License-Identifier: Apache-2.0
#include "state_store/internal/store_util.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace statestream {

const char* DurabilityName(Durability d) {
  switch (d) {
    case Durability::kMemory:
      return "MEMORY";
    case Durability::kFsync:
      return "FSYNC";
    case Durability::kReplicated:
      return "REPLICATED";
  }
  return "UNKNOWN";
}

absl::Status DurabilityNotReached(uint64_t version, Durability wanted,
                                  Durability reached) {
  return MakeError(
      absl::StatusCode::kUnavailable, Reason::kStoreUnavailable,
      absl::StrCat("version ", version, " reached durability ",
                   DurabilityName(reached), ", not ", DurabilityName(wanted)),
      {{"durability_reached", DurabilityName(reached)},
       {"version", absl::StrCat(version)}});
}

std::optional<Durability> DurabilityReachedOf(const absl::Status& st) {
  const std::optional<std::string> name =
      GetErrorMetadata(st, "durability_reached");
  if (!name) return std::nullopt;
  for (Durability d :
       {Durability::kMemory, Durability::kFsync, Durability::kReplicated}) {
    if (*name == DurabilityName(d)) return d;
  }
  return std::nullopt;
}

bool IsVersionNotKept(const absl::Status& st) {
  return absl::IsNotFound(st) && GetReason(st) == Reason::kVersionMismatch;
}

namespace store_internal {
namespace {

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
}

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return MakeError(absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
                   absl::StrCat(field, " ", why),
                   {{"field", std::string(field)}});
}

}  // namespace

absl::Status ValidateTenant(absl::string_view t) {
  if (t.empty() || t.size() > 64)
    return Invalid("tenant", "must be 1-64 bytes");
  for (char c : t) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-')) {
      return Invalid("tenant", "must be [a-z0-9_-]");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateKey(const SessionKey& key) {
  SS_RETURN_IF_ERROR(ValidateTenant(key.tenant));
  const std::string& s = key.session_id;
  if (s.empty() || s.size() > 128 || !IsAlnum(s[0])) {
    return Invalid("session_id", "must be 1-128 bytes, starting alphanumeric");
  }
  for (char c : s) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') {
      return Invalid("session_id", "must be [A-Za-z0-9._-]");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateNodeId(absl::string_view field, absl::string_view id) {
  if (id.empty() || id.size() > 128) {
    return Invalid(field, "must be 1-128 bytes");
  }
  for (char c : id) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-' && c != ':') {
      return Invalid(field, "must be [A-Za-z0-9._:-]");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateWorkerId(absl::string_view id) {
  return ValidateNodeId("worker_id", id);
}

absl::Status ValidateOwner(absl::string_view owner) {
  if (owner.empty() || owner.size() > 256) {
    return Invalid("owner", "must be 1-256 bytes");
  }
  return absl::OkStatus();
}

absl::Status ValidateTtl(absl::Duration ttl, absl::string_view what) {
  if (ttl <= absl::ZeroDuration()) return Invalid(what, "must be positive");
  if (ttl != absl::InfiniteDuration() && ttl < absl::Milliseconds(1)) {
    return Invalid(what, "must be at least 1 ms");
  }
  // Far past the API's 365 days; the Redis scripts take TTLs below 2^53
  // ms and would fail after writing part of a call past that.
  if (ttl != absl::InfiniteDuration() && ttl > kMaxFiniteTtl) {
    return Invalid(what, "must be at most 3650 days (or infinite)");
  }
  return absl::OkStatus();
}

std::optional<absl::Duration> UpdatedTtl(const SessionUpdate& u,
                                         absl::Duration default_ttl) {
  if (u.ttl && *u.ttl == absl::ZeroDuration()) return default_ttl;
  return u.ttl;
}

absl::StatusOr<std::string> ParseListRequest(const ListSessionsRequest& r) {
  SS_RETURN_IF_ERROR(ValidateTenant(r.tenant));
  if (r.page_size < 1 || r.page_size > 1000) {
    return Invalid("page_size", "must be 1-1000");
  }
  if (r.page_token.empty()) return std::string();
  std::string after;
  if (!absl::WebSafeBase64Unescape(r.page_token, &after) || after.empty() ||
      after[0] != 'p') {
    return Invalid("page_token", "is not a token this store issued");
  }
  return after.substr(1);
}

std::string MakePageToken(absl::string_view last_session_id) {
  return absl::WebSafeBase64Escape(absl::StrCat("p", last_session_id));
}

namespace {

// About what `h` takes in a Session message: its strings and labels plus
// the fixed fields.
int64_t HeadBytes(const SessionHead& h) {
  int64_t n = 128 + h.key.session_id.size() + h.model_id.size() +
              h.model_fingerprint.size() + h.parent_session_id.size() +
              h.owner.size();
  for (const auto& [k, v] : h.labels) n += k.size() + v.size() + 8;
  return n;
}

}  // namespace

bool AddToPage(const ListSessionsRequest& r, SessionHead head,
               ListSessionsPage* page) {
  const int64_t bytes = HeadBytes(head);
  if (static_cast<int>(page->sessions.size()) >= r.page_size ||
      (r.max_bytes > 0 && !page->sessions.empty() &&
       page->bytes + bytes > r.max_bytes)) {
    page->next_page_token = MakePageToken(page->sessions.back().key.session_id);
    return false;
  }
  page->bytes += bytes;
  page->sessions.push_back(std::move(head));
  return true;
}

bool ListedBy(const ListSessionsRequest& r, const SessionHead& head) {
  if (!r.model_filter.empty() && head.model_id != r.model_filter) {
    return false;
  }
  for (const auto& [k, v] : r.label_filter) {
    auto it = head.labels.find(k);
    if (it == head.labels.end() || it->second != v) return false;
  }
  return true;
}

absl::Status SessionNotFound(const SessionKey& key) {
  return MakeError(absl::StatusCode::kNotFound, Reason::kSessionNotFound,
                   absl::StrCat("session ", key.session_id, " not found"),
                   {{"session_id", key.session_id}});
}

absl::Status SessionExists(const SessionKey& key) {
  return MakeError(absl::StatusCode::kAlreadyExists, Reason::kSessionExists,
                   absl::StrCat("session ", key.session_id, " exists"),
                   {{"session_id", key.session_id}});
}

absl::Status TenantSessionLimit(int64_t max) {
  return MakeError(
      absl::StatusCode::kResourceExhausted, Reason::kTenantLimit,
      absl::StrCat(
          "tenant limit reached: too many sessions (max_sessions=", max, ")"),
      {{"limit", "max_sessions"}, {"max", absl::StrCat(max)}});
}

absl::Status HeadMismatch(uint64_t expected, uint64_t head) {
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   Reason::kVersionMismatch,
                   absl::StrCat("expected version ", expected,
                                " is not the head (", head, ")"),
                   {{"head_version", absl::StrCat(head)}});
}

absl::Status VersionNotKept(uint64_t version, uint64_t head, uint64_t oldest) {
  return MakeError(
      absl::StatusCode::kNotFound, Reason::kVersionMismatch,
      version > head
          ? absl::StrCat("no version ", version, " yet (head is ", head,
                         "; kept: ", oldest, "..", head, ")")
          : absl::StrCat("version ", version, " is not kept (kept: ", oldest,
                         "..", head, ")"),
      {{"version", absl::StrCat(version)},
       {"head_version", absl::StrCat(head)},
       {"oldest_version", absl::StrCat(oldest)}});
}

absl::Status Fenced(uint64_t fence, uint64_t current) {
  return MakeError(absl::StatusCode::kAborted, Reason::kFenced,
                   absl::StrCat("fence ", fence, " is not current (", current,
                                "): the lease was taken over"),
                   {{"fence", absl::StrCat(current)}});
}

absl::Status LeaseBusy(absl::string_view owner) {
  return MakeError(absl::StatusCode::kAborted, Reason::kSessionBusy,
                   absl::StrCat("session lease is held by ", owner),
                   {{"owner", std::string(owner)}});
}

absl::Status FingerprintMismatch(absl::string_view session_fp,
                                 absl::string_view state_fp) {
  return MakeError(
      absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
      absl::StrCat("state of model ", state_fp,
                   " committed to a session of model ", session_fp),
      {{"expected_fingerprint", std::string(session_fp)},
       {"actual_fingerprint", std::string(state_fp)}});
}

absl::Status Unavailable(absl::string_view what) {
  return MakeError(absl::StatusCode::kUnavailable, Reason::kStoreUnavailable,
                   absl::StrCat("state store unavailable: ", what));
}

std::string EncodeStringMap(const std::map<std::string, std::string>& m) {
  std::string out;
  for (const auto& [k, v] : m)
    absl::StrAppend(&out, k.size(), ":", k, v.size(), ":", v);
  return out;
}

bool DecodeStringMap(absl::string_view s,
                     std::map<std::string, std::string>* m) {
  m->clear();
  auto next = [&s](std::string* out) {
    const size_t colon = s.find(':');
    size_t n = 0;
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtoi(s.substr(0, colon), &n) || s.size() - colon - 1 < n) {
      return false;
    }
    out->assign(s.data() + colon + 1, n);
    s.remove_prefix(colon + 1 + n);
    return true;
  };
  while (!s.empty()) {
    std::string k, v;
    if (!next(&k) || !next(&v)) return false;
    (*m)[k] = v;
  }
  return true;
}

absl::Status CheckVersionMatchesState(const VersionInfo& v,
                                      const StateSnapshot& s) {
  if (v.position == s.position && v.input_offset == s.input_offset &&
      v.tail_bytes == s.tokenizer_tail.size()) {
    return absl::OkStatus();
  }
  return DataLossError(
      Reason::kStateCorrupt,
      absl::StrCat("state is corrupt: version ", v.version,
                   " records position ", v.position, ", input offset ",
                   v.input_offset, " and ", v.tail_bytes,
                   " tail bytes; its state holds ", s.position, ", ",
                   s.input_offset, " and ", s.tokenizer_tail.size()));
}

VersionInfo DescribeVersion(const StateSnapshot& s, absl::string_view encoded,
                            uint64_t version, uint64_t fence,
                            uint32_t chunk_count) {
  return DescribeVersion(s, encoded.size(), EncodedStateCrc(encoded), version,
                         fence, chunk_count);
}

VersionInfo DescribeVersion(const StateSnapshot& s, uint64_t encoded_bytes,
                            uint32_t encoded_crc, uint64_t version,
                            uint64_t fence, uint32_t chunk_count) {
  VersionInfo v;
  v.version = version;
  v.position = s.position;
  v.input_offset = s.input_offset;
  v.tail_bytes = static_cast<uint32_t>(s.tokenizer_tail.size());
  v.fence = fence;
  v.state_bytes = encoded_bytes;
  v.chunk_count = chunk_count;
  v.state_crc32c = encoded_crc;
  return v;
}

void RecordCause(const CommitRequest& r, VersionInfo* v) {
  v->rolled_back_from = r.rolled_back_from;
  v->cause = r.cause;
  v->request_id = r.request_id;
}

void RecordCause(const CreateSessionRequest& r, VersionInfo* v) {
  v->cause = r.cause;
  v->request_id = r.request_id;
}

absl::StatusOr<CommitResult> RollbackByCommit(StateStore& store,
                                              const SessionKey& key,
                                              uint64_t expected_version,
                                              uint64_t fence, uint64_t version,
                                              Durability durability,
                                              const std::string& request_id) {
  absl::StatusOr<LoadedVersion> old = store.LoadVersion(key, version);
  if (!old.ok()) return old.status();
  CommitRequest r;
  r.key = key;
  r.expected_version = expected_version;
  r.fence = fence;
  r.state = std::move(old->state);
  r.durability = durability;
  r.rolled_back_from = old->version.version;
  r.cause = VersionCause::kRollback;
  r.request_id = request_id;
  return store.Commit(r);
}

}  // namespace store_internal
}  // namespace statestream
