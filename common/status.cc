// SPDX-License-Identifier: Apache-2.0
#include "common/status.h"

#include <algorithm>
#include <array>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace statestream {
namespace {

constexpr absl::string_view kReasonUrl = "statestream.dev/reason";
constexpr absl::string_view kMetaUrlPrefix = "statestream.dev/meta/";
constexpr absl::string_view kPublicMessageUrl =
    "statestream.dev/public_message";

constexpr std::array<absl::string_view, 22> kNames = {
    "REASON_UNSPECIFIED",
    "SESSION_NOT_FOUND",
    "SESSION_EXISTS",
    "SESSION_BUSY",
    "POSITION_MISMATCH",
    "VERSION_MISMATCH",
    "FENCED",
    "MODEL_NOT_FOUND",
    "MODEL_MISMATCH",
    "STATE_CORRUPT",
    "INVALID_TOKEN",
    "INVALID_UTF8",
    "INVALID_ARGUMENT",
    "MESSAGE_TOO_LARGE",
    "OVERLOADED",
    "UNAUTHENTICATED",
    "STORE_UNAVAILABLE",
    "INVALID_MODEL_FILE",
    "DUPLICATE_REQUEST",
    "INTERNAL",
    "TENANT_LIMIT",
    "RESUME_DIVERGED",
};
static_assert(kNames.size() ==
              static_cast<size_t>(Reason::kResumeDiverged) + 1);

}  // namespace

absl::string_view ReasonName(Reason reason) {
  auto i = static_cast<size_t>(reason);
  return i < kNames.size() ? kNames[i] : kNames[0];
}

std::optional<Reason> ReasonFromName(absl::string_view name) {
  for (size_t i = 0; i < kNames.size(); ++i) {
    if (kNames[i] == name) return static_cast<Reason>(i);
  }
  return std::nullopt;
}

absl::Status MakeError(absl::StatusCode code, Reason reason,
                       absl::string_view message, ErrorMetadata metadata) {
  absl::Status status(code, message);
  status.SetPayload(kReasonUrl, absl::Cord(ReasonName(reason)));
  for (size_t i = 0; i < metadata.size(); ++i) {
    // The index keeps insertion order recoverable from the payload map.
    status.SetPayload(absl::StrCat(kMetaUrlPrefix, i, "/", metadata[i].first),
                      absl::Cord(metadata[i].second));
  }
  return status;
}

Reason GetReason(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonUrl);
  if (!payload) return Reason::kUnspecified;
  return ReasonFromName(std::string(*payload)).value_or(Reason::kUnspecified);
}

std::string GetReasonName(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonUrl);
  return payload ? std::string(*payload) : std::string();
}

void SetReasonName(absl::Status& status, absl::string_view reason_name) {
  if (reason_name.empty()) {
    status.ErasePayload(kReasonUrl);
  } else {
    status.SetPayload(kReasonUrl, absl::Cord(reason_name));
  }
}

absl::Status WithMessage(const absl::Status& status,
                         absl::string_view message) {
  absl::Status out(status.code(), message);
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& value) {
    out.SetPayload(url, value);
  });
  return out;
}

absl::Status WithPublicMessage(absl::Status status,
                               absl::string_view public_message) {
  if (!status.ok()) {
    status.SetPayload(kPublicMessageUrl, absl::Cord(public_message));
  }
  return status;
}

std::optional<std::string> GetPublicMessage(const absl::Status& status) {
  auto payload = status.GetPayload(kPublicMessageUrl);
  if (!payload) return std::nullopt;
  return std::string(*payload);
}

ErrorMetadata GetErrorMetadata(const absl::Status& status) {
  std::vector<std::pair<size_t, std::pair<std::string, std::string>>> items;
  status.ForEachPayload([&](absl::string_view url, const absl::Cord& value) {
    if (!absl::StartsWith(url, kMetaUrlPrefix)) return;
    absl::string_view rest = url.substr(kMetaUrlPrefix.size());
    size_t slash = rest.find('/');
    if (slash == absl::string_view::npos) return;
    size_t index = 0;
    for (char c : rest.substr(0, slash)) index = index * 10 + (c - '0');
    items.push_back(
        {index, {std::string(rest.substr(slash + 1)), std::string(value)}});
  });
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  ErrorMetadata out;
  for (auto& item : items) out.push_back(std::move(item.second));
  return out;
}

std::optional<std::string> GetErrorMetadata(const absl::Status& status,
                                            absl::string_view key) {
  for (auto& [k, v] : GetErrorMetadata(status)) {
    if (k == key) return v;
  }
  return std::nullopt;
}

}  // namespace statestream
