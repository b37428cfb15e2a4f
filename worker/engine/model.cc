// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/model.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <system_error>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/rwkv4.h"
#include "worker/engine/rwkv5.h"
#include "worker/engine/rwkv6.h"
#include "worker/engine/rwkv7.h"
#ifdef STATESTREAM_HAVE_CUDA
#include "worker/engine/cuda/cuda_model.h"
#endif

namespace statestream::engine {

const char* ArchName(Arch arch) {
  switch (arch) {
    case Arch::kRwkv7:
      return "x070";
    case Arch::kRwkv6:
      return "x060";
    case Arch::kRwkv5:
      return "x052";
    case Arch::kRwkv4:
      return "v4";
  }
  return "unknown";
}

void Model::InitState(float* state) const {
  std::fill(state, state + info_.state_floats, 0.0f);
}

absl::Status Model::ValidateBatch(absl::Span<const SequenceWork> batch) const {
  absl::flat_hash_set<const float*> states;
  const int vocab = info_.config.vocab_size;
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceWork& w = batch[s];
    if (w.tokens.empty()) continue;
    if (w.state == nullptr) {
      return InvalidArgumentError(Reason::kInvalidArgument,
                                  absl::StrCat("sequence ", s, ": no state"));
    }
    if (!states.insert(w.state).second) {
      return InvalidArgumentError(
          Reason::kInvalidArgument,
          absl::StrCat("sequence ", s, " shares its state with another"));
    }
    for (size_t i = 0; i < w.tokens.size(); ++i) {
      if (w.tokens[i] < 0 || w.tokens[i] >= vocab) {
        return InvalidArgumentError(
            Reason::kInvalidToken,
            absl::StrCat("token ", w.tokens[i], " at index ", i,
                         " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    if (!w.logit_positions.empty() && w.logits == nullptr) {
      return InvalidArgumentError(
          Reason::kInvalidArgument,
          absl::StrCat("sequence ", s, ": logits requested without a buffer"));
    }
    for (int32_t p : w.logit_positions) {
      if (p < 0 || static_cast<size_t>(p) >= w.tokens.size()) {
        return InvalidArgumentError(
            Reason::kInvalidArgument,
            absl::StrCat("logit position ", p, " outside [0, ", w.tokens.size(),
                         ")"));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<std::unique_ptr<Model>> LoadOnDevice(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options) {
  if (!options.device.empty() && options.device != "cpu" &&
      options.device != "cuda") {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        absl::StrCat("unknown device '", options.device, "' (cpu or cuda)"));
  }
  if (options.device == "cuda") {
    if (options.precision == WeightPrecision::kInt8) {
      return FailedPreconditionError(
          Reason::kInvalidArgument,
          "int8 weights run on the cpu only; use bf16 or f32 with cuda");
    }
#ifdef STATESTREAM_HAVE_CUDA
    CudaModelOptions cuda;
    cuda.precision = options.precision;
    cuda.split_activations =
        options.bf16_activations == Bf16Activations::kSplit;
    if (LooksLikeRwkv7(*file)) return LoadRwkv7Cuda(std::move(file), cuda);
    if (LooksLikeRwkv6(*file)) {
      if (options.cuda_verified_only) {
        return FailedPreconditionError(
            Reason::kInvalidArgument,
            "the x060 CUDA path has not run on a GPU yet (docs/cuda.md); "
            "--device cuda runs it anyway");
      }
      return LoadRwkv6Cuda(std::move(file), cuda);
    }
    return FailedPreconditionError(
        Reason::kInvalidArgument,
        "the CUDA backend runs x070 and x060 models only; load this one on "
        "the cpu");
#else
    return CudaDeviceStatus();
#endif
  }
  // Detection by key set, in the order of docs/architectures.md.
  if (LooksLikeRwkv7(*file)) return LoadRwkv7(std::move(file), options);
  if (LooksLikeRwkv6(*file)) return LoadRwkv6(std::move(file), options);
  if (LooksLikeRwkv5(*file)) return LoadRwkv5(std::move(file), options);
  if (LooksLikeRwkv4(*file)) {
    // RWKV-5.0/5.1 keep v4's time_first name (per head) and add ln_x.
    if (file->Find("blocks.0.att.ln_x.weight") != nullptr) {
      return InvalidArgumentError(
          Reason::kInvalidModelFile,
          "unsupported architecture: RWKV-5.0/5.1 (att.time_first with "
          "att.ln_x); x052 and later are supported");
    }
    return LoadRwkv4(std::move(file), options);
  }
  return InvalidArgumentError(
      Reason::kInvalidModelFile,
      "unsupported architecture: the tensor names match no known RWKV "
      "version (x070 needs blocks.0.att.r_k and att.w0, x060 att.time_maa_x, "
      "x052 att.time_faaaa with a 2-D att.time_decay, v4 att.time_first)");
}

absl::Status OutOfMemory(const ModelOptions& options) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "out of memory loading the model (", options.threads,
      " threads; the weights need about the file's size, or 1/4 of it as "
      "int8 from fp32)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadModel(
    std::shared_ptr<const WeightFile> file, const ModelOptions& options) {
  // A process (or pod) out of memory, threads or address space gets an
  // error, not an abort: the weight arena's mappings throw bad_alloc, the
  // model's thread pool (started as it is made) system_error.
  try {
    return LoadOnDevice(std::move(file), options);
  } catch (const std::bad_alloc&) {
    return OutOfMemory(options);
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start the engine's threads (--threads ",
                     options.threads, "): ", e.what()));
  }
}

#ifndef STATESTREAM_HAVE_CUDA
absl::Status CudaDeviceStatus() {
  return FailedPreconditionError(
      Reason::kInvalidArgument,
      "no CUDA device: this build has no CUDA backend (STATESTREAM_CUDA=OFF)");
}
#endif

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path,
                                                 const ModelOptions& options) {
  absl::StatusOr<std::unique_ptr<WeightFile>> file;
  try {
    file = WeightFile::Open(path);
  } catch (const std::bad_alloc&) {
    return OutOfMemory(options);
  }
  if (!file.ok()) return file.status();
  return LoadModel(std::shared_ptr<const WeightFile>(*std::move(file)),
                   options);
}

}  // namespace statestream::engine
