// SPDX-License-Identifier: Apache-2.0
#include "state_store/redis_state_store.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "state_store/internal/redis_client.h"
#include "state_store/internal/redis_scripts.h"
#include "state_store/internal/store_util.h"

namespace statestream {
namespace {

using store_internal::Command;
using store_internal::Reply;
using Fields = std::map<std::string, std::string>;

enum Script {
  kCreate,
  kCommit,
  kRead,
  kVersions,
  kUpdate,
  kDelete,
  kAcquire,
  kRenew,
  kRelease,
  kRegisterWorker,
  kUnregisterWorker,
  kListWorkers,
  kRecordDurability,
  kAwaitDurability,
  kScriptCount
};

std::string ScriptSource(Script s) {
  using namespace store_internal;
  const char* body[] = {kLuaCreate,
                        kLuaCommit,
                        kLuaRead,
                        kLuaVersions,
                        kLuaUpdate,
                        kLuaDelete,
                        kLuaAcquire,
                        kLuaRenew,
                        kLuaRelease,
                        kLuaRegisterWorker,
                        kLuaUnregisterWorker,
                        kLuaListWorkers,
                        kLuaRecordDurability,
                        kLuaAwaitDurability};
  return absl::StrCat(kLuaPrelude, body[s]);
}

std::string Str(const redisReply* r) {
  if (r == nullptr) return "";
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
      r->type == REDIS_REPLY_ERROR) {
    return std::string(r->str, r->len);
  }
  if (r->type == REDIS_REPLY_INTEGER) return absl::StrCat(r->integer);
  return "";
}

Fields Pairs(const redisReply* r) {
  Fields f;
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY) return f;
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    f[Str(r->element[i])] = Str(r->element[i + 1]);
  }
  return f;
}

uint64_t U64(const Fields& f, const std::string& k) {
  auto it = f.find(k);
  uint64_t v = 0;
  if (it != f.end() && !absl::SimpleAtoi(it->second, &v)) v = 0;
  return v;
}
int64_t I64(const Fields& f, const std::string& k) {
  auto it = f.find(k);
  int64_t v = 0;
  if (it != f.end() && !absl::SimpleAtoi(it->second, &v)) v = 0;
  return v;
}
std::string Get(const Fields& f, const std::string& k) {
  auto it = f.find(k);
  return it == f.end() ? "" : it->second;
}

int64_t Ms(absl::Duration d) { return absl::ToInt64Milliseconds(d); }
int64_t TtlMs(absl::Duration ttl) {
  return ttl == absl::InfiniteDuration() ? -1 : std::max<int64_t>(1, Ms(ttl));
}

// This thread's generator, seeded with 256 bits from the OS.
std::mt19937_64& Rng() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seed);
  }();
  return rng;
}

// 128 random bits: two writers of one version never share chunk keys.
std::string NewNonce() {
  return absl::StrCat(absl::Hex(Rng()(), absl::kZeroPad16),
                      absl::Hex(Rng()(), absl::kZeroPad16));
}

// 10 random bits added to the server's clock in a new fence (kLuaPrelude's
// next_fence): two grants in one millisecond rarely collide even when the
// counter went back.
std::string FenceSalt() { return absl::StrCat(Rng()() & 1023); }

VersionInfo ParseVersion(const Fields& f) {
  VersionInfo v;
  v.version = U64(f, "version");
  v.position = U64(f, "position");
  v.input_offset = U64(f, "input_offset");
  v.tail_bytes = static_cast<uint32_t>(U64(f, "tail_bytes"));
  v.fence = U64(f, "fence");
  v.state_bytes = U64(f, "state_bytes");
  v.chunk_count = static_cast<uint32_t>(U64(f, "chunk_count"));
  v.state_crc32c = static_cast<uint32_t>(U64(f, "crc"));
  v.rolled_back_from = U64(f, "rolled_back_from");
  v.cause = VersionCauseOf(U64(f, "cause"));
  v.request_id = Get(f, "rid");
  const uint64_t d = U64(f, "durability");
  v.durability =
      d >= 1 && d <= 3 ? static_cast<Durability>(d) : Durability::kMemory;
  v.committed_at = absl::FromUnixMillis(I64(f, "committed_ms"));
  return v;
}

std::vector<std::string> VersionFields(const VersionInfo& v,
                                       const std::string& nonce) {
  std::vector<std::string> out = {
      "version",
      absl::StrCat(v.version),
      "position",
      absl::StrCat(v.position),
      "input_offset",
      absl::StrCat(v.input_offset),
      "tail_bytes",
      absl::StrCat(v.tail_bytes),
      "state_bytes",
      absl::StrCat(v.state_bytes),
      "chunk_count",
      absl::StrCat(v.chunk_count),
      "crc",
      absl::StrCat(v.state_crc32c),
      "rolled_back_from",
      absl::StrCat(v.rolled_back_from),
      "cause",
      absl::StrCat(static_cast<int>(v.cause)),
      "rid",
      v.request_id,
      "durability",
      absl::StrCat(static_cast<int>(v.durability)),
      "committed_ms",
      absl::StrCat(absl::ToUnixMillis(v.committed_at)),
      "nonce",
      nonce};
  if (v.fence != 0) {
    out.push_back("fence");
    out.push_back(absl::StrCat(v.fence));
  }
  return out;
}

class RedisStateStore final : public StateStore {
 public:
  RedisStateStore(const RedisStateStoreOptions& o,
                  std::unique_ptr<store_internal::RedisClient> client)
      : options_(o),
        clock_(o.clock ? o.clock : Clock::Real()),
        client_(std::move(client)) {}

