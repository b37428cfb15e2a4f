// SPDX-License-Identifier: Apache-2.0
#include "worker/api_convert.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <grpcpp/server_context.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/utf8.h"
#include "services/caller_metadata.h"
#include "worker/metrics.h"

namespace statestream::worker {

void CountError(const SessionManager& manager, const absl::Status& status) {
  WorkerMetrics* metrics = manager.options().metrics;
  if (metrics == nullptr || status.ok()) return;
  const Reason reason = GetReason(status);
  std::string name(ReasonName(reason));
  if (reason == Reason::kUnspecified) {
    name = absl::StatusCodeToString(status.code());
  }
  metrics->IncError(name);
}

uint64_t ContentDigest(const google::protobuf::Message& message) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

void ToTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return;
  const int64_t ns = absl::ToUnixNanos(t);
  out->set_seconds(ns / 1000000000);
  out->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

}  // namespace

absl::StatusOr<std::string> TenantOf(const grpc::CallbackServerContext& ctx,
                                     const CallerPolicy& policy) {
  SS_RETURN_IF_ERROR(
      policy.internal_token.Check(ClientMetadata(ctx, kInternalTokenHeader)));
  return policy.auth.Authenticate(ClientMetadata(ctx, "authorization"),
                                  ClientMetadata(ctx, "x-statestream-tenant"));
}

absl::StatusOr<std::unique_ptr<TenantLimits::StreamSlot>> HoldStream(
    const CallerPolicy& policy, const std::string& tenant) {
  if (policy.limits == nullptr) return nullptr;
  SS_ASSIGN_OR_RETURN(TenantLimits::StreamSlot slot,
                      policy.limits->AcquireStream(tenant));
  return std::make_unique<TenantLimits::StreamSlot>(std::move(slot));
}

absl::Status CheckSessionQuota(const CallerPolicy& policy,
                               const std::string& tenant,
                               const std::string& session_id,
                               const std::string& request_id,
                               absl::Duration request_id_window) {
  if (policy.limits == nullptr) return absl::OkStatus();
  return policy.limits->CheckNewCreate(tenant, session_id, request_id,
                                       request_id_window);
}

int64_t SessionLimit(const grpc::CallbackServerContext& ctx,
                     const CallerPolicy& policy, const std::string& tenant) {
  int64_t limit = 0;
  if (policy.limits != nullptr) {
    limit = policy.limits->For(tenant).max_sessions;
  }
  // A server that authenticates its callers (serve --api-keys) is the
  // edge: its callers are clients, not gateways, and the header is theirs
  // to make up. Only a worker behind gateways (no keys of its own) takes
  // it.
  if (!policy.auth.development_mode()) return limit;
  const auto& md = ctx.client_metadata();
  auto it = md.find(kSessionLimitHeader);
  int64_t forwarded = 0;
  if (it != md.end() &&
      absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()),
                       &forwarded) &&
      forwarded > 0 && (limit <= 0 || forwarded < limit)) {
    limit = forwarded;
  }
  return limit;
}

absl::StatusOr<std::optional<Durability>> DurabilityFromProto(v1::Durability d,
                                                              Durability max) {
  SS_RETURN_IF_ERROR(CheckDurabilityKnown(d));
  Durability level;
  switch (d) {
    case v1::DURABILITY_UNSPECIFIED:
      return std::nullopt;
    case v1::DURABILITY_MEMORY:
      level = Durability::kMemory;
      break;
    case v1::DURABILITY_FSYNC:
      level = Durability::kFsync;
      break;
    default:  // DURABILITY_REPLICATED (CheckDurabilityKnown)
      level = Durability::kReplicated;
      break;
  }
  if (level > max) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kInvalidArgument,
        absl::StrCat("this server's state store never reaches ",
                     DurabilityName(level), " (at most ", DurabilityName(max),
                     max == Durability::kMemory
                         ? "; `serve --data-dir` stores to disk: FSYNC)"
                         : ")"),
        {{"field", "durability"}, {"max_durability", DurabilityName(max)}});
  }
  return level;
}

