// SPDX-License-Identifier: Apache-2.0
#include "services/request_checks.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/utf8.h"
#include "state_store/state_codec.h"

namespace statestream {

absl::Status BadField(absl::string_view field, absl::string_view why) {
  return MakeError(absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
                   absl::StrCat(field, ": ", why),
                   {{"field", std::string(field)}});
}

absl::Status CheckRequestId(const std::string& id) {
  bool ok = !id.empty() && id.size() <= 64;
  for (char c : id) {
    ok = ok && (absl::ascii_isalnum(c) || c == '.' || c == '_' || c == ':' ||
                c == '-');
  }
  if (!ok)
    return BadField("request_id", "required, 1-64 bytes of [A-Za-z0-9._:-]");
  return absl::OkStatus();
}

absl::Status CheckSessionId(const std::string& id, const char* field) {
  bool ok = !id.empty() && id.size() <= 128 && absl::ascii_isalnum(id[0]);
  for (char c : id) {
    ok = ok && (absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-');
  }
  if (!ok) {
    return BadField(field,
                    "1-128 bytes of [A-Za-z0-9._-], starting alphanumeric");
  }
  return absl::OkStatus();
}

absl::Status CheckLabels(
    const google::protobuf::Map<std::string, std::string>& labels,
    absl::string_view field) {
  // Over a size limit: MESSAGE_TOO_LARGE with the limit (the proto's
  // LIMITS); otherwise malformed: INVALID_ARGUMENT.
  auto too_large = [field](size_t limit, const char* what) {
    return MakeError(
        absl::StatusCode::kInvalidArgument, Reason::kMessageTooLarge,
        absl::StrCat(field, ": ", what),
        {{"field", std::string(field)}, {"limit", absl::StrCat(limit)}});
  };
  if (labels.size() > 64) return too_large(64, "at most 64 labels");
  for (const auto& [k, v] : labels) {
    if (k.size() > 63) return too_large(63, "label keys are at most 63 bytes");
    bool ok = !k.empty();
    for (char c : k) {
      ok = ok && (absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '/' ||
                  c == '-');
    }
    if (!ok) return BadField(field, "keys are 1-63 bytes of [A-Za-z0-9._/-]");
    if (v.size() > 255) {
      return too_large(255, "label values are at most 255 bytes");
    }
    if (!IsValidUtf8(v)) {
      return BadField(field, "values are at most 255 bytes of UTF-8");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Duration> TtlFromProto(
    bool has_ttl, const google::protobuf::Duration& ttl) {
  if (!has_ttl) return absl::ZeroDuration();
  // google.protobuf.Duration: |nanos| < 1e9, with the sign of seconds.
  if (ttl.nanos() <= -1000000000 || ttl.nanos() >= 1000000000 ||
      (ttl.seconds() > 0 && ttl.nanos() < 0) ||
      (ttl.seconds() < 0 && ttl.nanos() > 0)) {
    return BadField("ttl", "not a valid Duration (nanos out of range)");
  }
  const absl::Duration d =
      absl::Seconds(ttl.seconds()) + absl::Nanoseconds(ttl.nanos());
  if (d < absl::Seconds(1) || d > absl::Hours(24 * 365)) {
    return BadField("ttl", "must be between 1 s and 365 days");
  }
  return d;
}

absl::Status CheckDurabilityKnown(v1::Durability d) {
  switch (d) {
    case v1::DURABILITY_UNSPECIFIED:
    case v1::DURABILITY_MEMORY:
    case v1::DURABILITY_FSYNC:
    case v1::DURABILITY_REPLICATED:
      return absl::OkStatus();
    default:
      return BadField("durability",
                      absl::StrCat("unknown level ", static_cast<int>(d),
                                   " (MEMORY, FSYNC or REPLICATED)"));
  }
}

absl::Status CheckCreateSessionFields(const v1::CreateSessionRequest& req) {
  SS_RETURN_IF_ERROR(CheckRequestId(req.request_id()));
  if (!req.session_id().empty()) {
    SS_RETURN_IF_ERROR(CheckSessionId(req.session_id(), "session_id"));
  }
  SS_RETURN_IF_ERROR(CheckLabels(req.labels()));
  SS_RETURN_IF_ERROR(TtlFromProto(req.has_ttl(), req.ttl()).status());
  SS_RETURN_IF_ERROR(CheckDurabilityKnown(req.durability()));
  if (req.has_fork_from()) {
    SS_RETURN_IF_ERROR(
        CheckSessionId(req.fork_from().session_id(), "fork_from.session_id"));
  }
  return absl::OkStatus();
}

absl::Status CheckImportHeaderFields(const v1::ImportHeader& header) {
  SS_RETURN_IF_ERROR(CheckRequestId(header.request_id()));
  if (header.mode() != v1::IMPORT_MODE_CREATE &&
      header.mode() != v1::IMPORT_MODE_NEW_VERSION) {
    return BadField("mode", "required");
  }
  if (header.mode() == v1::IMPORT_MODE_NEW_VERSION ||
      !header.session_id().empty()) {
    SS_RETURN_IF_ERROR(CheckSessionId(header.session_id(), "session_id"));
  }
  // Fields of the other mode are refused, not dropped: labels that never
  // arrive, or a compare-and-set that never ran.
  if (header.mode() == v1::IMPORT_MODE_NEW_VERSION) {
    if (!header.labels().empty()) {
      return BadField("labels", "IMPORT_MODE_CREATE only");
    }
    if (header.has_ttl()) return BadField("ttl", "IMPORT_MODE_CREATE only");
  } else if (header.has_expected_version()) {
    return BadField("expected_version", "IMPORT_MODE_NEW_VERSION only");
  }
  SS_RETURN_IF_ERROR(CheckLabels(header.labels()));
  SS_RETURN_IF_ERROR(CheckDurabilityKnown(header.durability()));
  return TtlFromProto(header.has_ttl(), header.ttl()).status();
}

absl::Status StateBlobRejected(absl::string_view detail) {
  return MakeError(absl::StatusCode::kDataLoss, Reason::kStateCorrupt,
                   absl::StrCat("state blob rejected: ", detail),
                   {{"detail", std::string(detail)}});
}

absl::Status CheckImportStateLayout(const v1::StateHeader& state,
                                    uint64_t state_bytes, uint64_t n_embd) {
  const uint64_t limit =
      state_bytes + n_embd * sizeof(float) + (uint64_t{4} << 20);
  if (state.total_bytes() == 0 || state.total_bytes() > limit) {
    return StateBlobRejected("total_bytes out of range");
  }
  if (state.chunk_bytes() == 0 || state.chunk_bytes() > kStateChunkBytes ||
      state.chunk_count() != (state.total_bytes() + state.chunk_bytes() - 1) /
                                 state.chunk_bytes()) {
    return StateBlobRejected(
        "chunk_bytes/chunk_count disagree with total_bytes");
  }
  return absl::OkStatus();
}

}  // namespace statestream