  absl::Status Init() {
    for (int s = 0; s < kScriptCount; ++s) {
      const std::string src = ScriptSource(static_cast<Script>(s));
      SS_ASSIGN_OR_RETURN(auto r,
                          client_->RunOnEveryPrimary({"SCRIPT", "LOAD", src}));
      if (r.empty() || r[0]->type != REDIS_REPLY_STRING) {
        return store_internal::Unavailable(absl::StrCat(
            "SCRIPT LOAD failed: ", r.empty() ? "" : Str(r[0].get())));
      }
      sha_[s] = Str(r[0].get());
    }
    SS_ASSIGN_OR_RETURN(auto info,
                        client_->RunOnEveryPrimary({"INFO", "server"}));
    const std::string text = info.empty() ? "" : Str(info[0].get());
    const size_t at = text.find("redis_version:");
    if (at != std::string::npos) {
      std::vector<std::string> v = absl::StrSplit(
          text.substr(at + 14, text.find('\r', at) - at - 14), '.');
      int major = 0, minor = 0;
      if (v.size() >= 2 && absl::SimpleAtoi(v[0], &major) &&
          absl::SimpleAtoi(v[1], &minor)) {
        have_waitaof_ = major > 7 || (major == 7 && minor >= 2);
      }
    }
    (void)BaseDurability();
    WarnIfEvicting();
    return absl::OkStatus();
  }

  // Every session key has a TTL, so under any volatile-* or allkeys-*
  // policy a Redis at maxmemory drops committed states silently; with
  // noeviction it refuses writes (STORE_UNAVAILABLE/OOM) instead. CONFIG
  // forbidden by ACLs: no warning (nothing known).
  void WarnIfEvicting() {
    if (!options_.on_warning) return;
    auto policies =
        client_->RunOnEveryPrimary({"CONFIG", "GET", "maxmemory-policy"});
    if (!policies.ok()) return;
    for (const auto& reply : *policies) {
      const std::string policy = Get(Pairs(reply.get()), "maxmemory-policy");
      if (!policy.empty() && policy != "noeviction") {
        options_.on_warning(absl::StrCat(
            "Redis maxmemory-policy is ", policy,
            ": at maxmemory it evicts keys with a TTL, which every session "
            "state has, so committed states can vanish; set "
            "maxmemory-policy noeviction (docs/deploy.md)"));
        return;
      }
    }
  }

  // The level every write reaches before its reply. Without WAITAOF
  // (Redis < 7.2) FSYNC when every primary fsyncs each write first:
  // appendonly yes, appendfsync always, and no-appendfsync-on-rewrite no
  // (else a rewrite skips the fsyncs). Read again at most once a second, as
  // CONFIG SET or a failover to a differently configured node changes it;
  // CONFIG forbidden by ACLs counts as not. With WAITAOF, MEMORY: what
  // WAITAOF answers is what counts.
  Durability BaseDurability() {
    if (have_waitaof_) return Durability::kMemory;
    const absl::Time now = clock_->Now();
    {
      absl::MutexLock lock(&fsync_mu_);
      if (now - fsync_checked_at_ < absl::Seconds(1)) {
        return fsync_always_ ? Durability::kFsync : Durability::kMemory;
      }
    }
    bool all = false;
    auto append = client_->RunOnEveryPrimary({"CONFIG", "GET", "append*"});
    auto rewrite = client_->RunOnEveryPrimary(
        {"CONFIG", "GET", "no-appendfsync-on-rewrite"});
    if (append.ok() && !append->empty() && rewrite.ok() &&
        rewrite->size() == append->size()) {
      all = true;
      for (size_t i = 0; i < append->size(); ++i) {
        const Fields a = Pairs((*append)[i].get());
        const Fields w = Pairs((*rewrite)[i].get());
        all = all && Get(a, "appendonly") == "yes" &&
              Get(a, "appendfsync") == "always" &&
              Get(w, "no-appendfsync-on-rewrite") == "no";
      }
    }
    absl::MutexLock lock(&fsync_mu_);
    fsync_always_ = all;
    fsync_checked_at_ = now;
    return all ? Durability::kFsync : Durability::kMemory;
  }

