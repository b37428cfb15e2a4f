// SPDX-License-Identifier: Apache-2.0
// The byte-level tokenizer: token id = byte value. Every token is one byte,
// so no token can grow with more input and EncodeStream never keeps a tail.
#include <array>

#include "worker/engine/tokenizer.h"

namespace statestream::engine {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer() {
    for (int b = 0; b < 256; ++b) bytes_[b] = static_cast<char>(b);
  }

  absl::string_view name() const override { return "bytes"; }
  std::string fingerprint() const override { return "bytes"; }
  int vocab_size() const override { return 256; }
  size_t max_token_bytes() const override { return 1; }
  std::optional<int32_t> end_of_text_id() const override {
    return std::nullopt;
  }

  absl::string_view TokenBytes(int32_t id) const override {
    if (id < 0 || id >= 256) return {};
    return absl::string_view(&bytes_[id], 1);
  }

  std::vector<int32_t> Encode(absl::string_view bytes) const override {
    std::vector<int32_t> ids(bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i) {
      ids[i] = static_cast<uint8_t>(bytes[i]);
    }
    return ids;
  }

  StreamEncodeResult EncodeStream(absl::string_view tail,
                                  absl::string_view chunk,
                                  bool /*flush*/) const override {
    StreamEncodeResult result;
    result.tokens = Encode(tail);
    const std::vector<int32_t> rest = Encode(chunk);
    result.tokens.insert(result.tokens.end(), rest.begin(), rest.end());
    return result;
  }

 private:
  std::array<char, 256> bytes_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteTokenizer() {
  return std::unique_ptr<Tokenizer>(new ByteTokenizer());
}

}  // namespace statestream::engine
