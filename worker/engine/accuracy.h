// SPDX-License-Identifier: Apache-2.0
// How far a reduced-precision model (bf16 or int8 weights) drifts from the
// same checkpoint in fp32: the logits of both at every position of one long
// sequence, each carrying its own state.
#ifndef STATESTREAM_WORKER_ENGINE_ACCURACY_H_
#define STATESTREAM_WORKER_ENGINE_ACCURACY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/engine/model.h"

namespace statestream::engine {

struct AccuracyReport {
  int64_t positions = 0;
  double max_abs_logit_error = 0;  // over every logit of every position
  double rms_logit_error = 0;
  double max_abs_reference_logit = 0;  // scale for the errors above
  // Fraction of positions whose arg-max token is the same in both.
  double top1_agreement = 0;
  // Mean over positions of KL(reference || candidate) of the softmax, nats.
  double mean_kl = 0;
};

// Feeds `tokens` to both models from the zero state in chunks of `chunk`
// tokens, comparing the logits after every token. Both models must have the
// same vocabulary (else INVALID_ARGUMENT).
absl::StatusOr<AccuracyReport> CompareLogits(Model& reference, Model& candidate,
                                             absl::Span<const int32_t> tokens,
                                             int chunk = 64);

}  // namespace statestream::engine

#endif  // STATESTREAM_WORKER_ENGINE_ACCURACY_H_
