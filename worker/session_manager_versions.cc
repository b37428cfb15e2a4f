// SPDX-License-Identifier: Apache-2.0
// SessionManager: a session's versions (list, rollback), export and import,
// rollbacks and imports queued on the session's strand without holding a
// thread. The other public calls are in session_manager.cc.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/crc32c.h"
#include "common/session_ids.h"
#include "common/utf8.h"
#include "state_store/state_codec.h"
#include "worker/engine/sampler.h"
#include "worker/session_manager.h"
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

// The commit of imported `snap` as the version of session `key` after
// `head`, under `fence`: the session keeps its fork origin.
CommitRequest ImportCommit(const SessionKey& key, const SessionHead& head,
                           uint64_t fence, const StateSnapshot& snap,
                           Durability durability,
                           const std::string& request_id) {
  CommitRequest r;
  r.key = key;
  r.expected_version = head.head.version;
  r.fence = fence;
  r.state = snap;
  r.state.parent_session_id = head.parent_session_id;
  r.state.parent_version = head.parent_version;
  r.durability = durability;
  r.cause = VersionCause::kImport;
  r.request_id = request_id;
  return r;
}

}  // namespace

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
        SS_ASSIGN_OR_RETURN(
            std::optional<uint64_t> found,
            m->CommittedInStore(s->key, request_id, VersionCause::kRollback,
                                digest, [version](const VersionInfo& v) {
                                  return v.rolled_back_from == version;
                                }));
        if (found) {
          turn->retried = true;
          turn->committed = *found;
          return SessionView{};
        }
        const uint64_t head = s->head.head.version;
        SS_RETURN_IF_ERROR(m->CheckExpectedVersion(s.get(), expected));
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
        m->Replaced(s.get());
        auto v = m->store_->LoadVersion(s->key, res->version.version);
        absl::Status loaded =
            v.ok() ? m->LoadInto(s.get(), *v, &res->session) : v.status();
        if (loaded.ok()) s->history_base = s->input_offset;
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

absl::Status CheckStateShape(const StateSnapshot& snap,
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
  return absl::OkStatus();
}

namespace {

// What the codec cannot know of an imported snapshot, checked before it
// becomes a version: a state no worker wrote would otherwise be served as
// a silent wrong answer.
absl::Status CheckImportedState(const StateSnapshot& snap,
                                const engine::ModelInfo& info,
                                const std::string& fingerprint) {
  SS_RETURN_IF_ERROR(CheckStateShape(snap, info, fingerprint));
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

// Pending text longer than this (or than four of the vocabulary's longest
// tokens, if that is more) is none a tokenizer leaves: World's is shorter
// than a token, NeoX's at most its 64 KiB cap. A crafted 16 MiB one cost
// about a gigabyte and seconds of NeoX's next scan.
constexpr size_t kMaxImportedTailBytes = size_t{128} << 10;

// A state the model produced steps to finite values. One step of a copy
// (and the logits of its hidden vector, if it has one) must give finite
// state, hidden vector and logits: a finite but extreme crafted state
// (3e38 everywhere overflows the next step's sums) was served as NaN
// logits, sampled as token 0, committed, and its export then refused.
// The one engine call outside the scheduler (Model::Forward may be called
// concurrently: model.h): through the scheduler, an import would wait on
// its thread behind whatever holds the batch (a generation's callback),
// where ImportAsync holds no thread while a session is busy. It costs the
// batch about one step per import, and runs only for an import that is
// not a retry of one committed.
absl::Status ProbeImportedState(engine::Model& model,
                                const StateSnapshot& snap) {
  const engine::ModelInfo& info = model.info();
  const size_t C = static_cast<size_t>(info.config.n_embd);
  const size_t V = static_cast<size_t>(info.config.vocab_size);
  std::vector<float> state = snap.state;
  std::vector<float> hidden(C), logits(V);
  auto finite = [](const std::vector<float>& v) {
    return std::all_of(v.begin(), v.end(),
                       [](float f) { return std::isfinite(f); });
  };
  auto not_finite = [] {
    return DataLossError(Reason::kStateCorrupt,
                         "the state does not step to finite values (no "
                         "model would produce it)");
  };
  if (!snap.last_hidden.empty()) {
    SS_RETURN_IF_ERROR(model.Logits(snap.last_hidden.data(), 1, logits.data()));
    if (!finite(logits)) return not_finite();
  }
  const int32_t token = 0;
  const int32_t at = 0;
  engine::SequenceWork w;
  w.tokens = absl::MakeConstSpan(&token, 1);
  w.state = state.data();
  w.logit_positions = absl::MakeConstSpan(&at, 1);
  w.logits = logits.data();
  w.last_hidden = hidden.data();
  SS_RETURN_IF_ERROR(model.Forward({&w, 1}));
  if (!finite(state) || !finite(hidden) || !finite(logits)) {
    return not_finite();
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
  if (snap.tokenizer_tail.size() >
      std::max(kMaxImportedTailBytes, 4 * m.tok_->max_token_bytes())) {
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("the state's pending text (", snap.tokenizer_tail.size(),
                     " bytes) is longer than any tokenizer leaves"));
  }
  // The side data a load decodes, checked before anything is committed: a
  // version no worker can load would leave the session unusable.
  {
    std::string sampler;
    std::deque<GenerationRecord> records;
    SS_ASSIGN_OR_RETURN(const std::string carry,
                        StateCarry(snap, &sampler, &records));
    SS_RETURN_IF_ERROR(CheckGenerationRecords(sampler, records));
    // A generation checkpoints right after it fed a sampled token: the
    // hidden vector its next draw starts from is there, and no text is
    // pending. A state claiming an in-progress generation without them
    // would continue from zeros (its retry resumes, skipping the checks a
    // new generation gets).
    const bool in_progress = std::any_of(
        records.begin(), records.end(),
        [](const auto& r) { return r.finish == kGenerationInProgress; });
    if (in_progress && (snap.last_hidden.empty() || snap.position == 0 ||
                        !snap.tokenizer_tail.empty() || !carry.empty())) {
      return DataLossError(Reason::kStateCorrupt,
                           "an in-progress generation record in a state "
                           "without the hidden vector it continues from, "
                           "or with text pending");
    }
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
  SS_RETURN_IF_ERROR(ProbeImportedState(*m.model_, snap));
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
              return m.store_->Commit(ImportCommit(key, head, fence, snap,
                                                   m.Dur(params.durability),
                                                   params.request_id));
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
        SS_ASSIGN_OR_RETURN(
            std::optional<uint64_t> found,
            m.CommittedInStore(s->key, params.request_id, VersionCause::kImport,
                               digest, [&snap](const VersionInfo& v) {
                                 return v.position == snap.position &&
                                        v.input_offset == snap.input_offset &&
                                        v.tail_bytes ==
                                            snap.tokenizer_tail.size();
                               }));
        if (found) {
          turn->retried = true;
          turn->seen_id = params.session_id;
          turn->committed = *found;
          return SessionView{};
        }
        SS_RETURN_IF_ERROR(m.CheckExpectedVersion(s.get(), expected));
        CommitRequest r =
            ImportCommit(s->key, s->head, s->fence, snap,
                         m.Dur(params.durability), params.request_id);
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
        m.Replaced(s.get());
        LoadedVersion v{res->version, std::move(r.state)};
        SS_RETURN_IF_ERROR(m.LoadInto(s.get(), v, &res->session));
        s->history_base = s->input_offset;
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

}  // namespace statestream::worker
