// SPDX-License-Identifier: Apache-2.0
// SessionManager: the public session calls (create, get, list, update,
// delete, versions, rollback, export, import). The rest is in the files
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
namespace {

// What a queued Rollback or Import found when its turn came: a retry of a
// request already committed (its session and version), answered as one.
struct RetryCheck {
  bool retried = false;
  std::string seen_id;
  uint64_t committed = 0;
};

// The answer of an asynchronous call `start` makes, waited for.
absl::StatusOr<SessionView> Await(
    const std::function<void(SessionManager::ViewDone)>& start) {
  absl::StatusOr<SessionView> out;
  absl::Notification done;
  start([&](absl::StatusOr<SessionView> v) {
    out = std::move(v);
    done.Notify();
  });
  done.WaitForNotification();
  return out;
}

// A queued call whose client went away before its turn: not run.
absl::Status CallWentAway() {
  return absl::CancelledError("the call went away before its turn");
}

}  // namespace

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
      if (!alike) return DuplicateRequest(request_id);
      Remember(tenant, request_id, r.key.session_id, digest, 1);
      SS_ASSIGN_OR_RETURN(h.head.durability,
                          CreatedDurability(r.key, h.head.version,
                                            h.head.durability, r.durability));
      return ViewOfHead(h);
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
    SS_ASSIGN_OR_RETURN(LoadedVersion src,
                        m.store_->LoadVersion({tenant, p.fork_from->first},
                                              p.fork_from->second));
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
  // Well under gRPC's default 4 MiB receive limit: 1,000 sessions with
  // 64 labels of 318 bytes each would be ~20 MB.
  r.max_bytes = kMaxListBytes;
  SS_ASSIGN_OR_RETURN(ListSessionsPage page, impl_->store_->ListSessions(r));
  std::pair<std::vector<SessionView>, std::string> out;
  for (const SessionHead& h : page.sessions) {
    if (!model_id.empty() && h.model_id != model_id) continue;
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
  absl::MutexLock lock(&m.mu_);
  auto it = m.resident_.find(Impl::MapKey(key));
  if (it != m.resident_.end()) {
    absl::MutexLock l2(&it->second->mu);
    it->second->view.labels = h.labels;
    it->second->view.ttl = h.ttl;
    it->second->view.update_time = h.updated_at;
    m.SweepSoonFor(h.ttl);
    return it->second->view;
  }
  return m.ViewOfHead(h);
}

