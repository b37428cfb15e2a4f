// SPDX-License-Identifier: Apache-2.0
#include "cli/model_loading.h"

#include <cctype>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace statestream::cli {

std::string ModelIdFromPath(const std::string& path) {
  std::string id = std::filesystem::path(path).stem().string();
  for (char& c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' &&
        c != '-') {
      c = '-';
    }
  }
  return id.empty() ? "model" : id.substr(0, 128);
}

absl::StatusOr<ServedModel> LoadServedModel(const std::string& model_path,
                                            const std::string& vocab_path) {
  if (!std::filesystem::is_regular_file(model_path)) {
    return absl::NotFoundError(
        absl::StrCat("--model ", model_path, ": no such file"));
  }
  ServedModel out;
  auto model = engine::LoadModel(model_path);
  if (!model.ok()) return model.status();
  out.model = *std::move(model);
  out.model_id = ModelIdFromPath(model_path);
  if (out.model->info().config.vocab_size == 256) {
    out.tokenizer = *engine::MakeByteTokenizer();
    return out;
  }
  std::string vocab = vocab_path;
  if (vocab.empty()) {
    vocab = (std::filesystem::path(model_path).parent_path() /
             "rwkv_vocab_v20230424.txt")
                .string();
  }
  auto tokenizer = engine::LoadTokenizerFile(vocab);
  if (!tokenizer.ok()) {
    return absl::Status(
        tokenizer.status().code(),
        absl::StrCat("--vocab ", vocab, ": ", tokenizer.status().message()));
  }
  out.tokenizer = *std::move(tokenizer);
  return out;
}

}  // namespace statestream::cli
