// SPDX-License-Identifier: Apache-2.0
// SessionManager: the public session calls (create, get, list, update,
// delete). Versions, rollback, export and import are in
// session_manager_versions.cc; the rest in the files
// session_manager_internal.h lists.
#include "worker/session_manager.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/session_ids.h"
#include "common/utf8.h"
#include "state_store/state_codec.h"
#include "worker/engine/sampler.h"
#include "worker/session_manager_internal.h"

namespace statestream::worker {

absl::StatusOr<SessionView> SessionManager::Impl::CreateOnce(
    CreateSessionRequest r, bool derived, const std::string& request_id,
    uint64_t digest,
    const std::function<absl::StatusOr<bool>(
        const SessionHead&, const CreateSessionRequest&)>& same) {
  const std::string tenant = r.key.tenant;
  r.request_id = request_id;
  r.request_digest = digest;
  auto res = store_->CreateSession(r);
  if (!request_id.empty() &&
      GetReason(res.status()) == Reason::kSessionExists) {
    // A retry of this request that reached another worker (or this one
    // after a restart) finds its session by the request id the head
    // records. A head without one (written before heads recorded it) is
    // this request's only if its id derives from the request id and its
    // attributes match.
    absl::StatusOr<SessionHead> head = store_->GetHead(r.key);
    // Gone meanwhile (deleted, expired): still "exists" for this attempt.
    if (GetReason(head.status()) == Reason::kSessionNotFound) {
      return res.status();
    }
    if (!head.ok()) return head.status();
    SessionHead& h = *head;
    const bool unrecorded = h.create_request_id.empty();
    const bool ours = unrecorded ? derived : h.create_request_id == request_id;
    if (ours && clock_->Now() - h.created_at <= opt_.request_id_window) {
      bool alike = h.create_digest == digest;
      if (unrecorded) {
        const bool updated = h.updated_at > h.created_at;
        alike =
            h.model_id == r.model_id &&
            (updated || (h.labels == r.labels &&
                         (r.ttl == absl::ZeroDuration() || h.ttl == r.ttl))) &&
            h.parent_session_id == r.parent_session_id;
        if (alike) {
          SS_ASSIGN_OR_RETURN(alike, same(h, r));
        }
      }
      return EarlierCreate(r.key, std::move(h), alike, request_id, digest,
                           r.durability);
    }
    if (derived) {  // another request's session under the derived id
      r.key.session_id = NewSessionId();
      res = store_->CreateSession(r);
    }
  }
  if (!res.ok()) {
    // A create the store wrote below the durability asked for is this
    // request's: a retry returns it. (A session that merely exists under
    // the id may be another request's.)
    if (WrittenBelowDurability(res.status())) {
      Remember(tenant, request_id, r.key.session_id, digest, 1);
    }
    return res.status();
  }
  Remember(tenant, request_id, r.key.session_id, digest, 1);
  return ViewOfHead(res->session);
}

absl::StatusOr<std::optional<SessionView>> SessionManager::Impl::CreatedBefore(
    const SessionKey& key, const std::string& request_id, uint64_t digest,
    Durability asked) {
  if (request_id.empty()) return std::nullopt;
  absl::StatusOr<SessionHead> head = store_->GetHead(key);
  // The store not answering now: retry, rather than the fork source's
  // error, which a client takes as final.
  if (absl::IsUnavailable(head.status())) return head.status();
  if (!head.ok()) return std::nullopt;
  SessionHead& h = *head;
  if (h.create_request_id != request_id ||
      clock_->Now() - h.created_at > opt_.request_id_window) {
    return std::nullopt;
  }
  const bool alike = h.create_digest == digest;
  return EarlierCreate(key, std::move(h), alike, request_id, digest, asked);
}

absl::StatusOr<SessionView> SessionManager::Impl::EarlierCreate(
    const SessionKey& key, SessionHead h, bool alike,
    const std::string& request_id, uint64_t digest, Durability asked) {
  if (!alike) return DuplicateRequest(request_id);
  Remember(key.tenant, request_id, key.session_id, digest, 1);
  SS_ASSIGN_OR_RETURN(
      h.head.durability,
      CreatedDurability(key, h.head.version, h.head.durability, asked));
  return ViewOfHead(h);
}

absl::StatusOr<bool> SessionManager::Impl::FirstVersionHolds(
    const SessionKey& key, const StateSnapshot& snap) {
  auto v = store_->LoadVersion(key, 1);
  if (IsVersionNotKept(v.status())) return true;
  if (!v.ok()) return v.status();
  const StateSnapshot& got = v->state;
  return got.position == snap.position &&
         got.input_offset == snap.input_offset &&
         got.tokenizer_tail == snap.tokenizer_tail &&
         got.sampler_state == snap.sampler_state && got.state == snap.state &&
         got.last_hidden == snap.last_hidden;
}

std::string SessionManager::Impl::NewSessionId() {
  absl::MutexLock lock(&mu_);
  std::string id(kGeneratedSessionIdLength, '0');
  for (char& c : id) c = kSessionIdAlphabet[rng_() % 32];
  return id;
}

absl::StatusOr<std::unique_ptr<SessionManager>> SessionManager::Create(
    const SessionManagerOptions& options, engine::Model* model,
    const engine::Tokenizer* tokenizer, Scheduler* scheduler,
    StateStore* store) {
  if (tokenizer->vocab_size() != model->info().config.vocab_size) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
        absl::StrCat("the tokenizer has ", tokenizer->vocab_size(),
                     " ids but the model ", model->info().config.vocab_size));
  }
  return std::unique_ptr<SessionManager>(new SessionManager(
      std::make_unique<Impl>(options, model, tokenizer, scheduler, store)));
}

