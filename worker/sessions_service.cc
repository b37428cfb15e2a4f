// SPDX-License-Identifier: Apache-2.0
// statestream.v1.Sessions over the session managers of the worker's models
// (ModelSet routes each call). Unary calls run on a small pool of this
// service's own (they block on store I/O); ExportState and ImportState
// stream state blobs in chunks of at most 1 MiB, and load or commit the
// state on the same pool. Calls that wait for a busy session's turn
// (RollbackSession, a new-version import) leave the pool while they wait.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/byte_budget.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "services/request_checks.h"
#include "state_store/state_codec.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "worker/api_convert.h"
#include "worker/client_stalls.h"
#include "worker/executor.h"
#include "worker/model_set.h"
#include "worker/worker_service.h"

namespace statestream::worker {
namespace {

// Loads the version on the pool, then streams the header and the chunks.
// Until Finish, gRPC keeps the reactor alive (also after a cancel), so the
// pool's closure may use it.
class ExportReactor final
    : public grpc::ServerWriteReactor<v1::ExportStateResponse> {
 public:
  ExportReactor(ModelSet* models, const CallerPolicy* policy, Executor* pool,
                ByteBudget* budget, ClientStalls* stalls,
                grpc::CallbackServerContext* ctx,
                const v1::ExportStateRequest* req)
      : counter_(models->default_manager()),
        budget_(budget),
        stall_(stalls->Watch(ctx, "ExportState")) {
    absl::StatusOr<std::string> tenant = TenantOf(*ctx, *policy);
    absl::Status st = tenant.status();
    if (st.ok()) st = CheckSessionId(req->session_id(), "session_id");
    // An export is a stream (its chunks), counted like Append and import.
    if (st.ok()) {
      auto slot = HoldStream(*policy, *tenant);
      st = slot.status();
      if (slot.ok()) slot_ = *std::move(slot);
    }
    if (!st.ok()) {
      CountError(counter_, st);
      Finish(ToGrpcStatus(st));
      return;
    }
    pool->Post([this, ctx, models, tenant = *std::move(tenant),
                session_id = req->session_id(), version = req->version()] {
      // A queued call whose client went away is not run (a state loaded
      // and encoded for nobody, on the pool every unary call shares).
      if (ctx->IsCancelled()) {
        return Fail(absl::CancelledError("the call went away before its turn"));
      }
      absl::StatusOr<SessionManager*> m =
          models->ForSession(tenant, session_id);
      if (!m.ok()) return Fail(m.status());
      Load(**m, tenant, session_id, version);
    });
  }

  void Load(SessionManager& m, const std::string& tenant,
            const std::string& session_id, uint64_t version) {
    absl::StatusOr<ExportedState> e = m.Export(tenant, session_id, version);
    if (!e.ok()) return Fail(e.status());
    absl::StatusOr<ByteBudget::Hold> hold = budget_->Acquire(e->blob.size());
    if (!hold.ok()) return Fail(hold.status());
    hold_ = *std::move(hold);
    blob_ = std::move(e->blob);
    auto* h = msg_.mutable_header();
    h->set_format_version(1);
    h->set_model_id(e->model_id);
    h->set_model_fingerprint(e->model_fingerprint);
    h->set_architecture(e->architecture);
    h->set_session_id(e->session_id);
    h->set_version(e->version);
    h->set_position(e->position);
    h->set_input_offset(e->input_offset);
    h->set_pending_bytes(e->pending_bytes);
    h->set_total_bytes(blob_.size());
    count_ = static_cast<uint32_t>((blob_.size() + kStateChunkBytes - 1) /
                                   kStateChunkBytes);
    h->set_chunk_count(count_);
    h->set_chunk_bytes(kStateChunkBytes);
    h->set_crc32c(Crc32c(0, blob_.data(), blob_.size()));
    stall_->Waiting();
    StartWrite(&msg_);
  }

  void OnWriteDone(bool ok) override {
    stall_->Moved();
    if (!ok) {
      // The client went away: counted as the other calls count theirs.
      return Fail(absl::CancelledError("the client went away"));
    }
    if (next_ == count_) return FinishAndRelease(grpc::Status::OK);
    msg_.Clear();
    auto* c = msg_.mutable_chunk();
    const size_t at = size_t{next_} * kStateChunkBytes;
    const size_t n = std::min<size_t>(kStateChunkBytes, blob_.size() - at);
    c->set_index(next_++);
    c->set_data(blob_.data() + at, n);
    c->set_crc32c(Crc32c(0, blob_.data() + at, n));
    stall_->Waiting();
    StartWrite(&msg_);
  }
  void OnDone() override { delete this; }

 private:
  // The budget and the stream slot are free again once the last message is
  // written, before the client sees the call end (so its next transfer
  // finds them free).
  void FinishAndRelease(const grpc::Status& status) {
    hold_.Release();
    slot_.reset();
    Finish(status);
  }
  // An error answered: counted in statestream_errors_total, as every
  // service's are.
  void Fail(const absl::Status& status) {
    CountError(counter_, status);
    FinishAndRelease(ToGrpcStatus(status));
  }

  const SessionManager& counter_;  // its metrics count errors
  ByteBudget* const budget_;
  // Cuts the call off when its client leaves a chunk unread too long: the
  // whole blob holds its share of the budget meanwhile.
  const std::unique_ptr<ClientStalls::Call> stall_;
  ByteBudget::Hold hold_;
  std::unique_ptr<TenantLimits::StreamSlot> slot_;
  std::string blob_;
  v1::ExportStateResponse msg_;
  uint32_t count_ = 0, next_ = 0;
};

// Checks each chunk as it arrives; at the end of the stream, verifies the
// blob and imports it on the pool.
class ImportReactor final
    : public grpc::ServerReadReactor<v1::ImportStateRequest> {
 public:
  ImportReactor(ModelSet* models, const CallerPolicy* policy, Executor* pool,
                ByteBudget* budget, ClientStalls* stalls,
                grpc::CallbackServerContext* ctx, v1::Session* out)
      : models_(models),
        policy_(policy),
        pool_(pool),
        budget_(budget),
        ctx_(ctx),
        stall_(stalls->Watch(ctx, "ImportState")),
        out_(out) {
    absl::StatusOr<std::string> tenant = TenantOf(*ctx, *policy);
    if (!tenant.ok()) {
      CountError(models_->default_manager(), tenant.status());
      Finish(ToGrpcStatus(tenant.status()));
      return;
    }
    tenant_ = *tenant;
    session_limit_ = SessionLimit(*ctx, *policy, tenant_);
    // An import is a stream (its chunks), counted like Append.
    auto slot = HoldStream(*policy, tenant_);
    if (!slot.ok()) {
      CountError(models_->default_manager(), slot.status());
      Finish(ToGrpcStatus(slot.status()));
      return;
    }
    slot_ = *std::move(slot);
    MarkUnread(&req_);
    stall_->Waiting();
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    stall_->Moved();
    if (!ok && ReadUnparsable(req_)) {
      return FinishAndRelease(UnparsableRequestError());
    }
    if (!ok) return pool_->Post([this] { Complete(); });
    absl::Status st = Take();
    if (!st.ok()) return FinishAndRelease(st);
    MarkUnread(&req_);
    stall_->Waiting();
    StartRead(&req_);
  }
  void OnDone() override { delete this; }

 private:
  // The budget is free again before the client sees the call end. An
  // error is counted in statestream_errors_total.
  void FinishAndRelease(const absl::Status& status) {
    CountError(models_->default_manager(), status);
    hold_.Release();
    slot_.reset();
    Finish(ToGrpcStatus(status));
  }

  absl::Status Take() {
    if (!have_header_) {
      if (!req_.has_header())
        return BadField("header", "the first message must be the header");
      header_ = req_.header();
      have_header_ = true;
      // As a gateway checks them first.
      SS_RETURN_IF_ERROR(CheckImportHeaderFields(header_));
      SS_RETURN_IF_ERROR(
          DurabilityFromProto(header_.durability(), models_->max_durability())
              .status());
      if (!header_.has_state()) return BadField("state", "required");
      const v1::StateHeader& s = header_.state();
      // The state's model decides which manager imports it; into a session
      // of another model, that manager answers MODEL_MISMATCH.
      m_ = models_->ForFingerprint(s.model_fingerprint());
      if (m_ == nullptr) {
        return MakeError(absl::StatusCode::kFailedPrecondition,
                         Reason::kModelMismatch,
                         "no served model has the state's fingerprint",
                         {{"expected_fingerprint",
                           absl::StrJoin(models_->fingerprints(), ",")},
                          {"actual_fingerprint", s.model_fingerprint()}});
      }
      const engine::ModelInfo& info = m_->model().info();
      SS_RETURN_IF_ERROR(CheckImportStateLayout(
          s, info.state_floats * sizeof(float), info.config.n_embd));
      SS_ASSIGN_OR_RETURN(hold_, budget_->Acquire(s.total_bytes()));
      blob_.reserve(s.total_bytes());
      return absl::OkStatus();
    }
    if (req_.has_header()) return BadField("header", "sent twice");
    if (!req_.has_chunk()) {
      return BadField("chunk",
                      "every message after the header must carry a chunk");
    }
    const v1::StateChunk& c = req_.chunk();
    const v1::StateHeader& s = header_.state();
    if (c.index() != next_ || next_ >= s.chunk_count()) {
      return StateBlobRejected(
          absl::StrCat("chunk ", c.index(), " out of order"));
    }
    const uint64_t want =
        std::min<uint64_t>(s.chunk_bytes(), s.total_bytes() - blob_.size());
    if (c.data().size() != want)
      return StateBlobRejected("chunk has the wrong size");
    if (Crc32c(0, c.data().data(), c.data().size()) != c.crc32c()) {
      return StateBlobRejected(
          absl::StrCat("chunk ", c.index(), " checksum mismatch"));
    }
    blob_ += c.data();
    ++next_;
    return absl::OkStatus();
  }

  void Complete() {
    absl::Status st;
    const v1::StateHeader& s = header_.state();
    // A client that cancelled (or whose gateway's call died) without
    // half-closing ends the read as a half-close does: the call failed,
    // so nothing is imported (a create was made, for nobody).
    if (ctx_->IsCancelled()) {
      st = absl::CancelledError("the client cancelled the import");
    } else if (!have_header_) {
      st = BadField("header", "missing");
    } else if (next_ != s.chunk_count()) {
      st = StateBlobRejected("missing chunks");
    } else if (Crc32c(0, blob_.data(), blob_.size()) != s.crc32c()) {
      st = StateBlobRejected("blob checksum mismatch");
    } else if (auto snap = DecodeState(blob_); !snap.ok()) {
      st = snap.status();
    } else if (snap->position != s.position() ||
               snap->input_offset != s.input_offset() ||
               snap->tokenizer_tail.size() != s.pending_bytes()) {
      st = StateBlobRejected("the header disagrees with the blob");
    }
    if (st.ok()) {
      CreateParams p;
      p.request_id = header_.request_id();
      p.session_id = header_.session_id();
      p.max_tenant_sessions = session_limit_;
      p.labels = {header_.labels().begin(), header_.labels().end()};
      auto durability =
          DurabilityFromProto(header_.durability(), models_->max_durability());
      auto ttl = TtlFromProto(header_.has_ttl(), header_.ttl());
      if (!durability.ok()) {
        st = durability.status();
      } else if (!ttl.ok()) {
        st = ttl.status();
      } else {
        p.durability = *durability;
        p.ttl = *ttl;
        std::optional<uint64_t> expected;
        if (header_.has_expected_version())
          expected = header_.expected_version();
        const bool new_version = header_.mode() == v1::IMPORT_MODE_NEW_VERSION;
        if (!new_version) {
          st = CheckSessionQuota(*policy_, tenant_, p.session_id, p.request_id,
                                 m_->options().request_id_window);
        }
        if (st.ok()) {
          // A new version waits for the session's turn holding no thread;
          // the call ends from the manager's pool then.
          // The blob goes once decoded: a queued import holds its state
          // once, not twice, beside the budget it counts in.
          const std::string blob = std::move(blob_);
          m_->ImportAsync(
              tenant_, blob, new_version, p, expected,
              [this](absl::StatusOr<SessionView> v) {
                if (v.ok()) SessionToProto(*v, out_);
                FinishAndRelease(v.status());
              },
              [this] { return ctx_->IsCancelled(); });
          return;
        }
      }
    }
    FinishAndRelease(st);
  }

  ModelSet* const models_;
  const CallerPolicy* const policy_;
  SessionManager* m_ = nullptr;  // the state's model, once the header is read
  Executor* pool_;
  ByteBudget* const budget_;
  grpc::CallbackServerContext* const ctx_;  // valid until OnDone
  // Cuts the call off when its client sends nothing more for too long:
  // the chunks read so far hold the whole state's share of the budget.
  const std::unique_ptr<ClientStalls::Call> stall_;
  ByteBudget::Hold hold_;  // once the header is read
  // The tenant's stream slot (null without limits) until the call ends.
  std::unique_ptr<TenantLimits::StreamSlot> slot_;
  v1::Session* out_;
  std::string tenant_;
  int64_t session_limit_ = 0;  // SessionLimit: 0 = none
  v1::ImportStateRequest req_;
  v1::ImportHeader header_;
  bool have_header_ = false;
  std::string blob_;
  uint32_t next_ = 0;
};

class SessionsService final : public v1::Sessions::CallbackService {
 public:
  SessionsService(ModelSet* models, std::shared_ptr<const CallerPolicy> policy)
      : models_(models),
        policy_(std::move(policy)),
        budget_(models->default_manager().options().max_transfer_bytes,
                "--max-transfer-bytes"),
        stalls_(policy_->client_stall_timeout,
                models->default_manager().options().metrics),
        pool_(4) {}

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx,
                                          const v1::CreateSessionRequest* req,
                                          v1::Session* out) override {
    return Offload(ctx, [this, ctx, req, out]() -> absl::Status {
      SS_ASSIGN_OR_RETURN(std::string tenant, TenantOf(*ctx, *policy_));
      // As a gateway checks them first.
      SS_RETURN_IF_ERROR(CheckCreateSessionFields(*req));
      auto ttl = TtlFromProto(req->has_ttl(), req->ttl());
      SS_RETURN_IF_ERROR(ttl.status());
      CreateParams p;
      p.request_id = req->request_id();
      p.session_id = req->session_id();
      p.model_id = req->model_id();
      p.labels = {req->labels().begin(), req->labels().end()};
      p.ttl = *ttl;
      SS_ASSIGN_OR_RETURN(
          p.durability,
          DurabilityFromProto(req->durability(), models_->max_durability()));
      if (req->has_fork_from()) {
        p.fork_from.emplace(req->fork_from().session_id(),
                            req->fork_from().version());
      }
      // The model: as named; else a fork's source's; else the default.
      SessionManager* m = nullptr;
      if (p.model_id.empty() && p.fork_from) {
        SS_ASSIGN_OR_RETURN(m, models_->ForSession(tenant, p.fork_from->first));
      } else {
        SS_ASSIGN_OR_RETURN(m, models_->ForModel(p.model_id));
      }
      SS_RETURN_IF_ERROR(CheckSessionQuota(*policy_, tenant, p.session_id,
                                           p.request_id,
                                           m->options().request_id_window));
      p.max_tenant_sessions = SessionLimit(*ctx, *policy_, tenant);
      auto v = m->CreateSession(tenant, p);
      if (v.ok()) SessionToProto(*v, out);
      return v.status();
    });
  }

  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx,
                                       const v1::GetSessionRequest* req,
                                       v1::Session* out) override {
    return Offload(ctx, [this, ctx, req, out]() -> absl::Status {
      SS_ASSIGN_OR_RETURN(std::string tenant, TenantOf(*ctx, *policy_));
      if (absl::Status st = CheckSessionId(req->session_id(), "session_id");
          !st.ok()) {
        return st;
      }
      SS_ASSIGN_OR_RETURN(SessionManager * m,
                          models_->ForSession(tenant, req->session_id()));
      auto v = m->GetSession(tenant, req->session_id());
      if (v.ok()) SessionToProto(*v, out);
      return v.status();
    });
  }

