// SPDX-License-Identifier: Apache-2.0
// Loading the model a worker serves, shared by `serve` and `worker`.
#ifndef STATESTREAM_CLI_MODEL_LOADING_H_
#define STATESTREAM_CLI_MODEL_LOADING_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/tokenizer.h"

namespace statestream::cli {

// A model id for the API from a checkpoint path: its stem, with characters
// outside [A-Za-z0-9._-] replaced by '-', at most 128 bytes.
std::string ModelIdFromPath(const std::string& path);

struct ServedModel {
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::string model_id;
};

// Loads the checkpoint at `model_path` and its tokenizer: the byte tokenizer
// for a 256-token vocabulary, else `vocab_path` (default:
// rwkv_vocab_v20230424.txt beside the model; a tokenizer.json gives the
// GPT-NeoX tokenizer). NOT_FOUND for a missing file; the loaders' errors
// otherwise, naming the flag.
absl::StatusOr<ServedModel> LoadServedModel(const std::string& model_path,
                                            const std::string& vocab_path);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_MODEL_LOADING_H_
