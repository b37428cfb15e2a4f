// SPDX-License-Identifier: Apache-2.0
#include "common/grpc_status.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "common/throttled_log.h"
#include "google/protobuf/unknown_field_set.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace statestream {
namespace {

// MarkUnread's unknown field: the largest field number a message may have
// (no statestream message uses it), with a value a client sending it by
// chance would not.
constexpr int kUnreadMarkField = (1 << 29) - 1;
constexpr uint64_t kUnreadMarkValue = 0x5353'554e'5245'4144;  // "SSUNREAD"

constexpr size_t kMaxMetadataKeyBytes = 128;
constexpr size_t kMaxMetadataValueBytes = 256;
constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i], or 0 if none does.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return len;
}

// `in` as valid UTF-8 of at most `max_bytes` bytes: invalid bytes become
// U+FFFD, and truncation never splits a character.
std::string SanitizeUtf8(absl::string_view in, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(in.size(), max_bytes));
  size_t i = 0;
  while (i < in.size()) {
    size_t len = Utf8SequenceLength(in, i);
    absl::string_view piece = len > 0 ? in.substr(i, len) : kReplacement;
    if (out.size() + piece.size() > max_bytes) break;
    out.append(piece.data(), piece.size());
    i += len > 0 ? len : 1;
  }
  return out;
}

// google.rpc.ErrorInfo's form for a reason: UPPER_SNAKE_CASE, at most 63
// characters. Anything else off the wire is not a reason this side relays.
bool IsReasonName(absl::string_view name) {
  if (name.empty() || name.size() > 63 || name == "REASON_UNSPECIFIED") {
    return false;
  }
  if (!(name.front() >= 'A' && name.front() <= 'Z')) return false;
  for (char c : name) {
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) {
      return false;
    }
  }
  return true;
}

// The log of withheld messages, one per code and reason: a flood of one
// kind (every call in a store outage) does not hide a rare other kind.
ThrottledLog& WithheldLog(int code, const std::string& reason) {
  ABSL_CONST_INIT static absl::Mutex mu(absl::kConstInit);
  static auto* logs =
      new std::map<std::pair<int, std::string>, std::unique_ptr<ThrottledLog>>;
  absl::MutexLock lock(&mu);
  std::unique_ptr<ThrottledLog>& log = (*logs)[{code, reason}];
  if (log == nullptr) log = std::make_unique<ThrottledLog>("statestream: ");
  return *log;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  int code = static_cast<int>(status.code());
  if (code < 1 || code > 16) code = static_cast<int>(grpc::StatusCode::UNKNOWN);
  const std::optional<std::string> shown = GetPublicMessage(status);
  std::string message =
      SanitizeUtf8(shown ? *shown : status.message(), kMaxErrorMessageBytes);

  google::rpc::ErrorInfo info;
  // By name, so a gateway relays a reason from a newer worker unchanged.
  std::string reason = GetReasonName(status);
  if (reason.empty()) reason = std::string(ReasonName(Reason::kUnspecified));
  // A server error raised without a reason is still the server's:
  // INTERNAL, so clients tell it from a transport failure (no ErrorInfo at
  // all), which they retry.
  if (reason == ReasonName(Reason::kUnspecified) &&
      (status.code() == absl::StatusCode::kInternal ||
       status.code() == absl::StatusCode::kUnknown)) {
    reason = std::string(ReasonName(Reason::kInternal));
  }
  if (shown) {
    // The whole text names the deployment's insides (WithPublicMessage):
    // the caller gets the public one, the operator's log the whole.
    WithheldLog(code, reason).Say([&] {
      return absl::StrCat("a client was told \"", message, "\" (",
                          absl::StatusCodeToString(status.code()), "/", reason,
                          "); the error: ", status.message());
    });
  }
  info.set_reason(std::move(reason));
  info.set_domain(kErrorDomain);
  for (const auto& [key, value] : GetErrorMetadata(status)) {
    (*info.mutable_metadata())[SanitizeUtf8(key, kMaxMetadataKeyBytes)] =
        SanitizeUtf8(value, kMaxMetadataValueBytes);
  }
  google::rpc::Status details;
  details.set_code(code);
  details.set_message(message);
  details.add_details()->PackFrom(info);
  return grpc::Status(static_cast<grpc::StatusCode>(code), std::move(message),
                      details.SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  auto code = static_cast<absl::StatusCode>(status.error_code());
  google::rpc::Status details;
  if (status.error_details().empty() ||
      !details.ParseFromString(status.error_details())) {
    return absl::Status(code, status.error_message());
  }
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    if (!any.Is<google::rpc::ErrorInfo>() || !any.UnpackTo(&info) ||
        info.domain() != kErrorDomain) {
      continue;
    }
    ErrorMetadata metadata(info.metadata().begin(), info.metadata().end());
    std::sort(metadata.begin(), metadata.end());
    const bool named = IsReasonName(info.reason());
    if (!named && metadata.empty()) break;
    absl::Status out = MakeError(code, Reason::kUnspecified,
                                 status.error_message(), std::move(metadata));
    // Verbatim, so a reason added by a newer server reaches the caller by
    // name (GetReasonName) instead of collapsing into REASON_UNSPECIFIED.
    SetReasonName(out, named ? absl::string_view(info.reason())
                             : ReasonName(Reason::kUnspecified));
    return out;
  }
  return absl::Status(code, status.error_message());
}

void MarkUnread(google::protobuf::Message* msg) {
  msg->GetReflection()->MutableUnknownFields(msg)->AddVarint(kUnreadMarkField,
                                                             kUnreadMarkValue);
}

bool ReadUnparsable(const google::protobuf::Message& msg) {
  const google::protobuf::UnknownFieldSet& unknown =
      msg.GetReflection()->GetUnknownFields(msg);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const google::protobuf::UnknownField& f = unknown.field(i);
    if (f.number() == kUnreadMarkField &&
        f.type() == google::protobuf::UnknownField::TYPE_VARINT &&
        f.varint() == kUnreadMarkValue) {
      return false;
    }
  }
  return true;
}

absl::Status UnparsableRequestError() {
  return absl::UnimplementedError(
      "a request message could not be parsed (a string field that is not "
      "UTF-8?)");
}

}  // namespace statestream