SessionManager::SessionManager(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
SessionManager::~SessionManager() { impl_->Shutdown(); }

const SessionManagerOptions& SessionManager::options() const {
  return impl_->opt_;
}
std::string SessionStateFingerprint(const engine::Model& model,
                                    const engine::Tokenizer& tokenizer) {
  return absl::StrCat(model.info().fingerprint, "+", tokenizer.fingerprint());
}

const std::string& SessionManager::fingerprint() const {
  return impl_->fingerprint_;
}
void SessionManager::SetServedBeside(std::vector<std::string> fingerprints) {
  absl::MutexLock lock(&impl_->beside_mu_);
  impl_->beside_ = std::move(fingerprints);
}
const engine::Model& SessionManager::model() const { return *impl_->model_; }
const engine::Tokenizer& SessionManager::tokenizer() const {
  return *impl_->tok_;
}

Durability SessionManager::max_durability() const {
  return impl_->store_->MaxDurability();
}

absl::StatusOr<SessionView> SessionManager::CreateSession(
    const std::string& tenant, const CreateParams& p) {
  Impl& m = *impl_;
  if (!p.model_id.empty() && p.model_id != m.opt_.model_id) {
    return MakeError(absl::StatusCode::kNotFound, Reason::kModelNotFound,
                     absl::StrCat("model ", p.model_id, " is not served here"),
                     {{"model_id", p.model_id}});
  }
  uint64_t digest = kFnvBasis;
  digest = Fnv1a(digest, absl::StrCat(p.session_id.size(), ":", p.session_id,
                                      p.model_id.size(), ":", p.model_id));
  for (const auto& [k, v] : p.labels) {
    digest = Fnv1a(digest, absl::StrCat(k.size(), ":", k, v.size(), ":", v));
  }
  digest = Fnv1a(digest, absl::StrCat("ttl", absl::ToInt64Milliseconds(p.ttl)));
  if (p.fork_from) {
    digest = Fnv1a(digest,
                   absl::StrCat("fork", p.fork_from->first.size(), ":",
                                p.fork_from->first, "@", p.fork_from->second));
  }
  if (p.durability) {
    digest = Fnv1a(digest, absl::StrCat("d", static_cast<int>(*p.durability)));
  }
  SS_RETURN_IF_ERROR(m.Admitting());
  std::string existing;
  SS_ASSIGN_OR_RETURN(bool seen,
                      m.Seen(tenant, p.request_id, digest, &existing));
  if (seen) {
    // The first attempt's session, at the durability asked (a create kept
    // below it is remembered too).
    SS_ASSIGN_OR_RETURN(SessionView view, GetSession(tenant, existing));
    SS_ASSIGN_OR_RETURN(
        view.durability,
        m.CreatedDurability({tenant, existing}, view.version, view.durability,
                            m.Dur(p.durability)));
    return view;
  }
  CreateSessionRequest r;
  const bool derived = p.session_id.empty() && !p.request_id.empty();
  r.key = {tenant, derived ? DerivedSessionId(tenant, p.request_id)
                   : p.session_id.empty() ? m.NewSessionId()
                                          : p.session_id};
  r.model_id = m.opt_.model_id;
  r.labels = p.labels;
  r.ttl = p.ttl;
  r.durability = m.Dur(p.durability);
  r.max_tenant_sessions = p.max_tenant_sessions;
  if (p.fork_from) {
    absl::StatusOr<LoadedVersion> loaded = m.store_->LoadVersion(
        {tenant, p.fork_from->first}, p.fork_from->second);
    if (!loaded.ok()) {
      // A retry of a fork that an earlier attempt made (on another worker,
      // or before a restart) whose source has moved on since (the version
      // no longer kept, the source deleted) finds its fork all the same.
      const bool known_id = !p.session_id.empty() || derived;
      if (known_id) {
        SS_ASSIGN_OR_RETURN(
            std::optional<SessionView> made,
            m.CreatedBefore(r.key, p.request_id, digest, r.durability));
        if (made) return *std::move(made);
      }
      return loaded.status();
    }
    LoadedVersion& src = *loaded;
    if (src.state.model_fingerprint != m.fingerprint_) {
      return MakeError(absl::StatusCode::kFailedPrecondition,
                       Reason::kModelMismatch,
                       "the fork source belongs to another model",
                       {{"expected_fingerprint", m.fingerprint_},
                        {"actual_fingerprint", src.state.model_fingerprint}});
    }
    r.initial_state = std::move(src.state);
    // A fork starts with no generation records of its own.
    std::string sampler;
    Utf8Carry carry;
    std::deque<GenerationRecord> records;
    SS_RETURN_IF_ERROR(DecodeSamplerSideData(r.initial_state.sampler_state,
                                             &sampler, &records, &carry));
    r.initial_state.sampler_state = EncodeSamplerSideData(sampler, {}, carry);
    r.parent_session_id = p.fork_from->first;
    r.parent_version = src.version.version;
    r.cause = VersionCause::kFork;
    r.initial_state.parent_session_id = r.parent_session_id;
    r.initial_state.parent_version = r.parent_version;
  } else {
    Session blank;
    blank.live = EngineState::Initial(*m.model_);
    r.initial_state = m.Snapshot(&blank);
  }
  const bool exact_fork = p.fork_from && p.fork_from->second != 0;
  return m.CreateOnce(
      std::move(r), derived, p.request_id, digest,
      [&](const SessionHead& h,
          const CreateSessionRequest& req) -> absl::StatusOr<bool> {
        return !exact_fork || h.parent_version == req.parent_version;
      });
}

absl::StatusOr<SessionView> SessionManager::GetSession(
    const std::string& tenant, const std::string& session_id) {
  Impl& m = *impl_;
  const SessionKey key{tenant, session_id};
  std::shared_ptr<Session> resident;
  {
    absl::MutexLock lock(&m.mu_);
    auto it = m.resident_.find(Impl::MapKey(key));
    if (it != m.resident_.end()) resident = it->second;
  }
  if (resident != nullptr) {
    // Another worker may have taken the session over since our last
    // renewal; then our copy is stale (a client resuming from it would skip
    // input). A newer fence in the store says so: drop the copy and answer
    // from the store. If the store cannot be asked, the copy is the best
    // answer there is.
    auto lease = m.store_->GetOwner(key);
    if (absl::IsNotFound(lease.status())) {
      // Deleted meanwhile (through another worker): never shown again.
      m.Drop(resident.get(), Session::Gone::kDeleted);
      return lease.status();
    }
    if (!lease.ok() || lease->fence == resident->fence) {
      absl::MutexLock l2(&resident->mu);
      return resident->view;
    }
    m.Drop(resident.get(), Session::Gone::kFenced);
  }
  SS_ASSIGN_OR_RETURN(SessionHead h, m.store_->GetHead(key));
  return m.ViewOfHead(h);
}

absl::StatusOr<std::pair<std::vector<SessionView>, std::string>>
SessionManager::ListSessions(const std::string& tenant, int page_size,
                             const std::string& page_token,
                             const std::map<std::string, std::string>& labels,
                             const std::string& model_id) {
  ListSessionsRequest r;
  r.tenant = tenant;
  r.page_size = page_size <= 0 ? 50 : std::min(page_size, 1000);
  r.page_token = page_token;
  r.label_filter = labels;
  r.model_filter = model_id;
  // Well under gRPC's default 4 MiB receive limit: 1,000 sessions with
  // 64 labels of 318 bytes each would be ~20 MB.
  r.max_bytes = kMaxListBytes;
  SS_ASSIGN_OR_RETURN(ListSessionsPage page, impl_->store_->ListSessions(r));
  std::pair<std::vector<SessionView>, std::string> out;
  for (const SessionHead& h : page.sessions) {
    out.first.push_back(impl_->ViewOfHead(h));
  }
  out.second = page.next_page_token;
  return out;
}

absl::StatusOr<SessionView> SessionManager::UpdateSession(
    const std::string& tenant, const std::string& session_id,
    const SessionUpdate& update) {
  Impl& m = *impl_;
  const SessionKey key{tenant, session_id};
  SS_ASSIGN_OR_RETURN(SessionHead h, m.store_->UpdateSession(key, update));
  std::shared_ptr<Session> resident;
  {
    absl::MutexLock lock(&m.mu_);
    auto it = m.resident_.find(Impl::MapKey(key));
    if (it != m.resident_.end()) resident = it->second;
  }
  // Newer only: fences only grow, and a copy loaded after the store's write
  // above (an Append meanwhile) holds a newer fence than `h` and is ours.
  if (resident != nullptr && h.fence > resident->fence) {
    // Taken over since our last renewal: the copy's position and version
    // are older than the store's (as in GetSession).
    m.Drop(resident.get(), Session::Gone::kFenced);
    resident = nullptr;
  }
  if (resident != nullptr) {
    absl::MutexLock lock(&m.mu_);
    absl::MutexLock l2(&resident->mu);
    resident->view.labels = h.labels;
    resident->view.ttl = h.ttl;
    resident->view.update_time = h.updated_at;
    m.SweepSoonFor(h.ttl);
    return resident->view;
  }
  return m.ViewOfHead(h);
}

absl::Status SessionManager::DeleteSession(
    const std::string& tenant, const std::string& session_id,
    bool allow_missing, const std::string& request_id,
    const std::function<bool()>& cancelled) {
  // A retry of a delete that succeeded succeeds (proto: DeleteSession).
  const uint64_t digest = Fnv1a(kFnvBasis, absl::StrCat("delete:", session_id));
  // A retry that arrives while the original still runs (behind a busy
  // session, a slow store) waits for it, then finds it done, instead of
  // finding the session gone: NOT_FOUND for a delete that succeeded. The
  // memo is the process's: the retry may reach another model's manager.
  RequestMemo::InFlight call(impl_->memo_.get(), tenant, request_id, cancelled);
  if (!call.entered()) {
    return absl::CancelledError(
        "the call went away while an earlier delete with its request_id ran");
  }
  SS_ASSIGN_OR_RETURN(bool seen,
                      impl_->Seen(tenant, request_id, digest, nullptr));
  if (seen) return absl::OkStatus();
  absl::Status st = DeleteOnce(tenant, session_id, allow_missing);
  if (st.ok()) impl_->Remember(tenant, request_id, session_id, digest);
  return st;
}

absl::Status SessionManager::DeleteOnce(const std::string& tenant,
                                        const std::string& session_id,
                                        bool allow_missing) {
  Impl& m = *impl_;
  const SessionKey key{tenant, session_id};
  auto resident = [&]() -> std::shared_ptr<Session> {
    absl::MutexLock lock(&m.mu_);
    auto it = m.resident_.find(Impl::MapKey(key));
    return it != m.resident_.end() ? it->second : nullptr;
  };
  absl::Status st;
  std::shared_ptr<Session> s = resident();
  if (s == nullptr) {
    // Not resident: deleted with loads held off, so no load that read the
    // session before the delete maps its copy after it (served, deleted,
    // until the next renewal). One that finished first is deleted below.
    absl::MutexLock load(&m.load_mu_);
    s = resident();
    if (s == nullptr) st = m.store_->DeleteSession(key);
  }
  if (s != nullptr) {
    // The live writer (an Append, or a committing generation) ends first,
    // ABORTED: the delete may still fail, so not NOT_FOUND yet; its retry
    // gets NOT_FOUND once the session is gone (or goes on if it is not).
    m.EndWriter(s.get(),
                MakeError(absl::StatusCode::kAborted, Reason::kSessionBusy,
                          "the session is being deleted"),
                /*current_only=*/true);
    st = m.RunSync<absl::Status>(s, [&] {
      // Gone once the store says so. A delete that failed changes nothing:
      // the session stays, with its lease, and what queued behind the
      // delete runs on it (told NOT_FOUND, it would stop retrying a
      // session that still exists).
      absl::Status deleted = m.store_->DeleteSession(key);
      if (deleted.ok() || absl::IsNotFound(deleted)) {
        m.Drop(s.get(), Session::Gone::kDeleted);
      }
      return deleted;
    });
    if (st.ok() || absl::IsNotFound(st)) {
      // `s` may have been evicted before the delete ran on it, and the
      // session loaded again as another copy: that one is gone too, unless
      // the id was created again meanwhile (then the copy is the new
      // session's). With loads held off, none is under way.
      absl::MutexLock load(&m.load_mu_);
      if (std::shared_ptr<Session> again = resident()) {
        if (absl::IsNotFound(m.store_->GetHead(key).status())) {
          m.Drop(again.get(), Session::Gone::kDeleted);
        }
      }
    }
  }
  if (allow_missing && absl::IsNotFound(st)) return absl::OkStatus();
  return st;
}

absl::StatusOr<SessionView> SessionManager::Retried(
    const std::string& tenant, const std::string& session_id, uint64_t version,
    Durability durability) {
  Impl& m = *impl_;
  // No lease is needed to raise a version's durability (and taking one
  // would fence a writer that holds the session elsewhere by now).
  std::optional<Durability> reached;
  if (version != 0) {
    auto v =
        m.store_->AwaitDurability({tenant, session_id}, version, durability);
    // A version no longer kept was followed by others: the session went on
    // from it, which is all a retry can still ask.
    if (!v.ok() && !IsVersionNotKept(v.status())) {
      return v.status();
    }
    if (v.ok()) reached = v->durability;
  }
  SS_ASSIGN_OR_RETURN(SessionView view, GetSession(tenant, session_id));
  // A resident copy learns the level at its next commit or checkpoint; the
  // answer says it now.
  if (reached && view.version == version && *reached > view.durability) {
    view.durability = *reached;
  }
  return view;
}

void SessionManager::Drain() { impl_->Drain(); }

void SessionManager::RenewLeasesNow() {
  {
    absl::MutexLock lock(&impl_->mu_);
    impl_->renew_now_ = true;
  }
  impl_->renew_wake_.Notify();
}

SessionManager::Stats SessionManager::stats() const {
  absl::MutexLock lock(&impl_->mu_);
  Stats s = impl_->stats_;
  s.resident = static_cast<int>(impl_->resident_.size());
  for (const auto& [k, session] : impl_->resident_) {
    absl::MutexLock l2(&session->mu);
    if (session->busy || session->writer_attached) ++s.active;
  }
  s.resident_bytes = s.resident * impl_->session_bytes_;
  return s;
}

bool SessionManager::IsResident(const std::string& tenant,
                                const std::string& session_id) const {
  absl::MutexLock lock(&impl_->mu_);
  return impl_->resident_.contains(Impl::MapKey({tenant, session_id}));
}

}  // namespace statestream::worker
