// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the StateStore implementations: argument checks and the
// typed errors of state_store.h. Not part of the public interface.
#ifndef STATESTREAM_STATE_STORE_INTERNAL_STORE_UTIL_H_
#define STATESTREAM_STATE_STORE_INTERNAL_STORE_UTIL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "state_store/state_store.h"

namespace statestream::store_internal {

absl::Status ValidateKey(const SessionKey& key);
absl::Status ValidateTenant(absl::string_view tenant);
absl::Status ValidateWorkerId(absl::string_view id);
// A process's name in the cluster (a worker id, a gateway id: sent as a
// header and kept in Redis): 1-128 bytes of [A-Za-z0-9._:-]; `field`
// names it in the error.
absl::Status ValidateNodeId(absl::string_view field, absl::string_view id);
absl::Status ValidateOwner(absl::string_view owner);
// The longest finite TTL a store takes (session, lease or worker).
inline constexpr absl::Duration kMaxFiniteTtl = absl::Hours(24 * 3650);
// 1 ms <= ttl <= kMaxFiniteTtl, or InfiniteDuration; `what` names the
// field.
absl::Status ValidateTtl(absl::Duration ttl, absl::string_view what);
// The TTL an UpdateSession sets: none, `u.ttl`, or `default_ttl` for a
// `u.ttl` of 0 (as CreateSession reads 0).
std::optional<absl::Duration> UpdatedTtl(const SessionUpdate& u,
                                         absl::Duration default_ttl);
// Checks page_size and returns the session id the page starts after ("" for
// the first page).
absl::StatusOr<std::string> ParseListRequest(const ListSessionsRequest& r);
std::string MakePageToken(absl::string_view last_session_id);
// Adds `head` to `page` unless the page is full for `r` (page_size heads,
// or max_bytes): then sets the page's next_page_token and returns false.
bool AddToPage(const ListSessionsRequest& r, SessionHead head,
               ListSessionsPage* page);

// Whether `head` passes `r`'s filters (labels and model).
bool ListedBy(const ListSessionsRequest& r, const SessionHead& head);

absl::Status SessionNotFound(const SessionKey& key);
absl::Status SessionExists(const SessionKey& key);
// RESOURCE_EXHAUSTED/kTenantLimit: the tenant holds `max` sessions
// (CreateSessionRequest::max_tenant_sessions).
absl::Status TenantSessionLimit(int64_t max);
absl::Status HeadMismatch(uint64_t expected, uint64_t head);
absl::Status VersionNotKept(uint64_t version, uint64_t head, uint64_t oldest);
absl::Status Fenced(uint64_t fence, uint64_t current);
absl::Status LeaseBusy(absl::string_view owner);
absl::Status FingerprintMismatch(absl::string_view session_fp,
                                 absl::string_view state_fp);
absl::Status Unavailable(absl::string_view what);

// Length-prefixed encoding of a string map (labels) and its inverse
// (false on malformed input).
std::string EncodeStringMap(const std::map<std::string, std::string>& m);
bool DecodeStringMap(absl::string_view s,
                     std::map<std::string, std::string>* m);

// The VersionInfo of `snapshot` encoded as `encoded`.
VersionInfo DescribeVersion(const StateSnapshot& snapshot,
                            absl::string_view encoded, uint64_t version,
                            uint64_t fence, uint32_t chunk_count);
// The same from the encoding's size and trailing CRC.
VersionInfo DescribeVersion(const StateSnapshot& snapshot,
                            uint64_t encoded_bytes, uint32_t encoded_crc,
                            uint64_t version, uint64_t fence,
                            uint32_t chunk_count);

// DATA_LOSS/STATE_CORRUPT unless the loaded `snapshot` is where its
// version's record `v` (what GetHead and ListVersions report) says: the
// same position, input offset and tokenizer tail size. A record edited
// apart from its state would otherwise report one place and resume at
// another.
absl::Status CheckVersionMatchesState(const VersionInfo& v,
                                      const StateSnapshot& snapshot);

// What the writer said made a version (cause, request id and, for a
// commit, rolled_back_from), copied from its request into `v`.
void RecordCause(const CommitRequest& r, VersionInfo* v);
void RecordCause(const CreateSessionRequest& r, VersionInfo* v);

// Rollback as every store implements it: `version`'s state committed on
// `store` as version expected_version + 1 (LoadVersion, then Commit with
// cause kRollback). Same errors as StateStore::Rollback.
absl::StatusOr<CommitResult> RollbackByCommit(StateStore& store,
                                              const SessionKey& key,
                                              uint64_t expected_version,
                                              uint64_t fence, uint64_t version,
                                              Durability durability,
                                              const std::string& request_id);

}  // namespace statestream::store_internal

#endif  // STATESTREAM_STATE_STORE_INTERNAL_STORE_UTIL_H_