  grpc::ServerUnaryReactor* ListSessions(
      grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest* req,
      v1::ListSessionsResponse* out) override {
    return Offload(ctx, [this, ctx, req, out]() -> absl::Status {
      SS_ASSIGN_OR_RETURN(std::string tenant, TenantOf(*ctx, *policy_));
      // A selector no label can match is a malformed filter, as the labels
      // of a create would be.
      SS_RETURN_IF_ERROR(CheckLabels(req->label_selector(), "label_selector"));
      // Every manager lists the shared store, sessions of all models.
      auto page = models_->default_manager().ListSessions(
          tenant, static_cast<int>(std::min<uint32_t>(req->page_size(), 1000)),
          req->page_token(),
          {req->label_selector().begin(), req->label_selector().end()},
          req->model_id());
      if (page.ok()) {
        for (const SessionView& v : page->first) {
          SessionToProto(v, out->add_sessions());
        }
        out->set_next_page_token(page->second);
      }
      return page.status();
    });
  }

  grpc::ServerUnaryReactor* UpdateSession(grpc::CallbackServerContext* ctx,
                                          const v1::UpdateSessionRequest* req,
                                          v1::Session* out) override {
    return Offload(ctx, [this, ctx, req, out]() -> absl::Status {
      SS_ASSIGN_OR_RETURN(std::string tenant, TenantOf(*ctx, *policy_));
      absl::Status st = CheckRequestId(req->request_id());
      if (st.ok()) st = CheckSessionId(req->session_id(), "session_id");
      if (st.ok() && req->update_mask().paths_size() == 0) {
        st = BadField("update_mask", "required");
      }
      SessionUpdate u;
      for (const std::string& path : req->update_mask().paths()) {
        if (!st.ok()) break;
        // Each path once: a mask of a million "labels" checked the labels a
        // million times (seconds of CPU for one call).
        if ((path == "labels" && u.labels) || (path == "ttl" && u.ttl)) {
          st = BadField("update_mask", absl::StrCat("repeated path ", path));
        } else if (path == "labels") {
          st = CheckLabels(req->labels());
          u.labels.emplace(req->labels().begin(), req->labels().end());
        } else if (path == "ttl") {
          // 0 (unset) = the store's default, as at creation.
          auto ttl = TtlFromProto(req->has_ttl(), req->ttl());
          st = ttl.status();
          if (st.ok()) u.ttl = *ttl;
        } else {
          st = BadField("update_mask", absl::StrCat("unknown path ", path));
        }
      }
      if (!st.ok()) return st;
      SS_ASSIGN_OR_RETURN(SessionManager * m,
                          models_->ForSession(tenant, req->session_id()));
      auto v = m->UpdateSession(tenant, req->session_id(), u);
      if (v.ok()) SessionToProto(*v, out);
      return v.status();
    });
  }

  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteSessionRequest* req,
                                          v1::DeleteSessionResponse*) override {
    return Offload(ctx, [this, ctx, req]() -> absl::Status {
      SS_ASSIGN_OR_RETURN(std::string tenant, TenantOf(*ctx, *policy_));
      absl::Status st = CheckRequestId(req->request_id());
      if (st.ok()) st = CheckSessionId(req->session_id(), "session_id");
      if (!st.ok()) return st;
      SS_ASSIGN_OR_RETURN(SessionManager * m,
                          models_->ForSession(tenant, req->session_id()));
      return m->DeleteSession(tenant, req->session_id(), req->allow_missing(),
                              req->request_id(),
                              [ctx] { return ctx->IsCancelled(); });
    });
  }

  grpc::ServerUnaryReactor* ListVersions(
      grpc::CallbackServerContext* ctx, const v1::ListVersionsRequest* req,
      v1::ListVersionsResponse* out) override {
    return Offload(ctx, [this, ctx, req, out]() -> absl::Status {
      SS_ASSIGN_OR_RETURN(std::string tenant, TenantOf(*ctx, *policy_));
      if (absl::Status st = CheckSessionId(req->session_id(), "session_id");
          !st.ok()) {
        return st;
      }
      SS_ASSIGN_OR_RETURN(SessionManager * m,
                          models_->ForSession(tenant, req->session_id()));
      auto head = m->GetSession(tenant, req->session_id());
      if (!head.ok()) return head.status();
      auto versions = m->ListVersions(tenant, req->session_id());
      if (!versions.ok()) return versions.status();
      // Page token: the version to start below (newest first).
      uint64_t below = UINT64_MAX;
      if (!req->page_token().empty() &&
          !absl::SimpleAtoi(req->page_token(), &below)) {
        return BadField("page_token", "malformed");
      }
      const size_t page = req->page_size() == 0
                              ? 50
                              : std::min<uint32_t>(req->page_size(), 1000);
      for (const VersionInfo& v : *versions) {
        if (v.version >= below) continue;
        if (static_cast<size_t>(out->versions_size()) == page) {
          out->set_next_page_token(
              absl::StrCat(out->versions().rbegin()->version()));
          break;
        }
        VersionToProto(v, head->parent_version, out->add_versions());
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* RollbackSession(
      grpc::CallbackServerContext* ctx, const v1::RollbackSessionRequest* req,
      v1::Session* out) override {
    return OffloadAsync(ctx, [this, ctx, req, out](Finisher finish) {
      absl::StatusOr<std::string> tenant = TenantOf(*ctx, *policy_);
      absl::Status st = tenant.status();
      if (st.ok()) st = CheckRequestId(req->request_id());
      if (st.ok()) st = CheckSessionId(req->session_id(), "session_id");
      if (st.ok() && req->version() == 0)
        st = BadField("version", "required (>= 1)");
      absl::StatusOr<std::optional<Durability>> durability =
          DurabilityFromProto(req->durability(), models_->max_durability());
      if (st.ok()) st = durability.status();
      if (!st.ok()) return finish(st);
      std::optional<uint64_t> expected;
      if (req->has_expected_version()) expected = req->expected_version();
      absl::StatusOr<SessionManager*> m =
          models_->ForSession(*tenant, req->session_id());
      if (!m.ok()) return finish(m.status());
      // Waits for the session's turn holding no thread of this pool.
      (*m)->RollbackAsync(
          *tenant, req->session_id(), req->version(), expected, *durability,
          req->request_id(),
          [out, finish](absl::StatusOr<SessionView> v) {
            if (v.ok()) SessionToProto(*v, out);
            finish(v.status());
          },
          [ctx] { return ctx->IsCancelled(); });
    });
  }

  grpc::ServerWriteReactor<v1::ExportStateResponse>* ExportState(
      grpc::CallbackServerContext* ctx,
      const v1::ExportStateRequest* req) override {
    return new ExportReactor(models_, policy_.get(), &pool_, &budget_, &stalls_,
                             ctx, req);
  }

  grpc::ServerReadReactor<v1::ImportStateRequest>* ImportState(
      grpc::CallbackServerContext* ctx, v1::Session* out) override {
    return new ImportReactor(models_, policy_.get(), &pool_, &budget_, &stalls_,
                             ctx, out);
  }

 private:
  // Runs `fn` on the pool and finishes the call with its status.
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* ctx,
                                    std::function<absl::Status()> fn) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    pool_.Post([this, ctx, reactor, fn = std::move(fn)] {
      // Queued behind slower calls, a call its client gave up on is not run.
      const absl::Status st = ctx->IsCancelled()
                                  ? absl::CancelledError("the call went away")
                                  : fn();
      // The managers share one WorkerMetrics (or none).
      CountError(models_->default_manager(), st);
      reactor->Finish(ToGrpcStatus(st));
    });
    return reactor;
  }

  // Offload for a call whose answer may come later, from another thread:
  // `fn` runs on the pool and calls its Finisher exactly once.
  using Finisher = std::function<void(const absl::Status&)>;
  grpc::ServerUnaryReactor* OffloadAsync(grpc::CallbackServerContext* ctx,
                                         std::function<void(Finisher)> fn) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    Finisher finish = [this, reactor](const absl::Status& st) {
      CountError(models_->default_manager(), st);
      reactor->Finish(ToGrpcStatus(st));
    };
    pool_.Post([ctx, fn = std::move(fn), finish = std::move(finish)] {
      if (ctx->IsCancelled())
        return finish(absl::CancelledError("the call went away"));
      fn(finish);
    });
    return reactor;
  }

  ModelSet* const models_;
  const std::shared_ptr<const CallerPolicy> policy_;  // outlives the reactors
  ByteBudget budget_;    // outlives the reactors (the server stops first)
  ClientStalls stalls_;  // likewise
  Executor pool_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewSessionsService(
    ModelSet* models, std::shared_ptr<const CallerPolicy> policy) {
  return std::make_unique<SessionsService>(models, std::move(policy));
}

}  // namespace statestream::worker