v1::Durability DurabilityToProto(Durability d) {
  return static_cast<v1::Durability>(static_cast<int>(d));
}

void SessionToProto(const SessionView& v, v1::Session* out) {
  out->set_session_id(v.session_id);
  out->set_model_id(v.model_id);
  out->set_model_fingerprint(v.model_fingerprint);
  out->set_position(v.position);
  out->set_input_offset(v.input_offset);
  out->set_pending_bytes(v.pending_bytes);
  out->set_version(v.version);
  out->set_committed_position(v.committed_position);
  out->set_committed_input_offset(v.committed_input_offset);
  out->set_durability(DurabilityToProto(v.durability));
  for (const auto& [k, val] : v.labels) (*out->mutable_labels())[k] = val;
  if (v.ttl != absl::InfiniteDuration()) {
    // As kept (to the millisecond), not cut to whole seconds: a client
    // copying it into an UpdateSession would change it.
    absl::Duration rest;
    out->mutable_ttl()->set_seconds(
        absl::IDivDuration(v.ttl, absl::Seconds(1), &rest));
    out->mutable_ttl()->set_nanos(
        static_cast<int32_t>(absl::ToInt64Nanoseconds(rest)));
    if (v.update_time != absl::Time()) {
      ToTimestamp(v.update_time + v.ttl, out->mutable_expire_time());
    }
  }
  ToTimestamp(v.create_time, out->mutable_create_time());
  ToTimestamp(v.update_time, out->mutable_update_time());
  if (!v.parent_session_id.empty()) {
    out->mutable_parent()->set_session_id(v.parent_session_id);
    out->mutable_parent()->set_version(v.parent_version);
  }
  out->set_state_bytes(v.state_bytes);
}

void ModelToProto(const SessionManager& m, v1::Model* out) {
  const engine::ModelInfo& info = m.model().info();
  out->set_model_id(m.options().model_id);
  out->set_architecture(engine::ArchName(info.config.arch));
  out->set_n_layer(info.config.n_layer);
  out->set_n_embd(info.config.n_embd);
  out->set_n_head(info.config.n_head);
  out->set_head_size(info.config.head_size);
  out->set_dim_ffn(info.config.dim_ffn);
  out->set_vocab_size(info.config.vocab_size);
  out->set_params(info.params);
  out->set_state_bytes(info.state_floats * sizeof(float));
  out->set_fingerprint(m.fingerprint());
  out->set_tokenizer(m.tokenizer().name() == "rwkv_world"
                         ? "rwkv_vocab_v20230424"
                         : std::string(m.tokenizer().name()));
  out->add_backends(absl::StartsWith(info.kernels, "cuda") ? v1::BACKEND_CUDA
                                                           : v1::BACKEND_CPU);
  out->set_weights_dtype(info.weights_dtype);
  out->set_bf16_activations(info.bf16_activations);
  out->set_workers(1);
}

void VersionToProto(const VersionInfo& info, uint64_t parent_version,
                    v1::Version* out) {
  out->set_version(info.version);
  out->set_position(info.position);
  out->set_input_offset(info.input_offset);
  out->set_pending_bytes(info.tail_bytes);
  ToTimestamp(info.committed_at, out->mutable_create_time());
  out->set_durability(DurabilityToProto(info.durability));
  out->set_state_bytes(info.state_bytes);
  out->set_request_id(info.request_id);
  // What made it, as recorded; a version from a build that did not record
  // it: what the store can tell.
  out->set_cause(static_cast<v1::VersionCause>(info.cause));
  if (info.rolled_back_from != 0) {
    out->set_cause(v1::VERSION_CAUSE_ROLLBACK);
    out->set_source_version(info.rolled_back_from);
  } else if (info.version == 1) {
    if (info.cause == VersionCause::kUnspecified) {
      out->set_cause(parent_version != 0 ? v1::VERSION_CAUSE_FORK
                                         : v1::VERSION_CAUSE_CREATE);
    }
    // A fork's source version (a created or imported session has none).
    out->set_source_version(parent_version);
  }
}

}  // namespace statestream::worker
