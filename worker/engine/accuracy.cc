// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/accuracy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/status.h"

namespace statestream::engine {
namespace {

// Feeds one chunk, writing the logits after each of its tokens to `logits`
// (tokens x vocab): a long sequence never needs all its logits at once.
absl::Status FeedChunk(Model& m, std::vector<float>& state,
                       absl::Span<const int32_t> tokens,
                       std::vector<float>& logits) {
  std::vector<int32_t> positions(tokens.size());
  std::iota(positions.begin(), positions.end(), 0);
  logits.resize(tokens.size() * m.info().config.vocab_size);
  SequenceWork w;
  w.tokens = tokens;
  w.state = state.data();
  w.logit_positions = positions;
  w.logits = logits.data();
  return m.Forward({&w, 1});
}

int ArgMax(const float* v, int n) {
  return static_cast<int>(std::max_element(v, v + n) - v);
}

// log(sum(exp(v))) computed stably.
double LogSumExp(const float* v, int n) {
  const double m = *std::max_element(v, v + n);
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(v[i] - m);
  return m + std::log(s);
}

}  // namespace

absl::StatusOr<AccuracyReport> CompareLogits(Model& reference, Model& candidate,
                                             absl::Span<const int32_t> tokens,
                                             int chunk) {
  const int V = reference.info().config.vocab_size;
  if (candidate.info().config.vocab_size != V) {
    return InvalidArgumentError(Reason::kInvalidArgument,
                                "the models have different vocabularies");
  }
  if (chunk < 1) chunk = 1;
  std::vector<float> ref_state(reference.info().state_floats);
  std::vector<float> cand_state(candidate.info().state_floats);
  reference.InitState(ref_state.data());
  candidate.InitState(cand_state.data());
  AccuracyReport r;
  double sq = 0, kl = 0;
  int64_t agree = 0;
  std::vector<float> ref_logits, cand_logits;
  for (size_t i = 0; i < tokens.size(); i += chunk) {
    const auto part = tokens.subspan(i, chunk);
    SS_RETURN_IF_ERROR(FeedChunk(reference, ref_state, part, ref_logits));
    SS_RETURN_IF_ERROR(FeedChunk(candidate, cand_state, part, cand_logits));
    for (size_t p = 0; p < part.size(); ++p) {
      const float* a = &ref_logits[p * V];
      const float* b = &cand_logits[p * V];
      for (int v = 0; v < V; ++v) {
        const double d = std::fabs(static_cast<double>(a[v]) - b[v]);
        r.max_abs_logit_error = std::max(r.max_abs_logit_error, d);
        r.max_abs_reference_logit =
            std::max(r.max_abs_reference_logit, std::fabs(double{a[v]}));
        sq += d * d;
      }
      agree += ArgMax(a, V) == ArgMax(b, V);
      const double la = LogSumExp(a, V), lb = LogSumExp(b, V);
      double k = 0;
      for (int v = 0; v < V; ++v) {
        const double lpa = a[v] - la, lpb = b[v] - lb;
        k += std::exp(lpa) * (lpa - lpb);
      }
      kl += k;
      ++r.positions;
    }
  }
  if (r.positions > 0) {
    r.rms_logit_error = std::sqrt(sq / (static_cast<double>(r.positions) * V));
    r.top1_agreement = static_cast<double>(agree) / r.positions;
    r.mean_kl = kl / r.positions;
  }
  return r;
}

}  // namespace statestream::engine
