// SPDX-License-Identifier: Apache-2.0
// Field checks of public API requests that need nothing but the request:
// the worker runs them, and a gateway runs the same ones first, so a
// malformed request gets the same INVALID_ARGUMENT (field=...) through a
// gateway as from `serve`, not a tenant limit, an unknown model or a
// retryable UNAVAILABLE (the model's workers restarting) that its retries
// could never get past.
#ifndef STATESTREAM_SERVICES_REQUEST_CHECKS_H_
#define STATESTREAM_SERVICES_REQUEST_CHECKS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "statestream/v1/statestream.pb.h"

namespace statestream {

// INVALID_ARGUMENT/INVALID_ARGUMENT naming `field` (metadata field).
absl::Status BadField(absl::string_view field, absl::string_view why);

// 1-64 bytes of [A-Za-z0-9._:-]; INVALID_ARGUMENT (field=request_id).
absl::Status CheckRequestId(const std::string& request_id);

// Session ids as the API defines them; INVALID_ARGUMENT (field).
absl::Status CheckSessionId(const std::string& id, const char* field);

// Labels and TTL limits of CreateSessionRequest; INVALID_ARGUMENT naming
// `field` (a ListSessionsRequest's label_selector: the same rules).
absl::Status CheckLabels(
    const google::protobuf::Map<std::string, std::string>& labels,
    absl::string_view field = "labels");
// 0 when unset (the store's default).
absl::StatusOr<absl::Duration> TtlFromProto(
    bool has_ttl, const google::protobuf::Duration& ttl);

// A durability this version knows (DURABILITY_UNSPECIFIED included);
// whether the state store reaches it is the worker's to say.
absl::Status CheckDurabilityKnown(v1::Durability d);

// Every field check of a CreateSession, in the worker's order: request_id,
// session_id, labels, ttl, durability, fork_from.session_id.
absl::Status CheckCreateSessionFields(const v1::CreateSessionRequest& req);

// Every field check of an ImportState header, in the worker's order:
// request_id, mode, session_id, the other mode's fields, labels,
// durability, ttl.
absl::Status CheckImportHeaderFields(const v1::ImportHeader& header);

// DATA_LOSS/STATE_CORRUPT for a state blob an import sent: "state blob
// rejected: <detail>" (metadata detail).
absl::Status StateBlobRejected(absl::string_view detail);

// An ImportState header's state layout against the model its fingerprint
// names, whose recurrent state is `state_bytes` (Model.state_bytes) of
// width `n_embd`: total_bytes more than 0 and within what an encoding of
// such a state can take (the state, one more row, and 4 MiB for the
// encoding's header and tokenizer tail), chunk_bytes at most
// kStateChunkBytes (1 MiB) and chunk_count what the two make. DATA_LOSS/
// STATE_CORRUPT otherwise, as for a blob that fails its checksum: the
// worker runs it before it takes room for the blob, a gateway (which
// knows the model from its workers' ListModels) before it buffers one.
absl::Status CheckImportStateLayout(const v1::StateHeader& state,
                                    uint64_t state_bytes, uint64_t n_embd);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_REQUEST_CHECKS_H_
