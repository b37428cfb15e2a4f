// SPDX-License-Identifier: Apache-2.0
// --vocab, shared by several commands (tokenize, detokenize: a vocab file
// or "bytes"; model random: the vocabulary size; serve, worker: one vocab
// file per --model entry). --tokens is in tokens_flag.cc.
#include "absl/flags/flag.h"
#include "cli/cli_util.h"

ABSL_FLAG(std::string, vocab, "",
          "tokenize/detokenize: World vocabulary file "
          "(rwkv_vocab_v20230424.txt) or 'bytes' (token = byte); "
          "model random: the vocabulary size; model eval: the tokenizer its "
          "state files name (as serve's); serve/worker: the tokenizer "
          "of each --model entry, comma-separated in the same order (an "
          "empty entry or flag: rwkv_vocab_v20230424.txt beside the model; "
          "byte-level models need none).");

namespace statestream::cli {

const char* const kVocabFlagFile = __FILE__;

std::string VocabFlagValue() { return absl::GetFlag(FLAGS_vocab); }

}  // namespace statestream::cli
