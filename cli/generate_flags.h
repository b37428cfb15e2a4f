// SPDX-License-Identifier: Apache-2.0
// The sampling flags of `generate`, shared with `chat` (both list
// kGenerateFlagsFile), and the streaming loop both use.
#ifndef STATESTREAM_CLI_GENERATE_FLAGS_H_
#define STATESTREAM_CLI_GENERATE_FLAGS_H_

#include "absl/status/statusor.h"
#include "statestream/client.h"

namespace statestream::cli {

// __FILE__ of cli/generate_command.cc.
extern const char kGenerateFlagsFile[];

// --max-tokens, --temperature, --top-p, --top-k, --sample-seed, --stop. A
// UsageError (cli/cli_util.h) for a value the sampler would refuse: a
// negative --max-tokens or --top-k, a --temperature outside [0, 100],
// a --top-p outside (0, 1].
absl::StatusOr<v1::GenerateRequest> GenerateRequestFromFlags();

// Runs `request` on `session`, printing text as it arrives (or, with
// `json`, one GenerateChunk JSON object per line). Returns the final done.
absl::StatusOr<v1::GenerateDone> StreamGeneration(
    const client::Session& session, v1::GenerateRequest request, bool json);

}  // namespace statestream::cli

#endif  // STATESTREAM_CLI_GENERATE_FLAGS_H_
