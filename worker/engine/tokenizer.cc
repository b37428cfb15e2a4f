// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace statestream::engine {

absl::Status Tokenizer::ValidateIds(absl::Span<const int32_t> ids) const {
  return ValidateTokenIds(ids, vocab_size());
}

absl::Status ValidateTokenIds(absl::Span<const int32_t> ids, int vocab) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return InvalidArgumentError(
          Reason::kInvalidToken,
          absl::StrCat("token id ", ids[i], " at index ", i,
                       " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Tokenizer::Decode(
    absl::Span<const int32_t> ids) const {
  SS_RETURN_IF_ERROR(ValidateIds(ids));
  std::string out;
  for (int32_t id : ids) {
    const absl::string_view bytes = TokenBytes(id);
    out.append(bytes.data(), bytes.size());
  }
  return out;
}

}  // namespace statestream::engine