  absl::StatusOr<CommitResult> CreateSession(
      const CreateSessionRequest& r) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(r.key));
    const absl::Duration ttl =
        r.ttl == absl::ZeroDuration() ? options_.default_ttl : r.ttl;
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "ttl"));
    const EncodedStateParts encoded = EncodeStateParts(r.initial_state);
    const std::vector<absl::string_view> chunks = ChunkViews(encoded);
    const std::string nonce = NewNonce();
    const std::string now = absl::StrCat(absl::ToUnixMillis(clock_->Now()));
    // Index first (idempotent): a session is never missing from ListSessions.
    SS_RETURN_IF_ERROR(AddToIndex(r.key));
    VersionInfo v = store_internal::DescribeVersion(
        r.initial_state, encoded.size(), encoded.crc(), 1, 0,
        static_cast<uint32_t>(chunks.size()));
    v.committed_at = clock_->Now();
    v.durability = Durability::kMemory;
    store_internal::RecordCause(r, &v);
    const std::vector<std::string> head = {
        "version",     "1",
        "oldest",      "1",
        "nonce",       nonce,
        "fingerprint", r.initial_state.model_fingerprint,
        "model_id",    r.model_id,
        "parent_sid",  r.parent_session_id,
        "parent_ver",  absl::StrCat(r.parent_version),
        "labels",      store_internal::EncodeStringMap(r.labels),
        "ttl_ms",      absl::StrCat(TtlMs(ttl)),
        "created_ms",  now,
        "updated_ms",  now,
        "create_rid",  r.request_id,
        "create_dg",   absl::StrCat(r.request_digest)};
    std::vector<std::string> args = {nonce, FenceSalt(),
                                     absl::StrCat(head.size())};
    args.insert(args.end(), head.begin(), head.end());
    for (std::string& f : VersionFields(v, nonce)) args.push_back(std::move(f));
    Durability reached = BaseDurability();
    SS_ASSIGN_OR_RETURN(Reply reply,
                        WriteVersion(r.key, kCreate, 1, nonce, chunks, args,
                                     r.durability, &reached));
    const std::string outcome = Str(reply->element[0]);
    if (outcome == "EXISTS") return store_internal::SessionExists(r.key);
    if (outcome != "OK" && outcome != "DUP") return Unexpected(outcome);
    // And again now that the head exists: a listing that ran between the
    // two saw no head and dropped the entry (ListSessions).
    SS_RETURN_IF_ERROR(AddToIndex(r.key));
    return Finish(r.key, v, nonce, r.durability, reached);
  }

  // PING on every primary, instead of the default's probe-session read.
  absl::Status Ping() override { return client_->Ping(); }

  absl::StatusOr<SessionHead> GetHead(const SessionKey& key) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    SS_ASSIGN_OR_RETURN(auto read, Read(key, -1));
    return read.first;
  }

  absl::StatusOr<LoadedVersion> LoadVersion(const SessionKey& key,
                                            uint64_t version) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    // The script reads 0 and below as the head: a version past int64's
    // range (no session gets there) must stay a version nobody has.
    constexpr uint64_t kMaxVersion = std::numeric_limits<int64_t>::max();
    SS_ASSIGN_OR_RETURN(
        auto read,
        Read(key, static_cast<int64_t>(std::min(version, kMaxVersion))));
    const auto& [head, vm] = read;
    const VersionInfo info = ParseVersion(vm);
    const std::string nonce = Get(vm, "nonce");
    std::vector<std::string> keys;
    std::vector<Command> gets;
    for (uint32_t i = 0; i < info.chunk_count; ++i) {
      keys.push_back(ChunkKey(key, info.version, nonce, i));
    }
    for (const std::string& k : keys) gets.push_back({"GET", k});
    // The chunks are received straight into one uninitialised buffer of the
    // recorded size, in order (every byte is written, or the load fails); a
    // chunk that would overrun it gets its own allocation and is reported
    // as corruption below.
    const size_t size = info.state_bytes;
    std::unique_ptr<char[]> buffer(
        new (std::nothrow) char[std::max<size_t>(size, 1)]);
    if (buffer == nullptr) {
      return DataLossError(
          Reason::kStateCorrupt,
          absl::StrCat("state is corrupt: version ", info.version,
                       " records an impossible size of ", size, " bytes"));
    }
    size_t filled = 0;
    const store_internal::BulkSink sink = [&](size_t command, size_t n) {
      if (command == 0) filled = 0;  // a retried attempt starts over
      if (n > size - filled) return static_cast<char*>(nullptr);
      char* at = buffer.get() + filled;
      filled += n;
      return at;
    };
    std::vector<Reply> replies;
    for (int attempt = 0;; ++attempt) {
      SS_ASSIGN_OR_RETURN(replies, client_->Run(HeadKey(key), gets, sink));
      size_t missing = replies.size();
      for (size_t i = 0; i < replies.size() && missing == replies.size(); ++i) {
        if (replies[i]->type != REDIS_REPLY_STRING) missing = i;
      }
      if (missing == replies.size()) break;
      // Expired since the read (dropped beyond keep_versions)?
      auto again = Read(key, static_cast<int64_t>(info.version));
      if (!again.ok()) return again.status();
      // In a Cluster, the session's slot may be migrating: the pipeline
      // was resent whole to the target (ASK), where the chunks not moved
      // yet read as nil. Read again once the move has gone on.
      if (options_.cluster && attempt < 6) {  // ~1.6 s in all
        clock_->SleepFor(absl::Milliseconds(25 << attempt));
        continue;
      }
      return DataLossError(
          Reason::kStateCorrupt,
          absl::StrCat("state is corrupt: chunk ", missing, " of version ",
                       info.version, " is missing"));
    }
    for (const Reply& r : replies) {
      if (r->str != nullptr) filled = size + 1;  // overran
    }
    replies.clear();
    const absl::string_view bytes(buffer.get(), size);
    if (filled != size || EncodedStateCrc(bytes) != info.state_crc32c) {
      return DataLossError(
          Reason::kStateCorrupt,
          absl::StrCat("state is corrupt: version ", info.version,
                       " does not match its recorded size and checksum"));
    }
    LoadedVersion out;
    out.version = info;
    SS_ASSIGN_OR_RETURN(out.state, DecodeState(bytes));
    return out;
  }

  absl::StatusOr<CommitResult> Commit(const CommitRequest& r) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(r.key));
    const EncodedStateParts encoded = EncodeStateParts(r.state);
    const std::vector<absl::string_view> chunks = ChunkViews(encoded);
    const std::string nonce = NewNonce();
    const uint64_t version = r.expected_version + 1;
    VersionInfo v = store_internal::DescribeVersion(
        r.state, encoded.size(), encoded.crc(), version, r.fence,
        static_cast<uint32_t>(chunks.size()));
    store_internal::RecordCause(r, &v);
    v.committed_at = clock_->Now();
    Durability reached = BaseDurability();
    v.durability = reached;
    std::vector<std::string> args = {
        absl::StrCat(r.expected_version),
        absl::StrCat(r.fence),
        r.state.model_fingerprint,
        nonce,
        absl::StrCat(options_.keep_versions),
        absl::StrCat(Ms(options_.dropped_version_grace))};
    for (std::string& f : VersionFields(v, nonce)) args.push_back(std::move(f));
    SS_ASSIGN_OR_RETURN(
        Reply reply, WriteVersion(r.key, kCommit, version, nonce, chunks, args,
                                  r.durability, &reached));
    const std::string outcome = Str(reply->element[0]);
    const std::string arg = reply->elements > 1 ? Str(reply->element[1]) : "";
    uint64_t n = 0;
    if (outcome == "NOTFOUND") return store_internal::SessionNotFound(r.key);
    if (outcome == "VERSION" && absl::SimpleAtoi(arg, &n)) {
      return store_internal::HeadMismatch(r.expected_version, n);
    }
    if (outcome == "FENCED" && absl::SimpleAtoi(arg, &n)) {
      return store_internal::Fenced(r.fence, n);
    }
    if (outcome == "MODEL") {
      return store_internal::FingerprintMismatch(arg,
                                                 r.state.model_fingerprint);
    }
    if (outcome != "OK" && outcome != "DUP") return Unexpected(outcome);
    return Finish(r.key, v, nonce, r.durability, reached);
  }

  absl::StatusOr<VersionInfo> AwaitDurability(const SessionKey& key,
                                              uint64_t version,
                                              Durability wanted) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    SS_ASSIGN_OR_RETURN(auto read, Read(key, static_cast<int64_t>(version)));
    VersionInfo v = ParseVersion(read.second);
    if (v.durability >= wanted) return v;
    const std::string number = absl::StrCat(version);
    SS_ASSIGN_OR_RETURN(
        std::vector<Reply> r,
        EvalThen(key, kAwaitDurability, {number}, WaitCommands(wanted)));
    const std::string outcome = Str(r[0]->element[0]);
    if (outcome == "NOTFOUND") return store_internal::SessionNotFound(key);
    if (outcome == "NOTKEPT") return NotKept(r[0].get(), version);
    int level = 0;
    if (outcome != "OK" || r[0]->elements != 3 ||
        !absl::SimpleAtoi(Str(r[0]->element[1]), &level)) {
      return Unexpected(outcome);
    }
    const Durability recorded = static_cast<Durability>(std::max(level, 1));
    Durability reached = std::max(recorded, BaseDurability());
    if (r.size() > 1) ReadWait(r[1].get(), &reached);
    if (reached > recorded) {
      SS_RETURN_IF_ERROR(Eval(key, kRecordDurability,
                              {number, Str(r[0]->element[2]),
                               absl::StrCat(static_cast<int>(reached))})
                             .status());
    }
    v.durability = reached;
    if (reached < wanted) return DurabilityNotReached(version, wanted, reached);
    return v;
  }

  absl::StatusOr<CommitResult> Rollback(
      const SessionKey& key, uint64_t expected_version, uint64_t fence,
      uint64_t version, Durability durability,
      const std::string& request_id) override {
    return store_internal::RollbackByCommit(*this, key, expected_version, fence,
                                            version, durability, request_id);
  }

  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const SessionKey& key) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    SS_ASSIGN_OR_RETURN(Reply r, Eval(key, kVersions, {}));
    if (Str(r->element[0]) == "NOTFOUND") {
      return store_internal::SessionNotFound(key);
    }
    std::vector<VersionInfo> out;
    for (size_t i = 1; i < r->elements; ++i) {
      out.push_back(ParseVersion(Pairs(r->element[i])));
    }
    return out;
  }

  absl::StatusOr<ListSessionsPage> ListSessions(
      const ListSessionsRequest& req) override {
    SS_ASSIGN_OR_RETURN(std::string after,
                        store_internal::ParseListRequest(req));
    const std::string index = IndexKey(req.tenant);
    ListSessionsPage page;
    std::string from = after.empty() ? "-" : absl::StrCat("(", after);
    int scanned = 0;
    while (true) {
      SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                          client_->Run(index, {{"ZRANGEBYLEX", index, from, "+",
                                                "LIMIT", "0", "100"}}));
      const redisReply* ids = r[0].get();
      if (ids->type != REDIS_REPLY_ARRAY) return Unexpected(Str(ids));
      for (size_t i = 0; i < ids->elements; ++i) {
        const SessionKey key{req.tenant, Str(ids->element[i])};
        if (scanned++ == std::max(options_.max_list_scan, 1)) {
          // Read enough for one call: the rest from after the last read.
          page.next_page_token = store_internal::MakePageToken(
              from.size() > 1 ? from.substr(1) : std::string());
          return page;
        }
        from = absl::StrCat("(", key.session_id);
        auto head = GetHead(key);
        if (!head.ok()) {
          if (GetReason(head.status()) != Reason::kSessionNotFound) {
            return head.status();
          }
          SS_RETURN_IF_ERROR(DropFromIndex(key));
          continue;
        }
        if (!store_internal::LabelsMatch(head->labels, req.label_filter)) {
          continue;
        }
        if (static_cast<int>(page.sessions.size()) == req.page_size) {
          page.next_page_token = store_internal::MakePageToken(
              page.sessions.back().key.session_id);
          return page;
        }
        page.sessions.push_back(std::move(*head));
      }
      if (ids->elements < 100) return page;
    }
  }

  absl::StatusOr<SessionHead> UpdateSession(const SessionKey& key,
                                            const SessionUpdate& u) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    if (u.ttl) SS_RETURN_IF_ERROR(store_internal::ValidateTtl(*u.ttl, "ttl"));
    SS_ASSIGN_OR_RETURN(
        Reply r,
        Eval(key, kUpdate,
             {u.labels ? "1" : "0",
              u.labels ? store_internal::EncodeStringMap(*u.labels) : "",
              u.ttl ? "1" : "0", u.ttl ? absl::StrCat(TtlMs(*u.ttl)) : ""}));
    if (Str(r->element[0]) == "NOTFOUND") {
      return store_internal::SessionNotFound(key);
    }
    return GetHead(key);
  }

  absl::Status DeleteSession(const SessionKey& key) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    // The nonce makes the call idempotent across the client's own resends
    // (a reply lost, the pipeline sent again): see kLuaDelete.
    // (Kept a minute: far longer than the client retries one call.)
    SS_ASSIGN_OR_RETURN(Reply r, Eval(key, kDelete, {NewNonce(), "60000"}));
    if (Str(r->element[0]) == "NOTFOUND") {
      return store_internal::SessionNotFound(key);
    }
    return DropFromIndex(key);
  }

  absl::StatusOr<Lease> AcquireLease(const SessionKey& key,
                                     const std::string& owner,
                                     absl::Duration ttl,
                                     bool takeover) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    SS_RETURN_IF_ERROR(store_internal::ValidateOwner(owner));
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "lease ttl"));
    if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
    const absl::Time start = clock_->Now();
    SS_ASSIGN_OR_RETURN(Reply r, Eval(key, kAcquire,
                                      {owner, absl::StrCat(TtlMs(ttl)),
                                       takeover ? "1" : "0", FenceSalt()}));
    const std::string outcome = Str(r->element[0]);
    if (outcome == "NOTFOUND") return store_internal::SessionNotFound(key);
    if (outcome == "BUSY") return store_internal::LeaseBusy(Str(r->element[1]));
    uint64_t fence = 0;
    if (outcome != "OK" || !absl::SimpleAtoi(Str(r->element[1]), &fence)) {
      return Unexpected(outcome);
    }
    return Lease{owner, fence, start + ttl};
  }

  absl::StatusOr<Lease> RenewLease(const SessionKey& key,
                                   const std::string& owner, uint64_t fence,
                                   absl::Duration ttl) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "lease ttl"));
    if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
    const absl::Time start = clock_->Now();
    SS_ASSIGN_OR_RETURN(
        Reply r, Eval(key, kRenew,
                      {owner, absl::StrCat(fence), absl::StrCat(TtlMs(ttl))}));
    const std::string outcome = Str(r->element[0]);
    if (outcome == "NOTFOUND") return store_internal::SessionNotFound(key);
    uint64_t current = 0;
    if (outcome == "FENCED" && absl::SimpleAtoi(Str(r->element[1]), &current)) {
      return store_internal::Fenced(fence, current);
    }
    if (outcome != "OK") return Unexpected(outcome);
    return Lease{owner, fence, start + ttl};
  }

  absl::Status ReleaseLease(const SessionKey& key, const std::string& owner,
                            uint64_t fence) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateKey(key));
    return Eval(key, kRelease, {owner, absl::StrCat(fence)}).status();
  }

  absl::StatusOr<Lease> GetOwner(const SessionKey& key) override {
    SS_ASSIGN_OR_RETURN(SessionHead h, GetHead(key));
    return Lease{h.owner, h.fence, h.lease_expires_at};
  }

  absl::Status RegisterWorker(const WorkerInfo& info,
                              absl::Duration ttl) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateWorkerId(info.worker_id));
    SS_RETURN_IF_ERROR(store_internal::ValidateTtl(ttl, "worker ttl"));
    if (ttl == absl::InfiniteDuration()) ttl = absl::Hours(24 * 365);
    const std::string payload = store_internal::EncodeStringMap(
        {{"address", info.address},
         {"models", absl::StrJoin(info.model_fingerprints, "\n")},
         {"load", absl::StrCat(info.load)}});
    return EvalWorkers(kRegisterWorker,
                       {info.worker_id, payload, absl::StrCat(TtlMs(ttl))})
        .status();
  }

  absl::Status UnregisterWorker(const std::string& worker_id) override {
    SS_RETURN_IF_ERROR(store_internal::ValidateWorkerId(worker_id));
    return EvalWorkers(kUnregisterWorker, {worker_id}).status();
  }

  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers() override {
    const absl::Time now = clock_->Now();
    SS_ASSIGN_OR_RETURN(Reply r, EvalWorkers(kListWorkers, {}));
    std::vector<WorkerInfo> out;
    for (size_t i = 1; i + 2 < r->elements; i += 3) {
      WorkerInfo w;
      w.worker_id = Str(r->element[i]);
      std::map<std::string, std::string> f;
      if (!store_internal::DecodeStringMap(Str(r->element[i + 1]), &f)) {
        continue;
      }
      w.address = f["address"];
      if (!f["models"].empty()) {
        w.model_fingerprints = absl::StrSplit(f["models"], '\n');
      }
      if (!absl::SimpleAtod(f["load"], &w.load)) w.load = 0;
      w.expires_at = now + absl::Milliseconds(r->element[i + 2]->integer);
      out.push_back(std::move(w));
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return a.worker_id < b.worker_id;
    });
    return out;
  }

 private:
  std::string Prefix(const SessionKey& k) const {
    return absl::StrCat(options_.key_prefix, ":{", k.tenant, "/", k.session_id,
                        "}:");
  }
  std::string HeadKey(const SessionKey& k) const {
    return absl::StrCat(Prefix(k), "head");
  }
  std::string ChunkKey(const SessionKey& k, uint64_t version,
                       const std::string& nonce, uint32_t i) const {
    return absl::StrCat(Prefix(k), "v", version, ":", nonce, ":c", i);
  }
  std::string IndexKey(const std::string& tenant) const {
    return absl::StrCat(options_.key_prefix, ":{t:", tenant, "}:sessions");
  }
  std::string WorkersKey() const {
    return absl::StrCat(options_.key_prefix, ":{workers}:index");
  }
  // The stored chunks of a version: the encoding cut into pieces of at most
  // chunk_bytes, referencing the snapshot's floats (nothing is copied).
  // Loads concatenate them, so any cut is valid; the header and the CRC
  // table travel as their own small chunks.
  std::vector<absl::string_view> ChunkViews(
      const EncodedStateParts& parts) const {
    std::vector<absl::string_view> out;
    for (absl::string_view p :
         {absl::string_view(parts.prefix), parts.state, parts.last_hidden,
          absl::string_view(parts.suffix)}) {
      while (!p.empty()) {
        out.push_back(p.substr(0, options_.chunk_bytes));
        p.remove_prefix(out.back().size());
      }
    }
    return out;
  }

  absl::Status Unexpected(absl::string_view what) {
    return MakeError(absl::StatusCode::kInternal, Reason::kInternal,
                     absl::StrCat("unexpected Redis reply: ", what));
  }

  // A reply that is not what the store asked for. A server refusing writes
  // for now — out of memory under noeviction (OOM), a failing RDB save
  // (MISCONF), a replica (READONLY), a slow script (BUSY), too few
  // replicas (NOREPLICAS) — is the store being unavailable: retryable, and
  // the caller's state is untouched. Anything else is a bug. (TRYAGAIN,
  // LOADING, CLUSTERDOWN and MASTERDOWN never get here: the client retries
  // them until its deadline.)
  absl::Status BadReply(const redisReply* r) {
    const std::string text = Str(r);
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string code = text.substr(0, text.find(' '));
      for (absl::string_view refusal :
           {"OOM", "MISCONF", "READONLY", "BUSY", "NOREPLICAS"}) {
        if (code == refusal) {
          return MakeError(absl::StatusCode::kUnavailable,
                           Reason::kStoreUnavailable,
                           absl::StrCat("Redis refused the write: ", text),
                           {{"redis_error", code}});
        }
      }
    }
    return Unexpected(text);
  }

  absl::Status AddToIndex(const SessionKey& key) {
    const std::string index = IndexKey(key.tenant);
    return client_->Run(index, {{"ZADD", index, "0", key.session_id}}).status();
  }

  // Removes a session without a head from the tenant's index. The index
  // and the head live in different slots, so this cannot be one script: a
  // create (or a re-create after a delete) may write its head meanwhile.
  // Creates add to the index before and after writing the head, and this
  // looks at the head after removing: whichever runs last re-adds it, so a
  // live session never stays out of the index.
  absl::Status DropFromIndex(const SessionKey& key) {
    const std::string index = IndexKey(key.tenant);
    SS_RETURN_IF_ERROR(
        client_->Run(index, {{"ZREM", index, key.session_id}}).status());
    auto head = GetHead(key);
    if (head.ok()) return AddToIndex(key);
    if (GetReason(head.status()) == Reason::kSessionNotFound) {
      return absl::OkStatus();
    }
    return head.status();
  }

  // Runs `script` with `keys` and the common + `args` arguments, then
  // `extra` commands on the same connection. EVALSHA, or EVAL on NOSCRIPT.
  absl::StatusOr<std::vector<Reply>> RunScript(
      absl::string_view routing, Script script,
      const std::vector<std::string>& keys,
      const std::vector<absl::string_view>& args,
      const std::vector<Command>& extra) {
    const std::string nkeys = absl::StrCat(keys.size());
    std::string source;
    for (int attempt = 0; attempt < 2; ++attempt) {
      Command cmd;
      if (attempt == 0) {
        cmd = {"EVALSHA", sha_[script], nkeys};
      } else {
        source = ScriptSource(script);
        cmd = {"EVAL", source, nkeys};
      }
      for (const std::string& k : keys) cmd.push_back(k);
      cmd.insert(cmd.end(), args.begin(), args.end());
      std::vector<Command> cmds = {cmd};
      cmds.insert(cmds.end(), extra.begin(), extra.end());
      SS_ASSIGN_OR_RETURN(std::vector<Reply> r, client_->Run(routing, cmds));
      const redisReply* first = r[0].get();
      if (first->type == REDIS_REPLY_ERROR &&
          Str(first).rfind("NOSCRIPT", 0) == 0) {
        continue;
      }
      if (first->type != REDIS_REPLY_ARRAY || first->elements == 0) {
        return BadReply(first);
      }
      return r;
    }
    return Unexpected("script cache keeps missing");
  }

  absl::StatusOr<Reply> Eval(const SessionKey& key, Script script,
                             std::vector<std::string> args) {
    SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                        EvalThen(key, script, std::move(args), {}));
    return std::move(r[0]);
  }
  // Eval, then `extra` commands on the same connection: all the replies.
  absl::StatusOr<std::vector<Reply>> EvalThen(
      const SessionKey& key, Script script, std::vector<std::string> args,
      const std::vector<Command>& extra) {
    const std::string prefix = Prefix(key);
    const std::string retention = absl::StrCat(Ms(options_.fence_retention));
    const std::string now = absl::StrCat(absl::ToUnixMillis(clock_->Now()));
    std::vector<absl::string_view> argv = {prefix, retention, now};
    for (const std::string& a : args) argv.push_back(a);
    return RunScript(prefix, script,
                     {prefix + "head", prefix + "fence", prefix + "lease"},
                     argv, extra);
  }

  // VERSION_MISMATCH/NOT_FOUND for `version`, from a script's
  // {'NOTKEPT', head, oldest}.
  static absl::Status NotKept(const redisReply* r, uint64_t version) {
    uint64_t head = 0, oldest = 0;
    if (r->elements == 3) {
      (void)absl::SimpleAtoi(Str(r->element[1]), &head);
      (void)absl::SimpleAtoi(Str(r->element[2]), &oldest);
    }
    return store_internal::VersionNotKept(version, head, oldest);
  }

  absl::StatusOr<Reply> EvalWorkers(Script script,
                                    std::vector<std::string> args) {
    const std::string prefix =
        absl::StrCat(options_.key_prefix, ":{workers}:w:");
    std::vector<absl::string_view> argv = {prefix, "0", "0"};
    for (const std::string& a : args) argv.push_back(a);
    SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                        RunScript(prefix, script, {WorkersKey()}, argv, {}));
    return std::move(r[0]);
  }

  // Writes `chunks` (invisible: they expire unless the
  // script links them), then runs `script` (kCreate or kCommit), followed
  // on the same connection by the wait for `wanted` durability; updates
  // *reached. Returns the script's reply.
  absl::StatusOr<Reply> WriteVersion(
      const SessionKey& key, Script script, uint64_t version,
      const std::string& nonce, const std::vector<absl::string_view>& chunks,
      const std::vector<std::string>& args, Durability wanted,
      Durability* reached) {
    const std::string prefix = Prefix(key);
    const uint32_t n = static_cast<uint32_t>(chunks.size());
    std::vector<std::string> keys = {prefix + "head", prefix + "fence",
                                     absl::StrCat(prefix, "v", version)};
    for (uint32_t i = 0; i < n; ++i) {
      keys.push_back(ChunkKey(key, version, nonce, i));
    }
    const std::string pending = absl::StrCat(Ms(options_.pending_chunk_ttl));
    std::vector<Command> sets;
    for (uint32_t i = 0; i < n; ++i) {
      sets.push_back({"SET", keys[3 + i], chunks[i], "PX", pending});
    }
    const std::string retention = absl::StrCat(Ms(options_.fence_retention));
    const std::string now = absl::StrCat(absl::ToUnixMillis(clock_->Now()));
    std::vector<absl::string_view> argv = {prefix, retention, now};
    for (const std::string& a : args) argv.push_back(a);
    const std::vector<Command> wait = WaitCommands(wanted);
    // Chunks can vanish before the head swap (a Redis restart without
    // persistence, or a commit slower than pending_chunk_ttl): rewrite them.
    for (int attempt = 0; attempt < 3; ++attempt) {
      SS_ASSIGN_OR_RETURN(std::vector<Reply> set_replies,
                          client_->Run(prefix, sets));
      for (const Reply& r : set_replies) {
        if (r->type == REDIS_REPLY_ERROR) return BadReply(r.get());
      }
      SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                          RunScript(prefix, script, keys, argv, wait));
      // (A refused write's script deleted its chunks: drop_chunks.)
      if (Str(r[0]->element[0]) == "CHUNKS") continue;
      if (reached != nullptr && r.size() > 1) ReadWait(r[1].get(), reached);
      return std::move(r[0]);
    }
    return store_internal::Unavailable("state chunks keep disappearing");
  }

  // The wait that follows a write for `wanted` durability (none for MEMORY,
  // nor for FSYNC on a server without WAITAOF: see fsync_always_).
  // (Commands are views: the timeout text lives in wait_timeout_.)
  std::vector<Command> WaitCommands(Durability wanted) const {
    std::vector<Command> wait;
    if (wanted == Durability::kFsync && have_waitaof_) {
      wait.push_back({"WAITAOF", "1", "0", wait_timeout_});
    } else if (wanted == Durability::kReplicated) {
      if (have_waitaof_) {
        wait.push_back({"WAITAOF", "0", "1", wait_timeout_});
      } else {
        wait.push_back({"WAIT", "1", wait_timeout_});
      }
    }
    return wait;
  }

  // Raises *reached by the reply of a WaitCommands command.
  static void ReadWait(const redisReply* w, Durability* reached) {
    if (w->type == REDIS_REPLY_ARRAY && w->elements == 2) {  // WAITAOF
      if (w->element[0]->integer >= 1) {
        *reached = std::max(*reached, Durability::kFsync);
      }
      if (w->element[1]->integer >= 1) *reached = Durability::kReplicated;
    } else if (w->type == REDIS_REPLY_INTEGER && w->integer >= 1) {
      *reached = Durability::kReplicated;
    }
  }

  // Reports the commit of `written` (as the commit script wrote it) with the
  // durability reached, first recording it in the version if the wait
  // raised it above the level the script wrote, so ListVersions and GetHead
  // report it too.
  absl::StatusOr<CommitResult> Finish(const SessionKey& key,
                                      const VersionInfo& written,
                                      const std::string& nonce,
                                      Durability wanted, Durability reached) {
    const uint64_t version = written.version;
    if (reached > written.durability) {
      SS_RETURN_IF_ERROR(Eval(key, kRecordDurability,
                              {absl::StrCat(version), nonce,
                               absl::StrCat(static_cast<int>(reached))})
                             .status());
    }
    auto read = Read(key, static_cast<int64_t>(version));
    CommitResult out;
    if (read.ok()) {
      out.version = ParseVersion(read->second);
    } else if (read.status().code() == absl::StatusCode::kNotFound &&
               GetReason(read.status()) == Reason::kVersionMismatch) {
      // Newer commits (another writer's, during a durability wait) dropped
      // the version already (keep_versions): it was written all the same,
      // so report it and the head as it is now, not an error.
      SS_ASSIGN_OR_RETURN(read, Read(key, 0));
      out.version = written;
    } else {
      return read.status();
    }
    out.version.durability = reached;
    out.session = std::move(read->first);
    if (out.session.head.version == version) {
      out.session.head.durability = reached;
    }
    if (reached < wanted) {
      return DurabilityNotReached(version, wanted, reached);
    }
    return out;
  }

  // The head (and the fields of `version`: 0 = head, -1 = head only).
  absl::StatusOr<std::pair<SessionHead, Fields>> Read(const SessionKey& key,
                                                      int64_t version) {
    SS_ASSIGN_OR_RETURN(Reply r, Eval(key, kRead, {absl::StrCat(version)}));
    const std::string outcome = Str(r->element[0]);
    if (outcome == "NOTFOUND") return store_internal::SessionNotFound(key);
    if (outcome == "NOTKEPT") {
      return NotKept(r.get(), static_cast<uint64_t>(version));
    }
    if (outcome != "OK" || r->elements != 7) return Unexpected(outcome);
    const Fields h = Pairs(r->element[1]);
    Fields vm = Pairs(r->element[2]);
    const Fields lease = Pairs(r->element[4]);
    SessionHead s;
    s.key = key;
    s.model_id = Get(h, "model_id");
    s.model_fingerprint = Get(h, "fingerprint");
    s.oldest_version = U64(h, "oldest");
    s.parent_session_id = Get(h, "parent_sid");
    s.parent_version = U64(h, "parent_ver");
    s.create_request_id = Get(h, "create_rid");
    s.create_digest = U64(h, "create_dg");
    if (!store_internal::DecodeStringMap(Get(h, "labels"), &s.labels)) {
      return DataLossError(Reason::kStateCorrupt, "session labels are corrupt");
    }
    const int64_t ttl = I64(h, "ttl_ms");
    s.ttl = ttl < 0 ? absl::InfiniteDuration() : absl::Milliseconds(ttl);
    s.created_at = absl::FromUnixMillis(I64(h, "created_ms"));
    s.updated_at = absl::FromUnixMillis(I64(h, "updated_ms"));
    (void)absl::SimpleAtoi(Str(r->element[3]), &s.fence);
    const long long pttl = r->element[5]->integer;
    if (!Get(lease, "owner").empty() && pttl > 0) {
      s.owner = Get(lease, "owner");
      s.lease_expires_at = clock_->Now() + absl::Milliseconds(pttl);
    }
    s.head = ParseVersion(Pairs(r->element[6]));
    return std::make_pair(std::move(s), std::move(vm));
  }

  const RedisStateStoreOptions options_;
  Clock* const clock_;
  std::unique_ptr<store_internal::RedisClient> client_;
  std::string sha_[kScriptCount];
  bool have_waitaof_ = false;
  // options_.durability_timeout in ms, as WAIT / WAITAOF take it.
  const std::string wait_timeout_ =
      absl::StrCat(Ms(options_.durability_timeout));
  absl::Mutex fsync_mu_;
  bool fsync_always_ ABSL_GUARDED_BY(fsync_mu_) = false;
  absl::Time fsync_checked_at_ ABSL_GUARDED_BY(fsync_mu_) =
      absl::InfinitePast();
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> NewRedisStateStore(
    const RedisStateStoreOptions& options) {
  if (options.keep_versions < 1 || options.chunk_bytes < 1024) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        "keep_versions must be >= 1 and chunk_bytes >= 1024");
  }
  SS_RETURN_IF_ERROR(
      store_internal::ValidateTtl(options.default_ttl, "default_ttl"));
  store_internal::RedisClientOptions c;
  c.seeds = options.addresses;
  c.cluster = options.cluster;
  c.user = options.user;
  c.password = options.password;
  c.connect_timeout = options.connect_timeout;
  // A durability wait (WAIT / WAITAOF) legitimately blocks the connection
  // for up to durability_timeout on top of the command itself; a shorter
  // socket timeout would turn "durability not reached" into "store down".
  c.command_timeout = options.command_timeout + options.durability_timeout;
  c.retry_deadline = options.retry_deadline;
  c.backoff_initial = options.backoff_initial;
  c.backoff_max = options.backoff_max;
  c.max_idle_connections_per_node = options.max_idle_connections_per_node;
  c.clock = options.clock;
  SS_ASSIGN_OR_RETURN(auto client, store_internal::RedisClient::Connect(c));
  auto store = std::make_unique<RedisStateStore>(options, std::move(client));
  SS_RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<StateStore>(std::move(store));
}

}  // namespace statestream