absl::Status SessionManager::DeleteSession(const std::string& tenant,
                                           const std::string& session_id,
                                           bool allow_missing,
                                           const std::string& request_id) {
  // A retry of a delete that succeeded succeeds (proto: DeleteSession).
  const uint64_t digest = Fnv1a(kFnvBasis, absl::StrCat("delete:", session_id));
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
  std::shared_ptr<Session> s;
  {
    absl::MutexLock lock(&m.mu_);
    auto it = m.resident_.find(Impl::MapKey(key));
    if (it != m.resident_.end()) s = it->second;
  }
  absl::Status st;
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
  } else {
    st = m.store_->DeleteSession(key);
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

absl::StatusOr<std::vector<VersionInfo>> SessionManager::ListVersions(
    const std::string& tenant, const std::string& session_id) {
  SS_ASSIGN_OR_RETURN(std::vector<VersionInfo> v,
                      impl_->store_->ListVersions({tenant, session_id}));
  std::reverse(v.begin(), v.end());
  return v;
}

absl::StatusOr<SessionView> SessionManager::Rollback(
    const std::string& tenant, const std::string& session_id, uint64_t version,
    std::optional<uint64_t> expected, std::optional<Durability> durability,
    const std::string& request_id) {
  return Await([&](ViewDone done) {
    RollbackAsync(tenant, session_id, version, expected, durability, request_id,
                  std::move(done));
  });
}

void SessionManager::RollbackAsync(
    const std::string& tenant, const std::string& session_id, uint64_t version,
    std::optional<uint64_t> expected, std::optional<Durability> durability,
    const std::string& request_id, ViewDone done, IsCancelled cancelled) {
  Impl* const m = impl_.get();
  // A retry of a rollback that was committed (even one that failed below
  // the durability asked for) returns the session instead of rolling back
  // again, which would discard input applied since.
  const uint64_t digest = Fnv1a(
      kFnvBasis, absl::StrCat("rollback:", session_id, "@", version, "?",
                              expected ? absl::StrCat(*expected) : "-", "d",
                              durability ? static_cast<int>(*durability) : -1));
  auto turn = std::make_shared<RetryCheck>();
  absl::StatusOr<bool> seen =
      m->Seen(tenant, request_id, digest, nullptr, &turn->committed);
  if (!seen.ok()) return done(seen.status());
  if (*seen) {
    return done(
        Retried(tenant, session_id, turn->committed, m->Dur(durability)));
  }
  absl::StatusOr<std::shared_ptr<Session>> resident =
      m->Resident({tenant, session_id});
  if (GetReason(resident.status()) == Reason::kStateCorrupt) {
    // The head cannot be loaded: rolling back needs nothing of it (the way
    // out docs/errors.md gives for STATE_CORRUPT).
    const SessionKey key{tenant, session_id};
    return done(m->AnswerHeadWrite(
        tenant, session_id, request_id, digest,
        m->WriteOverUnloadableHead(
            key, expected, [&](const SessionHead& head, uint64_t fence) {
              return m->store_->Rollback(key, head.head.version, fence, version,
                                         m->Dur(durability), request_id);
            })));
  }
  if (!resident.ok()) return done(resident.status());
  std::shared_ptr<Session> s = *std::move(resident);
  // Queued on the session's strand, holding no thread while it waits (a
  // committing generation holds the strand for its whole run).
  m->RunAsync<absl::StatusOr<SessionView>>(
      s,
      [m, s, tenant, session_id, version, expected, durability, request_id,
       digest, turn,
       cancelled = std::move(cancelled)]() -> absl::StatusOr<SessionView> {
        if (cancelled && cancelled()) return CallWentAway();
        SS_RETURN_IF_ERROR(m->GoneError(s.get()));
        // Again in turn: the original may have run while this waited.
        SS_ASSIGN_OR_RETURN(turn->retried, m->Seen(tenant, request_id, digest,
                                                   nullptr, &turn->committed));
        if (turn->retried) return SessionView{};
        const uint64_t head = s->head.head.version;
        if (expected && *expected != head) {
          return MakeError(absl::StatusCode::kFailedPrecondition,
                           Reason::kVersionMismatch,
                           absl::StrCat("the head is version ", head),
                           {{"head_version", absl::StrCat(head)}});
        }
        auto res = m->store_->Rollback(s->key, head, s->fence, version,
                                       m->Dur(durability), request_id);
        if (!res.ok()) {
          if (GetReason(res.status()) == Reason::kFenced) {
            m->Drop(s.get(), Session::Gone::kFenced);
          } else {
            m->FollowStoreHead(s.get());
            // Only a rollback the store wrote (below the durability asked
            // for) is this one; a head that moved otherwise is not.
            if (WrittenBelowDurability(res.status())) {
              m->Remember(tenant, request_id, session_id, digest,
                          WrittenVersionOf(res.status()));
            }
          }
          return res.status();
        }
        m->Remember(tenant, request_id, session_id, digest,
                    res->version.version);
        auto v = m->store_->LoadVersion(s->key, res->version.version);
        absl::Status loaded =
            v.ok() ? m->LoadInto(s.get(), *v, &res->session) : v.status();
        if (!loaded.ok()) {
          m->FollowStoreHead(s.get());
          return loaded;
        }
        absl::MutexLock lock(&s->mu);
        return s->view;
      },
      [this, m, tenant, session_id, durability, turn,
       done = std::move(done)](absl::StatusOr<SessionView> out) {
        if (out.ok() && turn->retried) {
          out =
              Retried(tenant, session_id, turn->committed, m->Dur(durability));
        }
        done(std::move(out));
      });
}

absl::StatusOr<ExportedState> SessionManager::Export(
    const std::string& tenant, const std::string& session_id,
    uint64_t version) {
  SS_ASSIGN_OR_RETURN(LoadedVersion v, impl_->store_->LoadVersion(
                                           {tenant, session_id}, version));
  ExportedState out;
  out.session_id = session_id;
  out.version = v.version.version;
  out.position = v.state.position;
  out.input_offset = v.state.input_offset;
  out.pending_bytes = static_cast<uint32_t>(v.state.tokenizer_tail.size());
  out.blob = EncodeState(v.state);
  if (v.state.model_fingerprint == fingerprint()) {
    out.model_id = options().model_id;
    out.model_fingerprint = fingerprint();
    out.architecture = engine::ArchName(model().info().config.arch);
  } else {
    // Reached through a worker that does not serve the session's model
    // (a gateway sends reads of a model nobody serves anywhere): the
    // header still describes the state, so it imports where that model is.
    SS_ASSIGN_OR_RETURN(SessionHead head,
                        impl_->store_->GetHead({tenant, session_id}));
    // Informational; left out if the id was re-created for another model
    // between the two reads.
    if (head.model_fingerprint == v.state.model_fingerprint) {
      out.model_id = head.model_id;
    }
    out.model_fingerprint = v.state.model_fingerprint;
    out.architecture = v.state.architecture;
  }
  return out;
}

absl::StatusOr<SessionView> SessionManager::Import(
    const std::string& tenant, const std::string& blob, bool new_version,
    const CreateParams& params, std::optional<uint64_t> expected) {
  return Await([&](ViewDone done) {
    ImportAsync(tenant, blob, new_version, params, expected, std::move(done));
  });
}

void SessionManager::ImportAsync(const std::string& tenant,
                                 const std::string& blob, bool new_version,
                                 const CreateParams& params,
                                 std::optional<uint64_t> expected,
                                 ViewDone done, IsCancelled cancelled) {
  // Answered here, unless queued behind the session's strand (then `done`
  // moved into the operation).
  absl::StatusOr<SessionView> now = ImportOrQueue(
      tenant, blob, new_version, params, expected, &done, std::move(cancelled));
  if (done != nullptr) done(std::move(now));
}

namespace {

// What the codec cannot know of an imported snapshot, checked before it
// becomes a version: a state no worker wrote would otherwise be served as
// a silent wrong answer.
absl::Status CheckImportedState(const StateSnapshot& snap,
                                const engine::ModelInfo& info,
                                const std::string& fingerprint) {
  // The shape fields are informational, but one that is set must agree.
  const engine::ModelConfig& c = info.config;
  if ((!snap.architecture.empty() &&
       snap.architecture != engine::ArchName(c.arch)) ||
      (snap.n_layer != 0 && snap.n_layer != static_cast<uint32_t>(c.n_layer)) ||
      (snap.n_embd != 0 && snap.n_embd != static_cast<uint32_t>(c.n_embd)) ||
      (snap.n_head != 0 && snap.n_head != static_cast<uint32_t>(c.n_head)) ||
      (snap.head_size != 0 &&
       snap.head_size != static_cast<uint32_t>(c.head_size))) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
        absl::StrCat("the state's header describes ", snap.architecture, " L",
                     snap.n_layer, " C", snap.n_embd, " H", snap.n_head, "x",
                     snap.head_size, ", not the model's ",
                     engine::ArchName(c.arch), " L", c.n_layer, " C", c.n_embd,
                     " H", c.n_head, "x", c.head_size),
        {{"expected_fingerprint", fingerprint},
         {"actual_fingerprint", snap.model_fingerprint}});
  }
  // Counters far past anything a session reaches (2^63 units): one more
  // append would wrap them, and exactly-once resumes compare them.
  constexpr uint64_t kMaxCount = uint64_t{1} << 63;
  if (snap.position >= kMaxCount || snap.input_offset >= kMaxCount ||
      snap.tokenizer_tail.size() > snap.input_offset) {
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("the state's counters are out of range (position ",
                     snap.position, ", input_offset ", snap.input_offset, ", ",
                     snap.tokenizer_tail.size(), " pending bytes)"));
  }
  // Undecided text is text the service accepted: valid UTF-8, except a
  // character its end leaves open and the rest of one its start continues
  // (a World token may end inside a character, leaving the rest pending).
  absl::string_view tail = snap.tokenizer_tail;
  tail.remove_prefix(LeadingContinuationBytes(tail));
  const size_t complete = Utf8CompletePrefixLength(tail);
  if (FirstInvalidUtf8Byte(tail.substr(0, complete)) != complete) {
    return DataLossError(Reason::kStateCorrupt,
                         "the state's pending text is not valid UTF-8");
  }
  // A recurrent state the model produced is finite.
  for (const std::vector<float>* v : {&snap.state, &snap.last_hidden}) {
    if (!std::all_of(v->begin(), v->end(),
                     [](float f) { return std::isfinite(f); })) {
      return DataLossError(Reason::kStateCorrupt,
                           v == &snap.state
                               ? "the state holds NaN or infinite values"
                               : "last_hidden holds NaN or infinite values");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SessionView> SessionManager::ImportOrQueue(
    const std::string& tenant, const std::string& blob, bool new_version,
    const CreateParams& params, std::optional<uint64_t> expected,
    ViewDone* done, IsCancelled cancelled) {
  Impl& m = *impl_;
  SS_RETURN_IF_ERROR(m.Admitting());
  SS_ASSIGN_OR_RETURN(StateSnapshot snap, DecodeState(blob));
  SS_RETURN_IF_ERROR(CheckStateMatchesModel(snap, m.fingerprint_,
                                            m.model_->info().state_floats));
  if (!snap.last_hidden.empty() &&
      snap.last_hidden.size() !=
          static_cast<size_t>(m.model_->info().config.n_embd)) {
    return DataLossError(Reason::kStateCorrupt, "last_hidden has a bad size");
  }
  SS_RETURN_IF_ERROR(
      CheckImportedState(snap, m.model_->info(), m.fingerprint_));
  // The side data a load decodes, checked before anything is committed: a
  // version no worker can load would leave the session unusable.
  {
    std::string sampler;
    SS_RETURN_IF_ERROR(StateCarry(snap, &sampler).status());
    if (!sampler.empty()) {
      SS_RETURN_IF_ERROR(engine::SamplerState::Parse(sampler).status());
    }
  }
  // A retry with the request id of an import that was committed (even one
  // that failed below the durability asked for) returns the session
  // instead of importing twice.
  uint64_t digest = Fnv1a(
      kFnvBasis,
      absl::StrCat(
          "import:", new_version ? "version:" : "create:", params.session_id,
          "@", Crc32c(0, blob.data(), blob.size()), "?",
          expected ? absl::StrCat(*expected) : "-", "d",
          params.durability ? static_cast<int>(*params.durability) : -1));
  for (const auto& [k, v] : params.labels) {
    digest = Fnv1a(digest, absl::StrCat(k.size(), ":", k, v.size(), ":", v));
  }
  digest =
      Fnv1a(digest, absl::StrCat("ttl", absl::ToInt64Milliseconds(params.ttl)));
  std::string seen_id;
  uint64_t committed = 0;
  SS_ASSIGN_OR_RETURN(bool seen, m.Seen(tenant, params.request_id, digest,
                                        &seen_id, &committed));
  if (seen) {
    return Retried(tenant, seen_id, committed, m.Dur(params.durability));
  }
  if (!new_version) {
    // A generated id derives from the request id, as for CreateSession.
    const bool derived =
        params.session_id.empty() && !params.request_id.empty();
    CreateSessionRequest r;
    r.key = {tenant, derived ? DerivedSessionId(tenant, params.request_id)
                     : params.session_id.empty() ? m.NewSessionId()
                                                 : params.session_id};
    r.model_id = m.opt_.model_id;
    r.labels = params.labels;
    r.ttl = params.ttl;
    r.durability = m.Dur(params.durability);
    r.max_tenant_sessions = params.max_tenant_sessions;
    snap.parent_session_id.clear();
    snap.parent_version = 0;
    r.initial_state = std::move(snap);
    r.cause = VersionCause::kImport;
    return m.CreateOnce(
        std::move(r), derived, params.request_id, digest,
        [&](const SessionHead& h, const CreateSessionRequest& req) {
          return m.FirstVersionHolds(h.key, req.initial_state);
        });
  }
  absl::StatusOr<std::shared_ptr<Session>> resident =
      m.Resident({tenant, params.session_id});
  if (GetReason(resident.status()) == Reason::kModelMismatch) {
    // The session is of another model, maybe one served here too: say
    // what the caller can do, not that this worker lacks the model.
    return MakeError(
        absl::StatusCode::kFailedPrecondition, Reason::kModelMismatch,
        absl::StrCat("session ", params.session_id,
                     " is of another model than the imported state (",
                     snap.model_fingerprint,
                     "): a new version must be a state of the session's "
                     "model; import this one as a new session instead"),
        {{"expected_fingerprint",
          GetErrorMetadata(resident.status(), "actual_fingerprint")
              .value_or("")},
         {"actual_fingerprint", snap.model_fingerprint}});
  }
  if (GetReason(resident.status()) == Reason::kStateCorrupt) {
    // The head cannot be loaded: a new version needs nothing of it.
    const SessionKey key{tenant, params.session_id};
    return m.AnswerHeadWrite(
        tenant, params.session_id, params.request_id, digest,
        m.WriteOverUnloadableHead(
            key, expected, [&](const SessionHead& head, uint64_t fence) {
              snap.parent_session_id = head.parent_session_id;
              snap.parent_version = head.parent_version;
              CommitRequest r;
              r.key = key;
              r.expected_version = head.head.version;
              r.fence = fence;
              r.state = snap;
              r.durability = m.Dur(params.durability);
              r.cause = VersionCause::kImport;
              r.request_id = params.request_id;
              return m.store_->Commit(r);
            }));
  }
  SS_ASSIGN_OR_RETURN(std::shared_ptr<Session> s, std::move(resident));
  auto turn = std::make_shared<RetryCheck>();
  Impl* const mp = &m;
  // Queued on the session's strand, holding no thread while it waits (a
  // committing generation holds the strand for its whole run).
  m.RunAsync<absl::StatusOr<SessionView>>(
      s,
      [mp, s, tenant, params, expected, digest, turn, snap = std::move(snap),
       cancelled =
           std::move(cancelled)]() mutable -> absl::StatusOr<SessionView> {
        Impl& m = *mp;
        if (cancelled && cancelled()) return CallWentAway();
        SS_RETURN_IF_ERROR(m.GoneError(s.get()));
        // Again in turn: the original may have run while this waited.
        SS_ASSIGN_OR_RETURN(turn->retried,
                            m.Seen(tenant, params.request_id, digest,
                                   &turn->seen_id, &turn->committed));
        if (turn->retried) return SessionView{};
        const uint64_t head = s->head.head.version;
        if (expected && *expected != head) {
          return MakeError(absl::StatusCode::kFailedPrecondition,
                           Reason::kVersionMismatch,
                           absl::StrCat("the head is version ", head),
                           {{"head_version", absl::StrCat(head)}});
        }
        snap.parent_session_id = s->head.parent_session_id;
        snap.parent_version = s->head.parent_version;
        CommitRequest r;
        r.key = s->key;
        r.expected_version = head;
        r.fence = s->fence;
        r.state = snap;
        r.durability = m.Dur(params.durability);
        r.cause = VersionCause::kImport;
        r.request_id = params.request_id;
        auto res = m.store_->Commit(r);
        if (!res.ok()) {
          if (GetReason(res.status()) == Reason::kFenced) {
            m.Drop(s.get(), Session::Gone::kFenced);
          } else {
            m.FollowStoreHead(s.get());
            if (WrittenBelowDurability(res.status())) {
              m.Remember(tenant, params.request_id, params.session_id, digest,
                         WrittenVersionOf(res.status()));
            }
          }
          return res.status();
        }
        m.Remember(tenant, params.request_id, params.session_id, digest,
                   res->version.version);
        LoadedVersion v{res->version, std::move(snap)};
        SS_RETURN_IF_ERROR(m.LoadInto(s.get(), v, &res->session));
        absl::MutexLock lock(&s->mu);
        return s->view;
      },
      [this, mp, tenant, durability = params.durability, turn,
       done = std::move(*done)](absl::StatusOr<SessionView> out) {
        if (out.ok() && turn->retried) {
          out = Retried(tenant, turn->seen_id, turn->committed,
                        mp->Dur(durability));
        }
        done(std::move(out));
      });
  *done = nullptr;  // moved into the queued operation
  return SessionView{};
}

void SessionManager::Drain() { impl_->Drain(); }

void SessionManager::RenewLeasesNow() {
  absl::MutexLock lock(&impl_->mu_);
  impl_->renew_now_ = true;
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
